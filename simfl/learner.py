"""The learner: what the simulated nodes learn, as references computed lazily, in batches, cached per model.

Node processes decide *who* takes part; the learner computes *what* that yields. A process registers a
computation (`train`, `fedavg`, `threshold`, `cross`, `auc`, or the seeded `init`) and gets a `Ref` at once: a
content key plus what the network and the clock need before any value exists (payload bits, FLOPs, training
samples). Registering computes nothing. Asking for a value (`value`) that is not ready flushes: every registered
node that is neither in memory nor in the store is evaluated, inside the caller's step (no simulated time
passes), in one engine call per stage and operation, stages in their order (phase I, the method's rounds, the
ideal baseline's rounds, the baselines, the evaluation), clients in order inside a stage.

Keys. A node's key is the first 32 hex digits of the sha256 of the canonical JSON ``{root, op, fields}``: its
parents appear as their keys, data as content hashes, `root` names the learn format, simfl and torch versions,
the device kind and the engine path. Two registrations of the same computation (the ideal baseline's groups the
communities share, or round 1 of a client whose community and true group share their lowest member) get one key
and are computed once; a store (`simfl.cache.NodeStore`) keeps each node's value across runs.

| op | fields besides root | value |
|---|---|---|
| `init` | model, seed | state (rebuilt by `init_state`, never stored) |
| `train` | model, data, init, opt, epochs, seed, batch_size, lr, val_fraction, patience, restore_best | state, opt |
| `fedavg` | parts = [[client, train key, n_train], ...] by client | state; meta weight |
| `threshold` | model, data, d | meta threshold (float32), wall_s |
| `cross` | model, threshold, shards (hash of every client's data key, in order) | row r[:, j]; meta wall_s |
| `auc` | model, test (data key of the test set), labels (hash of its outlier labels) | meta auc |

A train node's meta: n_train, epochs_run, flops, wall_s (the measured wall time that compute.parquet shows).

On CPU a result never depends on its batch (every job has its own seeded stream), so the learner's batches give
the results a whole-plan computation gave.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from simfl import models
from simfl.aggregation import fedavg
from simfl.config import Experiment
from simfl.data import Partition
from simfl.learning import Engine, ScoreJob, TrainJob, TrainResult, auc, threshold
from simfl.learning_worker import init_state, split_indices
from simfl.plan import _ticking

__all__ = ["Ref", "Stage", "Learner", "FakeEngine", "FlushStats", "StageStats", "LEARN_FORMAT", "THRESHOLD_BITS",
           "resolve_device"]

LEARN_FORMAT = 1
THRESHOLD_BITS = 32  # the float32 threshold a phase-I model travels with
STAGES = ("phase I", "method", "ideal", "baselines", "evaluation")
_OP_ORDER = ("init", "train", "fedavg", "threshold", "cross", "auc")
Say = Callable[[str], None]
Clients = int | tuple[int, ...] | None  # whose data a training reads: one client, some, or all (None)


@dataclass(frozen=True, slots=True)
class Ref:
    """A registered computation: its key and what is known before its value (None: depends on the value)."""

    key: str
    op: str
    bits: int | None = None  # payload bits of the model it yields, as sent
    flops: float | None = None  # FLOPs of computing it on a node
    n_train: int | None = None  # training samples (train: the FedAvg weight; fedavg: the sum)


@dataclass(frozen=True, slots=True, order=True)
class Stage:
    """Where a node's computation belongs: a stage of `STAGES` and, for FedAvg runs, the round (1..R)."""

    name: str
    round: int = 0

    def __post_init__(self) -> None:
        if self.name not in STAGES:
            raise ValueError(f"unknown stage {self.name!r} (one of {', '.join(STAGES)})")

    @property
    def rank(self) -> tuple[int, int]:
        return STAGES.index(self.name), self.round

    @property
    def label(self) -> str:
        return f"{self.name} round {self.round}" if self.round else self.name


PHASE1, BASELINES, EVALUATION = Stage("phase I"), Stage("baselines"), Stage("evaluation")


@dataclass
class StageStats:
    """One stage's nodes: registered (needed), read from the store (cached), computed now; the rest were shared
    with an earlier stage (the same key). `wall_s`: time spent computing."""

    needed: int = 0
    cached: int = 0
    computed: int = 0
    wall_s: float = 0.0

    def line(self, label: str) -> str:
        shared = self.needed - self.cached - self.computed
        return (f"learning: {label}: {self.needed} needed, {self.cached} cached, {self.computed} computed"
                + (f", {shared} shared" if shared else ""))


@dataclass
class FlushStats:
    """Counts of every flush so far, per stage label (in stage order), and the cross-evaluation's wall time."""

    stages: dict[str, StageStats] = field(default_factory=dict)
    cross_wall_s: float = 0.0

    def of(self, stage: Stage) -> StageStats:
        return self.stages.setdefault(stage.label, StageStats())

    @property
    def computed(self) -> int:
        return sum(s.computed for s in self.stages.values())

    @property
    def cached(self) -> int:
        return sum(s.cached for s in self.stages.values())


class Store(Protocol):
    """What the learner needs of a cache (`simfl.cache.NodeStore`)."""

    def meta(self, key: str) -> dict[str, Any] | None: ...
    def load(self, key: str) -> dict[str, Any]: ...
    def save(self, key: str, node: str, meta: dict[str, Any], payload: dict[str, Any]) -> None: ...
    def building(self, keys: Sequence[str]) -> Any: ...


class StoreDamaged(Exception):
    """A stored value could not be read back (the store has reported why): it is computed again."""


@dataclass
class _Node:
    ref: Ref
    text: str  # the canonical JSON the key hashes
    stage: Stage
    client: int  # order inside the stage (the centralised model: after every client)
    model: str  # the model it trains, averages, or scores with
    parents: tuple[str, ...]
    fields: dict[str, Any]  # what its key hashes besides the root
    job: dict[str, Any]  # what computing it needs beyond its fields and parents


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def data_hash(x: np.ndarray) -> str:
    """Content hash of an array (dtype, shape and bytes)."""
    x = np.ascontiguousarray(x)
    h = hashlib.sha256(repr((x.dtype.str, x.shape)).encode())
    h.update(x.view(np.uint8).reshape(-1).data)
    return h.hexdigest()[:32]


def model_bits(model: str) -> int | None:
    """Payload bits of a model's parameters (None for OC-SVM: its size depends on the fit)."""
    return None if model == "ocsvm" else 8 * models.payload_bytes(model)


def score_flops(model: str, n: int) -> float | None:
    """FLOPs of scoring n samples (None for OC-SVM)."""
    return None if model == "ocsvm" else n * models.flops_per_sample(model)


def resolve_device(device: str) -> str:
    """The device a run learns on: "auto" is "cuda" where torch sees a GPU, else "cpu"; others unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _quiet(_message: str) -> None:
    pass


class Learner:
    """Registers computations and evaluates them lazily (see the module docstring). Use it as a context manager
    (or call `close()`): the engine, started only when something must be computed, is closed there.

    `engine`: a factory of the engine (default: `Engine(device, exp.workers)`); `engine_kind` goes into every
    key (default: "stacked" on CUDA, else "per-client"), so values of another engine path never mix."""

    def __init__(self, exp: Experiment, partition: Partition, store: Store | None = None, say: Say = _quiet,
                 device: str = "cpu", engine: Callable[[], Any] | None = None, engine_kind: str | None = None
                 ) -> None:
        from simfl import __version__

        self.exp = exp
        self.partition = partition
        self.store = store
        self.say = say
        kind = device.split(":")[0]
        self._make_engine = engine or (lambda: Engine(device=device, workers=exp.workers))
        self._engine: Any = None
        self.root = {"format": LEARN_FORMAT, "simfl": __version__, "torch": torch.__version__, "device": kind,
                     "engine": engine_kind or ("stacked" if kind == "cuda" else "per-client")}
        self._nodes: dict[str, _Node] = {}
        self._values: dict[str, dict[str, Any]] = {}
        self._cached: set[str] = set()  # in the store: meta in _values, the rest read on demand
        self._damaged: set[str] = set()  # stored, but their payload could not be read: computed again
        self._pending: dict[str, None] = {}  # registered, not evaluated yet (insertion order)
        self._needed: set[tuple[str, str]] = set()  # (stage label, key)
        self._data: dict[Clients, str] = {}
        self._tests: dict[int, tuple[str, str]] = {}
        self._union: np.ndarray | None = None
        self.stats = FlushStats()

    # ---------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    @property
    def engine(self) -> Any:
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    # ---------------------------------------------------------------------------------------- data
    def _x(self, client: Clients) -> np.ndarray:
        """Client `client`'s shard; None: every shard, in client order (the centralised model's data); a tuple:
        those clients' shards, in its order (the shards that reached the server)."""
        if isinstance(client, int):
            return self.partition.clients[client].x
        if isinstance(client, tuple):
            return np.concatenate([self.partition.clients[i].x for i in client])
        if self._union is None:
            self._union = np.concatenate([s.x for s in self.partition.clients])
        return self._union

    def _data_key(self, client: Clients) -> str:
        """Content key of a shard; None: of all shards in order, a tuple: of those shards (a hash of their keys)."""
        if client not in self._data:
            if client is None or isinstance(client, tuple):
                ids = range(self.partition.n_clients) if client is None else client
                self._data[client] = _sha("".join(self._data_key(i) for i in ids))[:32]
            else:
                self._data[client] = data_hash(self.partition.clients[client].x)
        return self._data[client]

    def _test_keys(self, cls: int) -> tuple[str, str]:
        if cls not in self._tests:
            x, is_out = self.partition.tests[cls]
            self._tests[cls] = (data_hash(x), data_hash(np.asarray(is_out, dtype=bool)))
        return self._tests[cls]

    # ---------------------------------------------------------------------------------------- registering
    def _register(self, op: str, fields: dict[str, Any], stage: Stage, client: int, model: str, *,
                  parents: Sequence[Ref | None] = (), job: dict[str, Any] | None = None, bits: int | None = None,
                  flops: float | None = None, n_train: int | None = None) -> Ref:
        text = json.dumps({"root": self.root, "op": op, "fields": fields}, sort_keys=True, separators=(",", ":"))
        key = _sha(text)[:32]
        node = self._nodes.get(key)
        if node is None:
            node = _Node(Ref(key, op, bits, flops, n_train), text, stage, client, model,
                         tuple(p.key for p in parents if p is not None), fields, job or {})
            self._nodes[key] = node
            self._pending[key] = None
        if (stage.label, key) not in self._needed:
            self._needed.add((stage.label, key))
            if op != "init":
                self.stats.of(stage).needed += 1
        return node.ref

    def _model(self, ref: Ref) -> str:
        return self._nodes[ref.key].model

    def init(self, model: str, seed: int, stage: Stage) -> Ref:
        """The seeded initial weights of `model` (a FedAvg run's start)."""
        return self._register("init", {"model": model, "seed": int(seed)}, stage, -1, model, bits=model_bits(model))

    def train(self, client: Clients, model: str, epochs: int, seed: int, *, stage: Stage,
              init: Ref | None = None, opt: Ref | None = None, patience: int | None = None,
              restore_best: bool = False) -> Ref:
        """Train `model` on client `client`'s shard (None: on every shard, the centralised model; a tuple: on those
        clients' shards) from `init` (None: fresh seeded weights), continuing the Adam state of the train node
        `opt`."""
        exp = self.exp
        n = len(self._x(client))
        n_train = n if model == "ocsvm" else len(split_indices(n, exp.val_fraction)[0])
        fields = {"model": model, "data": self._data_key(client), "init": init and init.key,
                  "opt": opt and opt.key, "epochs": int(epochs), "seed": int(seed), "batch_size": exp.batch_size,
                  "lr": exp.lr, "val_fraction": exp.val_fraction, "patience": patience,
                  "restore_best": bool(restore_best)}
        fixed = model != "ocsvm" and patience is None
        flops = float(epochs * n_train * models.flops_per_sample(model, train=True)) if fixed else None
        order = client if isinstance(client, int) else self.partition.n_clients
        return self._register("train", fields, stage, order, model, parents=(init, opt), job={"client": client},
                              bits=model_bits(model), flops=flops, n_train=n_train)

    def fedavg(self, parts: Sequence[tuple[int, Ref]], stage: Stage) -> Ref:
        """The average of the (client, train ref) `parts`, weighted by their training samples."""
        parts = sorted(parts, key=lambda p: p[0])
        model = self._model(parts[0][1])
        fields = {"parts": [[int(c), r.key, r.n_train] for c, r in parts]}
        flops = 2.0 * len(parts) * models.param_count(model) if model != "ocsvm" else None
        return self._register("fedavg", fields, stage, parts[0][0], model, parents=[r for _, r in parts],
                              bits=parts[0][1].bits, flops=flops,
                              n_train=sum(r.n_train or 0 for _, r in parts))

    def threshold(self, model: Ref, client: int, stage: Stage = PHASE1) -> Ref:
        """The 100 (1 - d) percentile of `model`'s scores on client `client`'s shard (its own threshold)."""
        m = self._model(model)
        fields = {"model": model.key, "data": self._data_key(client), "d": self.exp.outlier_fraction}
        return self._register("threshold", fields, stage, client, m, parents=(model,), job={"client": client},
                              flops=score_flops(m, len(self._x(client))))

    def cross(self, model: Ref, thr: Ref, stage: Stage = PHASE1) -> Ref:
        """r[:, j] for model j = `model` with threshold `thr`: the share of each client's shard it calls inliers."""
        fields = {"model": model.key, "threshold": thr.key, "shards": self._data_key(None)}
        return self._register("cross", fields, stage, self._nodes[thr.key].client, self._model(model),
                              parents=(model, thr))

    def auc(self, model: Ref, cls: int, stage: Stage = EVALUATION) -> Ref:
        """AUC-ROC of `model` on inlier class `cls`'s test set."""
        test, labels = self._test_keys(cls)
        return self._register("auc", {"model": model.key, "test": test, "labels": labels}, stage, cls,
                              self._model(model), parents=(model,), job={"cls": cls})

    # ---------------------------------------------------------------------------------------- values
    def value(self, ref: Ref, part: str = "state") -> Any:
        """Part of `ref`'s value: "state", "opt" (train), "row" (cross) or "meta"; flushes when not ready."""
        if ref.key in self._pending:
            self.flush()
        try:
            return self._part(ref.key, part)
        except StoreDamaged:
            self._pending[ref.key] = None
            self.flush()
            return self._part(ref.key, part)

    def meta(self, ref: Ref) -> dict[str, Any]:
        return self.value(ref, "meta")

    def _part(self, key: str, part: str) -> Any:
        have = self._values.get(key)
        if have is not None and part in have:
            return have[part]
        node = self._nodes[key]
        if node.ref.op == "init":
            self._values[key] = {"state": init_state(node.model, node.fields["seed"]), "meta": {}}
        elif key in self._cached and self.store is not None:
            payload = self.store.load(key)
            if payload is None:  # damaged: the store said why; compute it again
                self._damaged.add(key)
                self._cached.discard(key)
                self._values.pop(key, None)
                self.stats.of(node.stage).cached -= 1
                raise StoreDamaged(key)
            self._values[key].update(payload)
        return self._values[key][part]

    # ---------------------------------------------------------------------------------------- flushing
    def flush(self) -> FlushStats:
        """Evaluate every registered node that is neither in memory nor in the store (see the module docstring)."""
        todo, self._pending = list(self._pending), {}
        touched = {self._nodes[k].stage for k in todo if self._nodes[k].ref.op != "init"}
        compute = []
        for key in todo:
            node = self._nodes[key]
            if node.ref.op == "init" or key in self._values:  # init: rebuilt on demand
                continue
            meta = self._stored_meta(key)
            if meta is None:
                compute.append(key)
            else:
                self._values[key] = {"meta": meta}
                self._cached.add(key)
                self.stats.of(node.stage).cached += 1
        self._evaluate(compute)
        for stage in sorted(touched, key=lambda s: s.rank):
            self.say(self.stats.of(stage).line(stage.label))
        return self.stats

    def _stored_meta(self, key: str) -> dict[str, Any] | None:
        """The store's meta of `key`; None when it has none, or its entry proved damaged in this run."""
        if self.store is None or key in self._damaged:
            return None
        return self.store.meta(key)

    def _order(self, key: str) -> tuple[tuple[int, int], int, int]:
        node = self._nodes[key]
        return node.stage.rank, _OP_ORDER.index(node.ref.op), node.client

    def _evaluate(self, keys: Sequence[str]) -> None:
        """Compute `keys` (and any stored parent that turns out damaged): a batch is every ready node of the
        first (stage, op), clients in order."""
        left = sorted(keys, key=self._order)
        while left:
            waiting = set(left)
            ready = [k for k in left if not any(p in waiting for p in self._nodes[k].parents)]
            first = self._order(ready[0])[:2]
            batch = [k for k in ready if self._order(k)[:2] == first]
            try:
                self._run(batch)
            except StoreDamaged as e:
                left = sorted([*left, e.args[0]], key=self._order)
                continue
            done = set(batch)
            left = [k for k in left if k not in done]

    def _run(self, batch: list[str]) -> None:
        """Compute one batch (one op of one stage) and keep and store its values; nodes another process stored
        while this one waited for their locks are read instead."""
        node = self._nodes[batch[0]]
        inputs = {k: self._inputs(k) for k in batch}  # may raise StoreDamaged: before anything is computed
        t0 = time.perf_counter()
        with self._building(batch) as todo:
            if todo:
                run = {"train": self._train, "fedavg": self._fedavg, "threshold": self._threshold,
                       "cross": self._cross, "auc": self._auc}[node.ref.op]
                for key, (meta, payload) in zip(todo, run(todo, [inputs[k] for k in todo]), strict=True):
                    self._values[key] = {"meta": meta, **payload}
                    if self.store is not None:
                        self.store.save(key, self._nodes[key].text, meta, payload)
        stats = self.stats.of(node.stage)
        stats.computed += len(todo)
        stats.wall_s += time.perf_counter() - t0

    def _inputs(self, key: str) -> dict[str, Any]:
        """The parents' values a node's computation takes."""
        node = self._nodes[key]
        f = node.fields
        if node.ref.op == "train":
            return {"init": f["init"] and self._part(f["init"], "state"),
                    "opt": f["opt"] and self._part(f["opt"], "opt")}
        if node.ref.op == "fedavg":
            return {"states": [self._part(k, "state") for _, k, _ in f["parts"]]}
        if node.ref.op == "cross":
            return {"state": self._part(f["model"], "state"),
                    "threshold": self._part(f["threshold"], "meta")["threshold"]}
        return {"state": self._part(f["model"], "state")}

    @contextlib.contextmanager
    def _building(self, batch: list[str]) -> Iterator[list[str]]:
        """The store's locks on `batch`; inside, the keys still to compute (the others were stored meanwhile)."""
        if self.store is None:
            yield batch
            return
        with self.store.building(batch):
            todo = []
            for key in batch:
                meta = self._stored_meta(key)
                if meta is None:
                    todo.append(key)
                else:
                    self._values[key] = {"meta": meta}
                    self._cached.add(key)
                    self.stats.of(self._nodes[key].stage).cached += 1
            yield todo

    # ---------------------------------------------------------------------------------------- the operations
    def _train(self, keys: list[str], inputs: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
        nodes = [self._nodes[k] for k in keys]
        jobs = []
        for node, got in zip(nodes, inputs, strict=True):
            f, client = node.fields, node.job["client"]
            jobs.append(TrainJob(
                key=client if isinstance(client, int) else -1, model=node.model, x=self._x(client), epochs=f["epochs"],
                seed=f["seed"], init_state=got["init"], batch_size=f["batch_size"], lr=f["lr"],
                val_fraction=f["val_fraction"], opt_state=got["opt"], patience=f["patience"],
                restore_best=f["restore_best"]))
        epochs = sorted({j.epochs for j in jobs})
        self.say(f"{nodes[0].stage.label}: training {len(jobs)} x {nodes[0].model}, "
                 f"{'/'.join(map(str, epochs))} epoch{'s' if epochs != [1] else ''}")
        with _ticking(self.engine, self.say, "models trained"):
            results: list[TrainResult] = self.engine.train(jobs)
        out = []
        for node, r in zip(nodes, results, strict=True):
            if r.n_train != node.ref.n_train or (node.ref.flops is not None and r.flops != node.ref.flops):
                raise RuntimeError(f"train {node.ref.key}: the engine trained {r.n_train} samples / {r.flops} FLOPs, "
                                   f"the learner announced {node.ref.n_train} / {node.ref.flops} (internal error)")
            meta = {"n_train": r.n_train, "epochs_run": r.epochs_run, "flops": r.flops, "wall_s": r.wall_s}
            out.append((meta, {"state": r.state, "opt": r.opt_state}))
        return out

    def _fedavg(self, keys: list[str], inputs: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
        out = []
        for key, got in zip(keys, inputs, strict=True):
            weights = [n for _, _, n in self._nodes[key].fields["parts"]]
            out.append(({"weight": sum(weights)}, {"state": fedavg(got["states"], weights)}))
        return out

    def _scores(self, keys: list[str], inputs: list[dict[str, Any]], xs: list[np.ndarray]) -> tuple[list, float]:
        jobs = [ScoreJob(key=i, model=self._nodes[k].model, state=got["state"], x=x)
                for i, (k, got, x) in enumerate(zip(keys, inputs, xs, strict=True))]
        t0 = time.perf_counter()
        scores = self.engine.score(jobs)
        return scores, time.perf_counter() - t0

    def _threshold(self, keys: list[str], inputs: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
        d = self.exp.outlier_fraction
        scores, wall = self._scores(keys, inputs, [self._x(self._nodes[k].job["client"]) for k in keys])
        # float32, as the threshold travels with its model
        return [({"threshold": float(np.float32(threshold(s, d))), "wall_s": wall / len(keys)}, {}) for s in scores]

    def _cross(self, keys: list[str], inputs: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
        out: dict[str, tuple[dict, dict]] = {}
        xs = [s.x for s in self.partition.clients]
        for model in sorted({self._nodes[k].model for k in keys}):
            mine = [(k, got) for k, got in zip(keys, inputs, strict=True) if self._nodes[k].model == model]
            self.say(f"phase I: cross-evaluation ({len(mine)} models x {len(xs)} shards)")
            t0 = time.perf_counter()
            with _ticking(self.engine, self.say, "groups of models done"):
                r = self.engine.cross_inlier_ratios(model, [g["state"] for _, g in mine],
                                                    [g["threshold"] for _, g in mine], xs)
            wall = time.perf_counter() - t0
            self.stats.cross_wall_s += wall
            for j, (k, _) in enumerate(mine):
                out[k] = ({"wall_s": wall / len(mine)}, {"row": np.ascontiguousarray(r[:, j], dtype=np.float64)})
        return [out[k] for k in keys]

    def _auc(self, keys: list[str], inputs: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
        tests = [self.partition.tests[self._nodes[k].job["cls"]] for k in keys]
        self.say(f"evaluation: scoring {len(keys)} models on their test sets")
        scores, _ = self._scores(keys, inputs, [x for x, _ in tests])
        return [({"auc": float(auc(s, is_out))}, {}) for s, (_, is_out) in zip(scores, tests, strict=True)]


# -------------------------------------------------------------------------------------------- a fake engine
class FakeEngine:
    """A stand-in for `Engine` in tests: instant and deterministic, with values that show their origin.

    A trained state is ``{"w": [client, depth]}`` (depth: 1 + the depth of the model it started from, so a FedAvg
    run's round-r update has depth r); a score is the sample's index; the cross-evaluation returns
    ``ratios[:, owner]`` (the owner read off each state's ``w[0]``; all 0.9 without `ratios`). `calls` lists each
    call as (method, [job keys])."""

    def __init__(self, ratios: np.ndarray | None = None) -> None:
        self.ratios = ratios
        self.calls: list[tuple[str, list[int]]] = []
        self.on_progress: Callable[[int, int], None] | None = None

    def __enter__(self) -> FakeEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def train(self, jobs: Sequence[TrainJob]) -> list[TrainResult]:
        self.calls.append(("train", [j.key for j in jobs]))
        out = []
        for j in jobs:
            n_train = len(split_indices(len(j.x), j.val_fraction)[0])
            start = (j.init_state or {}).get("w")  # a real initial state has no "w": depth 0
            depth = 1.0 + (float(start[1]) if start is not None else 0.0)
            step = (j.opt_state or {}).get("step", 0) + j.epochs
            out.append(TrainResult(
                key=j.key, state={"w": torch.tensor([float(j.key), depth])}, opt_state={"step": step},
                n_train=n_train, epochs_run=j.epochs, losses=[], val_losses=[], wall_s=0.0,
                flops=float(j.epochs * n_train * models.flops_per_sample(j.model, train=True))))
        return out

    def score(self, jobs: Sequence[ScoreJob]) -> list[np.ndarray]:
        self.calls.append(("score", [j.key for j in jobs]))
        return [np.arange(len(j.x), dtype=np.float64) for j in jobs]

    def cross_inlier_ratios(self, model: str, states: Sequence[dict], thresholds: Sequence[float],
                            xs: Sequence[np.ndarray]) -> np.ndarray:
        owners = [int(s["w"][0]) for s in states]
        self.calls.append(("cross", owners))
        if self.ratios is None:
            return np.full((len(xs), len(states)), 0.9)
        return np.asarray(self.ratios, dtype=np.float64)[:, owners]
