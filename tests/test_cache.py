"""The learning cache: exact round trips, no code run from a file, every check on load, atomic and concurrent writes.

Plans here are built by hand (small random tensors, nothing trained), so each test runs in well under a second
except the two that start processes.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import math
import multiprocessing
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import simfl.cache as cache
import simfl.plan as planning
from simfl.cache import CacheFileError, cached_plan, plan_bytes, read_plan, write_plan
from simfl.config import Experiment
from simfl.learning import TrainResult
from simfl.plan import CentralPlan, FLPlan, LearningPlan, Phase1Plan

KEY, OTHER = "0123456789abcdef01234567", "fedcba9876543210fedcba98"
EXP = Experiment(classes=(1, 7), clients_per_class=2, rounds=2, local_epochs=(1,), workers=0, device="cpu")


def hand_plan(seed: int = 0, n: int = 4, rounds: int = 2) -> LearningPlan:
    """A small LearningPlan of every kind of field a real one has (tensors, numpy arrays of three dtypes, the
    phase-I and local results' optimiser states, nan), with values drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def state() -> dict[str, torch.Tensor]:
        return {"enc.weight": torch.randn(3, 4, generator=g), "enc.bias": torch.randn(3, generator=g)}

    def result(key: int, opt: bool = False) -> TrainResult:
        return TrainResult(
            key=key, state=state(), opt_state={"step": 3, "exp_avg": state(), "exp_avg_sq": state()} if opt else None,
            n_train=10 + key, epochs_run=2, losses=[float(x) for x in rng.random(2)], val_losses=[0.5, 0.25],
            wall_s=float(rng.random()), flops=1.5e6 * (key + 2),
        )

    def fl(phase: str, groups: list[list[int]]) -> FLPlan:
        return FLPlan(
            phase=phase, groups=groups, rounds=[[result(i) for i in range(n)] for _ in range(rounds)],
            update_bits=[[32 * 15] * n for _ in range(rounds)], global_bits=[[32 * 15] * len(groups)] * rounds,
            final=[state() for _ in groups], initial_bits=[32 * 15] * len(groups),
            aggregate_flops=[2.0 * 15 * len(m) for m in groups],
        )

    train = [result(i, opt=True) for i in range(n)]
    thresholds = rng.random(n).astype(np.float32)
    ratios = rng.random((n, n))
    sided = ratios > 0.5
    p1 = Phase1Plan(
        model="ae5", train=train, thresholds=thresholds,
        payloads=[{**r.state, "threshold": torch.tensor([thresholds[i]])} for i, r in enumerate(train)],
        payload_bits=[32 * 16] * n, ratios=ratios, one_sided=sided, adjacency=sided & sided.T,
        communities=[[0, 1], [2], [3]], score_flops=[1e5] * n, score_wall_s=0.125, community_wall_s=0.0625,
    )
    method, ideal = fl("phase2", [[0, 1], [2], [3]]), fl("ideal", [[0, 1], [2, 3]])
    ideal.rounds[0][0] = method.rounds[0][0]  # as plan_federated(reuse=) shares a group's results
    return LearningPlan(
        partition=None, phase1=p1, method=method, ideal=ideal,  # type: ignore[arg-type]
        local=[result(i, opt=True) for i in range(n)],
        central=CentralPlan(upload_bits=[784 * 8 * 10] * n, train=result(-1)),
        auc={"method": [float(x) for x in rng.random(n)], "local": [0.5] * n}, ari=float(rng.random()),
        nmi=float("nan"), wall_s={"phase1": 1.25, "phase2": 2.5},
    )


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


def with_header(payload: bytes, key: str = KEY, **header: Any) -> bytes:
    """A file with a well-formed header for `payload` (right size and sha256), fields overridable."""
    h = {"magic": cache.MAGIC, "format": cache.FILE_FORMAT, "key": key, "bytes": len(payload),
         "sha256": hashlib.sha256(payload).hexdigest(), **header}
    return json.dumps(h).encode() + b"\n" + payload


class Bomb:
    """Unpickling this creates the file `marker`: code run by merely loading."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------------------------------------- round trip
def test_round_trip_gives_an_equal_plan(tmp_path: Path) -> None:
    plan = hand_plan(seed=1)
    path = tmp_path / "plan.pt"
    write_plan(plan, path, KEY)
    back = read_plan(path, KEY)
    assert_same(back, plan)
    assert back.phase1.thresholds.dtype == np.float32 and back.phase1.one_sided.dtype == np.bool_
    assert back.phase1.train[2].opt_state["step"] == 3
    # the check above is not vacuous: a single changed weight, or another seed's plan, is told apart
    back.method.rounds[1][3].state["enc.bias"][0] += 1e-6
    with pytest.raises(AssertionError, match=r"method.rounds\[1\]\[3\].state\['enc.bias'\]"):
        assert_same(back, plan)
    with pytest.raises(AssertionError):
        assert_same(hand_plan(seed=2), plan)


def test_numpy_scalars_and_shared_tensors_survive(tmp_path: Path) -> None:
    plan = hand_plan()
    plan.auc["method"] = [np.float64(0.75), np.float32(0.5)]  # type: ignore[list-item]
    plan.wall_s["zero_d"] = np.array(2.5)  # type: ignore[assignment]
    plan.phase1.ratios = plan.phase1.ratios.T  # not C-contiguous
    write_plan(plan, tmp_path / "p.pt", KEY)
    back = read_plan(tmp_path / "p.pt", KEY)
    assert [type(x) for x in back.auc["method"]] == [np.float64, np.float32] and back.auc["method"] == [0.75, 0.5]
    assert_same(back, plan)  # the 0-d array stays 0-d, the transposed array keeps its values
    # a payload's parameters are its training result's tensors: stored once, shared again after loading
    assert back.phase1.payloads[1]["enc.weight"].data_ptr() == back.phase1.train[1].state["enc.weight"].data_ptr()


def test_the_file_names_its_key_format_and_payload_hash(tmp_path: Path) -> None:
    header, payload = split(plan_bytes(hand_plan(), KEY))
    assert header == {"magic": "simfl-learning-plan", "format": 1, "key": KEY, "bytes": len(payload),
                      "sha256": hashlib.sha256(payload).hexdigest()}
    body = torch.load(io.BytesIO(payload), weights_only=True)
    assert (body["magic"], body["format"], body["key"]) == ("simfl-learning-plan", 1, KEY)


def test_unknown_types_are_refused_when_saving() -> None:
    plan = hand_plan()
    plan.wall_s = {"phase1": Path("x")}  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="cannot store a PosixPath"):
        plan_bytes(plan, KEY)


# ---------------------------------------------------------------------------------------------------- never trusted
def test_a_pickle_payload_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bomb = pickle.dumps(Bomb(str(marker)), protocol=2)
    torch.load(io.BytesIO(_torch_bytes(Bomb(str(marker)))), weights_only=False).close()
    assert marker.exists()  # the control: a plain unpickler does run it
    marker.unlink()
    raw = tmp_path / "raw.pt"  # an old-style torch.save of arbitrary objects
    raw.write_bytes(_torch_bytes(Bomb(str(marker))))
    framed = tmp_path / "framed.pt"  # a crafted file that passes every header check
    framed.write_bytes(with_header(_torch_bytes({"magic": cache.MAGIC, "format": 1, "key": KEY,
                                                 "plan": Bomb(str(marker))})))
    bare = tmp_path / "bare.pt"
    bare.write_bytes(with_header(bomb))
    for f, why in ((raw, "no simfl header"), (framed, "not plain data"), (bare, "not plain data")):
        with pytest.raises(CacheFileError, match=why):
            read_plan(f, KEY)
        assert not marker.exists(), f.name


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_a_valid_file_under_another_keys_name_is_rejected(tmp_path: Path) -> None:
    write_plan(hand_plan(), tmp_path / f"plan-{KEY}.pt", KEY)
    copy = tmp_path / f"plan-{OTHER}.pt"
    copy.write_bytes((tmp_path / f"plan-{KEY}.pt").read_bytes())
    with pytest.raises(CacheFileError, match=f"key '{KEY}', not of its name's key {OTHER}"):
        read_plan(copy, OTHER)
    # a header edited to claim the other key still carries the first key in its hashed payload
    _, payload = split(copy.read_bytes())
    copy.write_bytes(with_header(payload, key=OTHER))
    with pytest.raises(CacheFileError, match="its payload holds the plan of key"):
        read_plan(copy, OTHER)


@pytest.mark.parametrize("where", [0, 1, 2])
def test_a_flipped_payload_byte_is_caught(tmp_path: Path, where: int) -> None:
    data = bytearray(plan_bytes(hand_plan(), KEY))
    start = data.index(b"\n") + 1
    i = start + (len(data) - start - 1) * where // 2  # first, middle and last payload byte
    data[i] ^= 0x01
    (tmp_path / "p.pt").write_bytes(bytes(data))
    with pytest.raises(CacheFileError, match="does not match its sha256"):
        read_plan(tmp_path / "p.pt", KEY)


def test_a_truncated_file_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = fake_learning(monkeypatch)
    warned: list[str] = []
    first = cached_plan(EXP, 3, lambda _m: None, tmp_path, warn=warned.append)
    assert (first.from_cache, first.saved, first.note, len(built)) == (False, True, "", 1)
    data = first.path.read_bytes()
    first.path.write_bytes(data[: len(data) * 2 // 3])
    again = cached_plan(EXP, 3, lambda _m: None, tmp_path, warn=warned.append)
    assert (again.from_cache, again.saved, len(built)) == (False, True, 2)
    assert len(warned) == 1 and "truncated" in warned[0] and str(first.path) in warned[0]
    assert "truncated" in again.note
    assert first.path.read_bytes() == data  # rebuilt and saved whole (the same plan: same bytes)
    third = cached_plan(EXP, 3, lambda _m: None, tmp_path, warn=warned.append)
    assert third.from_cache and len(built) == 2 and len(warned) == 1
    assert_same(dataclasses.replace(third.plan, partition=None), hand_plan())
    assert third.plan.partition == ("partition", 3)


def fake_learning(monkeypatch: pytest.MonkeyPatch, plan: Any = None) -> list[int]:
    """build_plan returns `plan` (default hand_plan()) and partition_of a token; returns the list of builds."""
    built: list[int] = []

    def build(exp: Experiment, seed: int, say: Any, device: str | None = None) -> LearningPlan:
        built.append(seed)
        return plan if plan is not None else hand_plan()

    monkeypatch.setattr(planning, "build_plan", build)
    monkeypatch.setattr(planning, "partition_of", lambda exp, seed: ("partition", seed))
    return built


# ---------------------------------------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    fake_learning(monkeypatch)
    real = {"write": os.fdopen, "fsync": os.fsync, "replace": os.replace}[failing]

    def full(*a: Any, **k: Any) -> Any:
        if failing == "write":  # a file object whose write fails as on a full disk
            f = real(*a, **k)
            f.write = lambda _b: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
            return f
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, {"write": "fdopen", "fsync": "fsync", "replace": "replace"}[failing], full)
    warned: list[str] = []
    res = cached_plan(EXP, 3, lambda _m: None, tmp_path, warn=warned.append)
    assert (res.from_cache, res.saved) == (False, False)
    assert len(warned) == 1 and "the disk is full" in warned[0] and "the disk is full" in res.note
    assert sorted(p.name for p in tmp_path.iterdir()) == [res.path.with_suffix(".lock").name]
    assert_same(res.plan, hand_plan())


# ---------------------------------------------------------------------------------------------------- concurrency
# fork: the children start in milliseconds (spawn re-imports torch: seconds each). They run no parallel torch
# kernels (tiny tensors, serialisation), which is what can hang in a fork of a process that used them; every
# wait has a timeout, so a hang would fail the test rather than stall the suite.
CONTEXT = "fork"
def _writer(path: str, key: str, seed: int, times: int, go: Any) -> None:
    data_plan = hand_plan(seed)
    go.wait()
    for _ in range(times):
        write_plan(data_plan, Path(path), key)


def _reader(path: str, key: str, stop: Any, out: Any) -> None:
    seen, bad = set(), []
    while not stop.is_set():
        try:
            seen.add(read_plan(Path(path), key).ari)
        except FileNotFoundError:
            continue
        except CacheFileError as e:
            bad.append(str(e))
    out.put((sorted(seen), bad))


def test_concurrent_writers_of_one_key_never_expose_a_partial_file(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context(CONTEXT)
    path = str(tmp_path / f"plan-{KEY}.pt")
    go, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(path, KEY, s, 40, go)) for s in (1, 2)]
    reader = ctx.Process(target=_reader, args=(path, KEY, stop, out))
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
    both = {hand_plan(1).ari, hand_plan(2).ari}
    assert set(seen) <= both and seen  # it read whole plans of the writers, nothing else
    final = read_plan(Path(path), KEY)
    assert final.ari in both
    assert_same(final, hand_plan(1) if final.ari == hand_plan(1).ari else hand_plan(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"plan-{KEY}.pt"]  # no temporary file left


def _run_cached(cache_dir: str, delay: float, building: Any, out: Any) -> None:
    """One run's cached_plan with a fake learning that takes `delay` seconds and says when it starts."""
    def build(exp: Experiment, seed: int, say: Any, device: str | None = None) -> LearningPlan:
        building.set()
        time.sleep(delay)
        return hand_plan(7)

    planning.build_plan = build
    planning.partition_of = lambda exp, seed: None
    res = cached_plan(EXP, 3, lambda _m: None, Path(cache_dir), warn=lambda _m: None)
    out.put((os.getpid(), res.from_cache, res.saved, res.plan.ari))


def test_a_second_run_of_the_same_learning_waits_and_reads_the_first_ones_plan(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context(CONTEXT)
    building, unused, out = ctx.Event(), ctx.Event(), ctx.Queue()
    first = ctx.Process(target=_run_cached, args=(str(tmp_path), 1.0, building, out))
    first.start()
    assert building.wait(60)  # the first run holds the lock and is learning
    second = ctx.Process(target=_run_cached, args=(str(tmp_path), 0.0, unused, out))
    second.start()
    results = {pid: rest for pid, *rest in (out.get(timeout=60), out.get(timeout=60))}
    for p in (first, second):
        p.join(60)
    assert results[first.pid] == [False, True, hand_plan(7).ari]  # learned and saved
    assert results[second.pid] == [True, False, hand_plan(7).ari]  # waited, then read it: learned nothing


def test_the_key_follows_what_is_learned_only() -> None:
    key = cache.plan_key(EXP, 3, "cpu")
    same = dataclasses.replace(EXP, aggregator="server", detector="last_fit", workers=3, preset_note="x")
    assert cache.plan_key(same, 3, "cpu") == key  # who aggregates, which AUCs are shown, how fast: same learning
    assert cache.plan_key(EXP, 3, "cuda:0") == cache.plan_key(EXP, 3, "cuda:1") != key  # the device kind counts
    for other in (dataclasses.replace(EXP, lr=EXP.lr * 2), dataclasses.replace(EXP, rounds=3)):
        assert cache.plan_key(other, 3, "cpu") != key
    assert cache.plan_key(EXP, 4, "cpu") != key


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
