"""The portable ONNX model with its sampling masks as extra outputs (``mask.<block>.m1`` / ``.m2``), and the
checked load of an ONNX model both need. A leaf module: ``sai.runtime.validate`` (which re-exports these) and
``sai.runtime.detector_engine`` import it, so neither imports the other."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from sai.constants import DOMAIN, SPARSE_SAMPLE_CONV
from sai.errors import SaiError

MASK_PREFIX = "mask."


def load_checked_onnx(src: Path):
    """The ONNX model at ``src``; SaiError when it is unreadable or any weight holds NaN or inf (such a model
    gives garbage on every backend, and the backends may agree on it, so validate refuses it outright)."""
    import onnx

    from sai.exporter.export import nonfinite_weights

    try:
        model = onnx.load(str(src))
    except Exception as exc:  # protobuf DecodeError on a truncated file, OSError, ...
        detail = " ".join(str(exc).split())[:160]
        raise SaiError(f"{src} is not a readable ONNX model ({type(exc).__name__}: {detail}); re-run sai convert") from None
    bad = nonfinite_weights(model)
    if bad:
        raise SaiError(f"{src} holds non-finite weights: {'; '.join(bad)}{' ...' if len(bad) == 3 else ''}; its "
                       "outputs are garbage: convert the checkpoint again with this sai (which refuses such weights) "
                       "or use an earlier checkpoint")
    return model


def onnx_with_masks(src: Path, dest: Path) -> list[str]:
    """Copy ``src`` to ``dest`` with one extra output per sampling mask: ``mask.<block>.m1`` (the mask of
    the block's first SparseSampleConv) and ``mask.<block>.m2`` (its second). Returns the names."""
    import onnx
    from onnx import TensorProto, helper

    model = load_checked_onnx(src)
    per_block: dict[str, list[str]] = OrderedDict()
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == SPARSE_SAMPLE_CONV and "/" in node.name:
            block = node.name.split("/")[0]
            per_block.setdefault(block, []).append(node.input[1])
    names = []
    elem = TensorProto.FLOAT
    for block, masks in per_block.items():
        for idx, tensor in enumerate(masks[:2], 1):
            name = f"{MASK_PREFIX}{block}.m{idx}"
            model.graph.node.append(helper.make_node("Cast", [tensor], [name], to=elem, name=f"sai_validate/{name}"))
            model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
            names.append(name)
    onnx.save(model, str(dest))
    return names
