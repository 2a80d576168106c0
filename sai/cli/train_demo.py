"""`sai train-demo`: train the demo SparseResNet-18 and its dense twin on the procedural shapes task."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from sai.cli.options import add_quiet

# flags of one task only (the rest are shared): given with the other task, they are refused by name
CLASSIFICATION_ONLY = ("pretrain_epochs", "epochs", "base_width", "distill_weight")
DETECTION_ONLY = ("pretrain_steps", "steps", "deterministic_tail")


def _check_task_flags(args: argparse.Namespace) -> None:
    from sai.errors import SaiError

    other = DETECTION_ONLY if args.task == "classification" else CLASSIFICATION_ONLY
    given = [f"--{k.replace('_', '-')}" for k in other if getattr(args, k, None) is not None]
    if given:
        raise SaiError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} not a setting of --task "
                         f"{args.task}; drop {'it' if len(given) == 1 else 'them'} or pick the other --task")


def run(args: argparse.Namespace) -> int:
    _check_task_flags(args)
    if args.task == "detection":
        return run_detection(args)
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


def run_detection(args: argparse.Namespace) -> int:
    """``--task detection``: the demo detector pair (sai.models.detector_train)."""
    from sai.errors import SaiError
    from sai.models.detector_train import DEFAULT_DET_OUT, DET_CLI_SETTINGS, DetDemoConfig, train_det_demo
    from sai.outputs import check_output_dir, names_reason, write_marker

    cfg = DetDemoConfig()
    for key in DET_CLI_SETTINGS:
        val = getattr(args, key, None)
        if val is not None:
            setattr(cfg, key, val)
    cfg.validate()

    def progress(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    out = check_output_dir(args.out or DEFAULT_DET_OUT, "--out", what="sai train-demo", check_owner=False)
    names = written_names("detection")
    reason = names_reason(out, "sai train-demo", names, legacy=detection_legacy_reason)
    if reason is not None and not args.force:
        raise SaiError(f"--out {out} is not written by sai train-demo ({reason}); choose another folder, or pass "
                       f"--force to overwrite {', '.join(names)} there")
    m = train_det_demo(out, cfg, progress=progress)
    write_marker(out, "sai train-demo", names=[n for n in names if (out / n).is_file()])
    print(f"mAP sparse {m['map']['sparse']['mAP']:.2f} vs dense {m['map']['dense']['mAP']:.2f} (gap "
          f"{m['map']['gap_points']:.2f} points), mean density {m['mean_density']:.3f}, MACs ratio "
          f"{m['flops']['ratio']:.3f} (backbone {m['flops']['backbone_ratio']:.3f})")
    return 0


def written_names(task: str = "classification") -> list[str]:
    """The files train-demo writes into its --out folder."""
    if task == "detection":
        from sai.models.detector_train import DENSE_DET_FILE, SPARSE_DET_FILE

        return [SPARSE_DET_FILE, DENSE_DET_FILE, "metrics.json", "train_log.jsonl"]
    from sai.models.train_demo import DENSE_FILE, SPARSE_FILE

    return [SPARSE_FILE, DENSE_FILE, "metrics.json", "train_log.jsonl"]


def detection_legacy_reason(folder: Path) -> Optional[str]:
    """Without a marker, a detection folder is never overwritten (every one sai wrote has a marker)."""
    return "it has no .sai-output.json of sai train-demo --task detection"


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
    p = sub.add_parser("train-demo", help="train the demo sparse ResNet-18 + dense twin on procedural shapes (CPU); "
                                          "--task detection: the demo Faster R-CNN pair")
    p.add_argument("--task", choices=("classification", "detection"), default="classification",
                   help="classification (default): the shape classifier pair (models/zoo/sai_demo_r18); detection: "
                        "the SAI-Det Faster R-CNN + FPN pair on several shapes per 128x128 image "
                        "(models/zoo/sai_demo_det_r18; its backbone starts from the classifier). Defaults below "
                        "are classification's, then detection's")
    p.add_argument("--out", help="output directory (default: the package's models/zoo/sai_demo_r18, or "
                                 "models/zoo/sai_demo_det_r18 for detection)")
    p.add_argument("--seed", type=int, help="seed of the data, the initialisation and the batch order (default 0)")
    p.add_argument("--pretrain-epochs", type=int, help="phase 1 epochs: the dense ResNet-18 from scratch (default 5)")
    p.add_argument("--epochs", type=int, help="phase 2 epochs: sparse and dense fine-tuning from phase 1 (default 9)")
    p.add_argument("--pretrain-steps", type=int,
                   help="detection: phase 1 batches, the dense detector from the classifier backbone (default 500)")
    p.add_argument("--steps", type=int, help="detection: phase 2 batches, dense twin and sparse detector each "
                                             "(default 350)")
    p.add_argument("--train-size", type=int, help="training images (default 12000; detection 4000)")
    p.add_argument("--test-size", type=int, help="held-out test images (default 2000; detection 300)")
    p.add_argument("--batch-size", type=int, help="batch size (default 64; detection 8)")
    p.add_argument("--base-width", type=int, help="channels of the first stage (default 16)")
    p.add_argument("--target-density", type=float, help="set point of the sparse loss: mean sampling probability per block (default 0.2; detection 0.3)")
    p.add_argument("--sparse-loss-weight", type=float, help="weight of the sparse loss (default 6; detection 4)")
    p.add_argument("--distill-weight", type=float,
                   help="weight of distillation from the dense twin, 0 = plain cross-entropy (default 0.7)")
    p.add_argument("--density-warmup", type=float,
                   help="fraction of fine-tuning over which the sparse loss's set point falls from 1 to the target "
                        "(default 0.3)")
    p.add_argument("--deterministic-tail", type=float,
                   help="detection: fraction of the sparse fine-tuning trained with the inference masks (no noise, "
                        "hard threshold) (default 0: the shipped pair; 0.3 untried to its end)")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate of phase 1 (default 3e-3; detection 2e-3)")
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
