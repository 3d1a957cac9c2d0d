"""What a run learns, by name: the seed of every computation, the clients' data, the learning identity (what a
sweep compares to run a learning first), the approaches whose AUCs a run reports, and the engine's progress
counts. The learning itself is `simfl.learner`'s, driven by the node processes of `simfl.protocol`.

Seeds are tags on the run seed (`derive_seed`): phase I ``("phase1", i)``; FedAvg round r = 1..R
``(FL_SEED_TAG, r - 1, i)`` and a group's start ``(FL_SEED_TAG, "init", lowest member)``; the local baseline
``("local", i)``; the centralised model ``("centralised",)``; Leiden ``("communities",)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from simfl.config import Experiment
from simfl.data import Partition, find_data_dir, load_fashion_mnist, make_partition, min_shard
from simfl.progress import PLAIN_EVERY_S

if TYPE_CHECKING:
    from simfl.learning import Engine

Progress = Callable[[str], None]


@contextlib.contextmanager
def _ticking(engine: Engine, say: Progress, unit: str) -> Iterator[None]:
    """While inside, `engine` reports '<done>/<total> <unit>': to `say.count(done, total, unit)` where `say` has it
    (a `simfl.progress.Progress`: a live bar), else through `say` at most every PLAIN_EVERY_S seconds."""
    last = time.perf_counter()
    count = getattr(say, "count", None)

    def tick(done: int, total: int) -> None:
        nonlocal last
        if count is not None:
            count(done, total, unit)
            return
        now = time.perf_counter()
        if done < total and now - last >= PLAIN_EVERY_S:
            last = now
            say(f"  ... {done}/{total} {unit}")

    engine.on_progress = tick
    try:
        yield
    finally:
        engine.on_progress = None


def derive_seed(seed: int, *tags: object) -> int:
    """A 31-bit seed for one purpose, derived from the run seed and tags (stable across runs and machines)."""
    h = hashlib.sha256(repr((seed, *tags)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


# Every FedAvg run (the method's communities, the ideal baseline's true groups) draws from one seed stream: a
# client's shuffles in round t and a group's initial model depend on the run seed, the client or group and t, not
# on which run it is. A group the communities share with the true groups therefore trains identically in both
# runs, and the learner computes it once (its keys are equal). (The tag is the method's.)
FL_SEED_TAG = "phase2"


# The approaches whose AUCs a run reports: each client alone, FedAvg in the communities found, FedAvg in the true
# groups, one model on all the data.
APPROACHES = ("local", "method", "ideal", "centralised")


def auc_key(approach: str, detector: str) -> str:
    """The name of an approach's AUCs for a detector (only FedAvg runs have a last fit)."""
    return f"{approach}_last_fit" if detector == "last_fit" and approach in ("method", "ideal") else approach


def partition_of(exp: Experiment, seed: int) -> Partition:
    """The clients' shards and test sets of `exp` for run seed `seed` (or `exp.split_seed` where it is set)."""
    data = load_fashion_mnist(find_data_dir(exp.data_dir))
    split_seed = seed if exp.split_seed is None else exp.split_seed
    partition = make_partition(data, exp.classes, exp.clients_per_class, exp.outlier_fraction, split_seed, exp.split,
                               min_samples=min_shard(exp.val_fraction))
    return partition.capped(exp.max_samples_per_client)


# ---------------------------------------------------------------------------------------------------- identity
# Experiment fields that do not change what is learned (who aggregates, how fast, how it is labelled).
# (Both detectors are evaluated in every run, so `detector` only picks which AUCs the report shows.)
NOT_LEARNING = frozenset({"aggregator", "workers", "preset_note", "data_dir", "device", "detector"})
# The round conditions change who takes part, not what any one computation is: points that differ only in them share
# everything learned before participation differs (phase I, the early rounds), so a sweep runs one of them first.
CONDITIONS = frozenset({"round_deadline", "min_participants", "late_updates", "fraction_fit", "dropout",
                        "phase1_deadline", "failover_timeout"})


def learning_identity(exp: Experiment, seed: int) -> str:
    """What is learned, as canonical JSON: the experiment's learning fields and the seed. Two runs with the same
    identity (and data, device kind, simfl and torch versions) learn the same models, or (round conditions apart)
    share those learned before their participation differs: a sweep runs the first point of each identity alone,
    and the others read its results from the learning cache."""
    fields = {k: v for k, v in dataclasses.asdict(exp).items() if k not in NOT_LEARNING | CONDITIONS}
    return json.dumps({"exp": fields, "seed": seed}, sort_keys=True, default=list)
