"""The conditions a federated run's nodes work under: who is invited to a FedAvg round (`fraction_fit`), who sits
one out (`dropout`), what a node's waits find in its inbox beside messages (`Missing`, `Deadline`, an aggregator's
own update), and the record of every round (`RoundRow`, written as rounds.parquet).

Draws are seeded by what they decide, never by the run (method or ideal baseline) or the clock, so that a group the
two runs share sees the same participation in both: the sample of round r of a group is
``sorted(default_rng(derive_seed(seed, "fraction_fit", tuple(group), r)).choice(group, k, replace=False))`` with
k = min(m, max(1, min_participants, floor(fraction_fit x m))) of its m members; client i sits out round r when
``default_rng(derive_seed(seed, "dropout", i, r)).random() < dropout``. Rounds are 1..R.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simfl.config import Experiment
from simfl.plan import derive_seed

__all__ = ["Missing", "Deadline", "Local", "Participation", "RoundRow", "DEADLINE", "conditions_on"]

DEADLINE = "deadline"  # the kind of a `Deadline` in an inbox


@dataclass(frozen=True, slots=True)
class Missing:
    """In place of a message that will not come: the network gave up on it (the receiver gets the message's own
    Missing), or on the message that would have caused it (the sender of that one gets it: a lost model brings no
    verdict back). Waits match it as they match the message."""

    kind: str
    phase: str
    round: int
    src: str
    dst: str
    payload: Any = None


@dataclass(frozen=True, slots=True)
class Deadline:
    """A timer's end in an inbox: the wait whose `token` it carries closes."""

    token: int
    kind: str = DEADLINE
    phase: str = ""
    round: int = -1
    src: str = ""


@dataclass(frozen=True, slots=True)
class Local:
    """An aggregator's own update, handed to itself when its training ends (no message)."""

    kind: str
    phase: str
    round: int
    src: str
    payload: Any


def conditions_on(exp: Experiment) -> bool:
    """Whether any round condition is set (without them the protocol is the fault-free one, event for event)."""
    return (exp.round_deadline is not None or exp.phase1_deadline is not None or exp.failover_timeout is not None
            or exp.fraction_fit < 1.0 or exp.dropout > 0.0 or exp.min_participants > 1)


class Participation:
    """Who is invited to each round and who sits it out (see the module docstring); every node computes the same
    answers, so no message carries them."""

    def __init__(self, exp: Experiment, seed: int) -> None:
        self.fraction = exp.fraction_fit
        self.minimum = exp.min_participants
        self.dropout = exp.dropout
        self.seed = seed
        self._invited: dict[tuple[tuple[int, ...], int], list[int]] = {}

    def size(self, m: int) -> int:
        """How many of m members are invited to a round."""
        return min(m, max(1, self.minimum, math.floor(self.fraction * m)))

    def invited(self, group: Sequence[int], rnd: int) -> list[int]:
        """The members of `group` invited to round `rnd`, in ID order (all of them with fraction_fit = 1)."""
        key = (tuple(group), rnd)
        got = self._invited.get(key)
        if got is None:
            k = self.size(len(group))
            if k >= len(group):
                got = list(group)
            else:
                rng = np.random.default_rng(derive_seed(self.seed, "fraction_fit", key[0], rnd))
                got = sorted(int(x) for x in rng.choice(np.asarray(group), k, replace=False))
            self._invited[key] = got
        return got

    def available(self, client: int, rnd: int) -> bool:
        """Whether client `client` takes part in round `rnd` (the dropout draw)."""
        if self.dropout <= 0.0:
            return True
        return bool(np.random.default_rng(derive_seed(self.seed, "dropout", client, rnd)).random() >= self.dropout)


@dataclass
class RoundRow:
    """One round's close at its aggregator (or phase I's collection at the leader): rounds.parquet's row
    (`simfl.trace.ROUNDS_SCHEMA`; the counts are filled in at the end of the run)."""

    phase: str
    community: int  # the group's index among the run's groups (the leader's communities, the true groups); -1: none
    round: int  # 1..R (0: phase I)
    aggregator: str
    members: list[int]
    invited: list[int]
    t_start: float
    t_deadline: float | None
    failover: bool = False
    outcome: str = "open"  # averaged, skipped, aborted (its aggregator crashed), collected (phase I)
    arrived_ids: list[int] = field(default_factory=list)
    late_ids: list[int] = field(default_factory=list)
    folded_ids: list[int] = field(default_factory=list)  # earlier rounds' late updates averaged here
    folded_later: int = 0  # this round's late updates averaged in a later round
    unavailable: int = 0
    weight: float = 0.0
    t_end: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        late = len(self.late_ids)
        return {"phase": self.phase, "community": self.community, "round": self.round,
                "aggregator": self.aggregator, "outcome": self.outcome, "members": len(self.members),
                "invited": len(self.invited), "arrived": len(self.arrived_ids), "late": late,
                "dropped": late - self.folded_later, "folded": len(self.folded_ids),
                "missing": len(self.invited) - len(self.arrived_ids) - late, "unavailable": self.unavailable,
                "arrived_ids": sorted(self.arrived_ids), "late_ids": sorted(self.late_ids),
                "weight": self.weight, "failover": self.failover, "t_start": self.t_start,
                "t_deadline": self.t_deadline, "t_end": self.t_end}


def participation_summary(rows: Sequence[RoundRow], pairs_complete: int, n: int) -> dict[str, Any]:
    """summary.json's `participation`: per FedAvg run (trace phase) the rounds averaged, skipped and aborted, the
    failovers, the updates invited, averaged in time, late, dropped, folded and missing, and the participation
    rate (averaged in time / invited); phase I: the candidate groups that reached the leader and the pairs with
    both one-sided results (of n (n - 1) / 2)."""
    out: dict[str, Any] = {}
    for r in rows:
        d = r.as_dict()
        if r.phase == "phase1":
            out["phase1"] = {"groups_arrived": d["arrived"], "clients": n, "pairs_complete": pairs_complete,
                             "pairs": n * (n - 1) // 2}
            continue
        p = out.setdefault(r.phase, {k: 0 for k in ("rounds", "averaged", "skipped", "aborted", "failovers",
                                                     "invited", "arrived", "late", "dropped", "folded", "missing",
                                                     "unavailable")})
        p["rounds"] += 1
        p[r.outcome] += 1
        p["failovers"] += int(r.failover)
        for k in ("invited", "arrived", "late", "dropped", "folded", "missing", "unavailable"):
            p[k] += d[k]
    for name, p in out.items():
        if name != "phase1":
            p["rate"] = p["arrived"] / p["invited"] if p["invited"] else None
    return out
