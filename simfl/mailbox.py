"""Mailboxes: where delivered messages wait for the processes of their destination node.

Each node has an inbox, a `simpy.FilterStore` created when someone first asks for it. A message delivered to a node
whose inbox nobody has asked for yet is kept (unclaimed) and handed to the inbox when it is first requested, so a
process that starts listening late still gets it; a workload that never reads inboxes sets `keep_unclaimed` to
False to save the memory.
"""

from __future__ import annotations

from collections.abc import Iterable

import simpy

from simfl.errors import SimflError
from simfl.messages import Message

__all__ = ["Mailboxes"]


class Mailboxes:
    """The inboxes of a network's nodes."""

    __slots__ = ("env", "keep_unclaimed", "_nodes", "_boxes", "_unclaimed")

    def __init__(self, env: simpy.Environment, nodes: Iterable[str]) -> None:
        self.env = env
        self.keep_unclaimed = True
        self._nodes = frozenset(nodes)
        self._boxes: dict[str, simpy.FilterStore] = {}
        self._unclaimed: dict[str, list[Message]] = {}

    def inbox(self, node: str) -> simpy.FilterStore:
        """The store where messages to `node` are put on delivery (created on first use)."""
        box = self._boxes.get(node)
        if box is None:
            if node not in self._nodes:
                raise SimflError(f"inbox: unknown node {node!r}")
            box = self._boxes[node] = simpy.FilterStore(self.env)
            box.items.extend(self._unclaimed.pop(node, ()))  # delivered before anyone asked for the inbox
        return box

    def held(self) -> list[Message]:
        """Every message delivered and not taken yet (from every inbox, and those nobody asked for)."""
        out = [m for box in self._boxes.values() for m in box.items if isinstance(m, Message)]
        return out + [m for ms in self._unclaimed.values() for m in ms]

    def waiting(self) -> list[str]:
        """The nodes whose processes wait on their inbox now, sorted."""
        return sorted(n for n, box in self._boxes.items() if box.get_queue)

    def reset(self, node: str) -> list[Message]:
        """Empty `node`'s inbox (its node crashed: what it held is gone, and so are the waits of its processes);
        returns the messages it held. Later deliveries go to a fresh inbox."""
        old = self._boxes.pop(node, None)
        held = list(old.items) if old is not None else self._unclaimed.pop(node, [])
        self._boxes[node] = simpy.FilterStore(self.env)
        return held

    def put(self, msg: Message) -> None:
        """Hand a delivered message to its destination's inbox (or keep it until the inbox is asked for)."""
        box = self._boxes.get(msg.dst)
        if box is not None:
            box.put(msg)
        elif self.keep_unclaimed:
            self._unclaimed.setdefault(msg.dst, []).append(msg)
