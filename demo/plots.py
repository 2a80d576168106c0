"""The PNG plots of the demo report (matplotlib, Agg backend): latency vs input size and vs density, sparse vs
dense on torch and onnxruntime (from a ``sai bench-ops --json`` run), accuracy vs MACs of the shipped pair, and
the per-block mask densities. Each function writes one PNG and returns its path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sai.errors import SaiError

INSTALL_HINT = "pip install 'sai-deploy[demo]' (or: pip install 'matplotlib>=3.8,<4')"

# backend of a bench-ops case -> (subplot, series label, colour, line style)
SERIES = {
    ("torch", "sparse"): ("torch", "sparse (sai C++ kernels)", "tab:red", "-"),
    ("torch", "dense"): ("torch", "dense twin", "tab:blue", "-"),
    ("onnxruntime", "sparse"): ("onnxruntime", "sparse (portable ONNX)", "tab:red", "-"),
    ("onnxruntime+libsai_ort_ops", "sparse"): ("onnxruntime", "sparse (libsai_ort_ops)", "tab:orange", "--"),
    ("onnxruntime", "dense"): ("onnxruntime", "dense twin", "tab:blue", "-"),
}
PANELS = ("torch", "onnxruntime")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SaiError(f"the report's plots need matplotlib: {INSTALL_HINT}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from sai.outputs import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # the temporary's suffix is not .png: the format given
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _points(cases: Sequence[dict], key) -> dict[tuple, list[tuple]]:
    """``{(backend, sparse|dense): [(x, ms, case), ...]}`` over the cases that ran, sorted by x; ``key(case)`` is x
    (None: not on this plot). A dense series is taken once per backend family (onnxruntime's is shared by the
    portable and the custom-op case)."""
    out: dict[tuple, dict] = {}
    for c in cases:
        x = key(c)
        backend = c.get("extra", {}).get("backend")
        if x is None or backend is None or c.get("sparse_ms") is None:
            continue
        out.setdefault((backend, "sparse"), {})[x] = (x, c["sparse_ms"], c)
        dense_backend = "onnxruntime" if backend.startswith("onnxruntime") else backend
        out.setdefault((dense_backend, "dense"), {}).setdefault(x, (x, c["dense_ms"], c))
    return {k: sorted(v.values(), key=lambda p: p[0]) for k, v in out.items()}


def _panels(plt, points: dict, xlabel: str, title: str, xticks=None, log=False):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, panel in zip(axes, PANELS, strict=True):
        drawn = False
        for key, (pan, label, colour, style) in SERIES.items():
            pts = points.get(key)
            if pan != panel or not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, style, marker="o", color=colour, label=label)
            drawn = True
            if key[1] == "sparse":
                for x, y, c in pts:
                    ax.annotate(f"{c['ratio']:.2f}x", (x, y), textcoords="offset points", xytext=(4, 6),
                                fontsize=8, color=colour)
        ax.set_title(f"{panel}" + ("" if drawn else " (not run)"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("latency, ms (median)")
        if log:
            from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        if xticks:
            ax.set_xticks([t[0] for t in xticks], [t[1] for t in xticks], fontsize=8)
            ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    fig.suptitle(title + "  (labels: dense / sparse, > 1 = sparse faster)", fontsize=10)
    return fig


def latency_vs_size(cases: Sequence[dict], density: float, path: Path, arch: str = "") -> Path:
    """Latency vs input pixels at ``density``, one panel per runtime."""
    plt = _pyplot()
    sel = [c for c in cases if c.get("density") is not None and abs(c["density"] - density) < 1e-9]
    pts = _points(sel, lambda c: c["extra"]["height"] * c["extra"]["width"])
    sizes = sorted({(c["extra"]["height"], c["extra"]["width"]) for c in sel if "height" in c.get("extra", {})})
    ticks = [(h * w, f"{h}x{w}") for h, w in sizes]
    fig = _panels(plt, pts, "input size (H x W, log scale of pixels)",
                  f"{arch} vs its dense twin, batch 1, mask density {density:.2f}", xticks=ticks, log=True)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def latency_vs_density(cases: Sequence[dict], size: tuple[int, int], path: Path, arch: str = "") -> Path:
    """Latency vs mask density at input ``size`` (h, w), one panel per runtime."""
    plt = _pyplot()
    h, w = size
    sel = [c for c in cases if c.get("extra", {}).get("height") == h and c["extra"].get("width") == w]
    pts = _points(sel, lambda c: c.get("density"))
    fig = _panels(plt, pts, "mask density (fraction of positions computed)",
                  f"{arch} vs its dense twin, batch 1, {h}x{w} input")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def accuracy_vs_macs(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """One point per model: ``rows`` of ``{"label", "macs" (multiply-accumulates), "accuracy" (0..1)}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r, colour in zip(rows, ("tab:red", "tab:blue", "tab:green", "tab:purple"), strict=False):
        ax.scatter([r["macs"] / 1e6], [100 * r["accuracy"]], s=60, color=colour, label=r["label"], zorder=3)
        ax.annotate(f"{100 * r['accuracy']:.2f}%, {r['macs'] / 1e6:.1f} M", (r["macs"] / 1e6, 100 * r["accuracy"]),
                    textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set_xlabel("MACs per image (millions, our kernel count)")
    ax.set_ylabel("held-out accuracy, %")
    ax.set_title("the shipped pair: accuracy vs compute", fontsize=10)
    hi = max(r["macs"] for r in rows) / 1e6
    ax.set_xlim(0, hi * 1.25 if hi > 0 else 1)
    accs = [100 * r["accuracy"] for r in rows]
    ax.set_ylim(min(accs) - max(1.0, (max(accs) - min(accs))), min(100.5, max(accs) + 1.0))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def block_densities(densities: dict[str, dict], path: Path) -> Path:
    """Grouped bars: each block's d1 (conv1 mask) and d2 (conv2 mask)."""
    plt = _pyplot()
    names = list(densities)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 3.6))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [densities[n]["d1"] for n in names], 0.4, label="d1 (conv1 mask)",
           color="tab:red")
    ax.bar([x + 0.2 for x in xs], [densities[n]["d2"] for n in names], 0.4, label="d2 (conv2 mask)",
           color="tab:orange")
    ax.set_xticks(list(xs), [f"{n}\n{densities[n].get('grid', '')}" for n in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of positions computed")
    ax.set_title("per-block mask density on the held-out images (mask grid below each block)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
