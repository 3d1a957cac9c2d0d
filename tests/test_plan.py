"""The learning plan's FedAvg stage: groups shared by the method and the ideal baseline are trained once."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from simfl.config import Experiment
from simfl.data import find_data_dir, load_fashion_mnist, make_partition
from simfl.learning import Engine
from simfl.plan import plan_federated


@pytest.fixture(scope="module")
def small():
    """6 clients (classes 1, 7, 9 x 2), 120 samples each: enough to train, quick to run."""
    part = make_partition(load_fashion_mnist(find_data_dir(None)), (1, 7, 9), 2, 0.1, seed=5)
    clients = tuple(dataclasses.replace(s, x=s.x[:120]) for s in part.clients)
    exp = Experiment(classes=(1, 7, 9), clients_per_class=2, rounds=2, local_epochs=(1, 2), workers=0)
    return dataclasses.replace(part, clients=clients), exp


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shared_groups_are_not_retrained_and_results_equal_a_full_run(small, monkeypatch) -> None:
    part, exp = small
    quiet = lambda _m: None  # noqa: E731
    with Engine(device="cpu", workers=0) as engine:
        method = plan_federated(engine, exp, part, [[0, 1], [2], [3], [4, 5]], 5, "phase2", quiet)
        full = plan_federated(engine, exp, part, [[0, 1], [2, 3], [4, 5]], 5, "ideal", quiet)
        trained: list[list[int]] = []
        real = engine.train

        def counting(jobs):
            trained.append(sorted(j.key for j in jobs))
            return real(jobs)

        monkeypatch.setattr(engine, "train", counting)
        reused = plan_federated(engine, exp, part, [[0, 1], [2, 3], [4, 5]], 5, "ideal", quiet, reuse=method)
    assert trained == [[2, 3], [2, 3]]  # only the group the communities did not have, in both rounds
    for t in range(exp.rounds):
        assert [r.key for r in reused.rounds[t]] == list(range(6))
        for i in range(6):
            # reusing changes the cost, never the result: bit for bit what training everything gives
            assert _states_equal(reused.rounds[t][i].state, full.rounds[t][i].state), (t, i)
        for i in (0, 1, 4, 5):
            assert reused.rounds[t][i] is method.rounds[t][i]
    for a, b in zip(reused.final, full.final, strict=True):
        assert _states_equal(a, b)
    assert reused.update_bits == full.update_bits and reused.global_bits == full.global_bits
    # the group the two runs do not share really trained differently from the method's singletons
    assert not _states_equal(reused.rounds[-1][2].state, method.rounds[-1][2].state)
