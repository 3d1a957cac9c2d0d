"""The learner: keys, lazy registration, flushes by stage and client, values, shared keys; a fake engine makes it
instant except where the real engine is the point (results that do not depend on the batch)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from simfl import models
from simfl.config import Experiment
from simfl.data import ClientShard, Partition
from simfl.learner import PHASE1, FakeEngine, Learner, Stage
from simfl.learning import Engine, TrainJob

EXP = Experiment(classes=(0, 1), clients_per_class=2, rounds=2, local_epochs=(1,), workers=0)


def partition(n: int = 4, samples: int = 20, seed: int = 0) -> Partition:
    """n clients of `samples` random images (two inlier classes), test sets of 10 images with 2 outliers."""
    rng = np.random.default_rng(seed)
    shards = tuple(ClientShard(client=i, inlier_class=i * 2 // n, x=rng.integers(0, 256, (samples, 28, 28), np.uint8),
                               labels=np.zeros(samples, np.int64), is_outlier=np.zeros(samples, bool),
                               index=np.arange(samples)) for i in range(n))
    tests = {c: (rng.integers(0, 256, (10, 28, 28), np.uint8), np.arange(10) >= 8) for c in (0, 1)}
    return Partition(classes=(0, 1), p=n // 2, d=0.1, seed=seed, clients=shards, tests=tests)


@pytest.fixture()
def fake() -> FakeEngine:
    return FakeEngine()


def learner(fake: FakeEngine, part: Partition | None = None, exp: Experiment = EXP) -> Learner:
    return Learner(exp, part or partition(), engine=lambda: fake, engine_kind="fake")


def test_keys_name_the_computation_and_registering_computes_nothing(fake: FakeEngine) -> None:
    lr = learner(fake)
    a = lr.train(0, "ae7", 1, seed=11, stage=Stage("method", 1))
    assert len(a.key) == 32 and int(a.key, 16) >= 0
    assert lr.train(0, "ae7", 1, seed=11, stage=Stage("ideal", 1)) == a  # same computation, other stage: one key
    assert lr.train(0, "ae7", 1, seed=12, stage=Stage("method", 1)).key != a.key
    assert lr.train(1, "ae7", 1, seed=11, stage=Stage("method", 1)).key != a.key  # other data
    assert lr.train(0, "ae7", 2, seed=11, stage=Stage("method", 1)).key != a.key
    b = lr.train(0, "ae7", 1, seed=11, stage=Stage("method", 2), init=a)
    assert b.key not in (a.key, lr.train(0, "ae7", 1, seed=11, stage=Stage("method", 2), init=None).key)
    # another engine path (here: another kind) never shares a key
    other = Learner(EXP, lr.partition, engine=lambda: fake, engine_kind="per-client")
    assert other.train(0, "ae7", 1, seed=11, stage=Stage("method", 1)).key != a.key
    assert fake.calls == []


def test_what_is_known_before_the_value(fake: FakeEngine) -> None:
    """Bits, FLOPs and training samples come from the model and the shard size, before anything is trained."""
    lr = learner(fake)
    t = lr.train(0, "ae7", 3, seed=1, stage=Stage("method", 1))
    n_train = 18  # 20 samples, Keras' validation split of 10 %
    assert (t.bits, t.n_train) == (32 * 28353, n_train)
    assert t.flops == 3 * n_train * models.flops_per_sample("ae7", train=True)
    assert lr.train(0, "ae7", 3, seed=1, stage=Stage("baselines"), patience=2).flops is None  # epochs run unknown
    u = lr.train(1, "ae7", 3, seed=1, stage=Stage("method", 1))
    avg = lr.fedavg([(1, u), (0, t)], Stage("method", 1))
    assert (avg.bits, avg.n_train, avg.flops) == (32 * 28353, 36, 2.0 * 2 * 28353)
    assert lr.fedavg([(0, t), (1, u)], Stage("method", 1)) == avg  # parts in client order
    assert fake.calls == []


def test_one_engine_call_per_stage_and_op_in_stage_order(fake: FakeEngine) -> None:
    """Registered out of order (the ideal baseline first, clients backwards), computed method before ideal, phase
    I's train, score and cross calls first, clients in order."""
    lr = learner(fake)
    ideal = [lr.train(i, "ae7", 1, seed=100 + i, stage=Stage("ideal", 1)) for i in (3, 2, 1, 0)]
    method = [lr.train(i, "ae7", 1, seed=200 + i, stage=Stage("method", 1)) for i in (3, 2)]
    p1 = [lr.train(i, "ae5", 1, seed=300 + i, stage=PHASE1) for i in (1, 0, 3, 2)]
    thr = [lr.threshold(m, i) for m, i in zip(p1, (1, 0, 3, 2), strict=True)]
    cross = [lr.cross(m, t) for m, t in zip(p1, thr, strict=True)]
    lr.value(ideal[0], "meta")
    assert fake.calls == [("train", [0, 1, 2, 3]), ("score", [0, 1, 2, 3]), ("cross", [0, 1, 2, 3]),
                          ("train", [2, 3]), ("train", [0, 1, 2, 3])]
    # nothing is computed twice: asking again, or for another part, calls nothing
    for r in [*ideal, *method, *p1]:
        lr.value(r, "state")
    assert len(fake.calls) == 5
    # a score is the sample's index: the threshold is numpy's 90th percentile of 0..19, as float32
    assert lr.value(thr[0], "meta")["threshold"] == float(np.float32(0.9 * 19))
    assert lr.value(cross[0], "row").tolist() == [0.9] * 4


def test_fedavg_weights_by_training_samples_and_rounds_chain(fake: FakeEngine) -> None:
    """Clients of 20 and 40 samples train 18 and 36: the average is (18 w0 + 36 w1) / 54; round 2 starts from it."""
    part = partition()
    big = dataclasses.replace(part.clients[1], x=np.concatenate([part.clients[1].x] * 2))
    part = dataclasses.replace(part, clients=(part.clients[0], big, *part.clients[2:]))
    lr = learner(fake, part)
    start = lr.init("ae7", seed=5, stage=Stage("method", 1))
    r1 = [lr.train(i, "ae7", 1, seed=i, stage=Stage("method", 1), init=start) for i in (0, 1)]
    avg = lr.fedavg(list(enumerate(r1)), Stage("method", 1))
    r2 = lr.train(0, "ae7", 1, seed=9, stage=Stage("method", 2), init=avg, opt=r1[0])
    # the fake's state: [client, depth]; the seeded start is a real AE-7 (depth 0)
    assert set(lr.value(start, "state")) == set(models.build_model("ae7").state_dict())
    got = lr.value(avg, "state")["w"]
    assert torch.allclose(got, torch.tensor([(18 * 0 + 36 * 1) / 54, 1.0]))
    assert lr.value(avg, "meta") == {"weight": 54}
    assert lr.value(r2, "state")["w"].tolist() == [0.0, 2.0]  # round 2: depth 2
    assert lr.value(r2, "opt") == {"step": 2}  # Adam's state went on from round 1
    assert [c for c, _ in fake.calls] == ["train", "train"]


def test_shared_start_trains_once(fake: FakeEngine) -> None:
    """A community and a true group that share their lowest member start from one init: round 1 of that member
    (same seed, data, init) is one node; the round-2 trainings differ once the averages differ."""
    lr = learner(fake)
    init = lr.init("ae7", seed=7, stage=Stage("method", 1))
    a = lr.train(0, "ae7", 1, seed=1, stage=Stage("method", 1), init=init)
    b = lr.train(0, "ae7", 1, seed=1, stage=Stage("ideal", 1), init=lr.init("ae7", seed=7, stage=Stage("ideal", 1)))
    assert a == b
    lr.flush()
    assert fake.calls == [("train", [0])]
    assert lr.stats.stages["method round 1"].computed == 1
    assert lr.stats.stages["ideal round 1"].needed == 1 and lr.stats.stages["ideal round 1"].computed == 0
    assert lr.stats.of(Stage("ideal", 1)).line("ideal round 1") == (
        "learning: ideal round 1: 1 needed, 0 cached, 0 computed, 1 shared")


def test_auc_scores_each_model_on_its_class_test_set(fake: FakeEngine) -> None:
    """Fake scores rise with the index and the last 2 of 10 test samples are outliers: AUC 1."""
    lr = learner(fake)
    m = lr.train(0, "ae7", 1, seed=1, stage=Stage("baselines"))
    aucs = [lr.auc(m, c) for c in (1, 0)]
    assert [lr.value(a, "meta")["auc"] for a in aucs] == [1.0, 1.0]
    assert fake.calls == [("train", [0]), ("score", [0, 1])]  # one score call, classes in order


# ---------------------------------------------------------------------------------------------- real engine
def _jobs(part: Partition, model: str, clients: list[int]) -> list[TrainJob]:
    return [TrainJob(key=i, model=model, x=part.clients[i].x, epochs=1, seed=10 + i, batch_size=8)
            for i in clients]


@pytest.mark.parametrize("stacked", [False, True])
def test_cpu_results_do_not_depend_on_the_batch(stacked: bool) -> None:
    """What the learner relies on to batch differently from a whole-plan computation: a job's training result, and
    a model's cross-evaluation column, are the same alone or in a larger batch (bit for bit on CPU)."""
    part = partition(n=3, samples=24, seed=1)
    with Engine(device="cpu", workers=0, stacked=stacked) as eng:
        full = eng.train(_jobs(part, "ae5", [0, 1, 2]))
        sub = eng.train(_jobs(part, "ae5", [2, 0]))
        for r in sub:
            other = full[r.key]
            assert all(torch.equal(r.state[k], other.state[k]) for k in r.state), r.key
        xs = [s.x for s in part.clients]
        states, thr = [r.state for r in full], [0.5, 0.6, 0.7]
        whole = eng.cross_inlier_ratios("ae5", states, thr, xs)
        one = eng.cross_inlier_ratios("ae5", states[1:2], thr[1:2], xs)
    assert np.array_equal(one[:, 0], whole[:, 1])


# ---------------------------------------------------------------------------------------------- a whole run
def test_a_tiny_run_makes_one_call_per_stage_and_a_cached_rerun_none(tmp_path, monkeypatch) -> None:
    """The tiny scenario on the fake engine (every client associates: one community of 4; true groups [0, 1] and
    [2, 3]): one engine call per stage, the ideal baseline's round 1 trains only the clients whose start differs
    from their community's (the groups [0, 1] and [0, 1, 2, 3] share their lowest member), the baselines in one
    call, every AUC in one. The same run again computes nothing and starts no engine."""
    from conftest import TINY

    import simfl.learner as learner_mod
    from simfl.config import load_scenario
    from simfl.runner import run_scenario

    engines: list[FakeEngine] = []

    def fake(**_kw: object) -> FakeEngine:
        engines.append(FakeEngine())
        return engines[-1]

    monkeypatch.setattr(learner_mod, "Engine", fake)
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tiny.toml").write_text(TINY + "max_samples_per_client = 40\n")
    s = run_scenario(load_scenario(tmp_path / "tiny.toml"), tmp_path / "a", progress=False)
    assert s["communities"] == [[0, 1, 2, 3]]
    everyone = [0, 1, 2, 3]
    assert engines[0].calls == [
        ("train", everyone), ("score", everyone), ("cross", everyone),  # phase I
        ("train", everyone), ("train", everyone),  # the method's rounds 1 and 2
        ("train", [2, 3]), ("train", everyone),  # the ideal baseline's rounds 1 and 2
        ("train", [*everyone, -1]),  # the local baseline and the centralised model
        # AUCs: 2 classes x (method's average, ideal's 2 averages, centralised) + 4 x (method's and ideal's last
        # fits, local models): 18 (model, test set) pairs
        ("score", list(range(18))),
    ]
    again = run_scenario(load_scenario(tmp_path / "tiny.toml"), tmp_path / "b", progress=False)
    assert len(engines) == 1 and again["cache"]["computed"] == 0 and again["learning_from_cache"] is True
    assert again["auc_mean"] == s["auc_mean"]
