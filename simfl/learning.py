"""Training and scoring engine: the learning that the simulated nodes really do.

Requests (train these clients' models for E epochs; score these samples with this model; phase I's all-pairs
cross-evaluation) come one learning stage at a time (phase I's training, each FedAvg round, the baselines), every
client of the stage in one request, and the ``Engine`` runs each request on one of two backends:

* per-client (``device="cpu"``): one model and one Adam per client, clients spread over persistent worker
  processes (spawned, one torch thread each, channels_last). Each client's data travels to a worker once and stays
  cached there under a content key. Every job has its own seeded random stream, so results do not depend on how
  many workers ran them or which one did (``workers=0`` runs everything in this process, also on one thread).
* stacked (``device="cuda"``): all clients of a request in one computation: parameters stacked on a client axis,
  ``torch.func.vmap(functional_call)`` forward, one backward, Adam for the clients that had a batch at that step
  (a client without one, or already stopped early, is left untouched), padding + masks where shard sizes differ;
  scoring on the device. TF32 is off. The stacked backend also runs on CPU tensors
  (``Engine(device="cpu", stacked=True)``): the tests compare it with the per-client backend there.
* Scores are L2 reconstruction distances; ``threshold`` is the 100*(1-d) percentile of the owner's training scores;
  ``auc`` is scikit-learn's ROC AUC with outliers as the positive class.

Training follows the authors: Adam (lr 1e-3), MSE, batch 32, Keras' validation split (the last 10% of a client's
shard, the same in every round), optional early stopping on the validation loss (the local baseline; like Keras'
EarlyStopping it keeps the last weights unless ``restore_best``). Both backends differ in how they run, not in the
rule: the Adam update (``adam_step``), early stopping (``EarlyStopping``), the split and the shuffles
(``split_indices``, ``job_rng``) live once, in ``simfl.learning_worker``.
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
    SCORE_BATCH,
    AdamState,
    DataCache,
    EarlyStopping,
    adam_step,
    init_state,
    job_rng,
    run_task,
    split_indices,
    to_float_images,
    tree_np,
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


# ----------------------------------------------------------------------------------------- per-client backend
OnProgress = Callable[[int, int], None] | None  # (done, total) tasks of the current request


class _PerClient:
    """Per-client jobs on the CPU: ``workers`` persistent worker processes (0: this process), one torch thread
    per job, each client's data cached by content key where it runs."""

    def __init__(self, workers: int, cache_bytes: int, deterministic: bool) -> None:
        self.workers = workers
        self.cache_bytes = cache_bytes
        self.deterministic = deterministic
        self._pool: _Pool | None = None
        self._local = DataCache()
        self._local_lru: OrderedDict[str, int] = OrderedDict()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def run(self, tasks: list[_Task], on_progress: OnProgress) -> list[Any]:
        if not tasks:
            return []
        if self.workers > 0:
            if self._pool is None:
                self._pool = _Pool(self.workers, self.cache_bytes)
            return self._pool.run(tasks, on_progress)
        out = []
        with _torch_threads(1 if self.deterministic else None):
            for t in tasks:
                for k, x in t.data.items():
                    if k not in self._local.raw:
                        self._local.put(k, x)
                    self._local_lru[k] = x.nbytes
                    self._local_lru.move_to_end(k)
                out.append(run_task(t.payload, self._local))
                if on_progress is not None:
                    on_progress(len(out), len(tasks))
                while sum(self._local_lru.values()) > self.cache_bytes and len(self._local_lru) > 1:
                    k, _ = self._local_lru.popitem(last=False)
                    self._local.drop(k)
        return out

    def train(self, jobs: Sequence[TrainJob], on_progress: OnProgress) -> list[TrainResult]:
        tasks = []
        for job in jobs:
            k = data_key(job.x)
            cost = len(job.x) * job.epochs * (flops_per_sample(job.model, train=True)
                                              if job.model != "ocsvm" else len(job.x) * 3e3)
            tasks.append(_Task(("train", job.model, k, _train_kwargs(job)), {k: np.asarray(job.x)}, cost))
        return [_result(job.key, raw) for job, raw in zip(jobs, self.run(tasks, on_progress), strict=True)]

    def score(self, jobs: Sequence[ScoreJob], on_progress: OnProgress) -> list[np.ndarray]:
        tasks = []
        for j in jobs:
            k = data_key(j.x)
            cost = len(j.x) * (flops_per_sample(j.model) if j.model != "ocsvm" else 1e6)
            tasks.append(_Task(("score", j.model, _host_state(j.model, j.state), k), {k: np.asarray(j.x)}, cost))
        return self.run(tasks, on_progress)

    def cross_counts(self, model: str, states: Sequence[dict], thresholds: Sequence[float],
                     xs: Sequence[np.ndarray], on_progress: OnProgress) -> np.ndarray:
        keys = [data_key(x) for x in xs]
        data = {k: np.asarray(x) for k, x in zip(keys, xs, strict=True)}
        # a few chunks per worker: the engine can report progress between them (each worker concatenates the
        # shards once and keeps them for its next chunk)
        n_chunks = min(len(states), 5 * max(1, self.workers))
        bounds = np.linspace(0, len(states), n_chunks + 1).round().astype(int)
        tasks = [_Task(("cross", model, [_host_state(model, s) for s in states[a:b]],
                        [float(t) for t in thresholds[a:b]], keys), data, float(b - a))
                 for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        return np.concatenate(self.run(tasks, on_progress), axis=0)


def _host_state(model: str, state: Mapping[str, Any]) -> Any:
    """A state as it crosses to a worker: numpy arrays (an OC-SVM's is already)."""
    return state if model == "ocsvm" else {n: np.asarray(torch.as_tensor(v)) for n, v in state.items()}


# ----------------------------------------------------------------------------------------- stacked training


@dataclass
class _Padded:
    """Every client's training and validation samples, padded to the largest: [C, N_max, 1, 28, 28]."""

    x_tr: torch.Tensor
    x_va: torch.Tensor
    n_tr: np.ndarray
    n_va: np.ndarray
    va_mask: torch.Tensor  # [C, Nva_max] float32, 1 on real validation samples


def _pad_clients(jobs: Sequence[TrainJob], device: torch.device) -> _Padded:
    splits = [split_indices(len(j.x), j.val_fraction) for j in jobs]
    n_tr = np.array([len(tr) for tr, _ in splits])
    n_va = np.array([len(va) for _, va in splits])
    x_tr = torch.zeros(len(jobs), max(1, n_tr.max()), 1, 28, 28)
    x_va = torch.zeros(len(jobs), max(1, n_va.max()), 1, 28, 28)
    for c, (j, (tr, va)) in enumerate(zip(jobs, splits, strict=True)):
        x = to_float_images(np.asarray(j.x))
        x_tr[c, : len(tr)] = x[torch.from_numpy(tr)]
        x_va[c, : len(va)] = x[torch.from_numpy(va)]
    va_mask = torch.from_numpy(np.arange(x_va.shape[1])[None, :] < n_va[:, None]).to(device, torch.float32)
    return _Padded(x_tr.to(device), x_va.to(device), n_tr, n_va, va_mask)


def _epoch_batches(rngs: Sequence[np.random.Generator], n_tr: np.ndarray, active: np.ndarray,
                   bs: int) -> tuple[np.ndarray, np.ndarray]:
    """Each active client's shuffled minibatches of one epoch (drawn from its own stream, as the per-client path
    draws them): indices and masks [steps, C, bs]; a client with fewer batches is masked out of the last steps."""
    n_steps = int(max(math.ceil(n_tr[c] / bs) for c in np.flatnonzero(active)))
    idx = np.zeros((n_steps, len(n_tr), bs), dtype=np.int64)
    mask = np.zeros((n_steps, len(n_tr), bs), dtype=bool)
    for c in np.flatnonzero(active):
        perm = rngs[c].permutation(n_tr[c])
        for s in range(math.ceil(n_tr[c] / bs)):
            chunk = perm[s * bs : (s + 1) * bs]
            idx[s, c, : len(chunk)] = chunk
            mask[s, c, : len(chunk)] = True
    return idx, mask


class _Stack:
    """The clients' parameters stacked on a leading client axis: one vmapped forward and one backward for all of
    them, then Adam on each client's own slices (its own moments and step count)."""

    def __init__(self, jobs: Sequence[TrainJob], device: torch.device) -> None:
        from torch.func import functional_call, vmap

        model = jobs[0].model
        net = build_model(model).to(device)
        self.names = [n for n, _ in net.named_parameters()]
        inits = [dict(j.init_state) if j.init_state is not None else init_state(model, j.seed) for j in jobs]
        self.params = {n: torch.stack([torch.as_tensor(s[n], dtype=torch.float32) for s in inits]).to(device)
                       .requires_grad_(True) for n in self.names}
        with torch.no_grad():  # views the optimiser updates in place
            self.slices = [[self.params[n][c] for n in self.names] for c in range(len(jobs))]
        self.adam = [AdamState.load(self.names, sl, j.opt_state) for sl, j in zip(self.slices, jobs, strict=True)]

        def per_sample_mse(p: dict, xb: torch.Tensor) -> torch.Tensor:
            out = functional_call(net, p, (xb,))
            return (out - xb).square().mean(dim=(1, 2, 3))

        self.mse = vmap(per_sample_mse)  # [C, B] from params [C, ...] and images [C, B, 1, 28, 28]

    def epoch(self, data: _Padded, rngs: Sequence[np.random.Generator], active: np.ndarray, bs: int,
              lr: float) -> np.ndarray:
        """One epoch of the active clients; each client's summed training MSE (float64 [C])."""
        idx, mask = _epoch_batches(rngs, data.n_tr, active, bs)
        device = data.x_tr.device
        idx_t = torch.from_numpy(idx).to(device)
        mask_t = torch.from_numpy(mask).to(device, torch.float32)
        rows = torch.arange(len(active), device=device)[:, None]
        total = torch.zeros(len(active), dtype=torch.float64, device=device)
        for s in range(len(idx)):
            m = mask_t[s]
            cnt = m.sum(1)
            loss_c = (self.mse(self.params, data.x_tr[rows, idx_t[s]]) * m).sum(1) / cnt.clamp(min=1)
            grads = torch.autograd.grad(loss_c.sum(), [self.params[n] for n in self.names])
            stepped = np.flatnonzero(mask[s].any(1))
            adam_step([p for c in stepped for p in self.slices[c]], [g[c] for c in stepped for g in grads],
                      [self.adam[c] for c in stepped], lr)
            total += (loss_c.detach() * cnt).to(torch.float64)
        return total.cpu().numpy()

    def val_losses(self, data: _Padded) -> np.ndarray:
        with torch.no_grad():
            vmse = self.mse(self.params, data.x_va)
            return ((vmse * data.va_mask).sum(1) / data.va_mask.sum(1).clamp(min=1)).cpu().numpy()

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def keep(self, best: dict[str, torch.Tensor], c: int) -> None:
        """Copy client c's current weights into ``best``."""
        with torch.no_grad():
            for n in self.names:
                best[n][c] = self.params[n][c]

    def client_state(self, c: int, src: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        src = self.params if src is None else src
        return {n: src[n][c].detach().cpu().contiguous().clone() for n in self.names}


def train_stacked(jobs: Sequence[TrainJob], device: torch.device | str = "cpu") -> list[TrainResult]:
    """Train all ``jobs`` (same model, batch size and lr) as one stacked computation.

    Client c's parameters are slice c of stacked tensors; each step gathers every client's next minibatch
    (its own seeded order, padded to the batch size with a mask), runs ``vmap(functional_call)`` forward, one
    backward, and Adam on the clients that had a batch. Mathematically each client follows exactly the
    per-client path (same split, shuffles, batches, updates, early stopping); floating-point sums may be ordered
    differently.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    model, bs, lr = jobs[0].model, int(jobs[0].batch_size), float(jobs[0].lr)
    if any(j.model != model or j.batch_size != bs or j.lr != lr for j in jobs):
        raise ValueError("stacked jobs must share model, batch_size and lr")
    stack = _Stack(jobs, device)
    data = _pad_clients(jobs, device)
    rngs = [job_rng(j.seed) for j in jobs]
    epochs = np.array([j.epochs for j in jobs])
    stopping = [EarlyStopping(j.patience) for j in jobs]
    restore = [j.patience is not None and j.restore_best and n > 0 for j, n in zip(jobs, data.n_va, strict=True)]
    best = stack.snapshot() if any(restore) else None
    losses: list[list[float]] = [[] for _ in jobs]
    val_losses: list[list[float]] = [[] for _ in jobs]
    active = np.ones(len(jobs), dtype=bool)
    for epoch in range(int(epochs.max())):
        active &= epoch < epochs
        if not active.any():
            break
        loss = stack.epoch(data, rngs, active, bs, lr)
        vloss = stack.val_losses(data)
        for c in np.flatnonzero(active):
            losses[c].append(float(loss[c] / max(data.n_tr[c], 1)))
            if data.n_va[c]:
                val_losses[c].append(float(vloss[c]))
                if stopping[c].update(vloss[c]) and restore[c]:
                    stack.keep(best, c)  # type: ignore[arg-type]
                active[c] = not stopping[c].stop
    wall = time.perf_counter() - t0
    return [TrainResult(
        key=j.key, state=stack.client_state(c, best if restore[c] else None),
        opt_state=stack.adam[c].to_dict(stack.names), n_train=int(data.n_tr[c]), epochs_run=len(losses[c]),
        losses=losses[c], val_losses=val_losses[c], wall_s=wall / len(jobs),
        flops=float(len(losses[c]) * data.n_tr[c] * flops_per_sample(model, train=True)),
    ) for c, j in enumerate(jobs)]


# ----------------------------------------------------------------------------------------- stacked backend


def _by_model(jobs: Sequence[Any], on_host: Callable[[Sequence[Any]], list[Any]],
              here: Callable[[Sequence[Any]], list[Any]]) -> list[Any]:
    """``on_host`` for the OC-SVM jobs (scikit-learn), ``here`` for the others; results in job order."""
    out: list[Any] = [None] * len(jobs)
    for svm, run in ((True, on_host), (False, here)):
        idx = [i for i, j in enumerate(jobs) if (j.model == "ocsvm") == svm]
        if idx:
            for i, r in zip(idx, run([jobs[i] for i in idx]), strict=True):
                out[i] = r
    return out


class _Stacked:
    """Every client of a request in one computation on ``device`` (CUDA; CPU tensors in the tests): training
    by ``train_stacked``, scoring with the models on the device and the shards kept there. OC-SVM jobs
    (scikit-learn) run on ``host``."""

    def __init__(self, device: torch.device, host: _PerClient, cache_bytes: int, score_batch: int,
                 deterministic: bool) -> None:
        self.device = device
        self.host = host
        self.cache_bytes = cache_bytes
        self.score_batch = score_batch
        self._threads = 1 if deterministic and device.type == "cpu" else None
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def close(self) -> None:
        self._cache.clear()

    def train(self, jobs: Sequence[TrainJob], on_progress: OnProgress) -> list[TrainResult]:
        return _by_model(jobs, lambda js: self.host.train(js, on_progress), self._train_stacked)

    def _train_stacked(self, jobs: Sequence[TrainJob]) -> list[TrainResult]:
        groups: dict[tuple, list[int]] = {}
        for i, j in enumerate(jobs):
            groups.setdefault((j.model, j.batch_size, j.lr), []).append(i)
        out: list[Any] = [None] * len(jobs)
        with _torch_threads(self._threads):
            for idx in groups.values():
                for i, res in zip(idx, train_stacked([jobs[i] for i in idx], self.device), strict=True):
                    out[i] = res
        return out

    def score(self, jobs: Sequence[ScoreJob], on_progress: OnProgress) -> list[np.ndarray]:
        def here(js: Sequence[ScoreJob]) -> list[np.ndarray]:
            with _torch_threads(self._threads):
                return [self._scores(self._net(j.model, j.state), self._on_device(j.x)).cpu().numpy() for j in js]

        return _by_model(jobs, lambda js: self.host.score(js, on_progress), here)

    def cross_counts(self, model: str, states: Sequence[dict], thresholds: Sequence[float],
                     xs: Sequence[np.ndarray], on_progress: OnProgress) -> np.ndarray:
        if model == "ocsvm":
            return self.host.cross_counts(model, states, thresholds, xs, on_progress)
        with _torch_threads(self._threads):
            big = torch.cat([self._on_device(x) for x in xs])
            seg = torch.repeat_interleave(torch.arange(len(xs), device=self.device),
                                          torch.tensor([len(x) for x in xs], device=self.device))
            counts = torch.zeros(len(states), len(xs), dtype=torch.int64, device=self.device)
            for j, (st, thr) in enumerate(zip(states, thresholds, strict=True)):
                sc = self._scores(self._net(model, st), big)
                counts[j].index_add_(0, seg, (sc <= float(thr)).to(torch.int64))
            return counts.cpu().numpy()

    def _on_device(self, x: np.ndarray) -> torch.Tensor:
        k = data_key(x)
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        t = to_float_images(x).to(self.device)
        self._cache[k] = t
        while sum(v.numel() * 4 for v in self._cache.values()) > 4 * self.cache_bytes and len(self._cache) > 1:
            self._cache.popitem(last=False)
        return t

    def _net(self, model: str, state: Mapping[str, Any]) -> torch.nn.Module:
        net = build_model(model)
        net.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        return net.to(self.device).eval()

    def _scores(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
        with torch.inference_mode():
            for s in range(0, x.shape[0], self.score_batch):
                xb = x[s : s + self.score_batch]
                diff = (xb - net(xb)).reshape(xb.shape[0], -1)
                out[s : s + self.score_batch] = diff.square().sum(1, dtype=torch.float64).sqrt()
        return out


# ----------------------------------------------------------------------------------------- the engine


class Engine:
    """Runs a learning stage's requests on the per-client or the stacked backend (see the module docstring).

    ``device`` "cpu", "cuda[:i]" or "auto"; ``stacked`` (always on CUDA) picks the stacked backend on the CPU too;
    ``workers`` are the per-client backend's processes (0: this process); ``deterministic`` one torch thread per
    CPU job (and cuDNN's deterministic kernels)."""

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
        is_cuda = self.device.type == "cuda"
        self.stacked = is_cuda or bool(stacked)
        self.on_progress: OnProgress = None  # (done, total) tasks of the current request
        self._host = _PerClient(0 if is_cuda else max(0, int(workers)), cache_bytes, deterministic)
        self._backend: _PerClient | _Stacked = self._host
        if self.stacked:
            self._backend = _Stacked(self.device, self._host, cache_bytes,
                                     score_batch or (8192 if is_cuda else SCORE_BATCH), deterministic)
        if is_cuda:
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
        self._backend.close()
        self._host.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- requests
    def train(self, jobs: Sequence[TrainJob]) -> list[TrainResult]:
        """Train every job's model; results in job order, independent of the number of workers."""
        for job in jobs:
            _check_job(job)
        return self._backend.train(jobs, self.on_progress)

    def score(self, jobs: Sequence[ScoreJob]) -> list[np.ndarray]:
        """L2 reconstruction distance of every sample (ocsvm: -decision_function), float64."""
        return self._backend.score(jobs, self.on_progress)

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
        counts = self._backend.cross_counts(model, states, thresholds, xs, self.on_progress)
        return counts.T / sizes[:, None]
