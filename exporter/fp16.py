"""fp16 ONNX with the mask subgraph kept in fp32 (TensorRT 11 networks are strongly typed).

Weights and activations become float16 in the file itself. The mask subgraph (docs/design.md 3.1: mask
conv, sigmoid, Gumbel noise, grid prior, threshold) stays float32 so fp16 rounding cannot flip a
mask decision inside it; its input (the block activation) is cast up and the finished mask is cast
down where it enters a ``sai`` node. Graph inputs and outputs stay float32 (a Cast at each end), so
fp32 and fp16 models take the same feeds.

The mask subgraph is found structurally: every node whose outputs reach only mask inputs
(input 1 of ``SparseSampleConv`` / ``Interpolate``), directly or through other such nodes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sai.exporter.functions import DOMAIN

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16

# (op_type, input index) slots whose float tensors must stay float32 whatever the data type is.
_FP32_SLOTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1),
               # sai::SparseBlock: the mask predictors' weights and biases, the noise (trt_blocks.py)
               ("SparseBlock", 1), ("SparseBlock", 2), ("SparseBlock", 13), ("SparseBlock", 14)}


@dataclass
class Fp16Report:
    mask_nodes: int
    converted_initializers: int
    casts_inserted: int


def _is_mask_slot(node: onnx.NodeProto, idx: int) -> bool:
    return node.domain == DOMAIN and idx == 1


def _mask_only_nodes(graph: onnx.GraphProto) -> set[int]:
    consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for ni, node in enumerate(graph.node):
        for ii, name in enumerate(node.input):
            if name:
                consumers[name].append((ni, ii))
    outputs = {o.name for o in graph.output}
    mask_only: set[int] = set()
    for ni in range(len(graph.node) - 1, -1, -1):
        node = graph.node[ni]
        if node.domain == DOMAIN:
            continue
        ok = bool(node.output)
        for out in node.output:
            uses = consumers.get(out, [])
            if out in outputs or not uses:
                ok = False
                break
            if not all(_is_mask_slot(graph.node[c], ci) or c in mask_only for c, ci in uses):
                ok = False
                break
        if ok:
            mask_only.add(ni)
    return mask_only


def _convert_attr_tensors(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == F32:
            arr = numpy_helper.to_array(attr.t).astype(np.float16)
            attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
        elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == F32:
            attr.i = F16


def convert_to_fp16(model: onnx.ModelProto) -> Fp16Report:
    """Convert ``model`` in place (see module docstring). Value infos are dropped and re-inferred."""
    g = model.graph
    mask_only = _mask_only_nodes(g)
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name: i for i in g.input if i.type.tensor_type.elem_type == F32}

    # float32 values produced in the graph (the exporter records every value's type)
    float_values = {
        vi.name for vi in list(g.value_info) + list(g.output) if vi.type.tensor_type.elem_type == F32
    }
    # the float type each tensor will have after conversion
    fp32_values: set[str] = set()
    for ni in mask_only:
        fp32_values.update(g.node[ni].output)

    def wanted(ni: int, ii: int) -> int:
        node = g.node[ni]
        if ni in mask_only or (node.op_type, ii) in _FP32_SLOTS:
            return F32
        return F16

    # who needs each float initializer / graph input in which type
    needs: dict[str, set[int]] = defaultdict(set)
    for ni, node in enumerate(g.node):
        for ii, name in enumerate(node.input):
            if name in inits and inits[name].data_type == F32 or name in graph_inputs:
                needs[name].add(wanted(ni, ii))

    converted = 0
    new_inits: dict[tuple[str, int], str] = {}
    for name, types in needs.items():
        if name not in inits:
            continue
        if F16 in types:
            arr = numpy_helper.to_array(inits[name])
            fp16_name = name if F32 not in types else f"{name}__fp16"
            t16 = numpy_helper.from_array(arr.astype(np.float16), fp16_name)
            if fp16_name == name:
                inits[name].CopyFrom(t16)
            else:
                g.initializer.append(t16)
            new_inits[(name, F16)] = fp16_name
            converted += 1
        if F32 in types:
            new_inits[(name, F32)] = name

    # graph inputs stay float32: one Cast to fp16 for the consumers that need fp16
    casts: list[onnx.NodeProto] = []
    cast_of: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in cast_of:
            suffix = "fp16" if to == F16 else "fp32"
            out = f"{name}__{suffix}"
            casts.append(helper.make_node("Cast", [name], [out], to=to, name=f"cast_{suffix}/{name}"))
            cast_of[key] = out
        return cast_of[key]

    # rewrite node inputs
    new_nodes: list[onnx.NodeProto] = []
    for ni, node in enumerate(g.node):
        if ni not in mask_only:
            _convert_attr_tensors(node)
        for ii, name in enumerate(node.input):
            if not name:
                continue
            want = wanted(ni, ii)
            if (name, want) in new_inits:
                node.input[ii] = new_inits[(name, want)]
            elif name in graph_inputs:
                if want == F16:
                    node.input[ii] = cast(name, F16)
            elif name in fp32_values and want == F16:
                node.input[ii] = cast(name, F16)
            elif name not in fp32_values and want == F32 and name in float_values:
                node.input[ii] = cast(name, F32)
        # insert pending casts right before their first consumer (keeps topological order)
        new_nodes.extend(casts)
        casts.clear()
        new_nodes.append(node)

    # graph outputs stay float32
    for out in g.output:
        if out.type.tensor_type.elem_type != F32 or out.name in fp32_values:
            continue
        inner = f"{out.name}__fp16"
        for node in new_nodes:
            for i, name in enumerate(node.output):
                if name == out.name:
                    node.output[i] = inner
            for i, name in enumerate(node.input):
                if name == out.name:
                    node.input[i] = inner
        # named apart from the cast of the same value for an fp32 consumer (the next mask predictor)
        new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=F32, name=f"cast_fp32/{out.name}:output"))

    n_casts = sum(1 for n in new_nodes if n.name.startswith(("cast_fp16/", "cast_fp32/")))
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]
    # drop fp32 initializers nobody reads any more
    used = {name for n in g.node for name in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return Fp16Report(len(mask_only), converted, n_casts)
