"""Shared fixtures: the tiny real-data fedad scenario, its learning computed once per test run, and a counter of
the learning engines started.

The tiny scenario: 4 clients (classes 1 and 7, two clients each) of Fashion-MNIST, every stage one or two epochs,
each shard cut to its first TINY_SAMPLES samples (``experiment.max_samples_per_client``), so that a fresh build
takes seconds. Fixtures:

* ``tiny_cached``: the scenario with a private copy of a learning cache that already holds all its values
  (computed once per session by ``tiny_plan_cache``): runs of the scenario as written read them and train
  nothing. Sweeps and ``--set`` changes that keep the learning fields (network, aggregator, detector) read them too.
* ``tiny_fresh``: the scenario with an empty cache of its own, for tests that must see training (``builds``).
* ``tiny_full``: the scenario on full shards (~3,000 images per client) with an empty cache: the one real-data
  end-to-end check, marked ``slow``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TINY_SAMPLES = 300
TINY = """
name = "tiny"
seed = 3
workload = "fedad"
[profiles]
edge = "10 GFLOP/s"
server = "1 TFLOP/s"
[[nodes]]
name = "s1"
kind = "switch"
[[nodes]]
name = "server"
kind = "server"
uplink = { to = "s1", bandwidth = "1 Gbps", latency = "0.5 ms" }
[[node_groups]]
prefix = "c"
count = 4
kind = "client"
uplink = { to = "s1", bandwidth = "100 Mbps", latency = "0.5 ms" }
[experiment]
classes = [1, 7]
clients_per_class = 2
phase1_epochs = 1
rounds = 2
local_epochs = [1]
local_baseline_epochs = 1
centralised_epochs = 1
workers = 0
preset_note = "test preset"
"""


def _write_tiny(directory: Path, samples: int | None = TINY_SAMPLES) -> Path:
    path = directory / "tiny.toml"
    cap = "" if samples is None else f"max_samples_per_client = {samples}\n"
    path.write_text(TINY + cap)
    return path


@pytest.fixture(scope="session")
def tiny_plan_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learning cache holding every value of the tiny scenario's run, computed once per test run (by running it).
    Read-only: copy it."""
    from simfl.config import load_scenario
    from simfl.runner import run_scenario

    d = tmp_path_factory.mktemp("tiny-plan")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMFL_CACHE", str(d / "cache"))
        run_scenario(load_scenario(_write_tiny(d)), d / "run", progress=False)
    return d / "cache"


@pytest.fixture()
def tiny_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_plan_cache: Path) -> Path:
    """The tiny scenario (capped shards) with its own copy of the session's learning cache."""
    shutil.copytree(tiny_plan_cache, tmp_path / "cache")
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "cache"))
    return _write_tiny(tmp_path)


@pytest.fixture()
def tiny_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny scenario (capped shards) with an empty learning cache of its own."""
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "cache"))
    return _write_tiny(tmp_path)


@pytest.fixture()
def tiny_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny scenario on full shards with an empty learning cache of its own."""
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "cache"))
    return _write_tiny(tmp_path, None)


@pytest.fixture()
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the learning engines started: a run starts one only when it must compute something (not all of its
    learning is in the cache)."""
    import simfl.learner as learner_mod

    calls: list[int] = []
    real = learner_mod.Engine

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(learner_mod, "Engine", counting)
    return calls
