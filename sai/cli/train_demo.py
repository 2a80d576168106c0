"""`sai train-demo`: train the demo SparseResNet-18 and its dense twin on the procedural shapes task."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from sai.cli.options import add_quiet


def run(args: argparse.Namespace) -> int:
    from sai.models.train_demo import CLI_SETTINGS, DEFAULT_OUT, DemoConfig, train_demo

    cfg = DemoConfig()
    for key in CLI_SETTINGS:
        val = getattr(args, key)
        if val is not None:
            setattr(cfg, key, val)

    def progress(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    from sai.errors import SaiError
    from sai.outputs import check_output_dir, names_reason, write_marker

    # before minutes of training: the folder can be written, and the files of the names train-demo writes
    # there are its own earlier ones (other files in it are never touched)
    out = check_output_dir(args.out or DEFAULT_OUT, "--out", what="sai train-demo", check_owner=False)
    names = written_names()
    reason = names_reason(out, "sai train-demo", names, legacy=legacy_output_reason)
    if reason is not None and not args.force:
        raise SaiError(f"--out {out} is not written by sai train-demo ({reason}); choose another folder, or pass "
                       f"--force to overwrite {', '.join(names)} there")
    metrics = train_demo(out, cfg, progress=progress)
    write_marker(out, "sai train-demo", names=[n for n in names if (out / n).is_file()])
    acc = metrics["accuracy"]
    print(f"sparse {acc['sparse']:.4f} vs dense {acc['dense']:.4f} (gap {acc['gap_points']:.2f} points), "
          f"mean density {metrics['mean_density']:.3f}, MACs ratio {metrics['flops']['kernel']['ratio']:.3f}")
    return 0


def written_names() -> list[str]:
    """The files train-demo writes into its --out folder."""
    from sai.models.train_demo import DENSE_FILE, SPARSE_FILE

    return [SPARSE_FILE, DENSE_FILE, "metrics.json", "train_log.jsonl"]


def legacy_output_reason(folder: Path) -> Optional[str]:
    """None when ``folder`` (without an output marker) holds a train-demo result of a sai version before the
    marker (the shipped models/zoo/sai_demo_r18 is one): its metrics.json is train-demo's and names the files."""
    import json

    from sai.models.train_demo import DENSE_FILE, SPARSE_FILE

    try:
        metrics = json.loads((Path(folder) / "metrics.json").read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return "it has no metrics.json of sai train-demo"
    files = metrics.get("files") if isinstance(metrics, dict) else None
    if (not isinstance(files, dict) or files.get("sparse") != SPARSE_FILE or files.get("dense") != DENSE_FILE
            or any(k not in metrics for k in ("accuracy", "config", "flops"))):
        return "its metrics.json is not sai train-demo's"
    return None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-demo", help="train the demo sparse ResNet-18 + dense twin on procedural shapes (CPU)")
    p.add_argument("--out", help="output directory (default: the package's models/zoo/sai_demo_r18)")
    p.add_argument("--seed", type=int, help="seed of the data, the initialisation and the batch order (default 0)")
    p.add_argument("--pretrain-epochs", type=int, help="phase 1 epochs: the dense ResNet-18 from scratch (default 5)")
    p.add_argument("--epochs", type=int, help="phase 2 epochs: sparse and dense fine-tuning from phase 1 (default 9)")
    p.add_argument("--train-size", type=int, help="training images (default 12000)")
    p.add_argument("--test-size", type=int, help="held-out test images (default 2000)")
    p.add_argument("--batch-size", type=int, help="batch size (default 64)")
    p.add_argument("--base-width", type=int, help="channels of the first stage (default 16)")
    p.add_argument("--target-density", type=float, help="set point of the sparse loss: mean sampling probability per block (default 0.2)")
    p.add_argument("--sparse-loss-weight", type=float, help="weight of the sparse loss (default 6)")
    p.add_argument("--distill-weight", type=float,
                   help="weight of distillation from the dense twin, 0 = plain cross-entropy (default 0.7)")
    p.add_argument("--density-warmup", type=float,
                   help="fraction of fine-tuning over which the sparse loss's set point falls from 1 to the target "
                        "(default 0.3)")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate of phase 1 (default 3e-3)")
    p.add_argument("--finetune-lr", type=float, help="peak AdamW learning rate of phase 2 (default 1e-3)")
    p.add_argument("--threads", type=int, help="torch threads (default 1: fastest on a shared machine)")
    p.add_argument("--force", action="store_true",
                   help="overwrite sparse_resnet18.pth, resnet18.pth, metrics.json, train_log.jsonl and "
                        ".sai-output.json in the --out folder even if sai did not write them (other files there are "
                        "never touched). Without it, "
                        "files of those names are overwritten only when they are an earlier sai train-demo result "
                        "(listed unchanged in the folder's .sai-output.json)")
    add_quiet(p)
    p.set_defaults(func=run)
