"""Training and scoring engine: the learning that the simulated nodes really do.

Requests (train these clients' models for E epochs; score these samples with this model; phase I's all-pairs
cross-evaluation) arrive in batches, one per simulated instant, and run together:

* CPU (``device="cpu"``): one model and one Adam per client, clients spread over persistent worker processes
  (spawned, one torch thread each, channels_last). Each client's data travels to a worker once and stays cached
  there under a content key. Every job has its own seeded random stream, so results do not depend on how many
  workers ran them or which one did (``workers=0`` runs everything in this process, also on one thread).
* GPU (``device="cuda"``): all clients of a request stacked into one computation: parameters stacked on a client
  axis, ``torch.func.vmap(functional_call)`` forward, one backward, an element-wise masked Adam (a client with no
  batch at a step, or already stopped early, is left untouched), padding + masks where shard sizes differ. TF32
  is off. The stacked path also runs on CPU tensors (``Engine(device="cpu", stacked=True)``): the tests compare it
  with the per-client path there.
* Scores are L2 reconstruction distances; ``threshold`` is the 100*(1-d) percentile of the owner's training scores;
  ``auc`` is scikit-learn's ROC AUC with outliers as the positive class.

Training follows the authors: Adam (lr 1e-3), MSE, batch 32, Keras' validation split (the last 10% of a client's
shard, the same in every round), optional early stopping on the validation loss (the local baseline; like Keras'
EarlyStopping it keeps the last weights unless ``restore_best``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Listener, wait
from typing import Any

import numpy as np
import torch

from simfl.errors import SimflError
from simfl.learning_worker import (
    ADAM_BETAS,
    ADAM_EPS,
    SCORE_BATCH,
    DataCache,
    init_state,
    job_rng,
    run_task,
    split_indices,
    to_float_images,
    tree_torch,
)
from simfl.models import MODEL_NAMES, build_model, flops_per_sample

__all__ = [
    "Engine",
    "ScoreJob",
    "TrainJob",
    "TrainResult",
    "auc",
    "model_of_state",
    "threshold",
]


@dataclass(frozen=True)
class TrainJob:
    key: int
    model: str
    x: np.ndarray  # uint8 [N, 28, 28]
    epochs: int
    seed: int
    init_state: dict[str, torch.Tensor] | None = None  # None: fresh init from seed
    batch_size: int = 32
    lr: float = 1e-3
    val_fraction: float = 0.1
    opt_state: object | None = None  # Adam state of an earlier TrainResult (persists across rounds)
    patience: int | None = None  # early stopping: stop after this many epochs without a lower validation loss
    restore_best: bool = False  # on stopping, return the best epoch's weights (Keras' default: the last ones)


@dataclass
class TrainResult:
    key: int
    state: dict[str, Any]  # CPU, contiguous torch tensors (ocsvm: float32 numpy arrays)
    opt_state: object  # {"step": int, "exp_avg": {name: tensor}, "exp_avg_sq": {name: tensor}}; ocsvm: None
    n_train: int  # samples trained on (the FedAvg weight)
    epochs_run: int
    losses: list[float]  # mean training MSE per epoch
    val_losses: list[float]  # validation MSE after each epoch
    wall_s: float
    flops: float  # epochs_run * n_train * flops_per_sample(model, train=True)


@dataclass(frozen=True)
class ScoreJob:
    key: int
    model: str
    state: dict
    x: np.ndarray  # uint8 [N, 28, 28]


def threshold(scores: np.ndarray, d: float) -> float:
    """The 100*(1-d) percentile of ``scores`` (numpy's linear interpolation)."""
    return float(np.percentile(np.asarray(scores, dtype=np.float64), 100.0 * (1.0 - d)))


def auc(scores: np.ndarray, is_outlier: np.ndarray) -> float:
    """AUC-ROC of ``scores`` (larger = more anomalous) with outliers as the positive class."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(is_outlier, dtype=bool), np.asarray(scores, dtype=np.float64)))


def model_of_state(state: Mapping[str, Any]) -> str:
    """Which of MODEL_NAMES a state dict belongs to (by its keys and shapes)."""
    if "support_vectors" in state:
        return "ocsvm"
    for name in ("ae5", "ae7", "flat"):
        ref = build_model(name).state_dict()
        if set(ref) == set(state) and all(tuple(ref[k].shape) == tuple(np.shape(state[k])) for k in ref):
            return name
    raise ValueError("state dict matches none of the models " + ", ".join(MODEL_NAMES))


def data_key(x: np.ndarray) -> str:
    """Content key of a client's data (what a worker caches it under)."""
    x = np.ascontiguousarray(x)
    h = hashlib.blake2b(x.view(np.uint8).reshape(-1).data, digest_size=16)
    h.update(repr((x.dtype.str, x.shape)).encode())
    return h.hexdigest()


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _train_kwargs(job: TrainJob) -> dict[str, Any]:
    from simfl.learning_worker import tree_np

    return {
        "epochs": int(job.epochs),
        "seed": int(job.seed),
        "init": tree_np(dict(job.init_state)) if job.init_state is not None else None,
        "batch_size": int(job.batch_size),
        "lr": float(job.lr),
        "val_fraction": float(job.val_fraction),
        "opt_state": tree_np(job.opt_state) if job.opt_state else None,
        "patience": job.patience,
        "restore_best": bool(job.restore_best),
    }


def _check_job(job: TrainJob) -> None:
    if job.model not in MODEL_NAMES:
        raise SimflError(f"unknown model {job.model!r} (expected one of {', '.join(MODEL_NAMES)})")
    x = np.asarray(job.x)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
        raise SimflError(f"job {job.key}: x must be uint8 [N, 28, 28], got {x.dtype} {x.shape}")
    if job.epochs < 1 or job.batch_size < 1 or not 0 <= job.val_fraction < 1:
        raise SimflError(f"job {job.key}: epochs and batch_size must be >= 1 and 0 <= val_fraction < 1")


def _result(key: int, raw: Mapping[str, Any]) -> TrainResult:
    state = raw["state"]
    if not (isinstance(state, dict) and "support_vectors" in state):
        state = tree_torch(state)
    return TrainResult(
        key=key,
        state=state,
        opt_state=tree_torch(raw["opt_state"]),
        n_train=raw["n_train"],
        epochs_run=raw["epochs_run"],
        losses=list(raw["losses"]),
        val_losses=list(raw["val_losses"]),
        wall_s=raw["wall_s"],
        flops=raw["flops"],
    )


# ----------------------------------------------------------------------------------------- worker pool


@dataclass
class _Task:
    payload: tuple  # what run_task gets
    data: dict[str, np.ndarray]  # data keys it needs -> arrays
    cost: float  # relative cost, for balancing


@dataclass
class _Worker:
    proc: Any
    conn: Any
    resident: OrderedDict = field(default_factory=OrderedDict)  # key -> nbytes (LRU order)


TCMALLOC_PATHS = tuple(f"/usr/lib/{arch}-linux-gnu/libtcmalloc_minimal.so.4" for arch in ("x86_64", "aarch64"))


def _tcmalloc_env(env: Mapping[str, str]) -> dict[str, str]:
    """LD_PRELOAD tcmalloc for the workers where Debian's libtcmalloc-minimal4 is installed.

    With glibc malloc a third of the workers' time went to the kernel (page faults from freed and re-mapped
    activation buffers); tcmalloc keeps the memory and makes small-model training and scoring ~1.8x faster here.
    SIMFL_TCMALLOC=0 turns it off."""
    if env.get("SIMFL_TCMALLOC", "1") == "0" or "tcmalloc" in env.get("LD_PRELOAD", ""):
        return {}
    lib = next((p for p in TCMALLOC_PATHS if os.path.exists(p)), None)
    if lib is None:
        return {}
    return {"LD_PRELOAD": f"{lib}:{env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else lib}


class _Pool:
    """Persistent worker processes, each one torch thread, each with its own data cache."""

    def __init__(self, n: int, cache_bytes: int) -> None:
        # Fresh interpreters started as ``python -m simfl.learning_worker``: unlike multiprocessing's spawn they
        # never re-import the caller's __main__, so scripts need no ``if __name__ == "__main__"`` guard.
        self.cache_bytes = cache_bytes
        self.workers: list[_Worker] = []
        self._tmp = tempfile.mkdtemp(prefix="simfl-learn-")
        address = os.path.join(self._tmp, "sock")
        authkey = secrets.token_bytes(16)
        procs: list[subprocess.Popen] = []
        try:
            listener = Listener(address, family="AF_UNIX", authkey=authkey)
            try:
                for _ in range(n):
                    env = dict(os.environ, SIMFL_WORKER_KEY=authkey.hex(), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
                    env.update(_tcmalloc_env(env))
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "simfl.learning_worker", address], env=env, stdin=subprocess.DEVNULL
                    ))
                for proc in procs:
                    self.workers.append(_Worker(proc, listener.accept()))
            finally:
                listener.close()
        except BaseException:  # failed or interrupted while starting: no worker and no temp folder outlives it
            for proc in procs:
                proc.kill()
                proc.wait()
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def run(self, tasks: list[_Task], on_tick: Callable[[int, int], None] | None = None) -> list[Any]:
        """Run ``tasks`` on the workers; ``on_tick(done, total)`` after each finished task."""
        n = len(self.workers)
        load = [0.0] * n
        plan: list[list[int]] = [[] for _ in range(n)]
        # Longest job first to the least loaded worker; a worker that holds the data wins ties and small gaps.
        for i in sorted(range(len(tasks)), key=lambda i: (-tasks[i].cost, i)):
            t = tasks[i]

            def penalty(w: int, t: _Task = t) -> float:
                missing = sum(x.nbytes for k, x in t.data.items() if k not in self.workers[w].resident)
                return load[w] + t.cost * 0.02 * (missing > 0)

            w = min(range(n), key=lambda w: (penalty(w), w))
            plan[w].append(i)
            load[w] += t.cost
        for w, idx in enumerate(plan):
            if not idx:
                continue
            worker = self.workers[w]
            new: dict[str, np.ndarray] = {}
            needed: set[str] = set()
            for i in idx:
                for k, x in tasks[i].data.items():
                    needed.add(k)
                    if k in worker.resident:
                        worker.resident.move_to_end(k)
                    elif k not in new:
                        new[k] = x
            for k, x in new.items():
                worker.resident[k] = x.nbytes
            drop = []
            total = sum(worker.resident.values())
            for k in list(worker.resident):
                if total <= self.cache_bytes:
                    break
                if k not in needed:
                    total -= worker.resident.pop(k)
                    drop.append(k)
            worker.conn.send(("run", new, drop, [tasks[i].payload for i in idx]))
        results: list[Any] = [None] * len(tasks)
        errors = []
        pending = {self.workers[w].conn: w for w, idx in enumerate(plan) if idx}
        done = 0
        while pending:
            for conn in wait(list(pending)):
                w = pending[conn]
                try:
                    msg = conn.recv()
                except EOFError:
                    msg = ("error", f"worker {w} died")
                if msg[0] == "tick":
                    done += 1
                    if on_tick is not None:
                        on_tick(done, len(tasks))
                    continue
                del pending[conn]
                status, out = msg
                if status != "ok":
                    errors.append(out)
                    self.workers[w].resident.clear()
                    continue
                for i, r in zip(plan[w], out, strict=True):
                    results[i] = r
        if errors:
            raise RuntimeError("learning worker failed:\n" + "\n".join(errors))
        return results

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(OSError):
                w.conn.send(("stop",))
        for w in self.workers:
            try:
                w.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                w.proc.terminate()
                w.proc.wait(timeout=5)
            w.conn.close()
        self.workers = []
        shutil.rmtree(self._tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------- the engine


class Engine:
    """Runs the learning requests of one simulated instant together (see the module docstring)."""

    def __init__(
        self,
        device: str = "cpu",
        workers: int = 2,
        deterministic: bool = True,
        *,
        stacked: bool | None = None,
        cache_bytes: int = 1 << 30,
        score_batch: int | None = None,
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise SimflError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SimflError("device 'cuda' requested but torch sees no CUDA device (use --device cpu or auto)")
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.deterministic = deterministic
        self.stacked = self.is_cuda if stacked is None else bool(stacked)
        self.workers = 0 if self.is_cuda else max(0, int(workers))
        self.score_batch = score_batch or (8192 if self.is_cuda else SCORE_BATCH)
        self.cache_bytes = cache_bytes
        self._pool: _Pool | None = None
        self.on_progress: Callable[[int, int], None] | None = None  # (done, total) tasks of the current request
        self._local = DataCache()
        self._local_lru: OrderedDict[str, int] = OrderedDict()
        self._dev_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        if self.is_cuda:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            if deterministic:
                torch.backends.cudnn.benchmark = False
                torch.backends.cudnn.deterministic = True

    # -- lifecycle
    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- dispatch of CPU tasks
    def _run_cpu(self, tasks: list[_Task]) -> list[Any]:
        if not tasks:
            return []
        if self.workers > 0:
            if self._pool is None:
                self._pool = _Pool(self.workers, self.cache_bytes)
            return self._pool.run(tasks, self.on_progress)
        out = []
        with _torch_threads(1 if self.deterministic else None):
            for t in tasks:
                for k, x in t.data.items():
                    if k not in self._local.raw:
                        self._local.put(k, x)
                    self._local_lru[k] = x.nbytes
                    self._local_lru.move_to_end(k)
                out.append(run_task(t.payload, self._local))
                if self.on_progress is not None:
                    self.on_progress(len(out), len(tasks))
                while sum(self._local_lru.values()) > self.cache_bytes and len(self._local_lru) > 1:
                    k, _ = self._local_lru.popitem(last=False)
                    self._local.drop(k)
        return out

    # -- training
    def train(self, jobs: Sequence[TrainJob]) -> list[TrainResult]:
        """Train every job's model; results in job order, independent of the number of workers."""
        for job in jobs:
            _check_job(job)
        results: list[TrainResult | None] = [None] * len(jobs)
        cpu_idx = [i for i, j in enumerate(jobs) if j.model == "ocsvm" or not self.stacked]
        tasks = []
        for i in cpu_idx:
            job = jobs[i]
            k = data_key(job.x)
            cost = len(job.x) * job.epochs * (flops_per_sample(job.model, train=True)
                                              if job.model != "ocsvm" else len(job.x) * 3e3)
            tasks.append(_Task(("train", job.model, k, _train_kwargs(job)), {k: np.asarray(job.x)}, cost))
        for i, raw in zip(cpu_idx, self._run_cpu(tasks), strict=True):
            results[i] = _result(jobs[i].key, raw)
        stacked_idx = [i for i, j in enumerate(jobs) if j.model != "ocsvm" and self.stacked]
        groups: dict[tuple, list[int]] = {}
        for i in stacked_idx:
            j = jobs[i]
            groups.setdefault((j.model, j.batch_size, j.lr), []).append(i)
        with _torch_threads(1 if self.deterministic and not self.is_cuda else None):
            for idx in groups.values():
                for i, res in zip(idx, train_stacked([jobs[i] for i in idx], self.device), strict=True):
                    results[i] = res
        return results  # type: ignore[return-value]

    # -- scoring
    def score(self, jobs: Sequence[ScoreJob]) -> list[np.ndarray]:
        """L2 reconstruction distance of every sample (ocsvm: -decision_function), float64."""
        if self.is_cuda:
            return [
                _ocsvm_host(j) if j.model == "ocsvm" else self._score_device(j.model, j.state, j.x) for j in jobs
            ]
        tasks = []
        for j in jobs:
            k = data_key(j.x)
            state = j.state if j.model == "ocsvm" else {n: np.asarray(torch.as_tensor(v)) for n, v in
                                                         j.state.items()}
            cost = len(j.x) * (flops_per_sample(j.model) if j.model != "ocsvm" else 1e6)
            tasks.append(_Task(("score", j.model, state, k), {k: np.asarray(j.x)}, cost))
        return self._run_cpu(tasks)

    def cross_inlier_ratios(
        self,
        model: str | Sequence[dict],
        states: Sequence[dict],
        thresholds: Sequence[float],
        xs: Sequence[np.ndarray] | None = None,
    ) -> np.ndarray:
        """r[i, j] = share of xs[i] that model j (states[j], thresholds[j]) calls inliers (score <= thr_j).

        ``model`` may be left out (``cross_inlier_ratios(states, thresholds, xs)``): it is read off the states.
        """
        if not isinstance(model, str):
            model, states, thresholds, xs = model_of_state(model[0]), model, states, thresholds  # type: ignore
        assert xs is not None
        if len(states) != len(thresholds):
            raise ValueError("states and thresholds differ in length")
        sizes = np.array([len(x) for x in xs], dtype=np.float64)
        if self.is_cuda and model != "ocsvm":
            counts = self._cross_device(model, states, thresholds, xs)
        else:
            keys = [data_key(x) for x in xs]
            data = {k: np.asarray(x) for k, x in zip(keys, xs, strict=True)}
            # a few chunks per worker: the engine can report progress between them (each worker concatenates
            # the shards once and keeps them for its next chunk)
            n_chunks = min(len(states), 5 * max(1, self.workers))
            bounds = np.linspace(0, len(states), n_chunks + 1).round().astype(int)
            tasks = []
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                if b <= a:
                    continue
                st = [s if model == "ocsvm" else {n: np.asarray(torch.as_tensor(v)) for n, v in s.items()}
                      for s in states[a:b]]
                tasks.append(_Task(("cross", model, st, [float(t) for t in thresholds[a:b]], keys), data,
                                   float(b - a)))
            counts = np.concatenate(self._run_cpu(tasks), axis=0)
        return counts.T / sizes[:, None]

    # -- device (CUDA) scoring
    def _on_device(self, x: np.ndarray) -> torch.Tensor:
        k = data_key(x)
        if k in self._dev_cache:
            self._dev_cache.move_to_end(k)
            return self._dev_cache[k]
        t = to_float_images(x).to(self.device)
        self._dev_cache[k] = t
        while sum(v.numel() * 4 for v in self._dev_cache.values()) > 4 * self.cache_bytes and len(
            self._dev_cache
        ) > 1:
            self._dev_cache.popitem(last=False)
        return t

    def _device_net(self, model: str, state: Mapping[str, Any]) -> torch.nn.Module:
        net = build_model(model)
        net.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        return net.to(self.device).eval()

    def _score_tensor(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
        with torch.inference_mode():
            for s in range(0, x.shape[0], self.score_batch):
                xb = x[s : s + self.score_batch]
                diff = (xb - net(xb)).reshape(xb.shape[0], -1)
                out[s : s + self.score_batch] = diff.square().sum(1, dtype=torch.float64).sqrt()
        return out

    def _score_device(self, model: str, state: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
        return self._score_tensor(self._device_net(model, state), self._on_device(x)).cpu().numpy()

    def _cross_device(self, model: str, states: Sequence[dict], thresholds: Sequence[float],
                      xs: Sequence[np.ndarray]) -> np.ndarray:
        big = torch.cat([self._on_device(x) for x in xs])
        seg = torch.repeat_interleave(torch.arange(len(xs), device=self.device),
                                      torch.tensor([len(x) for x in xs], device=self.device))
        counts = torch.zeros(len(states), len(xs), dtype=torch.int64, device=self.device)
        for j, (st, thr) in enumerate(zip(states, thresholds, strict=True)):
            sc = self._score_tensor(self._device_net(model, st), big)
            counts[j].index_add_(0, seg, (sc <= float(thr)).to(torch.int64))
        return counts.cpu().numpy()


def _ocsvm_host(job: ScoreJob) -> np.ndarray:
    from simfl.learning_worker import ocsvm_scores

    return ocsvm_scores(job.state, np.asarray(job.x))


# ----------------------------------------------------------------------------------------- stacked clients


def _stack_states(states: list[Mapping[str, torch.Tensor]], names: list[str], device: torch.device) -> dict:
    return {n: torch.stack([torch.as_tensor(s[n], dtype=torch.float32) for s in states]).to(device)
            for n in names}


def train_stacked(jobs: Sequence[TrainJob], device: torch.device | str = "cpu") -> list[TrainResult]:
    """Train all ``jobs`` (same model, batch size and lr) as one stacked computation.

    Client c's parameters are slice c of stacked tensors; each step gathers every client's next minibatch
    (its own seeded order, padded to the batch size with a mask), runs ``vmap(functional_call)`` forward, one
    backward, and an element-wise Adam applied only to clients that had a batch. Mathematically each client
    follows exactly the per-client path (same split, shuffles, batches, updates); floating-point sums may be
    ordered differently.
    """
    from torch.func import functional_call, vmap

    t0 = time.perf_counter()
    device = torch.device(device)
    model = jobs[0].model
    bs, lr = int(jobs[0].batch_size), float(jobs[0].lr)
    if any(j.model != model or j.batch_size != bs or j.lr != lr for j in jobs):
        raise ValueError("stacked jobs must share model, batch_size and lr")
    n_c = len(jobs)
    net = build_model(model).to(device)
    names = [n for n, _ in net.named_parameters()]
    rngs = [job_rng(j.seed) for j in jobs]
    splits = [split_indices(len(j.x), j.val_fraction) for j in jobs]
    inits = [dict(j.init_state) if j.init_state is not None else init_state(model, j.seed) for j in jobs]
    params = _stack_states(inits, names, device)
    exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
    exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
    steps = np.zeros(n_c, dtype=np.int64)
    for c, j in enumerate(jobs):
        st = j.opt_state
        if st and st.get("exp_avg"):
            steps[c] = int(st["step"])
            for n in names:
                exp_avg[n][c] = torch.as_tensor(st["exp_avg"][n]).to(device)
                exp_avg_sq[n][c] = torch.as_tensor(st["exp_avg_sq"][n]).to(device)

    n_tr = np.array([len(s[0]) for s in splits])
    n_va = np.array([len(s[1]) for s in splits])
    x_all = [to_float_images(np.asarray(j.x)) for j in jobs]
    x_tr = torch.zeros(n_c, max(1, n_tr.max()), 1, 28, 28)
    x_va = torch.zeros(n_c, max(1, n_va.max()), 1, 28, 28)
    for c in range(n_c):
        x_tr[c, : n_tr[c]] = x_all[c][torch.from_numpy(splits[c][0])]
        x_va[c, : n_va[c]] = x_all[c][torch.from_numpy(splits[c][1])]
    x_tr, x_va = x_tr.to(device), x_va.to(device)
    va_mask = torch.from_numpy(np.arange(x_va.shape[1])[None, :] < n_va[:, None]).to(device)

    def per_sample_mse(p: dict, xb: torch.Tensor) -> torch.Tensor:
        out = functional_call(net, p, (xb,))
        return (out - xb).square().mean(dim=(1, 2, 3))

    batched = vmap(per_sample_mse)
    b1, b2 = ADAM_BETAS
    epochs = np.array([j.epochs for j in jobs])
    patience = [j.patience for j in jobs]
    active = np.ones(n_c, dtype=bool)
    epochs_run = np.zeros(n_c, dtype=np.int64)
    losses: list[list[float]] = [[] for _ in jobs]
    val_losses: list[list[float]] = [[] for _ in jobs]
    best_val = np.full(n_c, np.inf)
    since_best = np.zeros(n_c, dtype=np.int64)
    restore = [j.patience is not None and j.restore_best for j in jobs]
    best_params: dict[str, torch.Tensor] | None = None
    if any(restore):
        best_params = {n: p.clone() for n, p in params.items()}
    arange_c = torch.arange(n_c, device=device)
    for epoch in range(int(epochs.max())):
        active &= epoch < epochs
        if not active.any():
            break
        n_steps = int(max(math.ceil(n_tr[c] / bs) for c in range(n_c) if active[c]))
        idx = np.zeros((n_steps, n_c, bs), dtype=np.int64)
        mask = np.zeros((n_steps, n_c, bs), dtype=bool)
        for c in np.flatnonzero(active):
            perm = rngs[c].permutation(n_tr[c])
            for s in range(math.ceil(n_tr[c] / bs)):
                chunk = perm[s * bs : (s + 1) * bs]
                idx[s, c, : len(chunk)] = chunk
                mask[s, c, : len(chunk)] = True
        idx_t = torch.from_numpy(idx).to(device)
        mask_t = torch.from_numpy(mask).to(device)
        loss_sum = torch.zeros(n_c, dtype=torch.float64, device=device)
        for s in range(n_steps):
            m = mask_t[s].to(torch.float32)
            cnt = m.sum(1)
            has = cnt > 0
            xb = x_tr[arange_c[:, None], idx_t[s]]  # [C, bs, 1, 28, 28]
            p_req = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            mse = batched(p_req, xb)  # [C, bs]
            loss_c = (mse * m).sum(1) / cnt.clamp(min=1)
            grads = torch.autograd.grad(loss_c.sum(), [p_req[n] for n in names])
            loss_sum += (loss_c.detach() * cnt).to(torch.float64)
            has_np = mask[s].any(1)
            steps[has_np] += 1
            t = np.maximum(steps, 1).astype(np.float64)
            bc1 = 1.0 - b1**t
            bc2_sqrt = np.sqrt(1.0 - b2**t)
            step_size = torch.from_numpy(lr / bc1).to(device=device, dtype=torch.float32)
            bc2s = torch.from_numpy(bc2_sqrt).to(device=device, dtype=torch.float32)
            with torch.no_grad():
                for n, g in zip(names, grads, strict=True):
                    shape = (n_c,) + (1,) * (g.dim() - 1)
                    h = has.view(shape)
                    ma = torch.where(h, exp_avg[n].lerp(g, 1 - b1), exp_avg[n])
                    va = torch.where(h, exp_avg_sq[n] * b2 + (1 - b2) * g * g, exp_avg_sq[n])
                    denom = va.sqrt() / bc2s.view(shape) + ADAM_EPS
                    newp = params[n] - step_size.view(shape) * ma / denom
                    params[n] = torch.where(h, newp, params[n])
                    exp_avg[n], exp_avg_sq[n] = ma, va
        loss_np = loss_sum.cpu().numpy()
        with torch.no_grad():
            vm = va_mask.to(torch.float32)
            vmse = batched(params, x_va)
            vloss = ((vmse * vm).sum(1) / vm.sum(1).clamp(min=1)).cpu().numpy()
        for c in np.flatnonzero(active):
            epochs_run[c] += 1
            losses[c].append(float(loss_np[c] / max(n_tr[c], 1)))
            if n_va[c]:
                val_losses[c].append(float(vloss[c]))
                if patience[c] is not None:
                    if vloss[c] < best_val[c]:
                        best_val[c] = vloss[c]
                        since_best[c] = 0
                        if restore[c]:
                            assert best_params is not None
                            for n in names:
                                best_params[n][c] = params[n][c]
                    else:
                        since_best[c] += 1
                        if since_best[c] >= patience[c]:
                            active[c] = False
    wall = time.perf_counter() - t0
    out = []
    for c, j in enumerate(jobs):
        src = best_params if (restore[c] and n_va[c] and best_params is not None) else params
        state = {n: src[n][c].detach().cpu().contiguous().clone() for n in names}
        opt = {
            "step": int(steps[c]),
            "exp_avg": {n: exp_avg[n][c].cpu().contiguous().clone() for n in names},
            "exp_avg_sq": {n: exp_avg_sq[n][c].cpu().contiguous().clone() for n in names},
        }
        out.append(TrainResult(
            key=j.key, state=state, opt_state=opt, n_train=int(n_tr[c]), epochs_run=int(epochs_run[c]),
            losses=losses[c], val_losses=val_losses[c], wall_s=wall / n_c,
            flops=float(epochs_run[c] * n_tr[c] * flops_per_sample(model, train=True)),
        ))
    return out

