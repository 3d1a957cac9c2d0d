"""Outage schedules ([[faults]]): when a link, a cell or a node's interfaces are down.

A fault takes down one link (both directions), one cell (every station's membership: the whole channel), or every
link and cell membership of one node. Its schedule is one outage [down, up) (`up` unset: never back), or a
repeating one: outages [start + k * every, start + k * every + duration) for k = 0, 1, ... as long as the outage
begins before `until`. `is_down` and `next_edge` compute each edge with the same formula, so a state asked for at
an edge's own time is the state after that edge.

`Fault` answers two questions in O(1), whatever the time: is it down at t, and when is its next edge after t. So
the network needs no event for an outage while nothing is in flight; it catches up when it next looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Fault", "FAULT_TARGETS"]

FAULT_TARGETS = ("link", "cell", "node")


@dataclass(frozen=True)
class Fault:
    """One outage schedule of a link, a cell or a node (`target` one of FAULT_TARGETS, `name` its name)."""

    target: str
    name: str
    down: float  # the (first) outage begins: `down`, or `start` of a repeating schedule
    up: float = math.inf  # one outage: it ends (inf: never)
    every: float | None = None  # repeating: the period
    duration: float = 0.0  # repeating: each outage's length
    until: float = math.inf  # repeating: no outage begins at or after this

    def _index(self, t: float) -> int:
        """The last repetition k whose outage began at or before t (-1 before the first)."""
        if t < self.down:
            return -1
        if self.every is None:
            return 0
        k = math.floor((t - self.down) / self.every)
        while k > 0 and self.down + k * self.every > t:
            k -= 1
        while self.down + (k + 1) * self.every <= t:
            k += 1
        return k

    def _begins(self, k: int) -> float:
        return self.down + k * self.every if self.every is not None else self.down

    def _ends(self, k: int) -> float:
        return self._begins(k) + self.duration if self.every is not None else self.up

    def is_down(self, t: float) -> bool:
        k = self._index(t)
        if k < 0 or self._begins(k) >= self.until:
            return False
        return t < self._ends(k)

    def next_edge(self, t: float) -> float:
        """The first time after t at which the state changes (inf: never)."""
        k = self._index(t)
        if k < 0:
            return self.down if self.down < self.until else math.inf
        if self._begins(k) < self.until and t < self._ends(k):
            return self._ends(k)
        if self.every is None:
            return math.inf
        nxt = self._begins(k + 1)
        return nxt if nxt < self.until else math.inf

    def describe(self) -> str:
        """E.g. "link c07-s1 down 30 s .. 45 s"."""
        head = f"{self.target} {self.name}"
        if self.every is None:
            return f"{head} down from {self.down:g} s" + ("" if math.isinf(self.up) else f" to {self.up:g} s")
        return (f"{head} down {self.duration:g} s every {self.every:g} s from {self.down:g} s"
                + ("" if math.isinf(self.until) else f" until {self.until:g} s"))
