"""Post-export passes over the ONNX graph: custom-node cleanup, block list, op counts, naming."""

from __future__ import annotations

import ast
import re
from collections import Counter, OrderedDict
from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from sai.constants import DEFORM_OVERLOAD, DOMAIN, OP_TYPES, POINTWISE_OVERLOAD
from sai.constants import INTERPOLATE as INTERP
from sai.constants import SPARSE_SAMPLE_CONV as SSC

_BLOCK_RE = re.compile(r"(^|\.)layer\d+\.\d+$")
_SHORT = {SSC: "ssc", INTERP: "interp"}


def custom_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type in OP_TYPES]


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    c = Counter(n.op_type for n in custom_nodes(model))
    return {op: int(c.get(op, 0)) for op in OP_TYPES}


def _scopes(node: onnx.NodeProto) -> list[str]:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                return [str(s) for s in ast.literal_eval(p.value)]
            except (ValueError, SyntaxError):
                return []
    return []


def _block_of(scopes: list[str]) -> str:
    for s in reversed(scopes):
        if _BLOCK_RE.search(s):
            return s
    return scopes[-2] if len(scopes) >= 2 and scopes[-2] else "model"


def fix_custom_nodes(model: onnx.ModelProto) -> OrderedDict[str, dict[str, int]]:
    """Fill empty bias slots with zero initializers, set the deform overload, name nodes by block.

    Returns the block list: ``{block name: {op_type: count}}`` in graph order. Call before
    ``strip_torch_metadata`` (the block names come from the exporter's name scopes).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    blocks: OrderedDict[str, dict[str, int]] = OrderedDict()
    used_names = {n.name for n in graph.node}
    for node in custom_nodes(model):
        if node.op_type == SSC:
            if len(node.input) > 3 and node.input[3] == "":
                node.input[3] = _zero_bias(graph, inits, node)
            node.overload = DEFORM_OVERLOAD if len(node.input) == 5 else ""
        if any(i == "" for i in node.input):
            raise RuntimeError(f"custom node {node.name} has an empty input name: {list(node.input)}")
        block = _block_of(_scopes(node))
        counts = blocks.setdefault(block, {op: 0 for op in OP_TYPES})
        idx = counts[node.op_type]
        counts[node.op_type] += 1
        new = f"{block}/{_SHORT[node.op_type]}{idx}"
        if new not in used_names:
            used_names.discard(node.name)
            node.name = new
            used_names.add(new)
    return blocks


def _zero_bias(graph: onnx.GraphProto, inits: dict, node: onnx.NodeProto) -> str:
    """The name of a zero bias [Cout] in the weight's dtype for SparseSampleConv ``node`` (one per weight,
    added to ``graph`` and ``inits`` the first time)."""
    w = inits.get(node.input[2])
    if w is None:
        raise RuntimeError(f"{node.name}: weight {node.input[2]} is not an initializer")
    name = f"{node.input[2]}.zero_bias"
    if name not in inits:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(w.data_type)
        inits[name] = numpy_helper.from_array(np.zeros([int(w.dims[0])], dtype=dtype), name)
        graph.initializer.append(inits[name])
    return name


def fill_missing_bias(model: onnx.ModelProto) -> None:
    """Give 3-input SparseSampleConv nodes a zero bias (the sparse bodies add B to their rows)."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in custom_nodes(model):
        if node.op_type == SSC and len(node.input) == 3:
            node.input.append(_zero_bias(model.graph, inits, node))


def _is_pointwise(node: onnx.NodeProto) -> bool:
    """4 inputs, one group, zero pads (the caller checks the 1x1 kernel on the weight initializer)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return (len(node.input) == 4 and attrs.get("group", 1) == 1
            and list(attrs.get("pads", [0, 0, 0, 0])) == [0, 0, 0, 0])


def set_overloads(model: onnx.ModelProto, pointwise: bool) -> None:
    """Each SparseSampleConv node's function overload: ``deform`` for 5 inputs; with ``pointwise``
    (the sparse bodies) ``pointwise`` for 1x1 kernels with zero pads and one group; else ``""``."""
    kernels = {t.name: list(t.dims[2:]) for t in model.graph.initializer if len(t.dims) == 4}
    for node in custom_nodes(model):
        if node.op_type != SSC:
            continue
        if len(node.input) == 5:
            node.overload = DEFORM_OVERLOAD
        elif pointwise and _is_pointwise(node) and kernels.get(node.input[2]) == [1, 1]:
            node.overload = POINTWISE_OVERLOAD
        else:
            node.overload = ""


def strip_torch_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node/value metadata (stack traces, fx nodes): size and privacy."""
    for node in model.graph.node:
        del node.metadata_props[:]
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        del vi.metadata_props[:]
    for t in model.graph.initializer:
        del t.metadata_props[:]
    keep = [p for p in model.metadata_props if not p.key.startswith("pkg.torch")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)


def ensure_opset_import(model: onnx.ModelProto, domain: str, version: int) -> None:
    for imp in model.opset_import:
        if imp.domain == domain:
            imp.version = version
            return
    model.opset_import.append(onnx.helper.make_opsetid(domain, version))


def split_mask_convs(model: onnx.ModelProto, matmul: bool = False) -> int:
    """Mask-predictor convs (3x3, pad 1, one output channel) as a 1x1 tap conv + a tap-sum conv.

    A convolution with one output channel runs at a few % of peak in onnxruntime (and oneDNN):
    measured ~17% of the sparse ResNet-101's ONNX time. Per block input ``x``, its mask convs
    ``W_i [1, C, 3, 3]`` become one ``Conv(x, T) -> taps [N, 9m, H, W]`` with ``T[9i + 3ky + kx, c] =
    W_i[0, c, ky, kx]`` (a GEMM with 9m rows) and per mask a 3x3 ``Conv(taps, S_i, b_i)`` (pad 1,
    the mask's stride) whose one-hot kernel picks tap ``(ky, kx)`` at offset ``(ky, kx)``: the same
    sum of the same products (zero padding included: padded taps are 0), in another order.
    ``matmul`` (the sparse-body portable model): the tap GEMM as ``Transpose(x) -> MatMul -> Transpose``
    instead of a 1x1 ``Conv``; the NHWC ``x`` is the one the block's sparse conv1 gathers its rows
    from (onnxruntime cancels the Transpose against the previous block's NHWC output), so the tap
    GEMM needs no NCHWc reorder of the block input. Returns the number of convs rewritten.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}

    def attrs(node):
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, node in enumerate(g.node):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        w = inits.get(node.input[1])
        if w is None or list(w.dims)[0] != 1 or list(w.dims)[2:] != [3, 3] or w.data_type != onnx.TensorProto.FLOAT:
            continue
        a = attrs(node)
        if list(a.get("pads", [0] * 4)) != [1, 1, 1, 1] or a.get("group", 1) != 1 or a.get("auto_pad", b"NOTSET") not in (
                b"NOTSET", "NOTSET") or list(a.get("dilations", [1, 1])) != [1, 1] or int(w.dims[1]) < 16:
            continue
        if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
            continue
        groups.setdefault(node.input[0], []).append(i)
    if not groups:
        return 0
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    for x, idxs in groups.items():
        m = len(idxs)
        ws = [numpy_helper.to_array(inits[g.node[i].input[1]]) for i in idxs]
        c = ws[0].shape[1]
        taps = np.concatenate([w[0].transpose(1, 2, 0).reshape(9, c) for w in ws], 0)  # [9m, C]
        base = g.node[idxs[0]].output[0]
        t_name = f"{base}.mask_taps_weight"
        taps_out = f"{base}.mask_taps"
        if matmul:
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(taps.T, dtype=np.float32), t_name))
            nodes = [
                onnx.helper.make_node("Transpose", [x], [f"{base}.mask_x_nhwc"], perm=[0, 2, 3, 1],
                                      name=f"{base}/mask_x_nhwc"),
                onnx.helper.make_node("MatMul", [f"{base}.mask_x_nhwc", t_name], [f"{taps_out}_nhwc"],
                                      name=f"{base}/mask_taps"),
                onnx.helper.make_node("Transpose", [f"{taps_out}_nhwc"], [taps_out], perm=[0, 3, 1, 2],
                                      name=f"{base}/mask_taps_nchw"),
            ]
        else:
            g.initializer.append(numpy_helper.from_array(
                np.ascontiguousarray(taps[:, :, None, None], dtype=np.float32), t_name))
            nodes = [onnx.helper.make_node("Conv", [x, t_name], [taps_out], name=f"{base}/mask_taps")]
        for j, i in enumerate(idxs):
            node = g.node[i]
            sel = np.zeros((1, 9 * m, 3, 3), np.float32)
            for k in range(9):
                sel[0, 9 * j + k, k // 3, k % 3] = 1.0
            s_name = f"{node.output[0]}.mask_tap_sum"
            g.initializer.append(numpy_helper.from_array(sel, s_name))
            a = attrs(node)
            inputs = [taps_out, s_name] + ([node.input[2]] if len(node.input) > 2 and node.input[2] else [])
            nodes.append(onnx.helper.make_node("Conv", inputs, list(node.output), name=f"{node.name or base}/tap_sum",
                                               pads=[1, 1, 1, 1], strides=list(a.get("strides", [1, 1]))))
            drop.add(i)
        new_nodes[idxs[0]] = nodes
    out = []
    for i, node in enumerate(g.node):
        if i in new_nodes:
            out.extend(new_nodes[i])
        elif i not in drop:
            out.append(node)
    del g.node[:]
    g.node.extend(out)
    used = {n for node in g.node for n in node.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return sum(len(v) for v in groups.values())


def nhwc_residual_tails(model: onnx.ModelProto) -> int:
    """Run each block's tail ``relu(Interpolate(..) [+ bias] + identity)`` in NHWC (sparse bodies).

    Rewritten as ``Transpose(y) [+ bias as [C]] + Transpose(identity) -> Relu -> Transpose back``
    (same values, same order of additions). The sparse bodies work on NHWC rows with NCHW
    boundary Transposes; with the tail in NHWC as well, onnxruntime's transpose optimizer cancels
    the boundary pairs from one block to the next, so a block's output is never transposed as a
    whole (the Transposes that remain feed Convs and fold into their NCHWc reorders).
    Returns the number of tails rewritten.
    """
    g = model.graph
    nodes = list(g.node)
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list[int]] = {}
    for ni, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(ni)
    outputs = {o.name for o in g.output}

    def only(name: str, op: str) -> Optional[int]:
        uses = consumers.get(name, [])
        if name in outputs or len(uses) != 1:
            return None
        node = nodes[uses[0]]
        return uses[0] if node.op_type == op and node.domain in ("", "ai.onnx") else None

    replace: dict[int, list[onnx.NodeProto]] = {}
    added: dict[str, str] = {}
    for node in nodes:
        if node.domain != DOMAIN or node.op_type != INTERP:
            continue
        y = node.output[0]
        first = only(y, "Add")
        if first is None:
            continue
        bias_add, bias, res_add = None, None, first
        consts = [i for i in nodes[first].input if i in inits]
        if len(consts) > 1:
            continue
        if consts:
            b = numpy_helper.to_array(inits[consts[0]])
            if b.ndim < 3 or b.shape[-2:] != (1, 1) or b.size != b.shape[-3]:
                continue
            bias_add, bias = first, consts[0]
            res_add = only(nodes[first].output[0], "Add")
            if res_add is None:
                continue
        prev = nodes[bias_add].output[0] if bias_add is not None else y
        idents = [i for i in nodes[res_add].input if i != prev]
        relu = only(nodes[res_add].output[0], "Relu")
        if len(idents) != 1 or idents[0] in inits or relu is None:
            continue
        ident, out = idents[0], nodes[relu].output[0]
        tag = f"{out}.nhwc"
        new = [onnx.helper.make_node("Transpose", [y], [f"{tag}.y"], perm=[0, 2, 3, 1]),
               onnx.helper.make_node("Transpose", [ident], [f"{tag}.identity"], perm=[0, 2, 3, 1])]
        cur = f"{tag}.y"
        if bias is not None:
            if bias not in added:
                added[bias] = f"{bias}.nhwc"
                b = numpy_helper.to_array(inits[bias])
                g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(b.reshape(-1)), added[bias]))
            new.append(onnx.helper.make_node("Add", [cur, added[bias]], [f"{tag}.biased"]))
            cur = f"{tag}.biased"
        new += [onnx.helper.make_node("Add", [cur, f"{tag}.identity"], [f"{tag}.sum"]),
                onnx.helper.make_node("Relu", [f"{tag}.sum"], [f"{tag}.relu"]),
                onnx.helper.make_node("Transpose", [f"{tag}.relu"], [out], perm=[0, 3, 1, 2])]
        for ni in (first, res_add):
            replace[ni] = []
        replace[relu] = new  # where the tail's last node was: every input is defined by then
    if not replace:
        return 0
    out_nodes: list[onnx.NodeProto] = []
    for ni, node in enumerate(nodes):
        out_nodes.extend(replace.get(ni, [node]))
    del g.node[:]
    g.node.extend(out_nodes)
    used = {n for node in g.node for n in node.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return sum(1 for v in replace.values() if v)
