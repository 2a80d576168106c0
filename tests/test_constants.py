"""The op and plugin names of sai.constants are those the C++ side compiles in (its own copies in
trt_plugins/: the plugin version and namespace in saiPluginCommon.h, each plugin's name as the
``kName`` of its class, which its creator returns), read here from the headers' text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sai import constants

ROOT = Path(__file__).resolve().parents[1]
COMMON = ROOT / "trt_plugins" / "common" / "saiPluginCommon.h"


def _cstring(text: str, name: str) -> str:
    m = re.search(rf"\b{name}\s*=\s*\"([^\"]*)\"\s*;", text)
    assert m, f"{name} not found"
    return m.group(1)


def test_plugin_version_and_namespace_match_the_cpp_header():
    text = COMMON.read_text()
    assert _cstring(text, "kSAI_PLUGIN_VERSION") == constants.PLUGIN_VERSION
    assert _cstring(text, "kSAI_PLUGIN_NAMESPACE") == constants.PLUGIN_NAMESPACE
    assert constants.PLUGIN_ATTRIBUTES == {"plugin_version": "1", "plugin_namespace": "sai"}


@pytest.mark.parametrize("source, op", [
    ("sparseSampleConv/sparseSampleConvPlugin.h", constants.SPARSE_SAMPLE_CONV),
    ("interpolate/interpolatePlugin.h", constants.INTERPOLATE),
])
def test_plugin_names_match_the_creators(source, op):
    assert _cstring((ROOT / "trt_plugins" / source).read_text(), "kName") == op


def test_the_exporter_and_runtime_use_the_same_objects():
    from sai.exporter import functions, translation
    from sai.exporter.export import PRECISIONS, TARGETS
    from sai.runtime.loader import BACKENDS

    assert (functions.DOMAIN, functions.DOMAIN_VERSION) == (constants.DOMAIN, constants.DOMAIN_VERSION) == ("sai", 1)
    assert functions.OP_TYPES == constants.OP_TYPES == ("SparseSampleConv", "Interpolate")
    assert (translation.PLUGIN_VERSION, translation.PLUGIN_NAMESPACE) == ("1", "sai")
    assert PRECISIONS is constants.PRECISIONS and TARGETS is constants.TARGETS and BACKENDS is constants.BACKENDS
    assert functions.BODIES is constants.BODIES


def test_function_bodies_default_to_the_plugin_attributes():
    from sai.exporter import functions

    for fn in functions.all_functions(21, "sparse") + functions.all_functions(21, "dense"):
        defaults = {a.name: a.s.decode() for a in fn.attribute_proto if a.name.startswith("plugin_")}
        assert defaults == constants.PLUGIN_ATTRIBUTES, (fn.name, fn.overload, defaults)
