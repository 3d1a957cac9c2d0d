"""Compute kernels of the learning engine, the training rule both of its backends follow, and the worker loop.

Everything here works on plain numpy arrays and torch tensors so that it runs the same in the engine's own
process (``workers=0``) and in its worker processes. One job = one client: its own model, its own Adam, its own
seeded random stream (initialisation, shuffling); nothing depends on which process runs it. The rule lives here
once, for the per-client path (``train_torch``) and the stacked one (``simfl.learning.train_stacked``): Keras'
validation split (``split_indices``), the job's random stream (``job_rng``), the Adam update (``adam_step``,
``AdamState``) and early stopping (``EarlyStopping``).
"""

from __future__ import annotations

import functools
import math
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.adam import adam as _torch_adam

from simfl.models import build_model, flops_per_sample, ocsvm_flops_per_sample

SCORE_BATCH = 512
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
OCSVM_NU = 0.1


# --------------------------------------------------------------------------------------------- helpers


def to_float_images(x: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(x)).reshape(x.shape[0], 1, 28, 28)
    return t.to(torch.float32).div_(255.0)


def split_indices(n: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Keras' ``validation_split``: the last ``n - floor(n * (1 - val_fraction))`` samples validate, the rest train.

    The same split in every call, so a client's validation samples are never trained on in any FedAvg round, as
    in the authors' code (shards are already shuffled when they are made)."""
    n_train = math.floor(n * (1.0 - val_fraction) + 1e-9) if val_fraction > 0 else n
    return np.arange(n_train), np.arange(n_train, n)


def job_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0x7EA1]))


def init_state(model: str, seed: int) -> dict[str, torch.Tensor]:
    """The fresh initialisation of ``model`` for ``seed`` (PyTorch default init under manual_seed(seed))."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = build_model(model)
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def _param_names(model: str) -> list[str]:
    return [name for name, _ in build_model(model).named_parameters()]


# --------------------------------------------------------------------------------------------- the training rule


@functools.cache
def _fused_adam_on(device_type: str) -> bool:
    """Whether this torch build has the fused Adam kernel for ``device_type`` (CPU since torch 2.4)."""
    try:
        torch.optim.Adam([torch.zeros(1, device=device_type, requires_grad=True)], fused=True)
    except (RuntimeError, TypeError):
        return False
    return True


def _memory_format(p: torch.Tensor) -> torch.memory_format:
    if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


@dataclass
class AdamState:
    """Adam's moments and step count for one client's parameter tensors (the layout of ``params``)."""

    exp_avg: list[torch.Tensor]
    exp_avg_sq: list[torch.Tensor]
    steps: list[torch.Tensor]  # one 0-d float32 count per tensor, as torch keeps them (all equal here)

    @classmethod
    def load(cls, names: list[str], params: list[torch.Tensor], state: Mapping | None) -> AdamState:
        """The state ``to_dict`` wrote (None or no moments: a fresh optimiser) laid out like ``params``."""
        dev = params[0].device if _fused_adam_on(params[0].device.type) else torch.device("cpu")
        fresh = not state or not state.get("exp_avg")
        step = 0.0 if fresh else float(state["step"])  # type: ignore[index]

        def moment(key: str, n: str, p: torch.Tensor) -> torch.Tensor:
            if fresh:
                return torch.zeros_like(p)
            return torch.as_tensor(state[key][n]).to(p.device, p.dtype).clone(  # type: ignore[index]
                memory_format=_memory_format(p))

        return cls([moment("exp_avg", n, p) for n, p in zip(names, params, strict=True)],
                   [moment("exp_avg_sq", n, p) for n, p in zip(names, params, strict=True)],
                   [torch.tensor(step, dtype=torch.float32, device=dev) for _ in params])

    def to_dict(self, names: list[str]) -> dict[str, Any]:
        """{"step": int, "exp_avg": {name: tensor}, "exp_avg_sq": {name: tensor}} (CPU, contiguous); before
        the first step {"step": 0, "exp_avg": {}, "exp_avg_sq": {}}."""
        step = int(float(self.steps[0]))
        if step == 0:
            return {"step": 0, "exp_avg": {}, "exp_avg_sq": {}}
        return {"step": step,
                "exp_avg": {n: t.detach().cpu().contiguous().clone() for n, t in zip(names, self.exp_avg, strict=True)},
                "exp_avg_sq": {n: t.detach().cpu().contiguous().clone()
                               for n, t in zip(names, self.exp_avg_sq, strict=True)}}


def adam_step(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], states: Sequence[AdamState],
              lr: float) -> None:
    """One Adam step in place (the authors' Keras settings: betas ADAM_BETAS, eps ADAM_EPS, no weight decay):
    the one implementation of the update for both training paths. ``params`` and ``grads`` are the
    concatenated tensors of the clients whose ``states`` are given, in order; a client left out is not updated
    and its step count does not advance. torch's fused kernel where the build has one (the arithmetic of
    ``torch.optim.Adam(fused=True)``), else its single-tensor loop."""
    fused = _fused_adam_on(params[0].device.type)
    with torch.no_grad():
        _torch_adam(
            list(params), list(grads), [t for s in states for t in s.exp_avg],
            [t for s in states for t in s.exp_avg_sq], [], [t for s in states for t in s.steps],
            fused=fused, foreach=False, amsgrad=False, beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], lr=lr,
            weight_decay=0.0, eps=ADAM_EPS, maximize=False,
        )


class EarlyStopping:
    """Keras' EarlyStopping on the validation loss (mode min, min_delta 0): the best loss starts at +inf, an
    epoch improves on it only with a strictly lower loss, and training stops once ``patience`` epochs in a
    row have not (``patience`` None: never)."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best = math.inf
        self.wait = 0

    def update(self, val_loss: float) -> bool:
        """Record one epoch's validation loss; True when it is the best so far (the weights to restore)."""
        if self.patience is None:
            return False
        if val_loss < self.best:
            self.best, self.wait = val_loss, 0
            return True
        self.wait += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.wait >= self.patience


# --------------------------------------------------------------------------------------------- training


def train_torch(
    model: str,
    x: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    init: Mapping[str, torch.Tensor] | None,
    batch_size: int,
    lr: float,
    val_fraction: float,
    opt_state: Mapping | None,
    patience: int | None,
    restore_best: bool = False,
) -> dict[str, Any]:
    """Train one client's autoencoder (Adam, MSE, shuffled minibatches, per-epoch validation loss).

    ``x`` is float32 [N, 1, 28, 28] in [0, 1]. Returns a plain dict (see ``learning.TrainResult``).
    """
    t0 = time.perf_counter()
    rng = job_rng(seed)
    tr_idx, va_idx = split_indices(x.shape[0], val_fraction)
    net = build_model(model)
    net.load_state_dict(dict(init) if init is not None else init_state(model, seed))
    net = net.to(memory_format=torch.channels_last)
    names = _param_names(model)
    params = [dict(net.named_parameters())[n] for n in names]
    adam = AdamState.load(names, params, opt_state)
    xcl = x.contiguous(memory_format=torch.channels_last)
    x_tr = xcl[torch.from_numpy(tr_idx)].contiguous(memory_format=torch.channels_last)
    x_va = xcl[torch.from_numpy(va_idx)].contiguous(memory_format=torch.channels_last)
    n_tr = x_tr.shape[0]
    losses: list[float] = []
    val_losses: list[float] = []
    stopping = EarlyStopping(patience)
    best_weights: dict[str, torch.Tensor] | None = None  # kept only when they are to be restored
    for _ in range(epochs):
        perm = torch.from_numpy(rng.permutation(n_tr))
        net.train()
        total = 0.0
        for start in range(0, n_tr, batch_size):
            xb = x_tr[perm[start : start + batch_size]]
            for p in params:
                p.grad = None
            loss = F.mse_loss(net(xb), xb)
            loss.backward()
            adam_step(params, [p.grad for p in params], [adam], lr)
            total += loss.item() * xb.shape[0]
        losses.append(total / max(n_tr, 1))
        if x_va.shape[0]:
            with torch.inference_mode():
                val_losses.append(float(F.mse_loss(net(x_va), x_va)))
            if stopping.update(val_losses[-1]) and restore_best:
                best_weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
            if stopping.stop:
                break
    if best_weights is not None:
        net.load_state_dict(best_weights)
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    return {
        "state": state,
        "opt_state": adam.to_dict(names),
        "n_train": int(n_tr),
        "epochs_run": len(losses),
        "losses": losses,
        "val_losses": val_losses,
        "wall_s": time.perf_counter() - t0,
        "flops": float(len(losses) * n_tr * flops_per_sample(model, train=True)),
    }


def train_ocsvm(x_uint8: np.ndarray) -> dict[str, Any]:
    """scikit-learn OneClassSVM (RBF, nu = 0.1, gamma 'scale') on flattened /255 data; float32 state."""
    from sklearn.svm import OneClassSVM

    t0 = time.perf_counter()
    flat = x_uint8.reshape(x_uint8.shape[0], -1).astype(np.float64) / 255.0
    clf = OneClassSVM(kernel="rbf", nu=OCSVM_NU, gamma="scale").fit(flat)
    state = {
        "support_vectors": np.ascontiguousarray(clf.support_vectors_, dtype=np.float32),
        "dual_coef": np.ascontiguousarray(clf.dual_coef_.ravel(), dtype=np.float32),
        "intercept": np.asarray(clf.intercept_, dtype=np.float32).reshape(1),
        "gamma": np.asarray([clf._gamma], dtype=np.float32),
    }
    n = flat.shape[0]
    return {
        "state": state,
        "opt_state": None,
        "n_train": int(n),
        "epochs_run": 1,
        "losses": [],
        "val_losses": [],
        "wall_s": time.perf_counter() - t0,
        "flops": float(n * ocsvm_flops_per_sample(len(state["dual_coef"]), train=True, n_train=n)),
    }


# --------------------------------------------------------------------------------------------- scoring


def _conv3x3_to_one(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """conv2d(h, weight [1, C, 3, 3], padding=1) as one GEMM into the 9 taps plus 8 shifted adds.

    oneDNN is slow for a single output channel; this computes the same sums (in another order) ~3x faster.
    One [9, C] x [C, B*H*W] product (no copies: h is channels_last, so its transpose is a free view), then the
    taps' planes are shifted onto the centre tap's plane in place.
    """
    b, c, hh, ww = h.shape
    taps = weight[0].permute(1, 2, 0).reshape(9, c)  # [ky*3+kx, c]
    z = torch.mm(taps, h.permute(0, 2, 3, 1).reshape(b * hh * ww, c).t()).view(3, 3, b, hh, ww)
    out = z[1, 1]
    for ky in range(3):
        for kx in range(3):
            if ky == 1 and kx == 1:
                continue
            dy, dx = ky - 1, kx - 1
            y0, y1 = max(0, -dy), min(hh, hh - dy)
            x0, x1 = max(0, -dx), min(ww, ww - dx)
            out[:, y0:y1, x0:x1] += z[ky, kx, :, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    return out.add_(bias[0]).unsqueeze(1)


class _SubPixelConvT(torch.nn.Module):
    """ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1) for inference, as one 2x2 convolution into the four
    output phases plus one interleaving copy.

    Output pixel 2i+a (per axis) takes input i with tap 1 when a = 0, and inputs i, i+1 with taps 2, 0 when a = 1,
    so the four phases are a 2x2 convolution (zero where a phase has fewer taps) over the input padded by one
    row and column at the end. Same sums, other order; for AE-5's 8 -> 8 layer ~3x faster than oneDNN's
    transposed convolution (1.1 ms against 3.2 ms per 512 samples on one thread).
    """

    TAPS = ((1,), (2, 0))  # phase -> kernel index at input offset 0, 1

    def __init__(self, ct: torch.nn.ConvTranspose2d) -> None:
        super().__init__()
        w = ct.weight.detach()  # [cin, cout, 3, 3]
        cin, cout = w.shape[:2]
        ws = torch.zeros(2, 2, cout, cin, 2, 2)
        for a, ys in enumerate(self.TAPS):
            for b, xs in enumerate(self.TAPS):
                for oy, ky in enumerate(ys):
                    for ox, kx in enumerate(xs):
                        ws[a, b, :, :, oy, ox] = w[:, :, ky, kx].t()
        self.weight = ws.reshape(4 * cout, cin, 2, 2).contiguous(memory_format=torch.channels_last)
        self.bias = ct.bias.detach().repeat(4) if ct.bias is not None else None
        self.cout = cout

    @staticmethod
    def applies(m: torch.nn.Module) -> bool:
        """Where it pays on CPU: AE-5's 8-channel inputs (+18% AE-5 scoring); AE-7's 32 channels are faster as is."""
        return (isinstance(m, torch.nn.ConvTranspose2d) and m.in_channels <= 8
                and m.kernel_size == (3, 3) and m.stride == (2, 2)
                and m.padding == (1, 1) and m.output_padding == (1, 1) and m.dilation == (1, 1) and m.groups == 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        xp = x.new_zeros(b, h + 1, w + 1, c).permute(0, 3, 1, 2)  # channels_last, zero last row and column
        xp[:, :, :h, :w] = x
        y = F.conv2d(xp, self.weight, self.bias).permute(0, 2, 3, 1).reshape(b, h, w, 2, 2, self.cout)
        out = torch.empty(b, h, 2, w, 2, self.cout, dtype=y.dtype)
        out.copy_(y.permute(0, 1, 3, 2, 4, 5))
        return out.view(b, 2 * h, 2 * w, self.cout).permute(0, 3, 1, 2)  # channels_last [b, cout, 2h, 2w]


class Scorer:
    """Reconstruction-distance scorer for one trained autoencoder state (CPU fast path)."""

    def __init__(self, model: str, state: Mapping[str, torch.Tensor]) -> None:
        self.model = model
        net = build_model(model)
        net.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        net.eval()
        if model in ("ae5", "ae7"):
            net = net.to(memory_format=torch.channels_last)
            layers = [_SubPixelConvT(m) if _SubPixelConvT.applies(m) else m for m in list(net)[:-2]]
            self.body = torch.nn.Sequential(*layers)  # up to the last ReLU
            for m in self.body:
                if isinstance(m, torch.nn.ReLU):
                    m.inplace = True  # inference only: saves a pass over each activation
            self.last = net[-2]
        else:
            self.body = net
            self.last = None

    def reconstruct(self, xb: torch.Tensor) -> torch.Tensor:
        if self.last is None:
            return self.body(xb)
        h = self.body(xb.contiguous(memory_format=torch.channels_last))
        return torch.sigmoid_(_conv3x3_to_one(h, self.last.weight, self.last.bias))

    def scores(self, x: torch.Tensor, batch: int = SCORE_BATCH) -> np.ndarray:
        """L2 distance between each image and its reconstruction, float64 [N]."""
        out = np.empty(x.shape[0], dtype=np.float64)
        with torch.inference_mode():
            for s in range(0, x.shape[0], batch):
                xb = x[s : s + batch]
                diff = self.reconstruct(xb).sub_(xb).reshape(xb.shape[0], -1)  # in place: same values
                out[s : s + batch] = diff.square_().sum(1, dtype=torch.float64).sqrt().numpy()
        return out


def ocsvm_scores(state: Mapping[str, Any], x_uint8: np.ndarray) -> np.ndarray:
    """-decision_function of the stored OC-SVM (larger = more anomalous), float64 [N]."""
    sv = np.asarray(state["support_vectors"], dtype=np.float64)
    coef = np.asarray(state["dual_coef"], dtype=np.float64).ravel()
    gamma = float(np.asarray(state["gamma"]).ravel()[0])
    intercept = float(np.asarray(state["intercept"]).ravel()[0])
    flat = x_uint8.reshape(x_uint8.shape[0], -1).astype(np.float64) / 255.0
    out = np.empty(flat.shape[0], dtype=np.float64)
    sv_sq = (sv * sv).sum(1)
    for s in range(0, flat.shape[0], 2048):
        xb = flat[s : s + 2048]
        d2 = (xb * xb).sum(1)[:, None] + sv_sq[None, :] - 2.0 * xb @ sv.T
        out[s : s + 2048] = -(np.exp(-gamma * np.maximum(d2, 0.0)) @ coef + intercept)
    return out


def score_any(model: str, state: Mapping[str, Any], x_uint8: np.ndarray, x_float: torch.Tensor | None) -> np.ndarray:
    if model == "ocsvm":
        return ocsvm_scores(state, x_uint8)
    xf = x_float if x_float is not None else to_float_images(x_uint8)
    return Scorer(model, state).scores(xf)


def cross_counts(
    model: str,
    states: list[Mapping[str, Any]],
    thresholds: list[float],
    xs_uint8: list[np.ndarray],
    big: torch.Tensor | None = None,
) -> np.ndarray:
    """counts[j, i] = samples of shard i that model j calls inliers (score <= threshold_j).

    ``big`` is the float copy of all shards concatenated (made here when not given)."""
    counts = np.zeros((len(states), len(xs_uint8)), dtype=np.int64)
    if model != "ocsvm" and big is None:
        big = torch.cat([to_float_images(x) for x in xs_uint8])
    bounds = np.cumsum([0] + [len(x) for x in xs_uint8])
    for j, (state, thr) in enumerate(zip(states, thresholds, strict=True)):
        if model == "ocsvm":
            sc = ocsvm_scores(state, np.concatenate(xs_uint8))
        else:
            sc = Scorer(model, state).scores(big)
        inl = np.concatenate([[0], np.cumsum(sc <= thr)])
        counts[j] = inl[bounds[1:]] - inl[bounds[:-1]]
    return counts


# --------------------------------------------------------------------------------------------- worker loop


class DataCache:
    """Client data held by a process, by content key: uint8 original and float32 [N,1,28,28] copy."""

    def __init__(self) -> None:
        self.raw: dict[str, np.ndarray] = {}
        self.flt: dict[str, torch.Tensor] = {}
        self._cat: tuple[list[str] | None, torch.Tensor | None] = (None, None)

    def put(self, key: str, x: np.ndarray) -> None:
        self.raw[key] = x
        self.flt[key] = to_float_images(x)

    def drop(self, key: str) -> None:
        self.raw.pop(key, None)
        self.flt.pop(key, None)
        self._cat = (None, None)

    def concat(self, keys: list[str]) -> torch.Tensor:
        """The float copies of ``keys`` concatenated; the last one is kept (cross tasks come in chunks)."""
        if self._cat[0] != keys:
            self._cat = (list(keys), torch.cat([self.flt[k] for k in keys]))
        return self._cat[1]


def tree_np(obj: Any) -> Any:
    """Tensors -> numpy arrays inside dicts/lists (what crosses process boundaries)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().contiguous().numpy()
    if isinstance(obj, dict):
        return {k: tree_np(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(tree_np(v) for v in obj)
    return obj


def tree_torch(obj: Any) -> Any:
    """numpy arrays -> tensors inside dicts/lists."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {k: tree_torch(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(tree_torch(v) for v in obj)
    return obj


def run_task(task: tuple, cache: DataCache) -> Any:
    """One task on data already in ``cache``; arrays in, arrays out (no tensors cross processes)."""
    kind = task[0]
    if kind == "train":
        _, model, dkey, kw = task
        if model == "ocsvm":
            return train_ocsvm(cache.raw[dkey])
        kw = dict(kw, init=tree_torch(kw["init"]), opt_state=tree_torch(kw["opt_state"]))
        return tree_np(train_torch(model, cache.flt[dkey], **kw))
    if kind == "score":
        _, model, state, dkey = task
        return score_any(model, tree_torch(state) if model != "ocsvm" else state, cache.raw[dkey],
                         cache.flt.get(dkey))
    if kind == "cross":
        _, model, states, thresholds, dkeys = task
        if model != "ocsvm":
            states = [tree_torch(s) for s in states]
        return cross_counts(model, states, thresholds, [cache.raw[k] for k in dkeys],
                            cache.concat(dkeys) if model != "ocsvm" else None)
    raise ValueError(f"unknown task {kind!r}")


def worker_main(conn: Any, threads: int = 1) -> None:
    """Loop of a worker process: ("run", new_data {key: x}, drop [keys], tasks) -> ("tick",) per task, then
    ("ok", results) or ("error", traceback)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    cache = DataCache()
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "stop":
            return
        try:
            _, new_data, drop, tasks = msg
            for key in drop:
                cache.drop(key)
            for key, x in new_data.items():
                cache.put(key, x)
            results = []
            for t in tasks:
                results.append(run_task(t, cache))
                conn.send(("tick",))  # lets the engine show progress inside a long request
            conn.send(("ok", results))
        except (BrokenPipeError, ConnectionResetError):  # the engine is gone (its run was stopped): nobody to tell
            return
        except Exception:  # report, keep serving
            try:
                conn.send(("error", traceback.format_exc()))
            except (BrokenPipeError, ConnectionResetError):
                return


def _exit_with_parent(interval_s: float = 1.0) -> None:
    """Exit this worker as soon as the process that started it is gone (killed runs leave no busy orphans)."""
    import os
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="simfl-parent-watch").start()


def _main() -> None:
    import os
    import signal
    import sys
    from multiprocessing.connection import Client

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the engine stops us
    _exit_with_parent()
    try:
        conn = Client(sys.argv[1], family="AF_UNIX", authkey=bytes.fromhex(os.environ["SIMFL_WORKER_KEY"]))
    except OSError:  # the engine stopped before we connected (interrupted while starting): nothing to do
        sys.exit(1)
    worker_main(conn, 1)


if __name__ == "__main__":
    _main()
