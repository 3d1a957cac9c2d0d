"""The order in which a client sends one message to each of its peers (phase I's models, synthetic all-pairs).

In the fluid network the order changes nothing but the message IDs: every message of the exchange is its own flow
and they all share the links at once. On a packet network it decides the incast: each new TCP flow starts with a
burst of its initial window, and a sender's network card emits the bursts of its flows one after another in the
order they were sent. With every client sending in the same order ("id": c00 first, then c01, ...) all bursts of
one moment converge on one receiver's switch port; with "rotated" each receiver gets about one burst at a time
(`simfl.incast` checks it on a run's trace).

    id        client i sends to 0, 1, ..., n - 1 (skipping i): the order of the client IDs
    rotated   client i sends to i + 1, i + 2, ..., n - 1, 0, ..., i - 1
    random    a permutation of its peers per client, drawn from the run seed (`simfl.plan.derive_seed`)
"""

from __future__ import annotations

from simfl.schema import SEND_ORDERS

__all__ = ["SEND_ORDERS", "send_order"]


def send_order(sender: int, n: int, order: str = "id", seed: int = 0) -> list[int]:
    """The peers of client `sender` among clients 0 .. n - 1, in the order it sends to them (see the module doc).
    Pure: the same arguments give the same list; `seed` (the run seed) matters for "random" only."""
    if not 0 <= sender < n:
        raise ValueError(f"send_order: sender {sender} is not one of the {n} clients")
    if order == "id":
        return [j for j in range(n) if j != sender]
    if order == "rotated":
        return [(sender + k) % n for k in range(1, n)]
    if order == "random":
        import numpy as np

        from simfl.plan import derive_seed  # lazy: plan pulls in the learning stack

        peers = np.array([j for j in range(n) if j != sender], dtype=np.int64)
        rng = np.random.default_rng(derive_seed(seed, "send_order", sender))
        return [int(j) for j in rng.permutation(peers)]
    raise ValueError(f"send_order: unknown order {order!r} (one of {', '.join(SEND_ORDERS)})")
