"""The `make demo` pipeline on the shipped demo checkpoint, ending in OUT/report.html.

Runs, each as the `sai` command a user would type (printed before it runs, its output streamed and
kept in OUT/logs/): `sai convert` (portable + TensorRT-target ONNX; the engine only where TensorRT
and a GPU exist), `sai validate` (PyTorch vs onnxruntime through Polygraphy), `sai bench
--compare-dense` (CPU latency of the sparse model vs the dense ResNet with the same weights at the demo's
64x64), `sai bench-ops` (a short sweep of a full-width model over input sizes and densities, sparse vs dense
on torch and onnxruntime: where sparse wins), then evaluates both demo models on the held-out split, draws the
mask overlays and the plots and writes the report; the closing line names the measured ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from sai.errors import SaiError


def _run_step(title: str, argv: list[str], logdir: Path, capture_stdout: bool = False,
              cwd: Optional[Path] = None) -> dict:
    """Run ``sai <argv>`` in a subprocess (in ``cwd``: the demo's output folder being written, so the commands
    shown name its files as ``model``, ``validate.json``); stream its output (indented), keep it in ``logdir``."""
    shown = "sai " + " ".join(argv)
    print(f"\n==> {title}\n$ {shown}", flush=True)
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{argv[0]}.log"
    t = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "sai", *argv], stdout=subprocess.PIPE,
                                stderr=None if capture_stdout else subprocess.STDOUT, text=True, env=env, cwd=cwd)
        out_lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            out_lines.append(line)
            if not capture_stdout:
                print("    " + line.rstrip(), flush=True)
        rc = proc.wait()
    secs = time.perf_counter() - t
    status = "ok" if rc == 0 else f"failed (exit {rc})"
    print(f"    [{status}, {secs:.1f} s]", flush=True)
    return {"command": shown, "status": status, "rc": rc, "seconds": secs, "stdout": "".join(out_lines)}


def _validate_summary(path: Path, step: dict) -> dict:
    """The parity figures of a ``sai validate --report`` JSON, in the report's shape."""
    out: dict = {"source": f"{step['command']} (Polygraphy Comparator)", "passed": step["rc"] == 0}
    if path.is_file():
        rep = json.loads(path.read_text())
        out["passed"] = bool(rep.get("passed", out["passed"]))
        out["comparisons"] = [
            {"name": f"{o.get('pair')} (input set {o.get('iteration')})", "output": o.get("output"),
             "max_abs": o.get("max_abs"), "mean_abs": o.get("mean_abs"), "max_rel": o.get("max_rel"),
             "tolerance": f"atol {o.get('atol')}, rtol {o.get('rtol')}",
             "extra": "PASS" if o.get("passed") else "FAIL"}
            for o in rep.get("outputs", [])]
        masks = rep.get("masks", [])
        if masks:
            worst = min(masks, key=lambda m: m.get("agreement", 1.0))
            out["masks"] = {"compared": len(masks), "worst_agreement": worst.get("agreement"),
                            "worst_mask": worst.get("mask"), "threshold": rep.get("mask_threshold"),
                            "disagree_total": sum(int(m.get("disagree", 0)) for m in masks)}
    out["text"] = step["stdout"].strip()
    return out


DEMO_DIRS = {"logs": r"(convert|validate|bench|bench-ops)\.log", "img": r"img\d+_[A-Za-z0-9_]+\.png",
             "plots": r"[A-Za-z0-9_]+\.png", "det": r"det\d+\.png"}
DEMO_FILES = ("validate.json", "bench_ops.json", "report.html", "report.json")
REPORT_KEYS = ("accuracy", "mean_density", "densities", "flops", "steps")


def legacy_output_reason(folder: Path) -> Optional[str]:
    """None when ``folder`` (without an output marker) is the output of a sai demo before the marker: only the
    entries the demo writes (its logs, overlays and plots by their name patterns, a sai convert OUTDIR in
    ``model/``), with a report.json of the demo's. Otherwise why not (``sai.outputs.foreign_reason``)."""
    import re

    from sai.outputs import foreign_reason
    from sai.runtime.convert import legacy_output_reason as convert_reason

    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        if e.name in DEMO_FILES and e.is_file(follow_symlinks=False):
            continue
        if e.name not in (*DEMO_DIRS, "model") or not e.is_dir(follow_symlinks=False):
            return f"it holds {e.name}, which sai demo does not write"
        if e.name == "model":
            why = foreign_reason(Path(e.path), "sai convert", convert_reason)
            if why:
                return f"model/: {why}"
            continue
        for f in os.scandir(e.path):
            if not (re.fullmatch(DEMO_DIRS[e.name], f.name) and f.is_file(follow_symlinks=False)):
                return f"it holds {e.name}/{f.name}, which sai demo does not write"
    try:
        report = json.loads((folder / "report.json").read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return "it has no report.json of sai demo"
    if not isinstance(report, dict) or any(k not in report for k in REPORT_KEYS):
        return "its report.json is not sai demo's"
    return None


def run_demo(args: argparse.Namespace, stamp: Optional[Callable[[Optional[int]], dict]] = None) -> int:
    """``sai demo``: every step, then the report; 0 when all steps succeeded. ``stamp(threads)``: the environment
    probe for the report (``sai.benchmarks.environment.stamp``, passed in by the CLI)."""
    # no OpenMP spin-waiting in torch in any step (inherited by them), as onnxruntime's timing sessions:
    # spinning threads take the cores from the model timed next (on 2 shared cores torch ran several
    # times slower); a value already set wins, and the report's environment stamp shows it
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from sai.models.train_demo import DEFAULT_OUT, SPARSE_FILE
    from sai.outputs import check_output_dir, owned_tempdir, publish_dir, recover_interrupted

    zoo = Path(args.zoo or DEFAULT_OUT).resolve()
    ck = zoo / SPARSE_FILE
    if not ck.is_file():
        raise SaiError(f"demo checkpoint {ck} not found (train it with: sai train-demo --out {zoo})")
    meta = json.loads((zoo / "metrics.json").read_text())
    from sai.demo.detection import resolve_zoo

    args.det_zoo_path = resolve_zoo(getattr(args, "det_zoo", None), skip=bool(getattr(args, "no_detection", False)))
    h, w = meta["input"]["height"], meta["input"]["width"]
    # OUT is new, empty or an earlier `sai demo` output (else refused now, unless --force); everything is
    # written into a temporary sibling that replaces it at the end, so it never holds half of two runs
    force = bool(getattr(args, "force", False))
    final = check_output_dir(args.out, "--out", what="sai demo", force=force, legacy=legacy_output_reason,
                             protect=[zoo])
    recover_interrupted(final)
    out = owned_tempdir(f".{final.name}.tmp-", final.parent, flag="--out")
    try:
        code = _steps(args, out, final, zoo, ck, h, w, stamp)
        publish_dir(out, final, "sai demo", force=force, legacy=legacy_output_reason, flag="--out")
    finally:
        shutil.rmtree(out, ignore_errors=True)  # gone already once published
    return code


def _steps(args: argparse.Namespace, out: Path, final: Path, zoo: Path, ck: Path, h: int, w: int,
           stamp: Optional[Callable[[Optional[int]], dict]]) -> int:
    """The pipeline, written into ``out`` (the temporary that becomes ``final``); 0 when every step passed."""
    from sai.demo.report import write_report

    logs = out / "logs"
    model_dir = Path("model")  # the steps run in ``out``
    t0 = time.perf_counter()
    steps = []
    threads = ["--threads", str(args.threads)] if args.threads and args.threads > 0 else []

    s = _run_step("1/5 convert the checkpoint (ONNX for any runtime + TensorRT-target ONNX; engine needs a GPU)",
                  ["convert", str(ck), "-o", str(model_dir), "--shape", f"1,3,{h},{w}",
                   "--min-shape", f"1,3,{h},{w}", "--max-shape", f"{max(8, args.batch)},3,{h},{w}"], logs, cwd=out)
    steps.append(s)
    converted = s["rc"] == 0

    validate = None
    if converted:
        s = _run_step("2/5 validate: PyTorch vs onnxruntime on identical inputs (Polygraphy)",
                      ["validate", str(model_dir), "-o", "validate.json", *threads], logs, cwd=out)
        steps.append(s)
        validate = _validate_summary(out / "validate.json", s)

    benches = []
    if converted:
        from sai.runtime.environment import ort_custom_ops

        ort = ("the fused CPU model model.cpu-fused.onnx on libsai_ort_ops.so" if ort_custom_ops()[0] else
               "the portable ONNX: function bodies, libsai_ort_ops.so not built")
        runs = [(f"3/5 bench (onnxruntime, {ort}): sparse model vs the dense ResNet with the same weights",
                 ["bench", str(model_dir)])]
        if not args.no_torch_bench:
            runs.append(("3/5 bench (PyTorch with the sai C++ CPU kernels): sparse vs dense, same weights",
                         ["bench", str(ck), "--backend", "torch", "--shape", f"{h},{w}"]))
        for title, head in runs:
            s = _run_step(title, [*head, "--compare-dense", "--json", "--batch", str(args.batch),
                                  "--iterations", str(args.iterations), "--warmup", "3", *threads],
                          logs, capture_stdout=True, cwd=out)
            steps.append(s)
            if s["rc"] != 0:
                continue
            try:
                bench = json.loads(s["stdout"])
            except json.JSONDecodeError:
                s["status"] = "ok (unparsed output)"
                continue
            bench["source"] = s["command"]
            benches.append(bench)
            for r in bench.get("results", []):
                print(f"    {r.get('label')}: p50 {r.get('p50_ms', 0):.2f} ms ({r.get('backend')}, "
                      f"input {r.get('input_shape')})")
            if bench.get("sparse_over_dense_p50"):
                print(f"    sparse/dense p50 latency ratio: {bench['sparse_over_dense_p50']:.3f}")

    bench_ops = None
    if args.sweep_sizes:
        sweep_json = out / "bench_ops.json"
        s = _run_step("4/5 bench-ops: where sparse wins (a full-width model at larger inputs and several densities, "
                      "torch and onnxruntime)",
                      ["bench-ops", "--sections", "model,onnx-model", "--model-arch", args.sweep_arch,
                       "--shapes", args.sweep_sizes, "--density", str(args.sweep_density),
                       "--densities", args.sweep_densities, "--iterations", str(args.sweep_repeats),
                       "--threads", str(args.sweep_threads), "-o", sweep_json.name], logs, cwd=out)
        steps.append(s)
        if s["rc"] == 0 and sweep_json.is_file():
            bench_ops = json.loads(sweep_json.read_text())

    detection = None
    if getattr(args, "det_zoo_path", None) is not None:
        from sai.demo.detection import run_detection

        print("\n==> 5/5 detection: the demo Faster R-CNN pair (sparse vs dense twin): mAP, MACs, pictures",
              flush=True)
        t = time.perf_counter()
        detection = run_detection(out, args.det_zoo_path, n_images=args.det_images, eval_size=args.det_eval_size,
                                  progress=lambda m: print("    " + m, flush=True))
        steps.append({"command": "detection", "status": "ok", "seconds": time.perf_counter() - t})
    print("\n==> 5/5 report: accuracy, densities, FLOPs, speed, parity, plots, mask overlays", flush=True)
    t = time.perf_counter()
    ctx = write_report(out, zoo, eval_size=args.eval_size, n_images=args.images, steps=steps, bench=benches,
                       validate=validate, onnx_path=out / model_dir / "model.onnx" if converted else None,
                       bench_ops=bench_ops, threads=args.threads or None,
                       environment=stamp(args.threads or None) if stamp else None,
                       progress=lambda m: print("    " + m, flush=True), detection=detection)
    steps.append({"command": "report", "status": "ok", "seconds": time.perf_counter() - t})
    rep = json.loads((out / "report.json").read_text())
    acc = rep["accuracy"]
    print(f"\nsai demo: done in {time.perf_counter() - t0:.0f} s -> {final / 'report.html'}")
    print(f"  accuracy sparse {acc['sparse']:.4f} vs dense {acc.get('dense', float('nan')):.4f} on {acc['n']} "
          f"held-out images; mean density {rep['mean_density']:.3f}; MACs ratio "
          f"{rep['flops']['kernel']['ratio']:.3f}")
    if ctx.get("plots", {}).get("error"):
        print(f"  plots not drawn: {ctx['plots']['error']}")
    if detection is not None:
        dm = detection["map"]
        print(f"  detection mAP sparse {dm['sparse']['mAP']:.2f} vs dense {dm['dense']['mAP']:.2f} on "
              f"{detection['n']} images; mean density {detection['mean_density']:.3f}; detector MACs ratio "
              f"{detection['flops']['ratio']:.3f}")
    print(f"  {ctx['speed_summary']}")
    failed = [st["command"] for st in steps if not str(st["status"]).startswith("ok")]
    if failed:
        print("sai demo: failed steps: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0
