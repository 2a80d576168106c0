"""The `make demo` pipeline (``pipeline``: convert, validate, bench the shipped demo model) and its HTML
report (``report``). Imports go one way: sai.cli -> sai.demo -> sai.benchmarks, sai.runtime and below;
nothing in sai.runtime, sai.exporter or sai.models imports this package.
"""
