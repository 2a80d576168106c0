"""`sai info`: what an exported ONNX model is (metadata, inputs/outputs, sparse ops, blocks)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sai.cli.options import add_no_verify


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print an exported model's metadata, sparse-op counts and block list")
    p.add_argument("model", help="an .onnx file written by sai export, or a sai convert OUTDIR (its model.onnx)")
    p.add_argument("--json", action="store_true", help="print as JSON")
    add_no_verify(p, what="an OUTDIR's files")
    p.set_defaults(func=run)


def describe(path: str) -> dict:
    """Everything `sai info` prints, as a dict. The op counts and blocks come from the graph itself."""
    import os

    import onnx

    from sai.constants import DOMAIN, OP_TYPES, SPARSE_BLOCK
    from sai.errors import SaiError, first_line
    from sai.exporter.metadata import read_metadata

    if not os.path.isfile(path):
        raise SaiError(f"{path} does not exist (give the path of an .onnx file)")
    if os.path.getsize(path) == 0:
        raise SaiError(f"{path} is empty (0 bytes), not an ONNX model; export it again (sai export / sai convert)")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise SaiError(f"{path} is not a readable ONNX model: {first_line(exc)[:200]}") from None
    if not model.HasField("graph") or not (model.graph.node or model.graph.output):
        raise SaiError(f"{path} is not an ONNX model (it parses but holds no graph); export it again")

    def shape(vi):
        dims = vi.type.tensor_type.shape.dim
        return [d.dim_param or d.dim_value for d in dims]

    def dtype(vi):
        return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name

    # sai::SparseBlock (a whole block: the tensorrt target's default, model.cpu-fused.onnx) counted when present
    ops = (*OP_TYPES, SPARSE_BLOCK) if any(n.domain == DOMAIN and n.op_type == SPARSE_BLOCK
                                           for n in model.graph.node) else OP_TYPES
    counts = {op: 0 for op in ops}
    blocks: dict[str, dict[str, int]] = {}
    variants: dict[str, int] = {}
    for n in model.graph.node:
        if n.domain == DOMAIN and n.op_type in counts:
            counts[n.op_type] += 1
            block = n.name.split("/")[0] if "/" in n.name else "model"
            blocks.setdefault(block, {op: 0 for op in ops})[n.op_type] += 1
            key = f"{n.op_type}{'[' + n.overload + ']' if n.overload else ''}"
            variants[key] = variants.get(key, 0) + 1
    functions = [f"{f.domain}::{f.name}{'[' + f.overload + ']' if f.overload else ''}" for f in model.functions]
    meta = read_metadata(model)
    if not any(counts.values()) and meta.get("target") == "onnx-native":  # bodies inlined: the export's counts
        counts = dict(meta.get("sparse_ops") or counts)
        blocks = dict(meta.get("blocks") or blocks)
    return {
        "path": path,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ir_version": model.ir_version,
        "opsets": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "inputs": [{"name": i.name, "dtype": dtype(i), "shape": shape(i)} for i in model.graph.input],
        "outputs": [{"name": o.name, "dtype": dtype(o), "shape": shape(o)} for o in model.graph.output],
        "nodes": len(model.graph.node),
        "sparse_ops": counts,
        "sparse_op_variants": variants,
        "local_functions": functions,
        "blocks": blocks,
        "metadata": meta,
    }


def input_norm_line(n: dict) -> str:
    """The recorded preprocessing in one line: order, layout, the formula with its numbers, where it comes from."""
    if not isinstance(n, dict):
        return str(n)
    scale = n.get("scale", 1.0)
    source = n.get("source")
    where = {"checkpoint": "from the checkpoint", "mmdetection config": "from the checkpoint's mmdetection config",
             "given": "given at export", "assumed": "assumed: the checkpoint records none, raw pixels are refused",
             None: "written before sai recorded the checkpoint's; re-run sai convert"}.get(source, str(source))
    return (f"{n.get('color', '')} {n.get('layout', 'NCHW')} {n.get('dtype', 'uint8')} {n.get('range', '')}: "
            f"x = (pixel * {scale:.6g} - mean {n.get('mean')}) / std {n.get('std')}  ({where})")


def run(args: argparse.Namespace) -> int:
    import os

    from sai.runtime.loader import ONNX_NAME, verify_model_path

    if not args.no_verify:  # an OUTDIR, or a model file inside one: its files must match the manifest
        verify_model_path(args.model)
    info = describe(os.path.join(args.model, ONNX_NAME) if os.path.isdir(args.model) else args.model)
    if os.path.isdir(args.model):  # the fused CPU model sai convert wrote beside model.onnx, if any
        from sai.runtime.loader import read_manifest

        fused = (read_manifest(Path(args.model)) or {}).get("fused") or {}
        info["fused_cpu_model"] = fused if fused.get("file") else None
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    meta = info["metadata"]
    print(f"model       {info['path']}")
    print(f"producer    {info['producer']}  (ir {info['ir_version']}, opsets "
          + ", ".join(f"{k} {v}" for k, v in info["opsets"].items()) + ")")
    for key in ("arch", "sampling", "precision", "target", "body", "head", "num_classes", "dcn_stages"):
        if key in meta:
            print(f"{key:<11} {meta[key]}")
    if "input_norm" in meta:
        print(f"input norm  {input_norm_line(meta['input_norm'])}")
    if meta.get("classes"):
        names = list(meta["classes"])
        print(f"classes     {len(names)}: " + ", ".join(names[:10]) + (", ..." if len(names) > 10 else ""))
    if "op_versions" in meta:
        print("op versions " + ", ".join(f"{k} {v}" for k, v in meta["op_versions"].items()))
    if "producer" in meta:
        print("versions    " + ", ".join(f"{k} {v}" for k, v in meta["producer"].items()))
    for kind in ("inputs", "outputs"):
        for i, v in enumerate(info[kind]):
            label = kind[:-1] if i == 0 else ""
            print(f"{label:<11} {v['name']} {v['dtype']} {v['shape']}")
    print("sparse ops  " + ", ".join(f"{k} x{v}" for k, v in info["sparse_ops"].items())
          + f"  ({info['nodes']} nodes)")
    print("functions   " + (", ".join(info["local_functions"]) or "none (custom nodes need the sai plugins)"))
    fused = info.get("fused_cpu_model")
    if fused:
        print(f"fused cpu   {fused['file']}: {fused.get('blocks')} sai::SparseBlock nodes, runs only with "
              f"{fused.get('library')} registered")
    print(f"blocks      {len(info['blocks'])}")
    for name, c in info["blocks"].items():
        print(f"  {name:<12} " + ", ".join(f"{k} x{v}" for k, v in c.items()))
    return 0
