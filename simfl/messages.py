"""The `Message` record and the exact byte accounting.

Two sizes are kept apart (the paper's payload accounting, and what the wire carries):

* `payload_bits`: what the method sends, counted as the paper counts it: 32 bits per float32 parameter, 16 bits per
  client ID (`ids_bits`), 1 bit per association flag (`flag_bits`); `payload_bits_of` counts the real bytes of
  tensors / arrays / bytes objects.
* `wire_bytes`: what the links carry. `packetize` is the one home of the rule: with B = ceil(payload_bits / 8)
  payload bytes and a maximum segment size MSS = mtu - ip_header_bytes (1500 - 40 = 1460 by default), the message
  travels as n_packets = max(1, ceil(B / MSS)) packets; packets 0..n-2 carry MSS payload bytes, the last one the
  rest; each adds h = ip_header_bytes + link_header_bytes (40 IPv4+TCP, 38 Ethernet: preamble/SFD 8, MAC header 14,
  FCS 4, inter-frame gap 12) of headers, h = 0 in header-less mode (pure payload):

      wire_bytes = B + n_packets * h

  The first (largest) packet is min(B, MSS) + h bytes; the network uses it for the per-hop store-and-forward
  term. A 0-byte message is one header-only packet (or 0 wire bytes without headers). A backend that retransmits
  adds what it sent again to `wire_bytes` and counts it in `retransmitted_bytes` (the fluid network does so on
  lossy routes: `simfl.linkmodels`).

A message that a backend gives up on (fluid: its path stayed down longer than `network.give_up`; ns3: its TCP
connection gave up after Linux's retransmission limits), or whose sender crashed
before it left, is recorded with `status` "lost" and NaN for the times it never reached; one that reached a crashed
node is recorded with `status` "to_crashed" (`t_deliver`: when it reached it). Either way its send event fails with
`MessageLost`. A workload marks a delivered message "late" when it reached a wait that had closed
(`simfl.trace.TraceRecorder.mark_late`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Message",
    "new_message",
    "payload_bits_of",
    "ids_bits",
    "flag_bits",
    "packetize",
    "Packetization",
    "MessageLost",
    "DELIVERED",
    "LOST",
    "LATE",
    "TO_CRASHED",
    "STATUSES",
]

DELIVERED, LOST, LATE, TO_CRASHED = "delivered", "lost", "late", "to_crashed"  # Message.status
STATUSES = (DELIVERED, LATE, LOST, TO_CRASHED)


@dataclass(frozen=True, slots=True, eq=False)
class Message:
    """A delivered (or lost) message. Times are simulated seconds: `t_send` when `Network.send` was called,
    `t_start` when it left its flow's FIFO queue and started transmitting, `t_tx` when its last bit left the sender
    (its flow finished transmitting it), `t_deliver` when its last bit reached `dst`. `wire_bytes` includes the
    `retransmitted_bytes` (bytes sent again). A lost message (`status` "lost") has NaN for the times it never
    reached (t_tx and t_deliver; t_start too if it never began) and the wire bytes it sent before it was lost."""

    msg_id: int
    src: str
    dst: str
    kind: str
    phase: str
    round: int
    payload_bits: int
    wire_bytes: int
    n_packets: int
    hops: int
    t_send: float
    t_start: float
    t_tx: float
    t_deliver: float
    payload: Any = None
    retransmitted_bytes: int = 0
    status: str = DELIVERED


# `Message`'s fields as a mutable dataclass of the same slots: `new_message` fills one and makes it a Message
_Draft = dataclasses.make_dataclass("_Draft", [(f.name, f.type, f) for f in dataclasses.fields(Message)],
                                    slots=True, eq=False)


def new_message(*fields: Any) -> Message:
    """`Message(*fields)`, built about 8x faster (the network builds one per delivered message): a frozen
    dataclass's __init__ sets each field through object.__setattr__; this fills a mutable twin of the same slot
    layout and turns it into the Message (frozen from then on, like any other)."""
    m = _Draft(*fields)
    m.__class__ = Message
    return m


class MessageLost(Exception):
    """A message did not arrive: the network gave up on it (fluid: its path stayed down longer than
    `network.give_up`; ns3: its TCP connection gave up) or its sender crashed (status "lost"), or it reached a
    crashed node (status "to_crashed"). The send event fails with it; `message` is the record. Protocol code may
    catch it."""

    def __init__(self, message: Message) -> None:
        super().__init__(message)  # the only argument: SimPy re-creates the exception from its args
        self.message = message

    def __str__(self) -> str:
        m = self.message
        if m.status == TO_CRASHED:
            return f"message {m.msg_id} {m.src}->{m.dst} ({m.kind}) failed: {m.dst} had crashed"
        return f"message {m.msg_id} {m.src}->{m.dst} ({m.kind}) lost: the network gave up on it"


def ids_bits(n: int) -> int:
    """Payload bits of n client IDs (2-byte unsigned integers, the paper's S_id)."""
    return 16 * int(n)


def flag_bits(n: int) -> int:
    """Payload bits of n association results (1 bit each)."""
    return int(n)


def payload_bits_of(obj: Any) -> int:
    """Real payload bits of `obj`: torch tensors and numpy arrays/scalars count their element bytes, bytes-like
    objects their length; dicts (values only), lists and tuples the sum of their items. 8 bits per byte."""
    if isinstance(obj, bytes | bytearray):
        return 8 * len(obj)
    if isinstance(obj, memoryview):
        return 8 * obj.nbytes
    if isinstance(obj, dict):
        return sum(payload_bits_of(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(payload_bits_of(v) for v in obj)
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):  # torch.Tensor, without importing torch
        return 8 * int(obj.numel()) * int(obj.element_size())
    if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):  # numpy array or scalar
        return 8 * int(obj.nbytes)
    raise TypeError(f"payload_bits_of: cannot size a {type(obj).__name__} (give tensors, arrays, bytes, "
                    "or dicts/lists of them)")


@dataclass(frozen=True, slots=True)
class Packetization:
    """How one payload travels (see the module docstring for the rule)."""

    payload_bytes: int  # B = ceil(payload_bits / 8)
    wire_bytes: int  # B + n_packets * header_bytes
    n_packets: int
    first_packet_bytes: int  # wire bytes of the first (largest) packet
    last_packet_bytes: int  # wire bytes of the last packet (packets 0..n-2 are mss + header_bytes each)
    mss: int  # payload bytes of every packet but the last
    header_bytes: int  # header bytes per packet (0 in header-less mode)


def packetize(payload_bits: int, mtu: int = 1500, ip_header_bytes: int = 40, link_header_bytes: int = 38,
              headers: bool = True) -> Packetization:
    """Split a payload into packets: the one place of the rule (the network, the export and the tests use it)."""
    if payload_bits < 0:
        raise ValueError(f"payload_bits must be >= 0, got {payload_bits}")
    mss = mtu - ip_header_bytes
    if mss <= 0:
        raise ValueError(f"mtu ({mtu}) must exceed ip_header_bytes ({ip_header_bytes})")
    b = (int(payload_bits) + 7) // 8
    n = max(1, (b + mss - 1) // mss)
    h = ip_header_bytes + link_header_bytes if headers else 0
    return Packetization(b, b + n * h, n, min(b, mss) + h, b - (n - 1) * mss + h, mss, h)
