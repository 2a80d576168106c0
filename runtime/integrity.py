"""Integrity of a `sai convert` OUTDIR: the manifest's shape (an object with the fields it should have, of
the right types) and the sha256 of every file it lists, checked before anything is loaded from the folder.

A folder whose files changed since `sai convert` (flipped bytes, another model dropped in, a zeroed or
missing hash) is refused with a message naming the file, and so is a folder holding anything its manifest does
not list (besides manifest.json and sai's output marker ``.sai-output.json``): a file or folder that sai convert
did not write is never loaded beside its output. ``--no-verify`` / ``verify=False`` skips these checks (never
the manifest's shape).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from sai.errors import SaiError
from sai.outputs import MARKER_NAME

MANIFEST_NAME = "manifest.json"
CHUNK = 1 << 20  # hash in 1 MiB chunks: engines and big ONNX files never sit in memory whole
SKIP = "or pass --no-verify (verify=False in sai.runtime.load) to skip the check"
_HEX = re.compile(r"[0-9a-f]{64}")

# top-level field -> expected JSON type (checked where present; absent fields are the readers' business)
FIELDS: dict[str, type] = {"format": str, "created": str, "arch": str, "checkpoint": dict, "export": dict,
                           "shapes": dict, "engine": dict, "files": dict, "versions": dict, "metadata": dict,
                           "fused": dict}
_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "a boolean", type(None): "null"}


def sha256(path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _kind(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def check_manifest(manifest: Any, path: Path) -> dict:
    """``manifest`` (parsed JSON of ``path``) if it is an object whose known fields have the right types;
    SaiError naming the field otherwise."""
    fix = "re-run sai convert to rewrite it"
    if not isinstance(manifest, dict):
        raise SaiError(f"{path} holds {_kind(manifest)}, not a sai convert manifest (a JSON object); {fix}")

    def bad(field: str, want: str, value: Any) -> SaiError:
        return SaiError(f"{path}: field {field!r} must be {want}, got {_kind(value)} {str(value)[:60]!r}; {fix}")

    for key, typ in FIELDS.items():
        if key in manifest and not isinstance(manifest[key], typ):
            raise bad(key, _JSON_NAMES[typ], manifest[key])
    ck = manifest.get("checkpoint") or {}
    for key in ("path", "sha256"):
        if ck.get(key) is not None and not isinstance(ck[key], str):
            raise bad(f"checkpoint.{key}", "a string", ck[key])
    for name, entry in (manifest.get("files") or {}).items():
        if not isinstance(entry, dict):
            raise bad(f"files.{name}", "an object with sha256 and bytes", entry)
        size = entry.get("bytes")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise bad(f"files.{name}.bytes", "a non-negative integer", size)
    for tensor, prof in (manifest.get("shapes") or {}).items():
        if not isinstance(prof, dict):
            raise bad(f"shapes.{tensor}", "an object with min, opt and max", prof)
        for key, dims in prof.items():
            if not (isinstance(dims, list) and dims
                    and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)):
                raise bad(f"shapes.{tensor}.{key}", "a list of positive integers", dims)
    meta = manifest.get("metadata") or {}
    for key in ("sampling", "precision", "arch"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(f"metadata.{key}", "a string", meta[key])
    ex = meta.get("example_input_shape")
    if ex is not None and not (isinstance(ex, list) and len(ex) == 4
                               and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in ex)):
        raise bad("metadata.example_input_shape", "a list of 4 positive integers", ex)
    return manifest


def _check_hash(file: Path, recorded: Any, what: str, manifest_path: Path, digest: Optional[str] = None) -> None:
    if not isinstance(recorded, str) or not _HEX.fullmatch(recorded) or recorded == "0" * 64:
        raise SaiError(f"{manifest_path} records no valid sha256 for {what} (got {str(recorded)[:70]!r}), so "
                       f"{file} cannot be checked; re-run sai convert, {SKIP}")
    if (digest or sha256(file)) != recorded:
        raise SaiError(f"{file} does not match its sha256 in {manifest_path} (changed or replaced since "
                       f"sai convert); re-run sai convert, {SKIP}")


def unlisted_entries(outdir, manifest: dict) -> list[str]:
    """Names of the entries of ``outdir`` that are neither listed in ``manifest["files"]`` nor the manifest or
    sai's output marker (sorted)."""
    files = manifest.get("files") or {}
    with os.scandir(outdir) as it:
        names = sorted(e.name for e in it)
    return [n for n in names if n not in (MANIFEST_NAME, MARKER_NAME) and n not in files]


def verify_outdir(outdir, manifest: dict, uses: Iterable[str] = ()) -> None:
    """Check every file ``manifest`` lists against its size and sha256, that each name in ``uses`` (the
    files about to be read) is listed, and that ``outdir`` holds nothing else (``unlisted_entries``: only
    manifest.json and ``.sai-output.json`` besides). SaiError naming the first file that fails."""
    outdir = Path(outdir)
    mpath = outdir / MANIFEST_NAME
    files = manifest.get("files")
    if not files:
        raise SaiError(f"{mpath} lists no files with their sha256, so {outdir} cannot be checked; "
                       f"re-run sai convert, {SKIP}")
    for name in uses:
        if name not in files:
            raise SaiError(f"{outdir / name} is not listed in {mpath} (not written by sai convert); remove it or "
                           f"re-run sai convert, {SKIP}")
    for name in unlisted_entries(outdir, manifest):
        what = "folder" if (outdir / name).is_dir() and not (outdir / name).is_symlink() else "file"
        raise SaiError(f"{outdir / name} is not listed in {mpath} (a {what} sai convert did not write, in its "
                       f"output folder); move it out of {outdir} or re-run sai convert, {SKIP}")
    for name, entry in files.items():
        file = outdir / name
        if Path(name).name != name or name in ("", ".", ".."):
            raise SaiError(f"{mpath} lists {name!r}, which is not a file name inside {outdir}; re-run sai convert")
        if not file.is_file():
            raise SaiError(f"{file} is listed in {mpath} but missing; re-run sai convert, {SKIP}")
        size = entry.get("bytes")
        if size is not None and file.stat().st_size != size:
            raise SaiError(f"{file} does not match {mpath}: {file.stat().st_size} bytes, the manifest says {size} "
                           f"(changed, truncated or replaced since sai convert); re-run sai convert, {SKIP}")
        _check_hash(file, entry.get("sha256"), name, mpath)


def verify_checkpoint(manifest: dict, checkpoint: Path, outdir, digest: Optional[str] = None) -> None:
    """Check the checkpoint a manifest records (used by the torch backend) against the recorded sha256;
    ``digest``: the file's sha256 where it was already read (``LoadedCheckpoint.sha256``)."""
    ck: Optional[dict] = manifest.get("checkpoint") or {}
    _check_hash(Path(checkpoint), ck.get("sha256"), "its checkpoint", Path(outdir) / MANIFEST_NAME, digest)
