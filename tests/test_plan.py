"""One seed stream for every FedAvg run: groups the method shares with the ideal baseline are computed once, and
computing them once gives bit for bit what computing them in a run of their own gives."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from simfl.config import Experiment
from simfl.data import find_data_dir, load_fashion_mnist, make_partition
from simfl.learner import Learner, Ref, Stage
from simfl.learning import Engine
from simfl.plan import FL_SEED_TAG, auc_key, derive_seed


@pytest.fixture(scope="module")
def small():
    """6 clients (classes 1, 7, 9 x 2), 120 samples each: enough to train, quick to run."""
    part = make_partition(load_fashion_mnist(find_data_dir(None)), (1, 7, 9), 2, 0.1, seed=5)
    clients = tuple(dataclasses.replace(s, x=s.x[:120]) for s in part.clients)
    exp = Experiment(classes=(1, 7, 9), clients_per_class=2, rounds=2, local_epochs=(1, 2), workers=0)
    return dataclasses.replace(part, clients=clients), exp


def fedavg_run(lr: Learner, groups: list[list[int]], stage: str, seed: int = 5) -> dict[int, Ref]:
    """FedAvg over fixed groups as the node processes register it; each client's final average."""
    exp, final = lr.exp, {}
    for g in groups:
        model = lr.init(exp.phase2_model, derive_seed(seed, FL_SEED_TAG, "init", g[0]), Stage(stage, 1))
        prev: dict[int, Ref] = {}
        for r in range(1, exp.rounds + 1):
            seeds = {i: derive_seed(seed, FL_SEED_TAG, r - 1, i) for i in g}
            prev = {i: lr.train(i, exp.phase2_model, exp.epochs_in_round(r - 1), seeds[i], stage=Stage(stage, r),
                                init=model, opt=prev.get(i)) for i in g}
            model = lr.fedavg(list(prev.items()), Stage(stage, r))
        final |= dict.fromkeys(g, model)
    return final


def test_seeds_are_tags_on_the_run_seed() -> None:
    assert derive_seed(5, "phase1", 0) == derive_seed(5, "phase1", 0) != derive_seed(5, "phase1", 1)
    assert derive_seed(5, "phase1", 0) != derive_seed(6, "phase1", 0)
    assert all(0 <= derive_seed(s, "x") < 2**31 for s in range(50))
    assert auc_key("method", "last_fit") == "method_last_fit" and auc_key("local", "last_fit") == "local"


def test_shared_groups_are_computed_once_and_equal_separate_runs(small) -> None:
    part, exp = small
    with Engine(device="cpu", workers=0) as engine:
        trained: list[list[int]] = []
        real = engine.train

        def counting(jobs):
            trained.append(sorted(j.key for j in jobs))
            return real(jobs)

        engine.train = counting  # type: ignore[method-assign]
        both = Learner(exp, part, engine=lambda: engine)
        method = fedavg_run(both, [[0, 1], [2], [3], [4, 5]], "method")
        ideal = fedavg_run(both, [[0, 1], [2, 3], [4, 5]], "ideal")
        both.flush()
        # the method's rounds, then the ideal baseline's: only the group the communities lack ([2, 3]) trains,
        # and client 2's first round (its community [2] and true group [2, 3] start from one model)
        assert trained == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], [3], [2, 3]]
        alone = Learner(exp, part, engine=lambda: engine)
        separate = fedavg_run(alone, [[0, 1], [2, 3], [4, 5]], "ideal")
        alone.flush()
    assert ideal == separate  # the same computations: the same keys
    for i in range(6):
        a, b = both.value(ideal[i], "state"), alone.value(separate[i], "state")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), i
    assert method[0] == ideal[0] and method[2] != ideal[2]
    assert both.stats.stages["ideal round 1"].line("ideal round 1") == (
        "learning: ideal round 1: 9 needed, 0 cached, 2 computed, 7 shared")
