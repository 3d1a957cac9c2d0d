"""The learning cache: the learner's values (`simfl.learner`), one file per computation, under its content key.

A run whose learning is unchanged reads its models, thresholds, cross-evaluation rows and AUCs back instead of
computing them; a run that changes only part of it (a sweep point that departs from another after some round)
computes only what differs. A cache file is never trusted: it holds no pickled objects, only plain containers and
tensors (read with ``torch.load(weights_only=True)``, which cannot run code), and it names its own key, file
format, the computation the key hashes and the sha256 of its payload, all checked before use. A file that fails
any check (damaged, truncated, written for another key or by another simfl, altered) is reported in one line and
its value is computed again.

Writes are atomic (a temporary file in the cache folder, then ``os.replace``): readers see the whole file or
none, and two processes that write the same key leave one complete file. A process computing a batch holds an
advisory lock per key meanwhile, so a second run of the same learning waits and reads the first's values instead
of computing them again. A value that cannot be saved (unwritable folder, full disk) is reported once and the run
goes on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

Say = Callable[[str], None]

OFF = ("off", "0", "no", "false")
_TAG_ARRAY = "__simfl_ndarray__"


class CacheFileError(Exception):
    """A cache file that is not a usable entry for the key asked for; the message says why, for people."""


def default_cache_dir() -> Path | None:
    """$SIMFL_CACHE (``off`` disables caching), else .cache/simfl under the working directory."""
    env = os.environ.get("SIMFL_CACHE", "")
    if env.lower() in OFF:
        return None
    return Path(env) if env else Path(".cache") / "simfl"


def warn_stderr(message: str) -> None:
    """Print a cache warning on stderr (seen even with --quiet)."""
    print(f"simfl: warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- encoding
def _encode(obj: Any) -> Any:
    """`obj` as plain containers and tensors: numpy arrays become tagged dicts."""
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.ndarray | np.generic):  # a numpy scalar is stored as a 0-d array and comes back as one
        array = np.asarray(obj)
        array = array if array.flags.c_contiguous else array.copy(order="C")
        return {_TAG_ARRAY: torch.from_numpy(array), "scalar": isinstance(obj, np.generic)}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if isinstance(obj, dict):
        if any(not isinstance(k, str) or k == _TAG_ARRAY for k in obj):
            raise TypeError(f"the learning cache stores dicts with plain string keys only, not {list(obj)[:3]}")
        return {k: _encode(v) for k, v in obj.items()}
    raise TypeError(f"the learning cache cannot store a {type(obj).__name__}")


def _decode(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if _TAG_ARRAY in obj:
        if not isinstance(obj[_TAG_ARRAY], torch.Tensor):
            raise CacheFileError("an array entry holds no tensor")
        array = obj[_TAG_ARRAY].numpy()
        return array[()] if obj.get("scalar") else array
    return {k: _decode(v) for k, v in obj.items()}


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` as `path` atomically (temporary file in the same folder, fsync, rename); on any error nothing
    is left behind and the OSError propagates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """Hold the advisory lock on the file `lock` while inside (best effort: without a writable folder or file
    locks, inside runs unlocked; atomic writes keep the cache whole either way)."""
    try:
        import fcntl

        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _save_problem(folder: Path, e: OSError, what: str) -> str:
    """Why `what` could not be saved in the cache folder `folder`, and what to do (one sentence)."""
    if e.errno == errno.ENOSPC:
        reason = "the disk is full"
    elif folder.exists() and not folder.is_dir():
        reason = "it is a file, not a folder"
    else:
        reason = e.strerror or str(e)
        if isinstance(e.filename, str) and not Path(e.filename).is_relative_to(folder):
            folder = Path(e.filename)  # a parent folder that could not be created
    return (f"cannot save {what} in {folder} ({reason}); the run goes on without caching it "
            "(free space, fix the folder's permissions, or point SIMFL_CACHE elsewhere or to 'off')")


# ---------------------------------------------------------------------------------------------------- per node
NODE_MAGIC = "simfl-learning-node"
NODE_FORMAT = 1
MAX_NODE_HEADER_BYTES = 1 << 20  # a FedAvg node names every part: 90 parts are ~5 kB


class NodeStore:
    """The learner's values, one file per node: ``<folder>/nodes/<key[:2]>/<key>.pt``.

    Line 1 is a JSON header ``{"magic", "format", "key", "node", "meta", "bytes", "sha256"}`` (`node`: the
    canonical JSON the key hashes, re-hashed on every read), then the payload ``torch.save({"magic", "format",
    "key", "payload"})`` of plain containers and tensors, read with ``weights_only=True``. `meta` (a threshold,
    an AUC, the epochs run) reads the header alone; `load` checks the payload's size and sha256 before
    unpickling. A damaged or foreign entry is reported once through `warn` and treated as missing (the learner
    computes it again and saves it over the bad file); a failed save is reported once and the run goes on
    without saving (`notes` keeps both for the run summary). Writes are atomic; `building(keys)` holds each
    key's advisory lock (``<key>.lock``), so two runs that need one node compute it once."""

    def __init__(self, folder: Path, warn: Say = warn_stderr) -> None:
        self.folder = Path(folder)
        self.warn = warn
        self.notes: list[str] = []
        self.saved = 0
        self.unsaved = 0
        self._reported: set[Path] = set()
        self._cannot_save = ""

    def path(self, key: str) -> Path:
        return self.folder / "nodes" / key[:2] / f"{key}.pt"

    def _bad(self, path: Path, why: str) -> None:
        if path not in self._reported:
            self._reported.add(path)
            self.notes.append(f"{path.name}: {why}")
            self.warn(f"learning cache: {path}: {why}; computing it again")

    def _header(self, f: Any, key: str) -> dict[str, Any]:
        line = f.readline(MAX_NODE_HEADER_BYTES)
        if not line:
            raise CacheFileError("it is empty")
        try:
            header = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            header = None
        if not isinstance(header, dict):
            raise CacheFileError("it has no simfl header (not a learning cache entry)")
        _check_node(header, "header", key)
        node = header.get("node")
        if not isinstance(node, str) or hashlib.sha256(node.encode()).hexdigest()[:len(key)] != key:
            raise CacheFileError("its header's computation does not hash to its key (altered)")
        if not isinstance(header.get("meta"), dict):
            raise CacheFileError("its header holds no meta")
        return header

    def _open(self, key: str, read: Callable[[Any, dict[str, Any]], Any]) -> Any:
        """`read(file, header)` on the entry of `key`; None when there is none or it is bad (reported)."""
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                return read(f, self._header(f, key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError:
            self._bad(path, "it is a folder, not a cache entry (remove it to cache this result)")
        except OSError as e:
            self._bad(path, f"cannot read it ({e.strerror or e})")
        except CacheFileError as e:
            self._bad(path, str(e))
        return None

    def meta(self, key: str) -> dict[str, Any] | None:
        """The entry's meta (its header alone), or None: missing or bad."""
        return self._open(key, lambda _f, header: header["meta"])

    def load(self, key: str) -> dict[str, Any] | None:
        """The entry's payload (its parts: state, opt, row), or None: missing or bad."""
        return self._open(key, lambda f, header: _node_payload(f.read(), header, key))

    def save(self, key: str, node: str, meta: dict[str, Any], payload: dict[str, Any]) -> None:
        """Store an entry atomically; after a failure (reported once) nothing more is attempted."""
        path = self.path(key)
        if self._cannot_save or path.is_dir():
            self.unsaved += 1
            return
        try:
            _write_atomic(path, node_bytes(key, node, meta, payload))
        except OSError as e:
            self.unsaved += 1
            self._cannot_save = _save_problem(self.folder, e, "learning results")
            self.notes.append(self._cannot_save)
            self.warn(f"learning cache: {self._cannot_save}")
            return
        self.saved += 1

    @contextlib.contextmanager
    def building(self, keys: Sequence[str]) -> Iterator[None]:
        """Hold the advisory locks of `keys` (sorted: two runs never wait for each other in a circle)."""
        with contextlib.ExitStack() as stack:
            for key in sorted(set(keys)):
                stack.enter_context(_locked(self.path(key).with_suffix(".lock")))
            yield


def _check_node(found: Any, what: str, key: str) -> None:
    if not isinstance(found, dict) or found.get("magic") != NODE_MAGIC:
        raise CacheFileError(f"its {what} is not a simfl learning cache entry's")
    if found.get("format") != NODE_FORMAT:
        raise CacheFileError(f"its {what} has file format {found.get('format')!r}, this simfl reads {NODE_FORMAT}")
    if found.get("key") != key:
        raise CacheFileError(f"its {what} holds the entry of key {found.get('key')!r}, not of its name's key {key}")


def _node_payload(payload: bytes, header: dict[str, Any], key: str) -> dict[str, Any]:
    if len(payload) != header.get("bytes"):
        raise CacheFileError(f"it is truncated or padded: {len(payload)} payload bytes, its header says "
                             f"{header.get('bytes')}")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CacheFileError("its content does not match its sha256 (damaged or altered)")
    try:
        body = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but plain containers and tensors
        raise CacheFileError(f"its payload is not plain data ({type(e).__name__})") from None
    _check_node(body, "payload", key)
    parts = _decode(body.get("payload"))
    if not isinstance(parts, dict):
        raise CacheFileError("its payload holds no learning result")
    return parts


def node_bytes(key: str, node: str, meta: dict[str, Any], payload: dict[str, Any]) -> bytes:
    """An entry's file content: the JSON header line, then the payload."""
    buf = io.BytesIO()
    torch.save({"magic": NODE_MAGIC, "format": NODE_FORMAT, "key": key, "payload": _encode(payload)}, buf)
    data = buf.getvalue()
    header = {"magic": NODE_MAGIC, "format": NODE_FORMAT, "key": key, "node": node, "meta": meta,
              "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return json.dumps(header, sort_keys=True, allow_nan=False).encode() + b"\n" + data
