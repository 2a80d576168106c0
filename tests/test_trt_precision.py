"""TensorRT 10 fp16 builds (weakly typed + FP16 flag): the mask subgraph is pinned to fp32.

A fake network on the CPU: every layer that only feeds input 1 (the mask M) of a sai plugin layer,
directly or through other such layers, gets precision and output types fp32; layers that also feed
anything else (the block input, the network output, a plugin's X) keep their precision; non-float
layers (comparisons) get no constraint. TensorRT 11 needs none of this (strongly typed ONNX).
"""

from __future__ import annotations

import types

from sai.runtime.build import build_plan, mask_subgraph_layers, pin_mask_subgraph_fp32

TRT = types.SimpleNamespace(LayerType=types.SimpleNamespace(PLUGIN_V3="PLUGIN_V3", CONV="CONV", ACT="ACT", ELT="ELT"),
                            float32="f32", float16="f16", bool="bool")


class Tensor:
    def __init__(self, name, dtype="f32"):
        self.name, self.dtype = name, dtype


class Layer:
    def __init__(self, name, type_, inputs, outputs):
        self.name, self.type = name, type_
        self._in, self._out = inputs, outputs
        self.precision = None
        self.output_types = {}

    num_inputs = property(lambda s: len(s._in))
    num_outputs = property(lambda s: len(s._out))

    def get_input(self, k):
        return self._in[k]

    def get_output(self, j):
        return self._out[j]

    def set_output_type(self, j, t):
        self.output_types[j] = t


class Network:
    def __init__(self, layers, outputs):
        self._layers, self._outputs = layers, outputs

    num_layers = property(lambda s: len(s._layers))
    num_outputs = property(lambda s: len(s._outputs))

    def get_layer(self, i):
        return self._layers[i]

    def get_output(self, i):
        return self._outputs[i]


def bottleneck_network():
    """x -> mask conv -> sigmoid -> (>= 0.5, bool) and mul -> M -> SparseSampleConv(x, M, W) -> y;
    a second branch: x -> conv -> act (feeds X of the plugin, not a mask)."""
    T = TRT.LayerType
    x, w = Tensor("x"), Tensor("w")
    logit, p, keep, m = Tensor("logit"), Tensor("p"), Tensor("keep", "bool"), Tensor("m")
    h, a, y = Tensor("h"), Tensor("a"), Tensor("y")
    layers = [
        Layer("mask_conv", T.CONV, [x], [logit]),
        Layer("sigmoid", T.ACT, [logit], [p]),
        Layer("greater", T.ELT, [p], [keep]),
        Layer("mul", T.ELT, [p, keep], [m]),
        Layer("conv", T.CONV, [x], [h]),
        Layer("relu", T.ACT, [h], [a]),
        Layer("ssc", T.PLUGIN_V3, [a, m, w], [y]),
    ]
    return Network(layers, [y])


def test_mask_subgraph_layers_are_those_feeding_only_mask_inputs():
    net = bottleneck_network()
    names = [net.get_layer(i).name for i in mask_subgraph_layers(net, TRT)]
    assert names == ["mask_conv", "sigmoid", "greater", "mul"]


def test_pinning_sets_fp32_on_float_layers_only():
    net = bottleneck_network()
    assert pin_mask_subgraph_fp32(net, TRT) == 3
    by = {net.get_layer(i).name: net.get_layer(i) for i in range(net.num_layers)}
    for name in ("mask_conv", "sigmoid", "mul"):
        assert by[name].precision == "f32" and by[name].output_types == {0: "f32"}
    for name in ("greater", "conv", "relu", "ssc"):
        assert by[name].precision is None and by[name].output_types == {}


def test_a_mask_that_is_also_a_network_output_stays_unconstrained():
    net = bottleneck_network()
    net._outputs.append(net.get_layer(3).get_output(0))  # the mask m exported as an output
    names = [net.get_layer(i).name for i in mask_subgraph_layers(net, TRT)]
    assert "mul" not in names and names == []  # mul's output is an output; upstream layers feed mul


def test_only_tensorrt_10_fp16_pins():
    assert build_plan(10, "fp16", False)["mask_fp32"]
    assert not build_plan(10, "fp32", False)["mask_fp32"]
    assert not build_plan(11, "fp16", False)["mask_fp32"]
