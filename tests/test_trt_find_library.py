"""sai.runtime.plugins.find_plugin_library: the bundled library, the env override, or None."""

from pathlib import Path

from sai.runtime import plugins


def test_bundled_path_is_inside_the_package():
    path = plugins.bundled_library_path()
    assert path.name == "libsai_trt_plugins.so"
    assert path.parent.name == "lib" and Path(plugins.__file__).resolve().parent == path.parent.parent


def test_env_override(monkeypatch, tmp_path):
    lib = tmp_path / "libsai_trt_plugins.so"
    monkeypatch.setenv(plugins.ENV_VAR, str(lib))
    assert plugins.find_plugin_library() is None  # named but missing
    lib.write_bytes(b"\x7fELF")
    assert plugins.find_plugin_library() == lib


def test_bundled_or_none(monkeypatch):
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    found = plugins.find_plugin_library()
    expected = plugins.bundled_library_path()
    assert found == (expected if expected.is_file() else None)
