"""Whole sparse blocks as one ``sai::SparseBlock`` node each, for onnxruntime with libsai_ort_ops.so.

An exported sparse model runs each residual block as five custom nodes (SparseSampleConv ->
Interpolate -> SparseSampleConv [-> SparseSampleConv] -> Interpolate) plus the block tail (bias,
identity, ReLU) and the downsample conv of the identity, each a full-size NCHW pass. With the
library registered, :func:`fuse_sparse_blocks` rewrites each such chain into one node of the
library's ``SparseBlock`` op (the fused NHWC kernel of models/csrc/sai_cpu_blocks.h, the one PyTorch
runs): conv outputs stay compacted rows, Interpolate sums only the active neighbours and writes the
tail in the same pass. Block inputs and outputs are NHWC, with a Transpose back to NCHW where a
value leaves the chain of fused blocks (the transposes between two fused blocks cancel out).

The rewrite is of what ``sai convert`` / ``export_onnx`` writes, in memory, when the session is made;
the model file is not touched. The mask predictors stay as they are (standard ops). A block is left
as it is (its nodes then run one by one on the library's kernels) unless everything matches exactly:
float32 constant weights, groups 1, no dilation, "same" padding, a deformable conv_b only with its
offsets from a SparseSampleConv of the block input at conv_b's mask, the masks
shared as the block's formulas say (docs/design.md 3.4), every intermediate value used once, and a
1x1 downsample Conv (or none). The same values either way (tests/test_ort_fuse.py).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sai.constants import DOMAIN, INTERPOLATE, SPARSE_BLOCK, SPARSE_SAMPLE_CONV

TO_NHWC = [0, 2, 3, 1]
TO_NCHW = [0, 3, 1, 2]
EMPTY = "sai_fuse.empty"  # the float [0] initializer of every absent SparseBlock input


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.g = model.graph
        self.nodes = list(self.g.node)
        self.inits = {t.name: t for t in self.g.initializer}
        self.outputs = {o.name for o in self.g.output}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, node in enumerate(self.nodes):
            for o in node.output:
                self.producer[o] = i
            for name in node.input:
                if name:
                    self.consumers[name].append(i)

    def made_by(self, name: str, op: str, domain: str = "") -> Optional[int]:
        i = self.producer.get(name)
        if i is None:
            return None
        node = self.nodes[i]
        ok_domain = node.domain == domain or (domain == "" and node.domain == "ai.onnx")
        return i if node.op_type == op and ok_domain else None

    def sole_use(self, name: str) -> Optional[int]:
        """The one node using ``name`` (None when it is a graph output or used elsewhere too)."""
        uses = self.consumers.get(name, [])
        return uses[0] if name not in self.outputs and len(uses) == 1 else None

    def weight(self, name: str, rank: Optional[int] = None) -> Optional[np.ndarray]:
        t = self.inits.get(name)
        if t is None or t.data_type != onnx.TensorProto.FLOAT:
            return None
        a = numpy_helper.to_array(t)
        return a if rank is None or a.ndim == rank else None


def _conv_ok(gr: _Graph, node: onnx.NodeProto, deformable: bool = False) -> Optional[dict]:
    """A SparseSampleConv the block kernel runs: its kernel k, stride, activation, weight, bias, channels
    and (``deformable``: allowed) offset input, or None."""
    if node.domain != DOMAIN or node.op_type != SPARSE_SAMPLE_CONV:
        return None
    offset = node.input[4] if len(node.input) > 4 and node.input[4] else None
    if offset is not None and not deformable:
        return None
    w = gr.weight(node.input[2], 4)
    if w is None or w.shape[2] != w.shape[3] or w.shape[2] % 2 == 0:
        return None
    a = _attrs(node)
    k = w.shape[2]
    strides = list(a.get("strides", [1, 1]))
    if a.get("group", 1) != 1 or list(a.get("dilations", [1, 1])) != [1, 1] or strides[0] != strides[1]:
        return None
    if list(a.get("pads", [0, 0, 0, 0])) != [(k - 1) // 2] * 4:
        return None
    bias = node.input[3] if len(node.input) > 3 and node.input[3] else None
    if bias is not None and (gr.weight(bias) is None or gr.weight(bias).size != w.shape[0]):
        return None
    act = a.get("activation", b"none")
    act = act.decode() if isinstance(act, bytes) else act
    return {"k": k, "stride": strides[0], "act": act, "weight": node.input[2], "bias": bias, "cout": w.shape[0],
            "cin": w.shape[1], "offset": offset, "deform_groups": int(a.get("deform_groups", 1))}


def _offset_conv(gr: _Graph, conv_b: dict, x: str, m2: str) -> Optional[dict]:
    """The SparseSampleConv of x at m2 that makes conv_b's offsets (2 * deform_groups * kb * kb channels, no
    activation, used only there), or None."""
    i = gr.made_by(conv_b["offset"], SPARSE_SAMPLE_CONV, DOMAIN)
    if i is None or gr.sole_use(conv_b["offset"]) is None:
        return None
    node = gr.nodes[i]
    co = _conv_ok(gr, node)
    if co is None or node.input[0] != x or node.input[1] != m2 or co["act"] != "none":
        return None
    if co["cout"] != 2 * conv_b["deform_groups"] * conv_b["k"] ** 2:
        return None
    return dict(co, node=i)


def _interp_ok(node: onnx.NodeProto) -> Optional[dict]:
    if node.domain != DOMAIN or node.op_type != INTERPOLATE:
        return None
    a = _attrs(node)
    return {"sigma": float(a.get("sigma", 1.0)), "k": int(a.get("kernel_size", 7)), "eps": float(a.get("eps", 1e-5))}


def _tail(gr: _Graph, y: str) -> Optional[dict]:
    """The block tail after the last Interpolate's output ``y``: [Transpose to NHWC] [+ bias] + identity,
    ReLU [, Transpose back]. {"out", "identity", "bias", "nodes"} or None."""
    cur, nhwc, bias, identity, nodes = y, False, None, None, []
    while True:
        i = gr.sole_use(cur)
        if i is None:
            return None
        node = gr.nodes[i]
        if node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Transpose" and not nhwc and identity is None and bias is None and list(
                _attrs(node).get("perm", [])) == TO_NHWC:
            nhwc = True
        elif node.op_type == "Add" and identity is None:
            other = [n for n in node.input if n != cur]
            if len(other) != 1:
                return None
            if other[0] in gr.inits:
                if bias is not None:
                    return None
                bias = other[0]
            elif nhwc:
                t = gr.made_by(other[0], "Transpose")
                if t is None or list(_attrs(gr.nodes[t]).get("perm", [])) != TO_NHWC or gr.sole_use(other[0]) != i:
                    return None
                identity = gr.nodes[t].input[0]
                nodes.append(t)
            else:
                identity = other[0]
        elif node.op_type == "Relu" and identity is not None:
            nodes.append(i)
            out = node.output[0]
            if nhwc:
                j = gr.sole_use(out)
                if j is None or gr.nodes[j].op_type != "Transpose" or list(_attrs(gr.nodes[j]).get("perm", [])) != TO_NCHW:
                    return None
                nodes.append(j)
                out = gr.nodes[j].output[0]
            return {"out": out, "identity": identity, "bias": bias, "nodes": nodes}
        else:
            return None
        nodes.append(i)
        cur = node.output[0]


def _downsample(gr: _Graph, identity: str, x: str, cout: int, cin: int) -> Optional[dict]:
    """{"weight", "bias", "stride", "node"} of the 1x1 Conv(x) that makes ``identity``; {} when
    identity is x; None otherwise."""
    if identity == x:
        return {}
    i = gr.made_by(identity, "Conv")
    if i is None or gr.nodes[i].input[0] != x or gr.sole_use(identity) is None:
        return None
    node = gr.nodes[i]
    w = gr.weight(node.input[1], 4)
    if w is None or list(w.shape) != [cout, cin, 1, 1]:
        return None
    a = _attrs(node)
    s = list(a.get("strides", [1, 1]))
    if s[0] != s[1] or a.get("group", 1) != 1 or any(a.get("pads", [0] * 4)) or list(a.get("dilations", [1, 1])) != [1, 1]:
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and (gr.weight(bias) is None or gr.weight(bias).size != cout):
        return None
    return {"weight": node.input[1], "bias": bias, "stride": s[0], "node": i}


def _match(gr: _Graph, i2: int) -> Optional[dict]:
    """The block whose last Interpolate is node ``i2``, or None."""
    interp2 = _interp_ok(gr.nodes[i2])
    if interp2 is None:
        return None
    m2 = gr.nodes[i2].input[1]

    def chain(name: str, op: str):
        """(index, node) of the sole-use producer of ``name`` with op ``op`` (domain sai)."""
        j = gr.made_by(name, op, DOMAIN)
        if j is None or gr.sole_use(name) is None:
            return None, None
        return j, gr.nodes[j]

    jl, last = chain(gr.nodes[i2].input[0], SPARSE_SAMPLE_CONV)
    if last is None or last.input[1] != m2:
        return None
    cl = _conv_ok(gr, last, deformable=True)  # conv_b of a BasicBlock may be deformable (checked below)
    if cl is None:
        return None
    jb, before = chain(last.input[0], SPARSE_SAMPLE_CONV)
    if before is not None and before.input[1] == m2:  # Bottleneck: conv_b -> conv_c (1x1) on the same mask
        cb, cc, ib = _conv_ok(gr, before, deformable=True), cl, [jb, jl]
        if (cb is None or cc["offset"] is not None or cc["k"] != 1 or cc["stride"] != 1 or cc["act"] != "none"
                or cb["act"] not in ("relu", "none")):
            return None
        bias_c = gr.weight(cc["bias"]) if cc["bias"] else None
        if bias_c is not None and np.any(bias_c):
            return None  # conv_c's own bias is the tail's (the export passes zeros)
        conv_b_node = before
    else:
        cb, cc, ib = _conv_ok(gr, last, deformable=True), None, [jl]
        if cb is None or cb["act"] not in ("relu", "none"):
            return None
        conv_b_node = last
    ji1, interp1_node = chain(conv_b_node.input[0], INTERPOLATE)
    if interp1_node is None:
        return None
    interp1 = _interp_ok(interp1_node)
    m1 = interp1_node.input[1]
    if interp1 is None or interp1["k"] != interp2["k"] or interp1["eps"] != interp2["eps"]:
        return None
    ja, conv_a_node = chain(interp1_node.input[0], SPARSE_SAMPLE_CONV)
    if conv_a_node is None or conv_a_node.input[1] != m1:
        return None
    ca = _conv_ok(gr, conv_a_node)
    if ca is None or ca["act"] != "relu" or cb["cin"] != ca["cout"]:
        return None
    if cc is not None and cc["cin"] != cb["cout"]:
        return None
    x = conv_a_node.input[0]
    off = None
    if cb["offset"] is not None:
        off = _offset_conv(gr, cb, x, m2)
        if off is None:
            return None
    tail = _tail(gr, gr.nodes[i2].output[0])
    if tail is None:
        return None
    cout = cc["cout"] if cc is not None else cb["cout"]
    if tail["bias"] is not None and gr.weight(tail["bias"]) is None or (
            tail["bias"] is not None and gr.weight(tail["bias"]).size != cout):
        return None
    down = _downsample(gr, tail["identity"], x, cout, ca["cin"])
    if down is None:
        return None
    drop = [ja, ji1, *ib, i2, *tail["nodes"]] + ([down["node"]] if down else []) + ([off["node"]] if off else [])
    return {"x": x, "m1": m1, "m2": m2, "a": ca, "b": cb, "c": cc, "interp1": interp1, "interp2": interp2,
            "tail": tail, "down": down, "offset": off, "drop": drop, "at": max(drop)}


def fuse_sparse_blocks(model: onnx.ModelProto) -> int:
    """Rewrite every matching sparse block of ``model`` (in place) into one ``sai::SparseBlock`` node;
    returns how many. See the module docstring."""
    gr = _Graph(model)
    blocks = []
    taken: set[int] = set()
    for i, node in enumerate(gr.nodes):
        if node.domain == DOMAIN and node.op_type == INTERPOLATE:
            b = _match(gr, i)
            if b is not None and not taken.intersection(b["drop"]):
                blocks.append(b)
                taken.update(b["drop"])
    if not blocks:
        return 0
    # where each NCHW value came from an NHWC one by a Transpose: the fused blocks read that directly
    nhwc_of: dict[str, str] = {}
    for i, node in enumerate(gr.nodes):
        perm = list(_attrs(node).get("perm", [])) if node.op_type == "Transpose" else None
        if perm == TO_NCHW:
            nhwc_of[node.output[0]] = node.input[0]
        elif perm == TO_NHWC and i not in taken:  # an NHWC copy the graph makes anyway (the mask taps')
            nhwc_of.setdefault(node.input[0], node.output[0])
    for b in blocks:
        nhwc_of[b["tail"]["out"]] = f"{b['tail']['out']}.sai_nhwc"
    insert: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    made_nhwc: set[str] = set()
    for b in blocks:
        x, tail = b["x"], b["tail"]
        x_nhwc = nhwc_of.get(x)
        new = []
        if x_nhwc is None:
            x_nhwc = f"{x}.sai_nhwc"
            if x_nhwc not in made_nhwc:
                new.append(helper.make_node("Transpose", [x], [x_nhwc], perm=TO_NHWC, name=f"{x_nhwc}/transpose"))
                made_nhwc.add(x_nhwc)
        c, down, off = b["c"], b["down"], b["offset"] or {}
        inputs = [x_nhwc, b["m1"], b["m2"], b["a"]["weight"], b["a"]["bias"] or EMPTY, b["b"]["weight"],
                  b["b"]["bias"] or EMPTY, c["weight"] if c else EMPTY, tail["bias"] or EMPTY,
                  down.get("weight") or EMPTY, down.get("bias") or EMPTY, off.get("weight") or EMPTY,
                  off.get("bias") or EMPTY]
        out_nhwc = nhwc_of[tail["out"]]
        new.append(helper.make_node(
            SPARSE_BLOCK, inputs, [out_nhwc], name=f"{tail['out']}/sai_block", domain=DOMAIN,
            stride_a=int(b["a"]["stride"]), stride_b=int(b["b"]["stride"]), relu_b=int(b["b"]["act"] == "relu"),
            down_stride=int(down.get("stride", 1)), offset_stride=int(off.get("stride", 1)),
            sigma1=b["interp1"]["sigma"], sigma2=b["interp2"]["sigma"],
            kernel_size=b["interp2"]["k"], eps=b["interp2"]["eps"]))
        new.append(helper.make_node("Transpose", [out_nhwc], [tail["out"]], perm=TO_NCHW,
                                    name=f"{tail['out']}/sai_nchw"))
        insert[b["at"]] = new
    out_nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(gr.nodes):
        if i in insert:
            out_nodes.extend(insert[i])
        elif i not in taken:
            out_nodes.append(node)
    _cancel_transposes(out_nodes, gr.outputs)
    out_nodes = _drop_dead(out_nodes, gr.outputs)
    del model.graph.node[:]
    model.graph.node.extend(out_nodes)
    if EMPTY not in gr.inits:
        model.graph.initializer.append(numpy_helper.from_array(np.zeros((0,), np.float32), EMPTY))
    used = {n for node in model.graph.node for n in node.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    names = {o for node in model.graph.node for o in node.output} | {i.name for i in model.graph.input}
    vi = [v for v in model.graph.value_info if v.name in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(vi)
    return len(blocks)


def _cancel_transposes(nodes: list[onnx.NodeProto], outputs: set[str]) -> None:
    """Transpose(Transpose(v, p), p^-1) -> v for every use (graph outputs keep their Transpose)."""
    producer = {o: n for n in nodes for o in n.output}
    rename: dict[str, str] = {}
    for node in nodes:
        if node.op_type != "Transpose" or node.output[0] in outputs:
            continue
        src = producer.get(node.input[0])
        if src is None or src.op_type != "Transpose":
            continue
        p, q = list(_attrs(src).get("perm", [])), list(_attrs(node).get("perm", []))
        if len(p) == len(q) and p and [p[k] for k in q] == list(range(len(p))):
            rename[node.output[0]] = src.input[0]
    for node in nodes:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]


def _drop_dead(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    while True:
        used = {n for node in nodes for n in node.input} | outputs
        keep = [n for n in nodes if any(o in used for o in n.output)]
        if len(keep) == len(nodes):
            return keep
        nodes = keep
