"""Link statistics: what each resource (link direction or shared cell) carried, and for how long it was busy.

The network reports four things per resource: `carried` (a message crossed it: its wire bytes, once per crossing),
`carried_part` (bytes a message sent over it before it was rerouted or stalled), `busy` (its first transfer started)
and `idle` (its last transfer ended). `columns(now)` turns them into the links table (`simfl.trace.LINK_SCHEMA`),
with the busy period still open at `now` counted up to `now`. `extra_slot` adds counters that are in no table (the
network's per-flow rate caps, which it treats as private resources).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from simfl.topology import Resource

__all__ = ["LinkStats"]


class LinkStats:
    """Counters per resource, indexed like `resources` (the topology's order, which is the links table's)."""

    __slots__ = ("resources", "bytes", "messages", "busy_s", "_busy_since")

    def __init__(self, resources: Sequence[Resource]) -> None:
        self.resources: tuple[Resource, ...] = tuple(resources)
        n = len(self.resources)
        self.bytes = [0] * n  # wire bytes carried (a message crossing a cell twice counts twice)
        self.messages = [0] * n  # message crossings
        self.busy_s = [0.0] * n  # closed busy periods, simulated seconds
        self._busy_since: list[float | None] = [None] * n  # start of the open busy period; None when idle

    def busy(self, i: int, now: float) -> None:
        """Resource `i` starts carrying transfers (it was idle)."""
        self._busy_since[i] = now

    def idle(self, i: int, now: float) -> None:
        """Resource `i` carries no transfer any more."""
        self.busy_s[i] += now - self._busy_since[i]
        self._busy_since[i] = None

    def extra_slot(self) -> int:
        """Counters for a resource that is not in the table; returns its index."""
        self.bytes.append(0)
        self.messages.append(0)
        self.busy_s.append(0.0)
        self._busy_since.append(None)
        return len(self.bytes) - 1

    def carried_part(self, i: int, wire_bytes: int) -> None:
        """Part of a message (`wire_bytes`) crossed resource `i` before its route changed."""
        self.bytes[i] += wire_bytes

    def carried(self, i: int, wire_bytes: int, crossings: int) -> None:
        """A message of `wire_bytes` finished crossing resource `i` `crossings` times."""
        self.bytes[i] += wire_bytes * crossings
        self.messages[i] += crossings

    def columns(self, now: float) -> dict[str, list[Any]]:
        """The links table (see `simfl.trace.LINK_SCHEMA`) as columns, as of `now`."""
        cols: dict[str, list[Any]] = {k: [] for k in ("link", "medium", "src", "dst", "capacity_bps", "latency_s",
                                                      "bytes", "messages", "drops", "busy_s", "utilisation")}
        for i, s in enumerate(self.resources):
            since = self._busy_since[i]
            cols["link"].append(s.link)
            cols["medium"].append(s.medium)
            cols["src"].append(s.src)
            cols["dst"].append(s.dst)
            capacity = s.capacity_bps if s.trace is None else s.trace.mean(now)
            cols["capacity_bps"].append(capacity)
            cols["latency_s"].append(s.latency_s)
            cols["bytes"].append(self.bytes[i])
            cols["messages"].append(self.messages[i])
            cols["drops"].append(0)  # the fluid model never drops (the ns3 backend counts its queues' drops)
            cols["busy_s"].append(self.busy_s[i] + (now - since if since is not None else 0.0))
            cols["utilisation"].append(8.0 * self.bytes[i] / (capacity * now) if now > 0 else 0.0)
        return cols
