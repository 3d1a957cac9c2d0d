"""Failover and rejoin: a node's view of who leads it, and the rules for suspecting, following and reconnecting.

A FedAvg member's aggregator and a phase-I client's leader are both a "lead" seen through a `View`: the node it
follows now, the nodes it suspects, and whether it took the role over itself. Silence for `failover_timeout`
makes a node suspect its lead, and the lowest member it does not suspect becomes its candidate (`View.suspect`);
a `takeover` message from a member makes that member the lead and everyone below it suspected (`View.follow`).
A node that comes back from a crash sends `rejoin` to the lead it knows (a former lead: to the lowest member it
does not suspect besides itself). The protocol (`simfl.protocol`) sends the messages and runs the processes;
docs/network-aware-learning.md has the rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from simfl.conditions import DEADLINE
from simfl.learner import Ref

__all__ = ["TAKEOVER", "REJOIN", "View", "Resume", "due"]

TAKEOVER = "takeover"  # a member that takes its aggregator's (or the leader's) role over tells the others (2-byte ID)
REJOIN = "rejoin"  # a node back from a crash tells its aggregator it takes part again (2-byte ID)


@dataclass
class View:
    """A node's view of its lead (FedAvg aggregator, phase-I leader): who it is now, whom it suspects, whether this
    node took the role over, and the round of the last model it received (0: none yet)."""

    agg: str
    suspects: set[str] = field(default_factory=set)
    took_over: bool = False
    last: int = 0

    def suspect(self, order: Sequence[str]) -> str | None:
        """Silence: suspect the lead; the next lead is the first of `order` not suspected (None: nobody left)."""
        self.suspects.add(self.agg)
        nxt = next((n for n in order if n not in self.suspects), None)
        if nxt is not None:
            self.agg = nxt
        return nxt

    def follow(self, src: str, order: Sequence[str]) -> None:
        """A `takeover` from `src`: the lead and every node before `src` in `order` were suspected."""
        self.suspects.add(self.agg)
        self.suspects.update(order[:order.index(src)])
        self.agg = src


@dataclass(frozen=True)
class Resume:
    """Where a member that takes the aggregator's role over starts: the round it reopens, the model it holds, its
    last update (Adam's state goes on from it) and the suspected nodes (left out of every later round)."""

    round: int
    model: Ref
    prev: Ref | None
    suspects: frozenset[str]


def due(kind: str, phase: str, rnd: int | None, view: View, names: set[str], token: int | None, m: Any) -> bool:
    """What a node awaiting its lead takes: the message `kind` of `phase` (and round `rnd`; None: any) from its lead,
    a `takeover` of that phase from a member it does not suspect, or its timer's end (`token`)."""
    if m.kind == kind:
        return m.phase == phase and (rnd is None or m.round == rnd) and m.src == view.agg
    if m.kind == TAKEOVER:
        return m.phase == phase and m.src in names and m.src not in view.suspects
    return token is not None and m.kind == DEADLINE and m.token == token
