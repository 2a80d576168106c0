"""Locate the TensorRT plugin library (libsai_trt_plugins.so) that ships inside the package.

`make plugins` builds it (trt_plugins/, CMake) and installs it as ``sai/runtime/lib/``
(``runtime/lib/`` in the source tree). No hard-coded system paths are searched; the environment
variable ``SAI_TRT_PLUGIN_LIBRARY`` may point at another build explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

LIBRARY_NAME = "libsai_trt_plugins.so"
ENV_VAR = "SAI_TRT_PLUGIN_LIBRARY"


def bundled_library_path() -> Path:
    """Where `make plugins` installs the library inside the package (it may not exist yet)."""
    return Path(__file__).resolve().parent / "lib" / LIBRARY_NAME


def find_plugin_library() -> Path | None:
    """The plugin library's path: ``$SAI_TRT_PLUGIN_LIBRARY`` if set and present, else the bundled
    copy, else None (not built: run ``make plugins`` with TensorRT headers)."""
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override)
        return path if path.is_file() else None
    path = bundled_library_path()
    return path if path.is_file() else None
