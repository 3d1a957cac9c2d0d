"""Synthetic network-only workloads: all-pairs exchange, gather, broadcast.

`[synthetic] pattern` lists the patterns to run one after another; each starts when the previous one has been
delivered completely (a message the network gives up on counts as done: it is recorded as lost). All messages of a
pattern are sent at the same instant (phase "synthetic", kind "synthetic", round = the pattern's index):

    allpairs   every client sends one message to every other client          (n (n - 1) messages)
    gather     every client other than the target sends one to the target    (n or n - 1 messages)
    broadcast  the target sends one to every client other than itself

In allpairs each client sends to its peers in `synthetic.send_order` (`simfl.order`: "id", "rotated" or "random"),
client by client in declaration order; the message IDs follow that order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simfl.config import Scenario
from simfl.order import send_order
from simfl.world import World

__all__ = ["run_synthetic", "pattern_pairs"]


def pattern_pairs(pattern: str, clients: list[str], target: str | None, order: str = "id",
                  seed: int = 0) -> list[tuple[str, str]]:
    """The (source, destination) of each message of `pattern`, in the order they are sent (`order` and `seed`: the
    send order of allpairs, see `simfl.order.send_order`)."""
    if pattern == "allpairs":
        n = len(clients)
        return [(a, clients[j]) for i, a in enumerate(clients) for j in send_order(i, n, order, seed)]
    if target is None:
        raise ValueError(f"pattern {pattern!r} needs a target node")
    if pattern == "gather":
        return [(c, target) for c in clients if c != target]
    if pattern == "broadcast":
        return [(target, c) for c in clients if c != target]
    raise ValueError(f"unknown pattern {pattern!r}")


def _settled(env: Any, events: list) -> Any:
    """An event that succeeds once every event has succeeded or failed (a lost message: the trace has it)."""
    done = env.event()
    left = [len(events)]

    def one(ev: Any) -> None:
        if not ev.ok:
            ev.defused = True
        left[0] -= 1
        if not left[0]:
            done.succeed()

    for ev in events:
        ev.callbacks.append(one)
    return done


def run_synthetic(world: World, scenario: Scenario, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the scenario's synthetic patterns on `world` to completion; returns a summary dict. `say(stage)` hears
    of each pattern as it starts."""
    syn = scenario.synthetic
    env, net = world.env, world.network
    net.keep_unclaimed = False  # nothing here reads inboxes
    bits = 8 * syn.message_bytes
    clients = list(scenario.clients)
    done: list[dict[str, Any]] = []

    def proc():
        for i, pattern in enumerate(syn.pattern):
            t0 = env.now
            pairs = pattern_pairs(pattern, clients, syn.target, syn.send_order, scenario.seed)
            if say is not None:
                say(f"synthetic: pattern {i + 1}/{len(syn.pattern)}, {pattern}: {len(pairs):,} messages")
            events = [net.send(a, b, kind="synthetic", phase="synthetic", round=i, payload_bits=bits)
                      for a, b in pairs]
            if events:
                yield _settled(env, events)
            done.append({"pattern": pattern, "round": i, "messages": len(events), "t_start": t0,
                         "t_end": env.now, "duration_s": env.now - t0})

    p = env.process(proc())
    env.run(until=p if world.background is not None else None)  # background flows would run on for ever
    return {
        "workload": "synthetic",
        "message_bytes": syn.message_bytes,
        "target": syn.target,
        "patterns": done,
    }
