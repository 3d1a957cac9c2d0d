"""The learning engine against independent references: plain torch steps, brute-force scores, sklearn."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simfl.data import find_data_dir, load_fashion_mnist, make_partition
from simfl.learning import Engine, ScoreJob, TrainJob, auc, threshold
from simfl.learning_worker import init_state
from simfl.models import build_model


@pytest.fixture(scope="module")
def part():
    return make_partition(load_fashion_mnist(find_data_dir()), range(10), 9, 0.1, seed=0)


@pytest.fixture(scope="module")
def pool():
    with Engine(workers=2) as eng:
        yield eng


def to_t(x):
    return torch.from_numpy(x).float().div(255).reshape(-1, 1, 28, 28)


def plain_steps(model, init, batches, lr=1e-3):
    """The textbook loop: model, Adam, MSE, one step per batch."""
    net = build_model(model)
    net.load_state_dict(init)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for xb in batches:
        opt.zero_grad()
        F.mse_loss(net(xb), xb).backward()
        opt.step()
    return net.state_dict()


def brute_scores(model, state, x):
    net = build_model(model)
    net.load_state_dict(state)
    with torch.no_grad():
        xt = to_t(x)
        return torch.sqrt(((xt - net(xt)) ** 2).flatten(1).double().sum(1)).numpy()


def assert_close_states(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), (k, (a[k] - b[k]).abs().max())


def test_threshold_and_auc_closed_forms():
    s = np.arange(100, dtype=float)
    assert threshold(s, 0.1) == pytest.approx(89.1)  # 90th percentile of 0..99, linear interpolation
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert auc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5
    # Mann-Whitney by hand: outliers {0.35, 0.8} against inliers {0.1, 0.4}: 3 of 4 pairs ranked right
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # a tie counts half: outliers {0.5, 0.9} against inliers {0.5, 0.2}: (0.5 + 1 + 1 + 1) / 4
    assert auc(np.array([0.5, 0.5, 0.2, 0.9]), np.array([1, 0, 0, 1])) == 0.875


def test_adam_step_is_the_textbook_update_per_client():
    """The one Adam of both paths: two 'clients', the second skipping step 2, against the update written out in
    float64 (m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr / (1-b1^t) * m / (sqrt(v / (1-b2^t)) + eps))."""
    from simfl.learning_worker import ADAM_BETAS, ADAM_EPS, AdamState, adam_step

    b1, b2 = ADAM_BETAS
    lr = 0.01
    p = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([[3.0, 0.25]])]
    grads = [[torch.tensor([0.5, -1.0, 2.0]), torch.tensor([[0.1, -0.3]])],
             [torch.tensor([-0.25, 0.5, 1.0]), torch.tensor([[0.2, 0.0]])]]
    states = [AdamState.load(["a"], [p[0]], None), AdamState.load(["b"], [p[1]], None)]
    adam_step(p, grads[0], states, lr)  # both clients
    adam_step(p[:1], grads[1][:1], states[:1], lr)  # the first only
    want = []
    for c, steps in ((0, (0, 1)), (1, (0,))):
        q, m, v = (np.array(p0, dtype=np.float64) for p0 in ([[1.0, -2.0, 0.5]], [[0.0] * 3], [[0.0] * 3])) \
            if c == 0 else (np.array([[3.0, 0.25]]), np.zeros((1, 2)), np.zeros((1, 2)))
        for t, k in enumerate(steps, 1):
            g = grads[k][c].double().numpy().reshape(q.shape)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            q = q - lr / (1 - b1**t) * m / (np.sqrt(v / (1 - b2**t)) + ADAM_EPS)
        want.append(q)
    assert np.allclose(p[0].numpy(), want[0].ravel(), rtol=1e-6, atol=1e-7)
    assert np.allclose(p[1].numpy(), want[1], rtol=1e-6, atol=1e-7)
    assert [s.to_dict(["x"])["step"] for s in states] == [2, 1]


def test_early_stopping_is_keras_rule():
    from simfl.learning_worker import EarlyStopping

    es = EarlyStopping(2)
    seen = [(es.update(v), es.stop) for v in (0.5, 0.4, 0.4, 0.45, 0.3, 0.31, float("nan"))]
    # best 0.5, 0.4; a tie is no improvement (1), worse (2: stop); 0.3 improves again; then 0.31, NaN
    assert seen == [(True, False), (True, False), (False, False), (False, True), (True, False), (False, False),
                    (False, True)]
    never = EarlyStopping(None)
    assert [(never.update(v), never.stop) for v in (0.5, 0.6, 0.7)] == [(False, False)] * 3
    first = EarlyStopping(1)
    assert (first.update(float("nan")), first.stop) == (False, True)  # Keras: NaN never improves on +inf


@pytest.mark.parametrize(("model", "workers"), [("ae7", 0), ("ae5", 0), ("ae5", 2), ("ae7", 2)])
def test_one_engine_step_equals_the_plain_step(part, pool, model, workers):
    x = part.clients[0].x[:32]
    init = init_state(model, 11)
    job = TrainJob(key=0, model=model, x=x, epochs=1, seed=5, init_state=init, val_fraction=0.0)
    eng = pool if workers == 2 else Engine(workers=0)
    res = eng.train([job])[0]
    ref = plain_steps(model, init, [to_t(x)])
    assert res.n_train == 32 and res.epochs_run == 1 and res.opt_state["step"] == 1
    assert_close_states(res.state, ref, atol=1e-6)
    assert all(v.is_contiguous() and v.device.type == "cpu" for v in res.state.values())
    # a second step from the returned weights and Adam state equals two plain steps
    job2 = TrainJob(key=0, model=model, x=x, epochs=1, seed=6, init_state=res.state, opt_state=res.opt_state,
                    val_fraction=0.0)
    res2 = eng.train([job2])[0]
    assert res2.opt_state["step"] == 2
    assert_close_states(res2.state, plain_steps(model, init, [to_t(x), to_t(x)]), atol=1e-6)


def test_results_do_not_depend_on_worker_count(part, pool):
    xs = [c.x[:150] for c in part.clients[:5]]
    jobs = [TrainJob(key=i, model="ae5", x=x, epochs=1, seed=i) for i, x in enumerate(xs)]
    outs = []
    for eng in (Engine(workers=0), Engine(workers=1), pool):
        res = eng.train(jobs)
        thr = [0.9 * float(np.mean(s)) for s in eng.score([ScoreJob(0, "ae5", r.state, x)
                                                          for r, x in zip(res, xs, strict=True)])]
        outs.append((res, eng.cross_inlier_ratios("ae5", [r.state for r in res], thr, xs)))
        eng.close() if eng is not pool else None
    for res, ratios in outs[1:]:
        for a, b in zip(outs[0][0], res, strict=True):
            assert a.losses == b.losses and a.val_losses == b.val_losses
            assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
        assert np.array_equal(outs[0][1], ratios)


def test_scores_and_cross_ratios_match_brute_force(part, pool):
    xs = [c.x[:200] for c in part.clients[::20]]  # 5 shards of different inlier classes
    states = {m: [init_state(m, s) for s in range(3)] for m in ("ae5", "ae7", "flat")}
    for m, sts in states.items():
        got = pool.score([ScoreJob(0, m, sts[0], xs[1])])[0]
        assert got.dtype == np.float64
        assert np.allclose(got, brute_scores(m, sts[0], xs[1]), rtol=1e-5, atol=1e-5)
    sts = states["ae5"]
    thr = [float(np.median(brute_scores("ae5", s, xs[j]))) for j, s in enumerate(sts)]
    want = np.array([[np.mean(brute_scores("ae5", s, x) <= t) for s, t in zip(sts, thr, strict=True)] for x in xs])
    got = pool.cross_inlier_ratios("ae5", sts, thr, xs)
    assert got.shape == (5, 3) and np.array_equal(got, want)
    assert np.array_equal(pool.cross_inlier_ratios(sts, thr, xs), want)  # model read off the states


def test_short_training_lowers_the_loss(part, pool):
    res = pool.train([TrainJob(key=0, model="ae5", x=part.clients[3].x, epochs=3, seed=0)])[0]
    assert res.n_train == 599 and len(res.losses) == 3 and len(res.val_losses) == 3  # 666 - 67 held out
    assert res.losses[2] < res.losses[0] and res.val_losses[2] < res.val_losses[0]
    assert res.flops == 3 * 599 * 3 * 903168


def test_early_stopping_keeps_the_last_or_restores_the_best_weights(part):
    from simfl.learning_worker import split_indices

    x = part.clients[5].x[:200]
    _, va = split_indices(len(x), 0.1)
    assert va.tolist() == list(range(180, 200))  # Keras: the last 10% validate
    xv = to_t(x[va])

    def val_loss_of(state):
        net = build_model("ae5")
        net.load_state_dict(state)
        with torch.no_grad():
            return float(F.mse_loss(net(xv), xv))

    runs = {}
    for restore in (False, True):
        job = TrainJob(key=0, model="ae5", x=x, epochs=6, seed=3, lr=0.05, patience=1, restore_best=restore)
        runs[restore] = Engine(workers=0).train([job])[0]
    last, best = runs[False], runs[True]
    assert last.val_losses == best.val_losses and len(last.val_losses) == last.epochs_run
    # patience 1: training ends after the first epoch whose loss is not below every earlier one (or after 6)
    v = last.val_losses
    stop = next((e + 1 for e in range(1, len(v)) if v[e] >= min(v[:e])), 6)
    assert last.epochs_run == stop < 6  # lr 0.05 overshoots: it does stop early here, after a worse epoch
    assert min(v) < v[-1]
    assert val_loss_of(last.state) == pytest.approx(last.val_losses[-1], rel=1e-4)  # Keras' default
    assert val_loss_of(best.state) == pytest.approx(min(best.val_losses), rel=1e-4)


def test_trained_ae7_detects_outliers(part, pool):
    c = part.classes.index(1)  # trousers
    res = pool.train([TrainJob(key=0, model="ae7", x=part.clients[c * 9].x, epochs=2, seed=0, lr=3e-3,
                               batch_size=16)])[0]
    x_test, is_out = part.tests[1]
    scores = pool.score([ScoreJob(0, "ae7", res.state, x_test)])[0]
    # the AUC as the share of (outlier, inlier) pairs ranked right, ties counting half (Mann-Whitney)
    out, inl = scores[is_out][:, None], scores[~is_out][None, :]
    assert auc(scores, is_out) == pytest.approx(float(np.mean((out > inl) + 0.5 * (out == inl))), abs=1e-12)
    assert auc(scores, is_out) > 0.8  # 2 epochs on one client's 600 trousers already tell the other classes


def test_ocsvm_through_the_same_jobs(part):
    from sklearn.svm import OneClassSVM

    x = part.clients[7].x[:300]
    eng = Engine(workers=0)
    res = eng.train([TrainJob(key=0, model="ocsvm", x=x, epochs=1, seed=0)])[0]
    n_sv = len(res.state["dual_coef"])
    assert res.state["support_vectors"].shape == (n_sv, 784) and res.state["support_vectors"].dtype == np.float32
    from simfl.models import state_payload_bytes

    assert state_payload_bytes(res.state) == 4 * (n_sv * 784 + n_sv + 2)
    flat = x.reshape(300, -1) / 255.0
    ref = -OneClassSVM(kernel="rbf", nu=0.1, gamma="scale").fit(flat).decision_function(flat)
    got = eng.score([ScoreJob(0, "ocsvm", res.state, x)])[0]
    assert np.allclose(got, ref, atol=1e-4)


def test_engine_reports_progress_per_finished_task(part, pool):
    xs = [c.x[:60] for c in part.clients[:5]]
    jobs = [TrainJob(key=i, model="ae5", x=x, epochs=1, seed=i) for i, x in enumerate(xs)]
    for eng in (Engine(workers=0), pool):
        ticks: list[tuple[int, int]] = []
        eng.on_progress = lambda d, t, ticks=ticks: ticks.append((d, t))
        res = eng.train(jobs)
        assert ticks == [(i, 5) for i in range(1, 6)]
        ticks.clear()
        eng.cross_inlier_ratios("ae5", [r.state for r in res], [1.0] * 5, xs)
        assert ticks == [(i, 5) for i in range(1, 6)]  # 5 models: 5 chunks of one (at most 5 per worker)
        eng.on_progress = None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()  # an exited worker may linger as a zombie of pid 1
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_workers_exit_when_their_run_is_killed():
    code = (  # two workers busy with a minute of scoring each when their parent dies
        "import time\nimport numpy as np\nfrom simfl.learning import _Pool\n"
        "from simfl.learning_worker import init_state, tree_np\n"
        "p = _Pool(2, 1 << 30)\nx = np.zeros((20000, 28, 28), np.uint8)\n"
        "st = [tree_np(init_state('ae5', 0))] * 60\n"
        "for w in p.workers:\n    w.conn.send(('run', {'k': x}, [], [('cross', 'ae5', st, [1.0] * 60, ['k'])]))\n"
        "print(*[w.proc.pid for w in p.workers], flush=True)\ntime.sleep(600)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in run.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    time.sleep(1.0)
    run.kill()
    run.wait()
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def test_a_worker_whose_engine_is_gone_stops_quietly(capfd):
    """A request whose engine stopped (its run was killed) ends the worker without a traceback."""
    import multiprocessing

    from simfl.learning_worker import worker_main

    engine, worker = multiprocessing.Pipe()
    engine.send(("run", {}, [], []))  # a request; its answer ("ok", []) has nobody to go to
    engine.close()
    worker_main(worker, 1)  # returns: no BrokenPipeError, nothing printed
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(("cin", "cout", "hw"), [(8, 8, 7), (8, 16, 14), (3, 5, 4), (1, 2, 1)])
def test_subpixel_transposed_convolution_equals_torch(cin, cout, hw):
    from simfl.learning_worker import _SubPixelConvT

    torch.manual_seed(cin * 100 + cout)
    ct = torch.nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
    x = torch.randn(6, cin, hw, hw).contiguous(memory_format=torch.channels_last)
    assert _SubPixelConvT.applies(ct)
    with torch.inference_mode():
        got = _SubPixelConvT(ct)(x)
        want = ct(x)
    assert got.shape == want.shape == (6, cout, 2 * hw, 2 * hw)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not _SubPixelConvT.applies(torch.nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1))  # no output_padding


# ------------------------------------------------------------------------------- the stacked backend (CPU and CUDA)
# The stacked backend runs on CPU tensors too: the same tests on both, the CUDA ones skipped without a device.
NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
STACKED = [pytest.param("cpu", id="cpu-stacked"), pytest.param("cuda", id="cuda", marks=NO_CUDA)]


@pytest.mark.parametrize("device", STACKED)
@pytest.mark.parametrize("model", ["ae5", "ae7"])
def test_stacked_engine_step_equals_the_plain_cpu_step(part, device, model):
    """fp32 (on CUDA with TF32 off): one step of three stacked clients from the same weights and batches as the
    CPU textbook step."""
    xs = [part.clients[i].x[:32] for i in (0, 30, 60)]
    inits = [init_state(model, 11 + i) for i in range(3)]
    jobs = [TrainJob(key=i, model=model, x=x, epochs=1, seed=5, init_state=s, val_fraction=0.0)
            for i, (x, s) in enumerate(zip(xs, inits, strict=True))]
    with Engine(device=device, workers=0, stacked=True) as eng:
        got = eng.train(jobs)
    for g, x, s in zip(got, xs, inits, strict=True):
        assert g.opt_state["step"] == 1 and all(v.device.type == "cpu" for v in g.state.values())
        assert_close_states(g.state, plain_steps(model, s, [to_t(x)]), atol=1e-5)


@pytest.mark.parametrize(("device", "model", "atol"), [pytest.param("cpu", "ae5", 2e-5, id="cpu-stacked"),
                                                       pytest.param("cuda", "ae7", 1e-4, id="cuda", marks=NO_CUDA)])
def test_stacked_training_equals_per_client_training(part, device, model, atol):
    """Shards of different sizes (padding and masks), early stopping with and without restoring, Adam state
    carried into a second request."""
    xs = [part.clients[0].x[:90], part.clients[20].x[:61], part.clients[40].x[:47]]
    jobs = [TrainJob(key=0, model=model, x=xs[0], epochs=3, seed=0, batch_size=16, patience=1),
            TrainJob(key=1, model=model, x=xs[1], epochs=2, seed=1, batch_size=16, patience=1, restore_best=True),
            TrainJob(key=2, model=model, x=xs[2], epochs=3, seed=2, batch_size=16)]
    ref = Engine(workers=0).train(jobs)
    with Engine(device=device, workers=0, stacked=True) as eng:
        got = eng.train(jobs)
        for r, g in zip(ref, got, strict=True):
            assert (g.n_train, g.epochs_run, g.opt_state["step"]) == (r.n_train, r.epochs_run, r.opt_state["step"])
            assert_close_states(g.state, r.state, atol=atol)
            assert np.allclose(g.losses, r.losses, rtol=atol) and np.allclose(g.val_losses, r.val_losses, rtol=atol)

        def more(r):
            return [TrainJob(key=9, model=model, x=xs[2], epochs=1, seed=4, batch_size=16, init_state=r.state,
                             opt_state=r.opt_state)]

        again = Engine(workers=0).train(more(ref[2]))[0]
        again_s = eng.train(more(got[2]))[0]
    # 42 of 47 samples train (Keras' split): ceil(42 / 16) = 3 steps in each of 3 + 1 epochs
    assert again_s.opt_state["step"] == again.opt_state["step"] == 4 * 3
    assert_close_states(again_s.state, again.state, atol=atol)


@pytest.mark.parametrize("device", STACKED)
def test_stacked_scores_and_cross_ratios_equal_the_per_client_ones(part, device):
    xs = [c.x[:300] for c in part.clients[::30]]
    states = [init_state("ae5", s) for s in range(len(xs))]
    thr = [float(np.median(brute_scores("ae5", s, x))) for s, x in zip(states, xs, strict=True)]
    with Engine(device=device, workers=0, stacked=True) as eng:
        got = eng.score([ScoreJob(0, "ae7", init_state("ae7", 1), xs[0])])[0]
        ratios = eng.cross_inlier_ratios("ae5", states, thr, xs)
    assert np.allclose(got, brute_scores("ae7", init_state("ae7", 1), xs[0]), rtol=1e-5, atol=1e-5)
    want = Engine(workers=0).cross_inlier_ratios("ae5", states, thr, xs)
    assert np.abs(ratios - want).max() <= 2 / 300  # a sample on the threshold may flip


def test_stacked_engine_leaves_ocsvm_to_the_per_client_backend(part):
    """scikit-learn's OC-SVM has no stacked form: in a mixed request it trains and scores per client, the same as
    on the per-client engine, and the autoencoder jobs around it keep their places."""
    x = part.clients[7].x[:200]
    jobs = [TrainJob(key=0, model="ae5", x=x, epochs=1, seed=0), TrainJob(key=1, model="ocsvm", x=x, epochs=1, seed=0),
            TrainJob(key=2, model="ae5", x=x[:100], epochs=1, seed=1)]
    per_client = Engine(workers=0)
    with Engine(workers=0, stacked=True) as eng:
        got = eng.train(jobs)
        want = per_client.train(jobs)
        assert [r.key for r in got] == [0, 1, 2] and [r.n_train for r in got] == [180, 200, 90]
        assert all(np.array_equal(got[1].state[k], want[1].state[k]) for k in want[1].state)
        sc = eng.score([ScoreJob(0, "ocsvm", got[1].state, x), ScoreJob(1, "ae5", got[0].state, x)])
        ratios = eng.cross_inlier_ratios("ocsvm", [got[1].state], [0.0], [x])
    assert np.array_equal(sc[0], per_client.score([ScoreJob(0, "ocsvm", want[1].state, x)])[0])
    assert ratios.tolist() == [[np.mean(sc[0] <= 0.0)]]
