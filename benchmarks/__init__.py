"""Benchmarks of sai-deploy: commands that print measured ratios, never timed assertions.

``opbench``: sparse vs dense ops, a block and whole models on torch and onnxruntime (``sai bench-ops``);
``opmodels``: one-node ONNX models of the sai ops and their onnxruntime timings; ``serve_bench``: the
soak benchmark of ``sai serve`` (``python -m sai.benchmarks.serve_bench``). Measured numbers live in
docs/benchmarks.md. Imports go one way: sai.cli -> sai.benchmarks -> sai.runtime and below; nothing in
sai.runtime, sai.exporter or sai.models imports this package.
"""
