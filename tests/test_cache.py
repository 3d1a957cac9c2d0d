"""The learning cache (one file per learner node): exact round trips, no code run from a file, every check on load,
atomic and concurrent writes, a second run that waits for the first's values instead of computing them again.

Entries are built by hand or by a learner with a fake engine (nothing trained), so each test runs in well under a
second except the ones that start processes.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import math
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_learner import EXP, partition

import simfl.cache as cache
from simfl.learner import FakeEngine, Learner, Stage

# fork: the children start in milliseconds (spawn re-imports torch: seconds each). They run no parallel torch
# kernels (tiny tensors, serialisation), which is what can hang in a fork of a process that used them; every
# wait has a timeout, so a hang would fail the test rather than stall the suite.
CONTEXT = "fork"


def assert_same(a: Any, b: Any, where: str = "plan") -> None:
    """a and b hold equal values of the same types, field by field (tensors and arrays: dtype, shape, values)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def split(data: bytes) -> tuple[dict, bytes]:
    """A cache file's header (parsed) and payload."""
    line, payload = data.split(b"\n", 1)
    return json.loads(line), payload


class Bomb:
    """Unpickling this creates the file `marker`: code run by merely loading."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------- per node
NODE_KEY, NODE_OTHER = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"


def node_text(key: str = NODE_KEY) -> str:
    """A canonical node JSON that hashes to a key we then use (the store re-hashes it on every read)."""
    return json.dumps({"op": "train", "fields": {"seed": 1}, "for": key})


def keyed(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def hand_node(seed: int = 0) -> tuple[dict, dict]:
    """(meta, payload) of a FedAvg train entry: state, Adam state, and a cross row for good measure."""
    g = torch.Generator().manual_seed(seed)
    state = {"enc.weight": torch.randn(3, 4, generator=g), "enc.bias": torch.randn(3, generator=g)}
    opt = {"step": 7, "exp_avg": {k: torch.randn(v.shape, generator=g) for k, v in state.items()},
           "exp_avg_sq": {k: torch.rand(v.shape, generator=g) for k, v in state.items()}}
    meta = {"n_train": 18, "epochs_run": 2, "flops": 1.5e6 + seed, "wall_s": 0.1 * (seed + 1)}
    return meta, {"state": state, "opt": opt, "row": np.linspace(0, 1, 5) ** 2}


def test_node_round_trip_and_layout(tmp_path: Path) -> None:
    store = cache.NodeStore(tmp_path, warn=pytest.fail)
    text = node_text()
    key = keyed(text)
    meta, payload = hand_node()
    store.save(key, text, meta, payload)
    path = tmp_path / "nodes" / key[:2] / f"{key}.pt"
    assert store.path(key) == path and path.is_file() and store.saved == 1
    header, body = split(path.read_bytes())
    assert header == {"magic": "simfl-learning-node", "format": 1, "key": key, "node": text, "meta": meta,
                      "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    assert store.meta(key) == meta
    back = store.load(key)
    assert_same(back, payload)  # tensors, the float64 row, the step as an int
    assert store.meta(NODE_OTHER) is None and store.load(NODE_OTHER) is None  # missing: quietly nothing


def test_meta_reads_the_header_alone_and_a_bad_payload_is_reported_once(tmp_path: Path) -> None:
    warned: list[str] = []
    store = cache.NodeStore(tmp_path, warn=warned.append)
    text = node_text()
    key = keyed(text)
    store.save(key, text, *hand_node())
    data = store.path(key).read_bytes()
    store.path(key).write_bytes(data[: len(data) - 100])
    assert store.meta(key) == hand_node()[0]  # the header is whole: the meta is there, no weights read
    assert store.load(key) is None and store.load(key) is None
    assert len(warned) == 1 and "truncated or padded" in warned[0] and "computing it again" in warned[0]
    assert store.notes == [f"{key}.pt: " + warned[0].split(f"{key}.pt: ")[1].removesuffix("; computing it again")]


@pytest.mark.parametrize("case", ["other key", "altered node", "flipped byte", "pickle bomb", "not a dict"])
def test_bad_node_entries_are_refused(tmp_path: Path, case: str) -> None:
    warned: list[str] = []
    store = cache.NodeStore(tmp_path, warn=warned.append)
    text = node_text()
    key = keyed(text)
    meta, payload = hand_node()
    marker = tmp_path / "pwned"
    if case == "other key":  # a valid entry of another key, copied under this key's name
        other = node_text(NODE_OTHER)
        data, why = cache.node_bytes(keyed(other), other, meta, payload), "not of its name's key"
    elif case == "altered node":
        header, body = split(cache.node_bytes(key, text, meta, payload))
        header["node"] = text.replace('"seed": 1', '"seed": 2')
        data, why = json.dumps(header).encode() + b"\n" + body, "does not hash to its key"
    elif case == "flipped byte":
        b = bytearray(cache.node_bytes(key, text, meta, payload))
        b[-10] ^= 0x01
        data, why = bytes(b), "does not match its sha256"
    else:
        inner = Bomb(str(marker)) if case == "pickle bomb" else [1, 2]
        body = _torch_bytes({"magic": cache.NODE_MAGIC, "format": 1, "key": key, "payload": inner})
        header = {"magic": cache.NODE_MAGIC, "format": 1, "key": key, "node": text, "meta": meta,
                  "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        data = json.dumps(header).encode() + b"\n" + body
        why = "not plain data" if case == "pickle bomb" else "holds no learning result"
    store.path(key).parent.mkdir(parents=True)
    store.path(key).write_bytes(data)
    got = store.load(key) if case in ("flipped byte", "pickle bomb", "not a dict") else store.meta(key)
    assert got is None and len(warned) == 1 and why in warned[0] and not marker.exists()


def test_a_failed_node_save_is_reported_once_and_leaves_nothing(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "fsync", full)
    warned: list[str] = []
    store = cache.NodeStore(tmp_path / "c", warn=warned.append)
    for seed in range(3):
        text = node_text(str(seed))
        store.save(keyed(text), text, *hand_node(seed))
    assert (store.saved, store.unsaved) == (0, 3)
    assert len(warned) == 1 and "cannot save learning results in" in warned[0] and "the disk is full" in warned[0]
    assert store.notes == [warned[0].removeprefix("learning cache: ")]
    assert [p for p in (tmp_path / "c").rglob("*") if p.is_file()] == []  # no entry, no temporary file


def _hold(folder: str, key: str, held: Any, release: Any) -> None:
    with cache.NodeStore(Path(folder)).building([key]):
        held.set()
        release.wait(60)


def test_building_waits_for_another_process_holding_a_key(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context(CONTEXT)
    held, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(str(tmp_path), NODE_KEY, held, release))
    other.start()
    assert held.wait(60)
    store = cache.NodeStore(tmp_path)
    t0 = time.perf_counter()
    releaser = ctx.Process(target=_release_later, args=(release, 0.5))
    releaser.start()
    with store.building([NODE_OTHER, NODE_KEY]):  # waits until the other process lets NODE_KEY go
        waited = time.perf_counter() - t0
    for p in (other, releaser):
        p.join(60)
    assert waited >= 0.4


def _release_later(release: Any, delay: float) -> None:
    time.sleep(delay)
    release.set()


# ---------------------------------------------------------------------------------------------------- with a learner
def fed_graph(lr: Learner) -> list:
    """A little of everything: phase I of 4 clients, one FedAvg round of two, an AUC."""
    p1 = [lr.train(i, "ae5", 1, seed=i, stage=Stage("phase I")) for i in range(4)]
    thr = [lr.threshold(m, i) for i, m in enumerate(p1)]
    cross = [lr.cross(m, t) for m, t in zip(p1, thr, strict=True)]
    start = lr.init("ae7", seed=9, stage=Stage("method", 1))
    upd = [lr.train(i, "ae7", 1, seed=10 + i, stage=Stage("method", 1), init=start) for i in (0, 1)]
    avg = lr.fedavg(list(enumerate(upd)), Stage("method", 1))
    return [*p1, *thr, *cross, *upd, avg, lr.auc(avg, 0)]


def stored_learner(folder: Path, warned: list[str] | None = None, engine: FakeEngine | None = None) -> Learner:
    fake = engine or FakeEngine()
    store = cache.NodeStore(folder, warn=(warned.append if warned is not None else pytest.fail))
    return Learner(EXP, partition(), store, engine=lambda: fake, engine_kind="fake")


def test_a_second_run_reads_everything_back_and_starts_no_engine(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    first = stored_learner(tmp_path)
    refs = fed_graph(first)
    first.flush()
    assert first.store.saved == 16 and first.stats.computed == 16  # the init is rebuilt, never stored
    second = Learner(EXP, partition(), cache.NodeStore(tmp_path, warn=pytest.fail),
                     engine=lambda: pytest.fail("the engine was started"), engine_kind="fake")
    loads: list[str] = []
    real = second.store.load
    monkeypatch.setattr(second.store, "load", lambda key: loads.append(key) or real(key))
    again = fed_graph(second)
    assert again == refs
    assert second.flush().computed == 0 and second.stats.cached == 16
    # thresholds, AUCs, epochs run: from the headers alone
    for ref in again:
        if ref.op in ("threshold", "auc", "train"):
            assert second.meta(ref) == first.meta(ref)
    assert loads == []
    assert_same(second.value(again[-2], "state"), first.value(refs[-2], "state"))  # the average: now loaded
    assert np.array_equal(second.value(again[8], "row"), first.value(refs[8], "row"))
    assert loads == [again[-2].key, again[8].key]


def test_a_damaged_parent_is_computed_again_when_a_child_needs_it(tmp_path: Path) -> None:
    first = stored_learner(tmp_path)
    refs = fed_graph(first)
    first.flush()
    upd0, avg = refs[12], refs[14]
    good = first.store.path(upd0.key).read_bytes()
    first.store.path(upd0.key).write_bytes(good[:-50])  # its header (meta) is whole, its weights are not
    first.store.path(avg.key).unlink()  # the average must be computed again: it needs the update's state
    warned: list[str] = []
    fake = FakeEngine()
    second = stored_learner(tmp_path, warned, fake)
    fed_graph(second)
    assert torch.equal(second.value(avg, "state")["w"], first.value(avg, "state")["w"])
    assert fake.calls == [("train", [0])]  # only the damaged update was trained again
    assert len(warned) == 1 and "truncated or padded" in warned[0] and upd0.key in warned[0]
    assert first.store.path(upd0.key).read_bytes() == good  # saved whole again, the same bytes


def test_the_key_follows_what_is_learned_only() -> None:
    def key(exp: Any = EXP, device: str = "cpu", kind: str | None = None) -> str:
        lr = Learner(exp, partition(), device=device, engine=FakeEngine, engine_kind=kind)
        return lr.train(0, "ae7", 1, seed=3, stage=Stage("method", 1)).key

    base = key()
    same = dataclasses.replace(EXP, aggregator="server", detector="last_fit", workers=3, preset_note="x")
    assert key(same) == base  # who aggregates, which AUCs are shown, how fast: same learning
    assert key(device="cuda:0") == key(device="cuda:1") != base  # the device kind (and its stacked engine) counts
    assert key(kind="stacked") != base
    for other in (dataclasses.replace(EXP, lr=EXP.lr * 2), dataclasses.replace(EXP, batch_size=16)):
        assert key(other) != base


def _slow_run(folder: str, delay: float, started: Any, out: Any) -> None:
    class Slow(FakeEngine):
        def train(self, jobs: Any) -> Any:
            started.set()
            time.sleep(delay)
            return super().train(jobs)

    fake = Slow()
    lr = Learner(EXP, partition(), cache.NodeStore(Path(folder)), engine=lambda: fake, engine_kind="fake")
    fed_graph(lr)
    lr.flush()
    out.put((delay, lr.stats.computed, lr.stats.cached, fake.calls))


def test_two_runs_of_the_same_learning_compute_each_value_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context(CONTEXT)
    started, other, out = ctx.Event(), ctx.Event(), ctx.Queue()
    first = ctx.Process(target=_slow_run, args=(str(tmp_path), 1.0, started, out))
    first.start()
    assert started.wait(60)  # the first run holds the phase-I locks and is training
    second = ctx.Process(target=_slow_run, args=(str(tmp_path), 0.0, other, out))
    second.start()
    results = dict((d, rest) for d, *rest in (out.get(timeout=60), out.get(timeout=60)))
    for p in (first, second):
        p.join(60)
    # every node computed by exactly one of the two: the second waited for the first's phase-I training and read
    # it (its own engine never trained phase I); after that they may take turns, never computing a node twice
    (first_computed, first_cached, first_calls), (second_computed, second_cached, second_calls) = (
        results[1.0], results[0.0])
    assert first_computed + first_cached == second_computed + second_cached == 16
    assert first_computed + second_computed == 16
    assert first_calls[0] == ("train", [0, 1, 2, 3]) and ("train", [0, 1, 2, 3]) not in second_calls


def _writer(folder: str, seed: int, times: int, go: Any) -> None:
    store = cache.NodeStore(Path(folder))
    text = node_text()
    meta, payload = hand_node(seed)
    go.wait()
    for _ in range(times):
        store.save(keyed(text), text, meta, payload)


def _reader(folder: str, stop: Any, out: Any) -> None:
    bad: list[str] = []
    store = cache.NodeStore(Path(folder), warn=bad.append)
    seen = set()
    key = keyed(node_text())
    while not stop.is_set():
        got = store.load(key)
        if got is not None:
            seen.add(float(got["state"]["enc.bias"][0]))
    out.put((sorted(seen), bad))


def test_concurrent_writers_of_one_key_never_expose_a_partial_file(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context(CONTEXT)
    go, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), s, 40, go)) for s in (1, 2)]
    reader = ctx.Process(target=_reader, args=(str(tmp_path), stop, out))
    for p in (*writers, reader):
        p.start()
    go.set()
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    stop.set()
    seen, bad = out.get(timeout=60)
    reader.join(60)
    assert bad == []  # the reader never met a partial or mixed file
    both = {float(hand_node(s)[1]["state"]["enc.bias"][0]) for s in (1, 2)}
    assert set(seen) <= both and seen
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == [f"{keyed(node_text())}.pt"]  # no temporary file left
