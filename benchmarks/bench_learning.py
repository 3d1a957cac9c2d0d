"""Learning-engine benchmark: seconds per 90-client epoch, plain per-client loop vs the engine, and phase I's
cross-evaluation (every client's shard scored by all 90 models).

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 .venv/bin/python benchmarks/bench_learning.py
    (options: --models ae5,ae7 --clients 90 --epochs 1 --workers 2 --skip-plain --skip-cross --device cpu|cuda)

"plain loop" = the textbook loop in this process with torch's default threads: for each client build the model,
Adam(lr 1e-3), shuffled batches of 32 on its 90% training split, MSE. The engine runs the same work through
``Engine.train`` (CPU: worker processes; CUDA: all clients stacked). Cross-evaluation "plain" scores every
(model, shard) pair with model(x) in batches of 512; the engine uses ``Engine.cross_inlier_ratios``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from simfl.data import find_data_dir, load_fashion_mnist, make_partition
from simfl.learning import Engine, TrainJob, threshold
from simfl.models import build_model


def plain_epoch(model: str, xs: list[np.ndarray], device: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for c, x in enumerate(xs):
        torch.manual_seed(c)
        net = build_model(model).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        xt = torch.from_numpy(x).float().div(255).reshape(-1, 1, 28, 28).to(device)
        ntr = int(len(xt) * 0.9)
        xt = xt[torch.randperm(len(xt))][:ntr]
        perm = torch.randperm(ntr)
        for s in range(0, ntr, 32):
            xb = xt[perm[s : s + 32]]
            opt.zero_grad()
            F.mse_loss(net(xb), xb).backward()
            opt.step()
        n += ntr
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="ae5,ae7")
    ap.add_argument("--clients", type=int, default=90)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--skip-cross", action="store_true")
    ap.add_argument("--plain-cross-models", type=int, default=6, help="models timed in the plain cross loop")
    ap.add_argument("--kernel-only", action="store_true",
                    help="time the per-client kernel the CPU workers run (one thread, one client) x 90 / 2")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}, load average {os.getloadavg()[0]:.2f}")
    fm = load_fashion_mnist(find_data_dir())
    part = make_partition(fm, range(10), 9, 0.1, seed=0)  # the paper's 90 clients of 666 samples
    step = max(1, 90 // args.clients)
    xs = [c.x for c in part.clients][::step][: args.clients]
    n_clients = len(xs)
    scale = 90 / n_clients
    if args.kernel_only:
        from simfl.learning_worker import to_float_images, train_torch

        torch.set_num_threads(1)
        for model in args.models.split(","):
            kw = dict(epochs=1, seed=0, init=None, batch_size=32, lr=1e-3, val_fraction=0.1, opt_state=None,
                      patience=None)
            train_torch(model, to_float_images(xs[0]), **kw)
            t0 = time.perf_counter()
            for x in xs[:4]:
                train_torch(model, to_float_images(x), **kw)
            dt = (time.perf_counter() - t0) / 4
            print(f"{model} kernel     : {dt * 1000:6.1f} ms per client-epoch on 1 thread -> "
                  f"{dt * 45:6.2f} s per 90-client epoch on 2 free cores")
        return
    with Engine(device=args.device, workers=args.workers) as eng:
        for model in args.models.split(","):
            if not args.skip_plain:
                dt, n = plain_epoch(model, xs, args.device)
                print(f"{model} plain loop : {dt * scale:7.2f} s per 90-client epoch  ({n / dt:8.0f} samples/s)")
            jobs = [TrainJob(key=i, model=model, x=x, epochs=args.epochs, seed=i) for i, x in enumerate(xs)]
            eng.train(jobs[: min(4, n_clients)])  # start workers, ship and cache data (not timed)
            eng.train(jobs)
            t0 = time.perf_counter()
            res = eng.train(jobs)
            dt = (time.perf_counter() - t0) / args.epochs
            n = sum(r.n_train for r in res)
            print(f"{model} engine     : {dt * scale:7.2f} s per 90-client epoch  ({n / dt:8.0f} samples/s)")
        if not args.skip_cross:
            jobs = [TrainJob(key=i, model="ae5", x=x, epochs=1, seed=i) for i, x in enumerate(xs)]
            res = eng.train(jobs)
            states = [r.state for r in res]
            from simfl.learning import ScoreJob

            own = eng.score([ScoreJob(i, "ae5", r.state, x) for i, (r, x) in enumerate(zip(res, xs, strict=True))])
            thr = [threshold(s, 0.1) for s in own]
            total = sum(len(x) for x in xs)
            t0 = time.perf_counter()
            r = eng.cross_inlier_ratios("ae5", states, thr, xs)
            dt = time.perf_counter() - t0
            print(f"ae5 cross-eval engine: {dt:7.2f} s for {n_clients} models x {total} samples "
                  f"({n_clients * total / dt:8.0f} sample-evals/s; {dt * scale * scale:7.2f} s scaled to 90 x 90)"
                  f"; mean diag {np.diag(r).mean():.3f}")
            k = min(args.plain_cross_models, n_clients)
            big = torch.from_numpy(np.concatenate(xs)).float().div(255).reshape(-1, 1, 28, 28).to(args.device)
            t0 = time.perf_counter()
            for j in range(k):
                net = build_model("ae5").to(args.device).eval()
                net.load_state_dict(states[j])
                with torch.inference_mode():
                    for s in range(0, len(big), 512):
                        xb = big[s : s + 512]
                        (xb - net(xb)).flatten(1).norm(dim=1)
            dt = (time.perf_counter() - t0) / k * n_clients
            print(f"ae5 cross-eval plain : {dt:7.2f} s for {n_clients} models (extrapolated from {k} models; "
                  f"{dt * scale * scale:7.2f} s scaled to 90 x 90)")


if __name__ == "__main__":
    main()
