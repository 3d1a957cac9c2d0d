"""The learning cache: a `LearningPlan` stored under a content hash of everything it depends on.

A run whose learning is unchanged (only the network, placement or labels differ) reads its plan back instead of
training again. A cache file is never trusted: it holds no pickled objects, only plain containers and tensors
(read with ``torch.load(weights_only=True)``, which cannot run code), and it names its own key, file format and
the sha256 of its payload, all checked before use. A file that fails any check (damaged, truncated, written for
another key or by another simfl, altered) is reported in one line and the plan is rebuilt.

File layout: one JSON header line ``{"magic", "format", "key", "bytes", "sha256"}``, then the payload: the bytes of
``torch.save({"magic", "format", "key", "plan"})`` where ``plan`` is the plan as dicts, lists, numbers, strings
and tensors (numpy arrays as tensors). The partition is not stored: it is rebuilt from the data and the seed.

Writes are atomic (a temporary file in the cache folder, then ``os.replace``): readers see the whole file or
none, and two processes that write the same key leave one complete file. A process that must build a plan holds
an advisory lock on ``plan-<key>.lock`` meanwhile, so a second run of the same learning waits and reads the
first's plan instead of training it again. A plan that cannot be saved (unwritable folder, full disk) is reported
and the run goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simfl import plan as planning
from simfl.config import Experiment
from simfl.data import data_fingerprint, find_data_dir
from simfl.learning import TrainResult
from simfl.plan import CentralPlan, FLPlan, LearningPlan, Phase1Plan

Say = Callable[[str], None]

MAGIC = "simfl-learning-plan"
FILE_FORMAT = 1  # the layout of a cache file (what a plan holds is versioned by plan.PLAN_FORMAT, in the key)
MAX_HEADER_BYTES = 4096
OFF = ("off", "0", "no", "false")
# The only types a cache file may name; anything else is refused on load.
_TYPES: dict[str, type] = {c.__name__: c for c in (LearningPlan, Phase1Plan, FLPlan, CentralPlan, TrainResult)}
_TAG_TYPE, _TAG_ARRAY = "__simfl_type__", "__simfl_ndarray__"


class CacheFileError(Exception):
    """A cache file that is not a usable plan for the key asked for; the message says why, for people."""


@dataclass(frozen=True)
class CacheResult:
    """A plan and how the cache served it: read back, saved now, or neither (then `note` says why)."""

    plan: LearningPlan
    path: Path | None  # the cache file for this plan's key (None: caching is off)
    from_cache: bool
    saved: bool  # written to the cache by this run
    note: str = ""  # what went wrong with the cache, if anything

    def summary(self) -> dict[str, Any]:
        """The run summary's `cache` entry."""
        return {"path": None if self.path is None else str(self.path), "from_cache": self.from_cache,
                "saved": self.saved, "note": self.note}


def default_cache_dir() -> Path | None:
    """$SIMFL_CACHE (``off`` disables caching), else .cache/simfl under the working directory."""
    env = os.environ.get("SIMFL_CACHE", "")
    if env.lower() in OFF:
        return None
    return Path(env) if env else Path(".cache") / "simfl"


def warn_stderr(message: str) -> None:
    """Print a cache warning on stderr (seen even with --quiet)."""
    print(f"simfl: warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- the key
def _data_fingerprint(directory: Path) -> str:
    """One hash of the data files' hashes (what the plan was learned from)."""
    h = hashlib.sha256()
    for name, digest in data_fingerprint(directory).items():
        h.update(name.encode() + digest.encode())
    return h.hexdigest()


def plan_key(exp: Experiment, seed: int, device: str) -> str:
    """Content hash of everything a learning plan depends on: experiment, seed, data, device kind, plan format."""
    from simfl import __version__

    blob = json.dumps(
        {"learning": planning.learning_identity(exp, seed), "device": device.split(":")[0],
         "format": planning.PLAN_FORMAT, "version": __version__,
         "data": _data_fingerprint(find_data_dir(exp.data_dir)), "torch": torch.__version__},
        sort_keys=True, default=list,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def plan_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"plan-{key}.pt"


# ---------------------------------------------------------------------------------------------------- encoding
def _encode(obj: Any) -> Any:
    """`obj` as plain containers and tensors: dataclasses and numpy arrays become tagged dicts."""
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.ndarray | np.generic):  # a numpy scalar is stored as a 0-d array and comes back as one
        array = np.asarray(obj)
        array = array if array.flags.c_contiguous else array.copy(order="C")
        return {_TAG_ARRAY: torch.from_numpy(array), "scalar": isinstance(obj, np.generic)}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if isinstance(obj, dict):
        if any(not isinstance(k, str) or k in (_TAG_TYPE, _TAG_ARRAY) for k in obj):
            raise TypeError(f"the learning cache stores dicts with plain string keys only, not {list(obj)[:3]}")
        return {k: _encode(v) for k, v in obj.items()}
    if _TYPES.get(type(obj).__name__) is type(obj):
        return {_TAG_TYPE: type(obj).__name__,
                "fields": {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
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
    if _TAG_TYPE in obj:
        cls = _TYPES.get(obj[_TAG_TYPE]) if isinstance(obj[_TAG_TYPE], str) else None
        fields = obj.get("fields")
        if cls is None or not isinstance(fields, dict):
            raise CacheFileError(f"it names an unknown type {obj[_TAG_TYPE]!r}")
        if set(fields) != {f.name for f in dataclasses.fields(cls)}:
            raise CacheFileError(f"its {cls.__name__} has the fields {sorted(fields)}, not this simfl's")
        return cls(**{k: _decode(v) for k, v in fields.items()})
    return {k: _decode(v) for k, v in obj.items()}


# ---------------------------------------------------------------------------------------------------- files
def plan_bytes(plan: LearningPlan, key: str) -> bytes:
    """The cache file's content for `plan` under `key` (the partition is left out: it is rebuilt on load)."""
    buf = io.BytesIO()
    stored = _encode(dataclasses.replace(plan, partition=None))
    body = {"magic": MAGIC, "format": FILE_FORMAT, "key": key, "plan": stored}
    torch.save(body, buf)
    payload = buf.getvalue()
    header = {"magic": MAGIC, "format": FILE_FORMAT, "key": key, "bytes": len(payload),
              "sha256": hashlib.sha256(payload).hexdigest()}
    return json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def _check(found: Any, what: str, key: str) -> None:
    """Raise CacheFileError unless the header or payload `found` is a dict naming our magic, format and `key`."""
    if not isinstance(found, dict) or found.get("magic") != MAGIC:
        raise CacheFileError(f"its {what} is not a simfl learning plan's")
    if found.get("format") != FILE_FORMAT:
        raise CacheFileError(f"its {what} has file format {found.get('format')!r}, this simfl reads {FILE_FORMAT}")
    if found.get("key") != key:
        raise CacheFileError(f"its {what} holds the plan of key {found.get('key')!r}, not of its name's key {key}")


def read_plan(path: Path, key: str) -> LearningPlan:
    """The plan stored in `path` for `key` (partition None). Raises FileNotFoundError when there is none and
    CacheFileError when the file is not exactly such a plan; never runs code from the file."""
    with open(path, "rb") as f:
        line = f.readline(MAX_HEADER_BYTES)
        if not line:
            raise CacheFileError("it is empty")
        try:
            header = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            header = None
        if header is None:
            raise CacheFileError("it has no simfl header (not a plan file, or one written by an older simfl)")
        _check(header, "header", key)
        payload = f.read()
    if len(payload) != header.get("bytes"):
        raise CacheFileError(f"it is truncated or padded: {len(payload)} payload bytes, its header says "
                             f"{header.get('bytes')}")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CacheFileError("its content does not match its sha256 (damaged or altered)")
    try:
        body = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but plain containers and tensors
        raise CacheFileError(f"its payload is not plain data ({type(e).__name__})") from None
    _check(body, "payload", key)
    plan = _decode(body.get("plan"))
    if not isinstance(plan, LearningPlan):
        raise CacheFileError("its payload holds no learning plan")
    return plan


def write_plan(plan: LearningPlan, path: Path, key: str) -> None:
    """Store `plan` as `path` atomically (see `_write_atomic`)."""
    _write_atomic(path, plan_bytes(plan, key))


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


def _building(path: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the advisory lock `plan-<key>.lock` next to `path` while inside."""
    return _locked(path.with_suffix(".lock"))


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


def _load(path: Path, key: str) -> tuple[LearningPlan | None, str]:
    """(plan, "") from a good file; (None, "") when there is none; (None, why) when there is a bad one."""
    try:
        return read_plan(path, key), ""
    except (FileNotFoundError, NotADirectoryError):  # no file, or the cache folder is not a folder: nothing cached
        return None, ""
    except IsADirectoryError:
        return None, "it is a folder, not a plan file (remove it to cache this plan)"
    except OSError as e:
        return None, f"cannot read it ({e.strerror or e})"
    except CacheFileError as e:
        return None, str(e)


def _save(plan: LearningPlan, path: Path, key: str) -> str:
    """Write the plan to the cache; '' when saved, else why not (one sentence)."""
    try:
        write_plan(plan, path, key)
    except OSError as e:
        return _save_problem(path.parent, e, "the learning plan")
    return ""


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


def cached_plan(exp: Experiment, seed: int, say: Say, cache_dir: Path | None, device: str | None = None,
                warn: Say = warn_stderr) -> CacheResult:
    """`build_plan` through the cache in `cache_dir` (None: no caching).

    A network-only change (link speeds, topology, aggregator placement) reuses the plan; any change to what is
    learned (data split, models, epochs, rounds, hyperparameters, seed) gives a new key. A bad cache file or a
    failed save is reported through `warn` (one line each) and recorded in the result's note; the plan is then
    rebuilt or simply not cached. Clear the cache by deleting its folder."""
    dev = device or exp.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if cache_dir is None:
        return CacheResult(planning.build_plan(exp, seed, say, dev), None, False, False, "caching is off")
    key = plan_key(exp, seed, dev)
    path = plan_path(cache_dir, key)
    plan, bad = _load(path, key)
    if plan is None:
        if bad:
            warn(f"learning cache: {path}: {bad}; rebuilding the plan")
        with _building(path):
            if not bad:  # another run may have built it while this one waited for the lock
                plan, _ = _load(path, key)
            if plan is None:
                return _build_and_save(exp, seed, say, dev, path, key, bad, warn)
    say(f"learning results from the cache ({path})")
    plan.partition = planning.partition_of(exp, seed)
    return CacheResult(plan, path, True, False, "")


def _build_and_save(exp: Experiment, seed: int, say: Say, device: str, path: Path, key: str, bad: str,
                    warn: Say) -> CacheResult:
    """Build the plan and cache it if possible; `bad` says what was wrong with the file it replaces, if any."""
    plan = planning.build_plan(exp, seed, say, device)
    if path.is_dir():  # said when it was read: never replaced
        not_saved = "not saved: a folder is in its place"
    else:
        not_saved = _save(plan, path, key)
        if not_saved:
            warn(f"learning cache: {not_saved}")
    note = "; ".join(n for n in (f"{path.name}: {bad}" if bad else "", not_saved) if n)
    return CacheResult(plan, path, False, not not_saved, note)
