"""Output paths: checked before the slow work, written atomically, with temporary folders that leave
nothing behind.

- ``check_output_file`` / ``check_output_dir``: refuse a path that cannot be written (a folder where a
  file goes, a file where a folder goes, a parent that is a file, a read-only or foreign folder, a file sai
  did not write) with a message naming the path and the fix, before an export or a validation spends minutes.
- ``file_owner_reason``: the proof that an existing file is an earlier single-file output of sai (an ONNX
  whose producer is sai-deploy with sai's metadata, a JSON carrying ``json_tag(kind)``); anything else is
  overwritten only with ``--force``.
- ``MARKER_NAME`` (``.sai-output.json``): the proof that a folder is an earlier output of a sai command.
  ``publish_dir`` writes it into every folder it publishes, listing each file (size, sha256) and folder it
  owns; ``foreign_reason`` accepts an existing folder for replacement only when it is empty or every entry
  in it is one its marker lists, unchanged (or an older version's output that a verb's ``legacy`` check
  recognises file by file). Anything else is refused unless the user passes ``--force``.
- ``write_atomic`` / ``atomic_path``: the one way sai publishes a file: a temporary sibling, flushed to
  the disk (fsync), renamed into place, the folder flushed; on any error (Ctrl-C included) the
  temporary is removed and the old file kept; an OSError (ENOSPC, EACCES, ...) becomes a SaiError
  naming the file. ``fsync_path`` flushes a file or a folder.
- ``owned_tempdir`` / ``tempdir``: temporary folders whose name records the owner (``<pid>@<host>``), so
  the next run removes those of processes that died (kill -9) without touching live ones.
- ``os_error_message``: one line for an OSError (what failed, on which path, what to do).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Optional, Union

from sai.errors import SaiError

PathLike = Union[str, os.PathLike]

_FIX = {
    errno.ENOSPC: "the filesystem is full: free space there or choose another path",
    errno.EDQUOT: "the disk quota is exhausted: free space there or choose another path",
    errno.EROFS: "the filesystem is read-only: choose a path on a writable one",
    errno.EACCES: "choose a folder you can write to (or fix its permissions)",
    errno.EPERM: "choose a folder you can write to (it may be immutable or belong to another user)",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder: give a file path",
    errno.ENOENT: "the folder does not exist or does not accept new files: choose another path",
    errno.EEXIST: "a file of that name is in the way: choose another path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.EBUSY: "the path is in use (a mount point or the current folder?): choose another path",
    errno.EXDEV: "the temporary folder is on another filesystem: choose another path",
}


def os_error_message(exc: OSError, path: Optional[PathLike] = None, action: str = "cannot write") -> str:
    """``"<action> <path>: <strerror>; <fix>"`` for an OSError (its own filename if ``path`` is None)."""
    where = path if path is not None else (exc.filename or "")
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = _FIX.get(exc.errno or 0, "check the path and try again")
    where = f" {where}" if where != "" else ""
    return f"{action}{where}: {reason}; {fix}"


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path, flag: str) -> None:
    """Create and remove a file in ``folder``: the only test that is right for root, ACLs, read-only
    mounts, /proc and /sys alike."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".sai-probe-", dir=folder)
    except OSError as exc:
        raise SaiError(os_error_message(exc, folder, f"{flag}: cannot create files in")) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _check_parent(parent: Path, flag: str, create: bool) -> None:
    if parent.is_dir():
        return
    block = _nearest_existing(parent)
    if block.exists() and not block.is_dir():
        raise SaiError(f"{flag} {parent}: {block} is a file, not a folder; choose another path")
    if not create:
        raise SaiError(f"output directory {parent} does not exist; create it or choose another {flag} path")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaiError(os_error_message(exc, parent, f"{flag}: cannot create the folder")) from None


def check_output_file(path: PathLike, flag: str = "-o", *, create_parent: bool = False,
                      kind: Optional[str] = None, force: bool = False) -> Path:
    """Check that a file can be written at ``path`` (atomically: a temporary beside it, then a rename).

    SaiError when ``path`` is a folder, its parent is missing (unless ``create_parent``) or a file, or
    the parent does not accept new files. With ``kind`` (what the command writes there: ``ONNX_KIND`` or a
    JSON kind, see ``file_owner_reason``) an existing entry at ``path`` is overwritten only when it is
    provably an earlier output of that kind, or with ``force`` (a line on stderr says so); else SaiError
    naming ``--force`` and another path. Returns the path (absolute)."""
    p = Path(path).expanduser().absolute()
    if p.is_dir():
        raise SaiError(f"{flag} {path} is a folder; give a file path (e.g. {Path(path) / 'model.onnx'})")
    if p.name in ("", ".", ".."):
        raise SaiError(f"{flag} {path} is not a file name; give a file path")
    _check_parent(p.parent, flag, create_parent)
    if kind is not None and os.path.lexists(p):
        reason = file_owner_reason(p, kind)
        if reason is not None:
            if not force:
                raise SaiError(file_refusal_message(p, flag, kind, reason))
            with contextlib.suppress(Exception):
                print(f"{flag} --force: {p} will be overwritten ({reason})", file=sys.stderr, flush=True)
    _probe_writable(p.parent, flag)
    return p


# ----------------------------------------------------------------------------------------------
# output files: whose are they?
# ----------------------------------------------------------------------------------------------
#
# The rule for a single-file output (``sai export -o``, ``validate -o``, ``bench-ops -o``): an existing
# file at the path is overwritten only when its own content proves that sai wrote it as that kind of output:
#
# - ``ONNX_KIND``: an ONNX ModelProto whose ``producer_name`` is ``sai-deploy`` and whose ``metadata_props``
#   hold ``sai.producer`` (a JSON object naming the sai version), read from the file's top-level protobuf
#   fields (the graph is skipped, not parsed);
# - any other kind ``K`` (JSON outputs): a JSON object whose ``"sai_output"`` is ``"K/<version>"``
#   (``json_tag(K)`` is what the writer puts in).
#
# A symbolic link, a special file, an empty file and a file that a folder output's ``.sai-output.json``
# lists (a convert OUTDIR's model.onnx: overwriting it would corrupt that output) are never sai's to
# overwrite. Anything else is refused before the work unless the user passes ``--force``.

ONNX_KIND = "onnx"
ONNX_PRODUCER = "sai-deploy"  # ModelProto.producer_name of every model sai writes
FILE_TAG = "sai_output"
FILE_TAG_VERSION = 1
FILE_MAX_BYTES = 64 << 20  # a JSON output of sai is far smaller; a bigger file is not read to find out
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}  # ModelProto: wire types
_ONNX_MAX_FIELDS = 1 << 16


def json_tag(kind: str) -> dict:
    """The top-level entry a JSON output of ``kind`` carries so that a later run can prove it is sai's."""
    return {FILE_TAG: f"{kind}/{FILE_TAG_VERSION}"}


def _varint(f) -> Optional[int]:
    shift = value = 0
    while shift < 64:
        b = f.read(1)
        if not b:
            return None
        value |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return value
        shift += 7
    return None


def onnx_header(path: PathLike) -> Optional[dict]:
    """``{"producer_name", "metadata"}`` of an ONNX file, from its top-level protobuf fields (the graph,
    functions and other large fields are skipped by their length, never parsed); None when the bytes are
    not a ModelProto (an unknown field, a wrong wire type, a length past the end, no ir_version)."""
    out: dict = {"producer_name": None, "metadata": {}}
    seen_ir = False
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            for _ in range(_ONNX_MAX_FIELDS):
                key = _varint(f)
                if key is None:
                    return out if seen_ir and f.tell() == size else None
                field, wire = key >> 3, key & 7
                if _ONNX_FIELDS.get(field) != wire:
                    return None
                value = _varint(f)
                if value is None:
                    return None
                if wire == 0:
                    seen_ir = seen_ir or field == 1
                    continue
                if value > size - f.tell():
                    return None
                if field == 2:
                    out["producer_name"] = f.read(value).decode("utf-8")
                elif field == 14:
                    entry = _string_pairs(f.read(value))
                    if entry is None:
                        return None
                    out["metadata"][entry[0]] = entry[1]
                else:
                    f.seek(value, os.SEEK_CUR)
    except (OSError, UnicodeDecodeError):
        return None
    return None  # more top-level fields than any model has


def _string_pairs(data: bytes) -> Optional[tuple[str, str]]:
    """(key, value) of a serialized StringStringEntryProto, or None."""
    import io

    f, got = io.BytesIO(data), {1: "", 2: ""}
    while f.tell() < len(data):
        key = _varint(f)
        if key is None or key & 7 != 2 or key >> 3 not in got:
            return None
        n = _varint(f)
        if n is None or n > len(data) - f.tell():
            return None
        got[key >> 3] = f.read(n).decode("utf-8")
    return got[1], got[2]


def _sai_onnx_reason(path: Path) -> Optional[str]:
    head = onnx_header(path)
    if head is None:
        return "it is not an ONNX model"
    if head["producer_name"] != ONNX_PRODUCER:
        return f"it is an ONNX model of {str(head['producer_name'] or 'an unnamed producer')[:40]!r}, not of sai"
    try:
        producer = json.loads(head["metadata"].get("sai.producer", ""))
    except ValueError:
        producer = None
    if not isinstance(producer, dict) or "sai" not in producer:
        return "it is an ONNX model without sai's metadata (sai.producer)"
    return None


def _sai_json_reason(path: Path, kind: str) -> Optional[str]:
    if os.path.getsize(path) > FILE_MAX_BYTES:
        return "it is too large to be sai's"
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "it is not a JSON file"
    tag = doc.get(FILE_TAG) if isinstance(doc, dict) else None
    if not isinstance(tag, str) or tag.rpartition("/")[0] != kind:
        return f"it is not a {kind} JSON of sai (no \"{FILE_TAG}\": \"{kind}/...\" in it)"
    return None


def _listed_by_marker(p: Path) -> Optional[str]:
    """The command whose output folder (an ancestor of ``p`` with a marker) lists ``p``, or None."""
    for folder in p.parents:
        marker = folder / MARKER_NAME
        try:
            st = os.lstat(marker)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size > MARKER_MAX_BYTES:
            continue
        try:
            doc = json.loads(marker.read_bytes())
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            continue
        if (isinstance(doc, dict) and doc.get("format") == MARKER_FORMAT and isinstance(doc.get("entries"), dict)
                and p.relative_to(folder).as_posix() in doc["entries"]):
            return f"{str(doc.get('command'))[:40]} output in {folder}"
    return None


def file_owner_reason(path: PathLike, kind: str) -> Optional[str]:
    """None when nothing is at ``path`` or it is provably an earlier sai output of ``kind`` (the rule above);
    otherwise a short reason why it is not sai's to overwrite."""
    p = Path(path).expanduser().absolute()
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link, which sai never writes"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_size == 0:
        return "it is an empty file, which sai never writes"
    owner = _listed_by_marker(p)
    if owner is not None:
        return f"it is part of the {owner} (its {MARKER_NAME} lists it)"
    try:
        return _sai_onnx_reason(p) if kind == ONNX_KIND else _sai_json_reason(p, kind)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"


def file_refusal_message(p: Path, flag: str, kind: str, reason: str) -> str:
    """The one line for an existing file that is not an earlier sai output of ``kind``."""
    what = "ONNX model written by sai" if kind == ONNX_KIND else f"{kind} output of sai"
    return (f"{flag} {p} exists and is not an earlier {what} ({reason}); choose another path, or pass --force "
            "to overwrite it")


# ----------------------------------------------------------------------------------------------
# output folders: whose are they?
# ----------------------------------------------------------------------------------------------

MARKER_NAME = ".sai-output.json"
MARKER_FORMAT = "sai-output/1"
MARKER_MAX_BYTES = 16 << 20
FORCE_HELP = ("replace the output folder even if it holds files sai did not write: everything in it is deleted "
              "(symbolic links are removed, never followed). Without --force such a folder is refused")
Legacy = Callable[[Path], Optional[str]]


def _walk(folder: Path) -> Iterator[tuple[str, os.DirEntry]]:
    """(relative path with '/', entry) of everything under ``folder``, never following symbolic links."""
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(folder / rel if rel else folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            yield r, e
            if e.is_dir(follow_symlinks=False):
                stack.append(r)


def _sha256(path: PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_marker(folder: PathLike, what: str, names: Optional[list[str]] = None) -> dict:
    """Write ``folder/.sai-output.json``: the format tag, the command ``what`` and every file (size, sha256)
    and folder under ``folder`` it owns: all of them, or only ``names`` (top-level entries, for commands
    that write into a folder holding other files). A symbolic link or special file is never listed."""
    from sai import __version__

    folder = Path(folder)
    entries: dict[str, dict] = {}
    for rel, e in _walk(folder):
        top = rel.split("/", 1)[0]
        if rel == MARKER_NAME or (names is not None and top not in names):
            continue
        if e.is_dir(follow_symlinks=False):
            entries[rel] = {"type": "dir"}
        elif e.is_file(follow_symlinks=False):
            entries[rel] = {"type": "file", "bytes": e.stat(follow_symlinks=False).st_size,
                            "sha256": _sha256(e.path)}
    marker = {"format": MARKER_FORMAT, "command": what, "sai_version": __version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "entries": entries,
              "note": "written by sai: the files and folders listed here are sai's output and are replaced by its "
                      "next run into this folder; anything else here makes sai refuse the folder"}
    write_atomic(folder / MARKER_NAME, json.dumps(marker, indent=1, sort_keys=True) + "\n")
    return marker


def _read_marker(folder: Path, what: str) -> tuple[Optional[dict], str]:
    """(the marker's entries, "") when ``folder`` holds a valid marker of ``what``, else (None, why not)."""
    path = folder / MARKER_NAME
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"its {MARKER_NAME} cannot be read ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return None, f"its {MARKER_NAME} is not a plain file"
    if st.st_size > MARKER_MAX_BYTES:
        return None, f"its {MARKER_NAME} is too large to be sai's"
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return None, f"its {MARKER_NAME} does not parse"
    if not isinstance(doc, dict) or doc.get("format") != MARKER_FORMAT or not isinstance(doc.get("entries"), dict):
        return None, f"its {MARKER_NAME} is not a sai output marker ({MARKER_FORMAT})"
    if doc.get("command") != what:
        return None, f"its {MARKER_NAME} says it was written by {str(doc.get('command'))[:60]!r}, not {what}"
    return doc["entries"], ""


def _matches(entry: object, e: os.DirEntry) -> Optional[str]:
    """None when the disk entry ``e`` is what the marker ``entry`` records, else what differs."""
    if not isinstance(entry, dict):
        return "is not recorded properly"
    if e.is_symlink():
        return "is a symbolic link, which sai never writes"
    if entry.get("type") == "dir":
        return None if e.is_dir(follow_symlinks=False) else "is not the folder sai wrote"
    if entry.get("type") != "file" or not e.is_file(follow_symlinks=False):
        return "is not the file sai wrote"
    if e.stat(follow_symlinks=False).st_size != entry.get("bytes"):
        return "changed since sai wrote it (its size differs)"
    if _sha256(e.path) != entry.get("sha256"):
        return "changed since sai wrote it (its sha256 differs)"
    return None


def foreign_reason(folder: PathLike, what: str, legacy: Optional[Legacy] = None) -> Optional[str]:
    """None when ``folder`` does not exist, is empty or is proven an earlier output of ``what``: its marker
    lists every entry in it, unchanged (a listed entry that is missing is fine), or, without a marker,
    ``legacy(folder)`` (an older sai's output recognised file by file) returns None. Otherwise a short
    reason naming the first entry that is not sai's."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    entries, why = _read_marker(folder, what)
    if entries is None:
        if why:
            return why
        if legacy is None:
            return f"it holds no {MARKER_NAME} of {what}"
        return legacy(folder)
    for rel, e in _walk(folder):
        if rel == MARKER_NAME:
            continue
        if rel not in entries:
            return f"it holds {rel!s}, which {what} did not write"
        diff = _matches(entries[rel], e)
        if diff:
            return f"{rel} {diff}"
    return None


def names_reason(folder: PathLike, what: str, names: Iterable[str], legacy: Optional[Legacy] = None
                 ) -> Optional[str]:
    """For a command that writes a few files of fixed ``names`` (and its marker) into a folder that may hold
    others (they are never touched): None when every one of ``names`` present in ``folder`` is a file its
    marker of ``what`` lists, unchanged (or, without a marker, ``legacy(folder)`` is None) and any marker there
    is ``what``'s; else why not."""
    folder = Path(folder)
    present = [n for n in names if os.path.lexists(folder / n)]
    entries, why = _read_marker(folder, what)
    if why:  # a marker that is not ``what``'s: it is not ours to overwrite either
        return why
    if not present:
        return None
    if entries is None:
        if legacy is None:
            return f"it holds {present[0]} and no {MARKER_NAME} of {what}"
        return legacy(folder)
    for n in present:
        if n not in entries:
            return f"it holds {n}, which {what} did not write"
        with os.scandir(folder) as it:
            e = next(x for x in it if x.name == n)
        diff = _matches(entries[n], e)
        if diff:
            return f"{n} {diff}"
    return None


def _force_refusal(p: Path, protect: Iterable[PathLike]) -> Optional[str]:
    """Why even ``--force`` must not replace ``p``, or None."""
    home = Path.home().resolve()
    cwd = Path.cwd().resolve()
    if p == Path(p.anchor) or os.path.ismount(p):
        return "it is a filesystem root or mount point"
    if p == home or home.is_relative_to(p):
        return "it is your home folder or holds it"
    if p == cwd or cwd.is_relative_to(p):
        return "it is the current folder or holds it"
    for q in protect:
        if q is None:
            continue
        q = Path(q).expanduser().resolve()
        if q == p or q.is_relative_to(p):
            return f"it holds {q}, an input of this command"
    for rel, e in _walk(p):
        if e.is_dir(follow_symlinks=False) and os.path.ismount(e.path):
            return f"{rel} inside it is a mount point (another filesystem)"
    return None


def refusal_message(p: Path, flag: str, what: str, reason: str) -> str:
    """The one line for a folder that is not an earlier output of ``what``."""
    return (f"{flag} {p} is not written by {what} ({reason}); choose a new or empty folder, or pass --force "
            "to replace the folder and everything in it")


def check_output_dir(path: PathLike, flag: str = "-o", *, what: str = "sai", force: bool = False,
                     legacy: Optional[Legacy] = None, protect: Iterable[PathLike] = (),
                     check_owner: bool = True) -> Path:
    """Check that ``path`` can become an output folder of ``what`` (replaced atomically by a sibling
    temporary), before the slow work.

    SaiError when ``path`` is a file, its parent cannot be created or written, or (``check_owner``) it is a
    non-empty folder that ``foreign_reason`` does not prove an earlier output of ``what``. With ``force``
    such a folder is accepted (a line on stderr says what will be deleted), except the filesystem root, a
    mount point, the home or current folder (or one holding them) and a folder holding one of ``protect``
    (the command's inputs). Creates missing parents. Returns the path, absolute with links resolved."""
    p = Path(path).expanduser().absolute()
    if p.is_symlink() and p.is_dir():
        p = p.resolve()  # the folder the link names is what gets replaced: check that one
    if p.exists() and not p.is_dir():
        raise SaiError(f"{flag} {path} exists and is a file; give a folder path ({what} writes several files)")
    _check_parent(p.parent, flag, create=True)
    _probe_writable(p.parent, flag)
    reason = foreign_reason(p, what, legacy) if check_owner else None  # before anything is created inside it
    if reason is not None:
        if not force:
            raise SaiError(refusal_message(p, flag, what, reason))
        stop = _force_refusal(p.resolve(), protect)
        if stop:
            raise SaiError(f"{flag} {p}: refused even with --force: {stop}; choose another {flag} folder")
    if p.is_dir():  # replacing it: an immutable folder or another user's refuses new files as it refuses renames
        _probe_writable(p, flag)
    if reason is not None:
        n = sum(1 for _ in _walk(p))
        with contextlib.suppress(Exception):
            print(f"{what}: --force: {p} will be replaced; the {n} files and folders in it, including ones sai did "
                  "not write, are deleted", file=sys.stderr, flush=True)
    return p


# ----------------------------------------------------------------------------------------------
# temporaries with an owner
# ----------------------------------------------------------------------------------------------


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"


def owner_tag() -> str:
    """``<pid>@<host>-``: the owner part of temporary names (see ``is_stale``)."""
    return f"{os.getpid()}@{_host()}-"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return True
    return True


def is_stale(name: str, prefix: str) -> bool:
    """True when ``name`` is ``<prefix><pid>@<this host>-...`` and that process is gone."""
    m = re.match(re.escape(prefix) + r"(\d+)@([A-Za-z0-9._]+)-", name)
    if not m or m.group(2) != _host():
        return False  # not ours, or written on another machine (shared filesystem): leave it
    pid = int(m.group(1))
    return pid != os.getpid() and not _pid_alive(pid)


LEGACY_AGE_S = 24 * 3600


def _legacy_stale(entry: os.DirEntry, prefix: str) -> bool:
    """A temporary of sai before owner tags (``<prefix>`` + mkdtemp's 8 characters), of this user and
    untouched for a day: no live run keeps one that long."""
    if not re.fullmatch(re.escape(prefix) + r"[a-z0-9_]{8}(\.tmp)?", entry.name):
        return False
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return st.st_uid == os.getuid() and time.time() - st.st_mtime > LEGACY_AGE_S


def clean_stale(folder: PathLike, prefix: str) -> list[Path]:
    """Remove the entries of ``folder`` named ``<prefix><pid>@<host>-*`` whose process is dead (and this
    user's untagged ones of older sai versions, a day old)."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        if e.name.startswith(prefix) and (is_stale(e.name, prefix) or _legacy_stale(e, prefix)):
            p = Path(e.path)
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


def owned_tempdir(prefix: str, folder: Optional[PathLike] = None, *, flag: str = "-o") -> Path:
    """``mkdtemp`` named ``<prefix><pid>@<host>-XXXX`` in ``folder`` (default: the system temp folder)
    after removing the leftovers of dead processes with the same prefix. The caller removes it."""
    folder = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    clean_stale(folder, prefix)
    try:
        return Path(tempfile.mkdtemp(prefix=prefix + owner_tag(), dir=folder))
    except OSError as exc:
        raise SaiError(os_error_message(exc, folder, f"{flag}: cannot create a temporary folder in")) from None


@contextlib.contextmanager
def tempdir(prefix: str, folder: Optional[PathLike] = None) -> Iterator[Path]:
    """An ``owned_tempdir`` removed on exit (also on errors and Ctrl-C)."""
    tmp = owned_tempdir(prefix, folder, flag="temporary folder")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd`` (tests replace this to simulate a full disk)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_path(path: PathLike) -> None:
    """Flush a file or a folder (its entries: a rename in it) to the disk. Filesystems that cannot sync
    a folder (EINVAL on some network and FUSE mounts) are left as they are."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def ordinary_permissions(path: PathLike, mode: int = 0o666) -> None:
    """mkstemp/mkdtemp create 0600/0700; results are ordinary files and folders (the umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, flag: str = "-o", kind: Optional[str] = None, force: bool = False
                ) -> Iterator[Path]:
    """A temporary file beside ``path`` for a writer that needs a file name (``torch.save``, a compiler's
    ``-o``, a log written for minutes). When the block ends normally the temporary is flushed to the disk
    (fsync), given ordinary permissions and renamed over ``path``, and the folder is flushed too. When the
    block raises anything, KeyboardInterrupt included, the temporary is removed and the old ``path`` is
    untouched. An OSError becomes a SaiError naming ``path``; temporaries of killed writers are removed.
    ``kind``: right before the rename, a file that appeared at ``path`` meanwhile and is not an earlier output of
    that kind (``file_owner_reason``) is refused as ``check_output_file`` refuses it (unless ``force``)."""
    path = Path(path)
    if path.is_dir():
        raise SaiError(f"{flag} {path} is a folder; give a file path")
    if not path.parent.is_dir():
        raise SaiError(f"output directory {path.parent} does not exist; create it or choose another {flag} path")
    prefix = f".{path.name}."
    clean_stale(path.parent, prefix)
    try:
        fd, name = tempfile.mkstemp(prefix=prefix + owner_tag(), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SaiError(os_error_message(exc, path)) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        ordinary_permissions(tmp)
        reason = file_owner_reason(path, kind) if kind is not None and not force else None
        if reason is not None:
            raise SaiError(file_refusal_message(path.absolute(), flag, kind, reason))
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SaiError(os_error_message(exc, path)) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: PathLike, data: Union[bytes, str], *, flag: str = "-o", kind: Optional[str] = None,
                 force: bool = False) -> Path:
    """Write ``data`` (str: UTF-8) to ``path`` through ``atomic_path`` (``kind``, ``force``: see there): all of
    it on the disk under the final name, or nothing and the old file untouched."""
    if isinstance(data, str):
        data = data.encode()
    with atomic_path(path, flag=flag, kind=kind, force=force) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    return Path(path)


# ----------------------------------------------------------------------------------------------
# atomic folders
# ----------------------------------------------------------------------------------------------


def publish_dir(tmp: Path, outdir: Path, what: str, *, force: bool = False, legacy: Optional[Legacy] = None,
                on_published: Optional[Callable[[Path], None]] = None, flag: str = "-o") -> None:
    """Write the output marker of ``what`` into ``tmp`` (``write_marker``: every file and folder in it), give
    its files ordinary permissions, flush them to the disk and move ``tmp`` to ``outdir`` atomically (the
    folder version of ``atomic_path``).

    mkdtemp/mkstemp create 0700/0600; the results are ordinary files (umask applies). An existing
    ``outdir`` is replaced only when ``foreign_reason`` proves it empty or an earlier output of ``what``
    (checked again here: files may have arrived during the slow work), or with ``force``; else SaiError and
    nothing is touched. Ctrl-C or SIGTERM during the renames rolls them back (``tmp`` is left for the caller
    to remove) and is raised afterwards: an interrupted run publishes nothing. ``on_published(outdir)`` runs
    right after a commit that stands, while the signals are still held (a CLI makes them harmless there:
    the output is complete).
    """
    write_marker(tmp, what)
    for root, _dirs, files in os.walk(tmp):
        ordinary_permissions(root, 0o777)
        for f in files:
            ordinary_permissions(os.path.join(root, f))
            fsync_path(os.path.join(root, f))  # on the disk before the rename publishes them
        fsync_path(root)
    try:
        if outdir.exists() and not force:
            reason = foreign_reason(outdir, what, legacy)
            if reason is not None:
                raise SaiError(refusal_message(outdir, flag, what, reason))
        with deferred_signals() as interrupted:
            if outdir.exists():
                old = outdir.with_name(f".{outdir.name}.old-{owner_tag()}")
                os.replace(outdir, old)
                try:
                    os.replace(tmp, outdir)
                except BaseException:
                    os.replace(old, outdir)
                    raise
                if interrupted:
                    os.replace(outdir, tmp)
                    os.replace(old, outdir)
                else:
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, outdir)
                if interrupted:
                    os.replace(outdir, tmp)
            if not interrupted:
                fsync_path(outdir.parent)
                if on_published is not None:
                    on_published(outdir)
    except OSError as exc:
        raise SaiError(os_error_message(exc, outdir, "cannot replace")) from None


def recover_interrupted(outdir: Path) -> None:
    """Leftovers of runs killed with SIGKILL next to ``outdir``: temporaries (``.NAME.tmp-<pid>@<host>-*``)
    are removed; a previous result parked by ``publish_dir`` (``.NAME.old-*``) goes back to ``outdir`` if
    the kill left ``outdir`` missing, else it is removed."""
    clean_stale(outdir.parent, f".{outdir.name}.tmp-")
    prefix = f".{outdir.name}.old-"
    with contextlib.suppress(OSError):
        for entry in os.scandir(outdir.parent):
            if entry.name.startswith(prefix) and is_stale(entry.name, prefix):
                if not outdir.exists():
                    os.replace(entry.path, outdir)
                else:
                    shutil.rmtree(entry.path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# signals around a commit
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM while a short commit (a few renames) runs; yields the list of signals
    that arrived, so the caller can roll back. On exit the handlers are restored and a held signal is
    raised as KeyboardInterrupt (SIGINT) or ``Terminated`` (SIGTERM). A no-op off the main thread."""
    import signal
    import threading

    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    old = {}

    def hold(signum, frame):
        got.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):
            old[sig] = signal.signal(sig, hold)
    try:
        yield got
    finally:
        _restore_handlers(old, hold)
    _raise_interrupt(got)


def _restore_handlers(old: dict, installed: Optional[Callable] = None) -> None:
    """Put back the handlers in ``old``; a signal whose handler is no longer ``installed`` (someone set another
    inside the block, e.g. ``signals_harmless`` after a publish) keeps that one."""
    import signal

    for sig, handler in old.items():
        with contextlib.suppress(ValueError, OSError, TypeError):
            if installed is None or signal.getsignal(sig) is installed:
                signal.signal(sig, handler)


def _raise_interrupt(signals: list[int]) -> None:
    """KeyboardInterrupt for a SIGINT, ``Terminated`` for a SIGTERM (the first that came), nothing for none."""
    import signal

    from sai.errors import Terminated

    if signals:
        raise Terminated() if signals[0] == signal.SIGTERM else KeyboardInterrupt()


class InterruptWatch:
    """Remembers SIGINT/SIGTERM while it is active (see ``interrupt_watch``)."""

    def __init__(self) -> None:
        self.signals: list[int] = []

    def check(self) -> None:
        """Raise KeyboardInterrupt (or ``Terminated``) if a signal came, even one whose exception was
        swallowed on the way (e.g. raised inside a Python callback that C++ code called, where the binding
        prints it and carries on, or caught by a library's broad ``except``)."""
        _raise_interrupt(self.signals)


@contextlib.contextmanager
def interrupt_watch() -> Iterator[InterruptWatch]:
    """Record SIGINT/SIGTERM and pass them on to the handlers already installed (so Ctrl-C still raises
    where it lands); ``watch.check()`` before a commit refuses to publish work that was interrupted."""
    import signal
    import threading

    watch = InterruptWatch()
    if threading.current_thread() is not threading.main_thread():
        yield watch
        return
    old = {}

    def recorder(signum, frame):
        watch.signals.append(signum)
        old[signum](signum, frame)

    for sig in (signal.SIGINT, signal.SIGTERM):
        prev = signal.getsignal(sig)
        if callable(prev):  # Python-level handlers only (default Ctrl-C, the CLI's SIGTERM); SIG_DFL kills as before
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, recorder)
                old[sig] = prev
    try:
        yield watch
    finally:
        _restore_handlers(old, recorder)


def main_program_is_sai() -> bool:
    """True when this process runs the sai CLI as its program (the console script or ``python -m sai``, whose
    ``__main__`` holds ``sai.cli.main.main``), not when a test or another program calls it in-process."""
    entry = getattr(sys.modules.get("__main__"), "main", None)
    return getattr(entry, "__module__", None) == "sai.cli.main" and getattr(entry, "__name__", None) == "main"


class AfterPublish:
    """A CLI verb's ``on_published`` for ``publish_dir``: once the output stands, SIGINT and SIGTERM are
    ignored (SIG_IGN) so that a Ctrl-C in the rest of the run (printing, the interpreter's teardown of
    torch and onnxruntime, about 2 s) cannot turn a complete output into exit 130/143. Where the sai CLI is
    the process's program SIG_IGN stays for its last moments; an in-process caller gets its handlers back
    when the ``after_publish`` block ends. ``published``: the folders committed."""

    def __init__(self) -> None:
        self.published: list[Path] = []
        self._old: dict = {}

    def __call__(self, path: Path) -> None:
        import signal

        self.published.append(Path(path))
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, signal.SIG_IGN)

    def note(self, verb: str) -> str:
        """The line for a signal that came after the commit."""
        return (f"sai {verb}: interrupted after {self.published[-1]} was published; the output is complete "
                "(exit 0)")


@contextlib.contextmanager
def after_publish() -> Iterator[AfterPublish]:
    """``AfterPublish`` for one verb run; see there."""
    import signal
    import threading

    done = AfterPublish()
    if threading.current_thread() is threading.main_thread():
        done._old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield done
    finally:
        if not (done.published and main_program_is_sai()):
            _restore_handlers(done._old)
