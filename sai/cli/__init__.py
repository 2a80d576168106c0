"""The `sai` command line: one module per verb (Polygraphy style), heavy imports inside `run`."""
