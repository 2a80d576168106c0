"""onnxscript to ``FunctionProto``: the ``sai`` opset, the private helper opset, and helper inlining.

The bodies are ``@script`` functions of the ``sai`` opset. Fragments that several bodies share are
``@script`` functions of the private ``HELPERS`` opset with tensor inputs only (a body passes them
what it read from its attributes), so ``function_proto`` can substitute their nodes into the
calling body: a FunctionProto may not call functions that the model does not carry, and every body
must stay one flat list of standard ops (the onnx-native target inlines it into the graph).
"""

from __future__ import annotations

import numpy as np
from onnx import FunctionProto, NodeProto, helper, numpy_helper
from onnxscript import values

from sai.constants import DOMAIN, DOMAIN_VERSION

SAI = values.Opset(DOMAIN, DOMAIN_VERSION)
HELPERS = values.Opset("sai.private", 1)  # inlined by function_proto; never in a model


def _inline(fn: FunctionProto, helpers: dict[str, FunctionProto], calls: list[int]) -> list[NodeProto]:
    """``fn``'s nodes with every ``HELPERS`` call replaced by the helper's nodes, the helper's own
    values renamed ``<helper>_<call number>/<name>``."""
    out: list[NodeProto] = []
    for node in fn.node:
        if node.domain != HELPERS.domain:
            out.append(node)
            continue
        callee = helpers[node.op_type]
        prefix = f"{callee.name.lstrip('_')}_{len(calls)}/"
        calls.append(1)
        names = dict(zip(callee.input, node.input, strict=True))
        names.update(zip(callee.output, node.output, strict=True))
        for inner in _inline(callee, helpers, calls):
            n = NodeProto()
            n.CopyFrom(inner)
            n.input[:] = [names.get(v, prefix + v) if v else v for v in n.input]
            n.output[:] = [names.get(v, prefix + v) for v in n.output]
            n.name = prefix + n.name if n.name else ""
            out.append(n)
    return out


_LITERALS = {  # Constant's literal attributes -> the dtype of the tensor that replaces them
    "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64,
}


def typed_constants(nodes: list[NodeProto]) -> None:
    """Rewrite every ``Constant(value_float|value_floats|value_int|value_ints=literal)`` as
    ``Constant(value=<float32|int64 tensor>)`` in place, same value and dtype (0-d for the scalars).

    Tools that rebuild a graph (onnx-graphsurgeon: ``polygraphy surgeon sanitize``) re-emit a literal
    ``value_float`` as a double tensor, which breaks every float32 op it feeds; a typed tensor keeps
    its dtype through them. Attribute references (``value_float=sigma`` read from the calling node)
    carry no literal and are left as they are."""
    for n in nodes:
        if n.op_type != "Constant" or n.domain not in ("", "ai.onnx") or len(n.attribute) != 1:
            continue
        a = n.attribute[0]
        if a.ref_attr_name or a.name not in _LITERALS:
            continue
        value = helper.get_attribute_value(a)
        t = numpy_helper.from_array(np.asarray(value, dtype=_LITERALS[a.name]), name="")
        del n.attribute[:]
        n.attribute.append(helper.make_attribute("value", t))


def function_proto(body, helpers, opset: int, *, name: str, overload: str = "",
                   doc: str = "") -> FunctionProto:
    """``body`` (an ``@script`` function of ``SAI``) as the FunctionProto ``name``/``overload`` with
    the ``helpers`` (``@script`` functions of ``HELPERS``) inlined, importing the standard opset
    ``opset`` (the bodies use ops whose semantics hold from ``MIN_OPSET`` on)."""
    fn = body.to_function_proto()
    protos = {h.name: h.to_function_proto() for h in helpers}
    nodes = _inline(fn, protos, [])
    outputs = [v for n in nodes for v in n.output]
    if len(outputs) != len(set(outputs)):
        raise AssertionError(f"{name}: a value is assigned twice after inlining the helpers")
    if any(n.domain not in ("", "ai.onnx") for n in nodes):
        raise AssertionError(f"{name}: a call to an undeclared helper is left in the body")
    typed_constants(nodes)
    for i, n in enumerate(nodes):
        n.name = f"n{i}"
    return helper.make_function(
        DOMAIN, name, list(fn.input), list(fn.output), nodes, [helper.make_opsetid("", opset)],
        attributes=list(fn.attribute), attribute_protos=list(fn.attribute_proto), doc_string=doc,
        overload=overload or None,
    )
