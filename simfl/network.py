"""SimPy network: fluid fair sharing per link direction and per shared cell, FIFO per flow, pipelined multi-hop.

The model (what every simulated time in a trace means)
-----------------------------------------------------
Resources. Each direction of a point-to-point link is a resource of capacity C (its bandwidth, bit/s); each shared
cell (WiFi) is one resource for all of its station<->AP hops in both directions (a duplex cell: one per direction),
shared per transmitter under station access (below).

Flows and FIFO. The messages from one node to another form a flow. A flow transmits one message at a time, in the
order of `send` calls: a message waits in its flow's FIFO queue until the previous one has finished transmitting
(`t_start`). Different flows share every resource on their routes fairly. (So a link direction is FIFO per flow and
fairly shared between flows, as TCP connections share a link.)

Max-min fair share. A transmitting message occupies each resource of its route once per hop that uses it (a message
between two stations of one cell crosses the cell twice: m_r(f) = 2). The rates R_f are max-min fair: no resource
carries more than its capacity (sum over f of m_r(f) R_f <= C_r) and every flow is bottlenecked, i.e. some resource
on its route is saturated and no flow on it runs faster. They are computed by progressive filling: all rates rise
together; a resource saturates at the level (C_r - load of its fixed flows) / (occupancies of its unfixed flows);
the first resource to saturate fixes its unfixed flows at that level; repeat until every flow is fixed. Capacity a
flow cannot use because it is bottlenecked elsewhere goes to the others (a on a 10 Mbps uplink and b on a 100 Mbps
uplink both sending to c's 100 Mbps downlink get 10 and 90 Mbps). For symmetric patterns (all-pairs, gather and
broadcast on a star or a cell) this is the equal split R = min over hops of C_r / n_r.

WiFi cells: station access (`network.cell_access = "station"`, the default; "flow": a shared cell is a resource as
above, shared per flow crossing at its full capacity). 802.11 shares a channel per transmitter, not per flow, and
loses airtime to collisions and backoff when many contend. So on a shared cell of capacity C (a duplex cell, a
scheduled radio such as LTE, stays per flow):
  1. each hop through the cell has a transmitter, its sender: a station, or the access point when it forwards to
     a station. A station-to-station message has two: its station and the access point. k is the number of
     transmitters with a transfer on the cell now (a flow transmitting over one of its hops; control frames do not
     count, below);
  2. the cell carries at most C eta(k): eta(k) = 1 for k <= 5, 0.83 at 10, 0.81 at 15, 0.74 from 20 on, linear in
     between (`ETA_POINTS`; e.g. eta(8) = 0.898, eta(16) = 0.796), the ns-3 backend's 802.11ac cells against this
     model with k stations uploading 500 kB each (docs/ns3.md, "WiFi cells": up to 5 contenders ns-3 was no
     slower than C; 10: 0.91 on a 165 Mbps cell and 0.76 on a 10 Mbps one; 15: 0.81; 20 and 30: 0.73, 0.74);
  3. transmitters first: each transmitter t is a resource of its own on its flows' routes (a slot), of capacity
     s, one share for all transmitters of the cell, the largest with sum_t min(d_t, s) <= C eta(k), d_t what t's
     flows would carry with no limit at its slot (their bottlenecks elsewhere): max-min between transmitters;
  4. then flows: a transmitter's flows share its slot max-min, as flows share a link (and every other resource
     as above). The cell resource itself (C, m_r(f) crossings) stays on the routes and binds only when control
     frames (below) leave less than C eta(k).
For flows bottlenecked by the cell, k transmitters each with its n_t flows: R = C eta(k) / (k n_t). E.g. the
access point relaying 3 flows while 2 stations upload one each (k = 3): each transmitter C / 3, a relayed flow
C / 9, an upload C / 3 (per flow: C / 5 each). All-pairs of m stations inside a cell: the access point relays all
m (m - 1) flows and is their bottleneck, its stations use the rest, s = C eta(m + 1) / 2 and every flow gets
C eta(m + 1) / (2 m (m - 1)): per flow crossing at C eta(m + 1), the total work is the same. k, and so eta(k),
change only when a transfer starts or ends on the cell, when the rates are recomputed anyway (a stalled or
crashed flow is on no resource): events stay proportional to messages. The shares are found by a few fills of the
progressive filling with the slots as resources: a cell whose transmitters changed starts from s = C eta(k) / k
(which always fits), and Newton's step on the cells' loads (piecewise linear in the shares; the slope from the
flows bottlenecked at each slot) gives the next shares, until every cell carries C eta(k) within 1e-6 or none of
its slots is full (at most 12 steps). Control frames (strict priority, below) are outside this sharing: they
take the cell's airtime first, on the cell resource (C, their crossings) as on a link, and have no slot, so they
are no transmitter (not in k) and the transmitters share C eta(k) among the other flows, at most what control
leaves of C (802.11's voice access category and reserved-slot schemes serve such frames ahead of the bulk
contention; a 100-byte frame takes microseconds of airtime). A control frame's start or end so leaves k alone,
and the shares too unless it changes what a transmitter's flows carry elsewhere (d_t): one fill then finds them
converged, where a frame in its transmitter's share would move the shares and take Newton steps. Left out: a
station's PHY rate (all have the cell's C), the airtime of TCP ACKs, and the dependence of eta on the cell's rate
and frame sizes.

Rates change only when a transmission starts or ends, and then only for the flows of the connected component of
the resources it uses (resources linked by the flows that cross them; every other flow's rate stays max-min fair),
so the event count is proportional to messages, not packets.

Delivery time. A message of W wire bits (`simfl.messages.packetize`: payload bytes plus per-packet headers)
transmits from t_start until t_tx, when the integral of R(t) reaches W (both are in the trace). Its last bit is
delivered at

    t_deliver = t_tx + sum_h L_h + P * (sum_h 1 / C_h  -  1 / min_h C_h)

with L_h each hop's latency, C_h its nominal capacity and P the wire bits of the message's first (largest) packet:
store-and-forward pipelining, where every hop but the slowest adds one packet's serialisation (for hops of equal
capacity: every hop after the first); `route_terms` gives L and S of a route, `pipeline_offsets` for each hop of it.
Messages of one flow are delivered in order: a message is never delivered before the previous message of its flow
(a short message behind a long one waits for it; then t_deliver exceeds the formula).

Alone on its path (R = min_h C_h = C_b) this is the closed form

    t_deliver = t_start + sum_h L_h + W / C_b + P * (sum_h 1 / C_h - 1 / C_b)

e.g. one hop: t_start + L + W / C; k equal messages started together on one link: t_start + L + k W / C.

Imperfect links (the scenario keys are in docs/scenarios.md, the formulas' one home is `simfl.linkmodels`)
-----------------------------------------------------------------------------------------------------------
Handshake (`network.handshake`, on by default). A flow's first message, and its first after a lost one (the
connection then closes), waits for TCP's SYN and SYN-ACK before it transmits: t_start = t_send + H with

    H = one_way(there, 8 h) + one_way(back, 8 h),   one_way(route, b) = sum_h (L_h + J_h + b / C_h)
                                                          (`Topology.one_way`)

i.e. the delivery of a header-only packet (h = ip_header_bytes + link_header_bytes; 0 without headers) alone on
its path each way (J_h: the hop's mean jitter). The closed forms above then gain + H for such a message. Messages
sent meanwhile queue behind it.

Asymmetry. Each direction of a link has its own capacity, latency and loss; a duplex cell has one channel
(resource) per direction. Routes follow the latencies of the direction travelled, so the route back may differ.

Loss. A route loses a packet with probability p = 1 - prod_h (1 - p_h) (each hop's stationary loss rate), which
  1. caps its flow's rate at Mathis et al.'s loss-limited rate, cap = 8 P_full / RTT * sqrt(3 / (2 p)), where
     P_full = MSS + h is a full packet and RTT = one_way(there, 8 P_full) + one_way(back, 8 h) (a full data packet
     there, a header-only ACK back). The cap enters the progressive filling as the capacity of a
     private resource of the flow, so the rates stay exactly max-min fair;
  2. adds retransmissions: when a message reaches the head of its flow it is charged k whole packets, the running
     total of its flow's charges being its running expectation sum n p / (1 - p) rounded half up (one message
     alone: k = round(n p / (1 - p))); each is one full first packet (P bits). Its wire_bytes, and the bits it
     transmits, grow by k P / 8, recorded as retransmitted_bytes.
  3. adds TCP's timeouts (`network.loss_timeouts`, on by default), drawn per message from the network's own
     generator seeded by the run's seed, in the deterministic order of handshakes and transmission ends. Fast
     retransmit needs three duplicate ACKs, so a short flow cannot recover a loss near its end: a message that ends
     its burst (none queued behind it when it finishes transmitting) and loses one of its last min(n, 3) packets
     (probability 1 - (1 - p)^min(n, 3)) is delivered rto (2^k - 1) later, k = 1 + its retransmissions lost again
     (each with probability p; the timer doubles each time, at most 120 s). rto = max(min_rto, 3 RTT) (RFC 6298
     after one sample, RTT as in the cap), or at least 3 s for the first message after a retransmitted SYN (RFC
     6298's fallback timer; ns-3 keeps about 3.4 s over the message's later round trips too, as if its estimator
     had sampled the retransmitted SYN's round trip, and in a crowded cell the real round trip is long anyway).
     A handshake's SYN / SYN-ACK exchange fails with q = 1 - (1 - p)(1 - p_back) (p_back: the route back's loss);
     after k failures (P(k) = q^k (1 - q), at most 6) t_start = t_send + H + syn_timeout (2^k - 1). In expectation
     a message of n packets, alone and ending its burst, thus pays (q, p < 1/2)

         E[wait] = syn_timeout q / (1 - 2 q)  [with a handshake]  +  (1 - (1 - p)^min(n, 3)) E[rto] / (1 - 2 p),
         E[rto] = (1 - q) rto + q max(rto, 3 s)   (rto alone without a handshake)

     on top of the closed forms above (e.g. 9 packets, p = p_back = 1%, rto 200 ms: 20.7 + 7.8 = 28.5 ms; 5%:
     121 + 75 = 196 ms). The timeouts add time only: retransmitted_bytes stays the expectation of 2. (which
     counts every loss, the tail's too). Messages queued behind a waiting one are delivered after it (in order).
     Background streams have no tail timeouts (a tcp stream's next frames follow within a timeout and trigger the
     fast retransmit); a tcp stream's handshake has its SYN timeouts.

Outages ([[faults]]). At each fault edge the routes of the flows with a message at their head are recomputed over
the graph without the edges that are down (the same tie-break). A flow whose route changed continues with its
remaining bits on the new route (the bytes it sent so far count on the old route's resources); a flow left
without a route stalls: rate 0, on no resource, until an edge gives it a route again. A message stalled for
`network.give_up` seconds is lost (counted from its first stall since it last made progress, i.e. completed its
handshake or transmitted: a handshake that short up-windows keep cutting off is lost at its first stall once
`give_up` has passed): its send event fails with `MessageLost`, the trace records it with status
"lost" (t_tx and t_deliver NaN), it is put in `losses(dst)` if that store was asked for, and its flow's connection
closes. Messages queued behind it continue. A message in its handshake when its route goes starts the handshake
again when the route returns.

Crashed nodes (`crash`, `recover`; a workload's node faults, after `allow_crashes`). When a node crashes, every
message of its flows that has not finished transmitting (queued, in its handshake, transmitting or stalled) fails
at once: status "lost", the wire bytes it sent, its event fails with `MessageLost`. Messages it finished
transmitting still arrive. A message that reaches a node while it is down fails there: status "to_crashed",
t_deliver the time it reached it. The connections of its flows close (their next message pays the handshake).

Capacity traces. A traced resource's capacity is the trace's piecewise-constant C(t); while it carries flows,
each change point is a rate change like a start or an end, batched with those of the same instant.

Jitter. A hop of mean jitter J adds a random delay of mean J to each message's delivery: one draw per message and
hop, in the deterministic order of the transmissions' ends, from the network's own generator seeded by the run's
seed (`network.jitter_distribution`). A message is still never delivered before the previous one of its flow.

Background traffic (`Stream`, sent by `simfl.traffic`)
-------------------------------------------------------
A background flow's messages (frames) form a flow of their own, (src, dst, name), FIFO as any flow, and are not put
in inboxes. Priority: while any flow of priority control is transmitting, the rates have two classes. Control
flows are filled first, max-min fair among themselves on the full capacities; then all other flows (FL's and
best-effort background), max-min fair on what control leaves, C_r - sum of the control rates on r (a best-effort
flow may get rate 0 while control saturates its bottleneck: strict priority). A control frame alone in its class
therefore crosses its route as if the link were idle: t_deliver = t_start + W / C_b + L + P S (a WiFi cell under
station access too: it takes no transmitter's share, see above). Transport: a datagram
stream has no handshake, no retransmissions and no loss-limited cap; on a lossy route each frame of n packets is
lost with probability 1 - (1 - p)^n (one draw per frame, when its transmission ends, from the network's own
generator seeded by the run's seed); a frame whose route is down is lost at once (no stall, no give-up). A lost
frame still occupied its links. A tcp stream behaves as FL's messages.

Approximations: the per-packet terms (P S, and those in H and RTT) use each hop's nominal capacity (a trace's
value at time 0); a loss model counts by its stationary rate only; bits in flight on a link that goes down are
not lost; ACKs are never lost (a SYN-ACK is) and take no capacity; timeouts in the bulk of a long transfer (a lost
fast retransmission, windows below 4 segments) are left to the Mathis cap; a rerouted message keeps the
retransmissions charged on its first route; the route back is that of the moment the route there was computed.

Events: one wake per instant at which something starts, ends or changes (a handshake completes, a trace changes
while its resource is busy, a fault edge while some flow has a message at its head, a give-up), so change points
add events, bytes never do. Nothing is scheduled for faults or traces while the network is idle: the fault state
is recomputed from the schedule when it is next needed.

Implementation: rates change lazily (a flow's remaining bits are settled only when its rate changes); finish times
sit in a heap; all starts and ends of one simulated instant are handled in one batch by an event of lower priority
than SimPy's normal events, so a burst of sends (e.g. 999,000 all-pairs messages) costs one rate computation.
Flows of a network without loss, jitter and faults ("plain") keep no state beyond the model's first version (a
handshake only delays their first start, grouped by the instant it ends); the others keep a `_FlowState`. The
inboxes live in `simfl.mailbox`, the per-link counters and the links table in `simfl.linkstats`.
Due finishes and deliveries are taken from their heaps by one pass and a sort when many are due at once
(`_pop_due`); a plain flow reuses its reverse flow's handshake time (the same two one-way times, the same float).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import simpy
from simpy.events import Event

from simfl.config import NetworkParams
from simfl.errors import SimflError
from simfl.linkmodels import Jitter, Timeouts, expected_retransmissions, mathis_cap, path_loss, retransmitted_packets
from simfl.linkstats import LinkStats
from simfl.mailbox import Mailboxes
from simfl.messages import LOST, TO_CRASHED, Message, MessageLost, new_message, packetize
from simfl.topology import Edge, Hop, Resource, Topology
from simfl.trace import TraceRecorder

__all__ = ["Network", "MessageLost", "Stream", "contention_efficiency", "pipeline_offsets", "route_terms"]

_WAKE_PRIORITY = 2  # after simpy's URGENT (0) and NORMAL (1): runs when all activity of the instant is done
_TOL = 1e-12  # relative tolerance on finish times: completions this close are handled together
_PACKETS_CACHE = 4096  # payload sizes whose packetisation Network.send keeps (runs send a handful of sizes)
# timers, handled within one instant in this order (then in the order they were set); handshakes end before them
_EDGE, _CAPACITY, _GIVE_UP, _CRASH = range(4)
# what a flow's head message is doing (flows of a plain network are always sending)
_SENDING, _HANDSHAKE, _STALLED = range(3)
# station access: eta(k) at k contending transmitters, linear in between and flat beyond (module docstring)
ETA_POINTS = ((1, 1.0), (5, 1.0), (10, 0.83), (15, 0.81), (20, 0.74))
_SHARE_TOL = 1e-6  # station access: a cell carrying C x eta(k) within this (relative) has its share found
_SHARE_ROUNDS = 12  # ... found in at most this many Newton steps (then the last is kept)


def route_terms(hops: Sequence[Hop]) -> tuple[float, float]:
    """(L, S) of a route: its summed latency L and its store-and-forward term S = sum_h 1/C_h - max_h 1/C_h
    (seconds per bit). A message whose transmission ends at t_tx, first packet P bits, is delivered at
    t_tx + L + P * S (or with the previous message of its flow, if that is later)."""
    latency = inv_sum = inv_max = 0.0
    for h in hops:
        latency += h.latency_s
        inv = 1.0 / h.capacity_bps
        inv_sum += inv
        if inv > inv_max:
            inv_max = inv
    return latency, inv_sum - inv_max


def contention_efficiency(k: int) -> float:
    """eta(k): the share of a WiFi cell's capacity that k transmitters contending for it get (`ETA_POINTS`)."""
    k0, e0 = ETA_POINTS[0]
    if k <= k0:
        return e0
    for k1, e1 in ETA_POINTS[1:]:
        if k <= k1:
            return e0 + (e1 - e0) * (k - k0) / (k1 - k0)
        k0, e0 = k1, e1
    return e0


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """x with a x = b (Gaussian elimination, partial pivoting; a few unknowns), or None when a is singular."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[p][c]) < 1e-12:
            return None
        m[c], m[p] = m[p], m[c]
        for r in range(c + 1, n):
            q = m[r][c] / m[c][c]
            for j in range(c, n + 1):
                m[r][j] -= q * m[c][j]
    x = [0.0] * n
    for c in range(n - 1, -1, -1):
        x[c] = (m[c][n] - sum(m[c][j] * x[j] for j in range(c + 1, n))) / m[c][c]
    return x


def pipeline_offsets(hops: Sequence[Hop]) -> tuple[list[float], list[float]]:
    """`route_terms` along a route of H hops: (lat, sf), H + 1 entries each.

    lat[j] is the latency of hops 0..j-1 and sf[j] the S of hops 0..j: a packet of P bits that the sender starts
    at t starts crossing hop j at t + lat[j] + P * sf[j] (every hop before j but the slowest adds its
    serialisation). Entry H is the route's (L, S), the delivery term."""
    h = len(hops)
    lat = [route_terms(hops[:j])[0] for j in range(h + 1)]
    sf = [route_terms(hops[:j + 1])[1] for j in range(h)]
    return lat, sf + [sf[-1] if sf else 0.0]


@dataclass(frozen=True, slots=True)
class Stream:
    """A background flow: its messages travel on their own flow, (src, dst, name). `control`: strict priority over
    every other flow; `datagram`: no handshake, retransmission or loss cap, a lost frame is lost (see the module
    docstring)."""

    name: str
    control: bool = False
    datagram: bool = False


def _pop_due(heap: list[tuple], lim: float) -> list[tuple]:
    """Pop the entries of `heap` (tuples, time first) due by `lim`, in heap order. When its last leaf is due too
    (a batch: e.g. 8,010 equal finish times) one pass and a sort, not a pop each (cost O(n), and the last leaf of a
    heap is due in about the share of it that is due)."""
    if heap[-1][0] > lim:
        due = []
        while heap and heap[0][0] <= lim:
            due.append(heapq.heappop(heap))
        return due
    due = [e for e in heap if e[0] <= lim]
    if len(due) == len(heap):
        heap.clear()
    else:
        heap[:] = [e for e in heap if e[0] > lim]
        heapq.heapify(heap)
    due.sort()
    return due


class _Wake(Event):
    """A self-triggering event at `delay` with a low priority (the pattern of simpy's own Timeout)."""

    def __init__(self, env: simpy.Environment, delay: float, callback: Any) -> None:
        self.env = env
        self.callbacks = [callback]
        self._value = None
        self._ok = True
        env.schedule(self, _WAKE_PRIORITY, delay)


class _Res:
    __slots__ = ("spec", "idx", "capacity", "n", "flows", "mark", "wf_load", "wf_m", "wf_key", "trace", "tpos",
                 "tversion")

    def __init__(self, spec: Resource | None, idx: int, capacity: float = 0.0) -> None:
        self.spec = spec  # None: a flow's private rate cap
        self.idx = idx  # index in the topology's resources (and in LinkStats)
        self.capacity = spec.capacity_bps if spec is not None else capacity
        self.n = 0  # active occupancies
        self.flows: dict[_Flow, int] = {}  # active flow -> occupancies (insertion-ordered: deterministic)
        self.mark = 0  # component search stamp (see Network._rates)
        self.wf_load = 0.0  # water-filling: load of the flows fixed so far
        self.wf_m = 0  # water-filling: occupancies of the flows not fixed yet
        self.wf_key = 0.0  # water-filling: the level at which this resource saturates
        self.trace = spec.trace if spec is not None else None  # capacity trace, or None
        self.tpos: tuple[int, int] | None = None  # the trace's next change point (while busy)
        self.tversion = 0  # invalidates the change timers of an earlier busy period


class _Tx:
    __slots__ = ("msg_id", "kind", "phase", "round", "payload_bits", "wire_bytes", "n_packets", "packet_bits",
                 "t_send", "t_start", "t_tx", "payload", "event", "flow", "retx", "hops")

    def __init__(self, msg_id: int, kind: str, phase: str, rnd: int, payload_bits: int, wire_bytes: int,
                 n_packets: int, packet_bits: int, t_send: float, payload: Any, event: Event, flow: _Flow) -> None:
        self.msg_id = msg_id
        self.kind = kind
        self.phase = phase
        self.round = rnd
        self.payload_bits = payload_bits
        self.wire_bytes = wire_bytes
        self.n_packets = n_packets
        self.packet_bits = packet_bits
        self.t_send = t_send
        self.t_start = math.nan  # set when it begins transmitting
        self.t_tx = t_send
        self.payload = payload
        self.event = event
        self.flow = flow
        self.retx = 0  # retransmitted bytes, included in wire_bytes
        self.hops = 0  # hops of the route it finished transmitting on (a reroute before delivery does not change it)


class _Flow:
    __slots__ = ("id", "src", "dst", "res", "n_hops", "latency", "sf_per_bit", "queue", "cur", "remaining",
                 "rate", "t_last", "version", "last_deliver", "mark", "new_rate", "x", "bg")

    def __init__(self, fid: int, src: str, dst: str, res: tuple[tuple[_Res, int], ...], n_hops: int,
                 latency: float, sf_per_bit: float) -> None:
        self.id = fid
        self.src = src
        self.dst = dst
        self.res = res
        self.n_hops = n_hops
        self.latency = latency
        self.sf_per_bit = sf_per_bit
        self.queue: deque[_Tx] | None = None  # created on first use (a million idle deques cost 600 MB)
        self.cur: _Tx | None = None
        self.remaining = 0.0
        self.rate = 0.0
        self.t_last = 0.0
        self.version = 0
        self.last_deliver = 0.0
        self.mark = 0
        self.new_rate = 0.0
        self.x: _FlowState | None = None  # what a network that is not plain needs
        self.bg: Stream | None = None  # a background flow's stream (None: FL's)


class _FlowState:
    """A flow's route and transport state beyond the plain model (handshake, loss, outages, jitter)."""

    __slots__ = ("hops", "epoch", "jitter", "loss", "cap", "handshake_s", "connected", "doing", "start_at",
                 "stall_id", "stuck_since", "retx_expected", "retx_charged", "counted", "syn_q", "rtt", "fallback")

    def __init__(self) -> None:
        self.hops: tuple[Hop, ...] | None = None  # the current route (kept with [[faults]]); None: there is none
        self.epoch = -1  # the fault state the route was computed in
        self.jitter: tuple[float, ...] = ()  # mean jitter of each hop that has one
        self.loss = 0.0  # the route's packet loss probability
        self.cap: _Res | None = None  # the private resource of the loss-limited rate
        self.handshake_s = 0.0
        self.connected = False
        self.doing = _SENDING
        self.start_at = math.nan  # when the handshake under way ends
        self.stall_id = 0  # invalidates the give-up timer of an earlier stall
        self.stuck_since = math.nan  # the head message's first stall since it last made progress (give-up clock)
        self.retx_expected = 0.0  # retransmitted packets: running expectation and whole packets charged
        self.retx_charged = 0
        self.counted = 0  # wire bytes of the head message already counted on earlier routes
        self.syn_q = 0.0  # probability that a SYN / SYN-ACK exchange fails (loss there or back)
        self.rtt = 0.0  # the route's round trip (timeouts: on a lossy route with loss_timeouts)
        self.fallback = False  # a SYN was retransmitted: the next message's first timeout is RTO_FALLBACK


class Network:
    """Messages over the topology's links. See the module docstring for the exact timing model."""

    def __init__(self, env: simpy.Environment, topology: Topology, params: NetworkParams | None = None,
                 recorder: TraceRecorder | None = None, seed: int = 0) -> None:
        self.env = env
        self.topology = topology
        self.params = p = params or NetworkParams()
        self.recorder = recorder if recorder is not None else TraceRecorder()
        self.recorder.set_link_source(self.link_columns)
        self.links = LinkStats(topology.resources)
        self.mailboxes = Mailboxes(env, topology.nodes)
        self._res = {r.id: _Res(r, i) for i, r in enumerate(topology.resources)}
        self._res_list = list(self._res.values())
        self._stamp = 0
        self._flows: dict[tuple[str, str], _Flow] = {}
        self._pending: list[_Flow] = []
        self._heap: list[tuple[float, int, int, _Flow]] = []
        self._wake_times: list[float] = []
        self._deliveries: list[tuple[float, int, _Tx]] = []
        self._packets: dict[int, tuple[int, int, int]] = {}  # payload bits -> (wire bytes, packets, first packet bits)
        self._next_id = 0
        self.sent = 0
        self.delivered = 0
        # imperfect links
        hops = [h for _, _, pair in topology.graph.edges(data="hops") for h in pair.values()]
        self._lossy = any(h.loss for h in hops)
        self._jitter = Jitter(seed, p.jitter_distribution) if any(h.jitter_s for h in hops) else None
        self._faults = topology.faults
        self._plain = not (self._lossy or self._jitter or self._faults)  # flows need no _FlowState
        self._header_bits = 8 * p.header_bytes
        self._full_packet_bits = 8 * (p.mtu - p.ip_header_bytes + p.header_bytes)
        self._starts: dict[float, list[_Flow]] = {}  # handshakes ending at a time
        self._handshakes: dict[tuple[str, str], float] = {}  # plain flows: handshake times the reverse flow reuses
        self._start_times: list[float] = []  # their times (a heap)
        self._timers: list[tuple[float, int, int, Any, int]] = []  # (time, order, kind, flow or resource, version)
        self._timer_seq = 0
        self._topo = topology  # routes over what is up now
        self._topos: dict[frozenset[Edge], Topology] = {frozenset(): topology}
        self._down: frozenset[Edge] = frozenset()
        self._epoch = self._routed_epoch = 0
        self._next_edge = 0.0 if self._faults else math.inf  # when the fault state must next be recomputed
        self._edge_armed = False
        self._losses: dict[str, simpy.FilterStore] = {}
        self._route_info: dict[tuple[Topology, str, str], tuple] = {}  # with [[faults]]: see _route
        self._classes = False  # some flow is a control stream: rates in two classes (`_rates_classes`)
        self._bg_loss = random.Random(f"simfl background loss {seed}")  # datagram frames' loss draws
        self._timeouts = Timeouts(seed, p.min_rto, p.syn_timeout) if self._lossy and p.loss_timeouts else None
        self._crashed: set[str] = set()  # nodes that are down (`crash`): messages reaching them fail
        # station access (`network.cell_access`): the shared cells, a slot per transmitter on each (`_slot`)
        self._station_cells = {r.id for r in topology.resources if p.cell_access == "station"
                               and r.medium == "cell" and r.id == f"cell:{r.link}"}
        self._slots: dict[tuple[str, str], _Res] = {}  # (cell, transmitter) -> its slot
        self._cell_slots: dict[_Res, list[_Res]] = {}  # a cell -> its slots, in order of creation
        self._slot_cell: dict[_Res, _Res] = {}  # a slot -> its cell
        self._cell_k: dict[_Res, int] = {}  # a cell -> its active transmitters at its last rate computation
        self._allocate = self._rates_station if self._station_cells else self._rates

    # ------------------------------------------------------------------ public API
    def send(self, src: str, dst: str, *, kind: str, phase: str, round: int, payload_bits: int,
             payload: Any = None, stream: Stream | None = None) -> Event:
        """Queue a message; returns an event whose value is the delivered `Message` (also put in `inbox(dst)`).
        If the network gives up on it (see the module docstring) the event fails with `MessageLost`. With a
        `stream`, a background frame on that stream's own flow (never put in an inbox)."""
        key = (src, dst) if stream is None else (src, dst, stream.name)
        flow = self._flows.get(key)
        handshake = None
        if flow is None:
            flow, handshake = self._new_flow(src, dst, key, stream)
        bits = int(payload_bits)
        pk = self._packets.get(bits)
        if pk is None:
            pk = self._packetize(src, dst, bits)
        env = self.env
        ev = Event(env)
        tx = _Tx(self._next_id, kind, phase, int(round), bits, pk[0], pk[1], pk[2], env.now, payload, ev, flow)
        self._next_id += 1
        self.sent += 1
        if stream is not None:
            self.recorder.background_sent += 1
        if flow.cur is None:
            flow.cur = tx
            if flow.x is not None:
                self._begin(flow, env.now)
                self._wake(env.now)
            elif handshake is None:
                flow.remaining = 8.0 * tx.wire_bytes
                self._pending.append(flow)
                self._wake(env.now)
            else:  # a plain flow's first message
                flow.remaining = 8.0 * tx.wire_bytes
                self._start_at(env.now + handshake, flow)
                self._wake(env.now + handshake)
        else:
            if flow.queue is None:
                flow.queue = deque()
            flow.queue.append(tx)
        return ev

    def inbox(self, node: str) -> simpy.FilterStore:
        """The store where messages to `node` are put on delivery (created on first use; see `simfl.mailbox`)."""
        return self.mailboxes.inbox(node)

    def losses(self, node: str) -> simpy.FilterStore:
        """The store where messages to `node` that the network gave up on are put (status "lost"), from the time
        it is first asked for: the receiver's way to learn of a loss (the sender's send event fails)."""
        box = self._losses.get(node)
        if box is None:
            self.topology.kind(node)  # an unknown node is an error
            box = self._losses[node] = simpy.FilterStore(self.env)
        return box

    def allow_crashes(self) -> None:
        """Prepare for `crash` (before the first send): every flow keeps the state a crash needs."""
        if self._flows:
            raise RuntimeError("allow_crashes: call it before the first send")
        self._plain = False

    def crash(self, node: str) -> None:
        """`node` crashes now: the messages of its flows that have not finished transmitting fail (status "lost")
        and messages reaching it fail (status "to_crashed") until `recover` (see the module docstring)."""
        if self._plain:
            raise RuntimeError("crash: call allow_crashes before the first send")
        self._crashed.add(node)
        self._timer(self.env.now, _CRASH, node, 0)
        self._wake(self.env.now)

    def recover(self, node: str) -> None:
        """`node` is up again: messages reaching it from now on are delivered."""
        self._crashed.discard(node)

    def is_down(self, node: str) -> bool:
        return node in self._crashed

    @property
    def keep_unclaimed(self) -> bool:
        """Keep messages delivered to an inbox nobody has asked for yet (False: drop them, to save memory)."""
        return self.mailboxes.keep_unclaimed

    @keep_unclaimed.setter
    def keep_unclaimed(self, keep: bool) -> None:
        self.mailboxes.keep_unclaimed = keep

    def route(self, src: str, dst: str):
        """The route with every link up (under [[faults]] a flow's route changes while some are down)."""
        return self.topology.route(src, dst)

    @property
    def lost(self) -> int:
        """Messages given up on (counted by the recorder, so that a backend borrowing `totals` shares it)."""
        return self.recorder.messages_lost

    @property
    def in_flight(self) -> int:
        return self.sent - self.delivered - self.recorder.messages_lost

    def totals(self) -> dict[str, Any]:
        """What the workload's messages cost (background frames are counted apart: `simfl.traffic`)."""
        rec = self.recorder
        bg_in_flight = rec.background_sent - rec.background_delivered - rec.background_lost
        return {
            "messages": self.delivered - rec.background_delivered,
            "messages_undelivered": self.in_flight - bg_in_flight,
            "messages_lost": rec.messages_lost - rec.background_lost,
            "payload_bits": rec.payload_bits,
            "payload_bytes": rec.payload_bits / 8,
            "wire_bytes": rec.wire_bytes,
            "retransmitted_bytes": rec.retransmitted_bytes,
        }

    def link_columns(self) -> dict[str, list[Any]]:
        """The links table (see `simfl.trace.LINK_SCHEMA`) as columns, as of now."""
        return self.links.columns(self.env.now)

    # ------------------------------------------------------------------ flows and routes
    def _packetize(self, src: str, dst: str, bits: int) -> tuple[int, int, int]:
        """(wire bytes, packets, first packet bits) of a payload, remembered per size for the next sends."""
        if bits < 0:
            raise ValueError(f"send {src}->{dst}: payload_bits must be >= 0, got {bits}")
        p = self.params
        pk = packetize(bits, p.mtu, p.ip_header_bytes, p.link_header_bytes, p.headers)
        if len(self._packets) >= _PACKETS_CACHE:
            self._packets.clear()
        out = self._packets[bits] = (pk.wire_bytes, pk.n_packets, 8 * pk.first_packet_bytes)
        return out

    def _new_flow(self, src: str, dst: str, key: tuple, stream: Stream | None) -> tuple[_Flow, float | None]:
        """A new flow, and for a plain one its handshake time (None without handshake)."""
        if src == dst:
            raise SimflError(f"send: source and destination are the same node ({src!r})")
        if stream is not None and stream.control:
            self._classes = True
        if not self._plain:
            self.topology.kind(dst)  # an unknown node is an error, not a stall
            flow = _Flow(len(self._flows), src, dst, (), 0, 0.0, 0.0)
            flow.x = _FlowState()
            flow.bg = stream
            flow.x.connected = stream is not None and stream.datagram  # a datagram stream never handshakes
            self._advance(self._lim(self.env.now))
            self._route(flow)
            self._flows[key] = flow
            return flow, None
        topo = self.topology
        hops = topo.route_tuple(src, dst)
        res = self._own_res(self._route_res(hops), stream)
        latency, sf = route_terms(hops)
        flow = _Flow(len(self._flows), src, dst, res, len(hops), latency, sf)
        flow.bg = stream
        self._flows[key] = flow
        if not self.params.handshake or (stream is not None and stream.datagram):
            return flow, None
        back = self._handshakes.pop((dst, src), None)  # the reverse flow's: the same two one-way times, summed in
        if back is not None:  # the other order (IEEE addition commutes, so the same float)
            return flow, back
        hb = self._header_bits
        h = self._handshakes[(src, dst)] = topo.one_way(src, dst, hb) + topo.one_way(dst, src, hb)
        return flow, h

    def _route(self, f: _Flow) -> None:
        """A flow's route and what follows from it (resources, delivery terms, loss, rate cap, handshake), over
        the links that are up now. Without [[faults]] a missing route is an error."""
        x = f.x
        (hops, res, f.n_hops, f.latency, f.sf_per_bit, x.jitter, x.loss, x.handshake_s, cap, x.syn_q,
         x.rtt) = self._info(f.src, f.dst)
        x.hops, x.epoch = hops, self._epoch
        if cap < math.inf and not (f.bg is not None and f.bg.datagram):  # a datagram source does not back off
            if x.cap is None:
                x.cap = _Res(None, self.links.extra_slot(), cap)
                self._res_list.append(x.cap)
            x.cap.capacity = cap
            res = (*res, (x.cap, 1))
        f.res = self._own_res(res, f.bg)

    def _own_res(self, res: tuple[tuple[_Res, int], ...], stream: Stream | None) -> tuple[tuple[_Res, int], ...]:
        """A flow's resources from its route's: a control stream's leave out the slots (station access: control
        frames take the cell's airtime ahead of the transmitters' shares and are no transmitter of them)."""
        if stream is None or not stream.control or not self._station_cells:
            return res
        return tuple(rm for rm in res if rm[0] not in self._slot_cell)

    def _info(self, src: str, dst: str) -> tuple:
        """What the route from src to dst over what is up now gives (see `_derive_route`)."""
        topo = self._topo
        if not self._faults:
            return self._derive_route(topo, src, dst)
        info = self._route_info.get((topo, src, dst))
        if info is None:  # routes alternate between a few fault states: keep what each gives
            info = self._route_info[(topo, src, dst)] = self._derive_route(topo, src, dst)
        return info

    def _derive_route(self, topo: Topology, src: str, dst: str) -> tuple:
        """(hops or None, resources, hops, L, S, jitter means, loss, handshake time, rate cap, handshake failure
        probability, round trip: 0 without timeouts) of a route."""
        hops = topo.route_or_none(src, dst)
        if hops is None:
            if not self._faults:
                topo.route_tuple(src, dst)  # raises: no route
            return None, (), 0, 0.0, 0.0, (), 0.0, 0.0, math.inf, 0.0, 0.0
        res = self._route_res(hops)
        latency, sf = route_terms(hops)
        loss = path_loss(h.loss for h in hops) if self._lossy else 0.0
        handshake = syn_q = timed_rtt = 0.0
        cap = math.inf
        if self.params.handshake or loss:
            hb, full = self._header_bits, self._full_packet_bits  # the graph is undirected: there is a route back
            handshake = topo.one_way(src, dst, hb) + topo.one_way(dst, src, hb)
            rtt = topo.one_way(src, dst, full) + topo.one_way(dst, src, hb)
            cap = mathis_cap(full, rtt, loss)
            if self._timeouts is not None:
                syn_q = 1.0 - (1.0 - loss) * (1.0 - path_loss(h.loss for h in topo.route_or_none(dst, src)))
                timed_rtt = rtt
        jitter = tuple(h.jitter_s for h in hops if h.jitter_s)
        return hops if self._faults else (), res, len(hops), latency, sf, jitter, loss, handshake, cap, syn_q, timed_rtt

    def _route_res(self, hops: Sequence[Hop]) -> tuple[tuple[_Res, int], ...]:
        """The resources a route occupies, each with its occupancies m_r(f); under station access then, per shared
        cell it crosses, the slot of each hop's transmitter (the hop's sender)."""
        counts: dict[str, int] = {}
        for h in hops:
            counts[h.resource] = counts.get(h.resource, 0) + 1
        res = [(self._res[rid], m) for rid, m in counts.items()]
        if self._station_cells:
            slots: dict[_Res, int] = {}
            for h in hops:
                if h.resource in self._station_cells:
                    slot = self._slot(h.resource, h.src)
                    slots[slot] = slots.get(slot, 0) + 1
            res += slots.items()
        return tuple(res)

    def _slot(self, cell_id: str, node: str) -> _Res:
        """The slot of transmitter `node` on shared cell `cell_id` (station access): a resource of the node's
        share of the cell, set by `_rates_station`; its counters are in no table."""
        slot = self._slots.get((cell_id, node))
        if slot is None:
            cell = self._res[cell_id]
            others = self._cell_slots.setdefault(cell, [])
            share = others[0].capacity if others else cell.capacity  # the cell's share so far
            slot = self._slots[(cell_id, node)] = _Res(None, self.links.extra_slot(), share)
            self._res_list.append(slot)
            others.append(slot)
            self._slot_cell[slot] = cell
        return slot

    def _advance(self, t: float) -> None:
        """Bring the fault state (what is down, the routes over the rest) up to time t."""
        if t < self._next_edge:
            return
        down = self.topology.edges_down(t)
        self._next_edge = self.topology.next_fault_edge(t)
        if down != self._down:
            self._down = down
            topo = self._topos.get(down)
            if topo is None:
                topo = self._topos[down] = self.topology.without_edges(down)
            self._topo = topo
            self._epoch += 1

    @staticmethod
    def _lim(now: float) -> float:
        """The end of the instant `now`: times up to it are handled together."""
        return now + _TOL * (1.0 + now)

    # ------------------------------------------------------------------ a flow's head message
    def _begin(self, f: _Flow, now: float) -> None:
        """The flow's head message begins (not plain): route, retransmissions, then handshake, stall or start."""
        x = f.x
        tx = f.cur
        if self._faults:
            self._advance(self._lim(now))
            if x.epoch != self._epoch:
                self._route(f)
        if x.loss and not (f.bg is not None and f.bg.datagram):
            expected = expected_retransmissions(tx.n_packets, x.loss)
            k = retransmitted_packets(x.retx_expected, x.retx_charged, expected)
            x.retx_expected += expected
            x.retx_charged += k
            tx.retx = k * tx.packet_bits // 8
            tx.wire_bytes += tx.retx
        f.remaining = 8.0 * tx.wire_bytes
        x.counted = 0
        x.stuck_since = math.nan
        self._arm_edges()
        if x.hops is None:
            self._stall(f, now)
        elif self.params.handshake and not x.connected:
            self._handshake(f, now)
        else:
            x.doing = _SENDING
            self._pending.append(f)

    def _handshake(self, f: _Flow, now: float) -> None:
        """The handshake begins: one round trip, plus syn_timeout (2^k - 1) after k failed attempts (lossy route)."""
        x = f.x
        x.doing = _HANDSHAKE
        x.start_at = now + x.handshake_s
        if x.syn_q:
            wait = self._timeouts.syn_wait(x.syn_q)
            if wait:
                x.start_at += wait
                x.fallback = True
        self._start_at(x.start_at, f)

    def _start_at(self, t: float, f: _Flow) -> None:
        """The flow's head message starts transmitting at t (its handshake ends then)."""
        flows = self._starts.get(t)
        if flows is None:
            self._starts[t] = [f]
            heapq.heappush(self._start_times, t)
        else:
            flows.append(f)

    def _handshakes_end(self, lim: float) -> None:
        """The flows whose handshake ends by `lim` start transmitting (unless, not plain, they stalled since)."""
        times, pending = self._start_times, self._pending
        while times and times[0] <= lim:
            t = heapq.heappop(times)
            for f in self._starts.pop(t):
                x = f.x
                if x is None:
                    pending.append(f)
                elif x.doing == _HANDSHAKE and x.start_at == t:
                    x.connected = True
                    x.stuck_since = math.nan  # progress: the give-up clock starts afresh at a later stall
                    x.doing = _SENDING
                    pending.append(f)

    def _stall(self, f: _Flow, now: float) -> None:
        """The flow has no route (and is on no resource): it waits for one, and gives up after give_up (a datagram
        frame is lost at once)."""
        if f.bg is not None and f.bg.datagram:
            self._lose(f, now)
            return
        x = f.x
        x.doing = _STALLED
        x.stall_id += 1
        if math.isnan(x.stuck_since):
            x.stuck_since = now
        # give_up after the first stall without progress since (a handshake that outages keep cutting short is none)
        self._timer(max(now, x.stuck_since + self.params.give_up), _GIVE_UP, f, x.stall_id)
        self._arm_edges()

    def _resume(self, f: _Flow, now: float, dirty: dict[_Res, None]) -> None:
        """A stalled flow has a route again: it goes on transmitting, or begins (handshake first if need be)."""
        x = f.x
        x.stall_id += 1
        if not math.isnan(f.cur.t_start):
            x.doing = _SENDING
            x.stuck_since = math.nan  # it transmits again: progress
            self._attach(f, now, dirty)
        elif self.params.handshake and not x.connected:
            self._handshake(f, now)
        else:
            x.doing = _SENDING
            self._pending.append(f)

    def _attach(self, f: _Flow, now: float, dirty: dict[_Res, None]) -> None:
        """Put a flow that has begun transmitting on its route's resources (after a reroute or a stall)."""
        for r, m in f.res:
            if r.n == 0:
                self.links.busy(r.idx, now)
                if r.trace is not None:
                    self._trace_on(r, now)
            r.n += m
            r.flows[f] = m
            dirty[r] = None
        f.t_last = now
        f.rate = 0.0

    def _detach(self, f: _Flow, now: float, dirty: dict[_Res, None]) -> None:
        """Take a transmitting flow off its resources: its remaining bits settled, the bytes it sent so far counted
        on them."""
        if f.rate:
            rem = f.remaining - f.rate * (now - f.t_last)
            f.remaining = rem if rem > 0.0 else 0.0
        x = f.x
        sent = int((8.0 * f.cur.wire_bytes - f.remaining) // 8)
        links = self.links
        for r, m in f.res:
            links.carried_part(r.idx, (sent - x.counted) * m)
            r.n -= m
            del r.flows[f]
            if r.n == 0:
                links.idle(r.idx, now)
            dirty[r] = None
        x.counted = sent
        f.rate = 0.0
        f.version += 1

    def _lose(self, f: _Flow, now: float) -> None:
        """Give up on the flow's head message (stalled for give_up): record it, fail its event, go on."""
        x = f.x
        tx = f.cur
        sent = int((8.0 * tx.wire_bytes - f.remaining) // 8)
        retx = tx.retx * sent // tx.wire_bytes if tx.wire_bytes else 0
        msg = Message(tx.msg_id, f.src, f.dst, tx.kind, tx.phase, tx.round, tx.payload_bits, sent, tx.n_packets,
                      f.n_hops, tx.t_send, tx.t_start, math.nan, math.nan, tx.payload, retx, LOST)
        self.recorder.record_message(msg)
        x.connected = f.bg is not None and f.bg.datagram  # a TCP connection closes; a datagram stream has none
        x.stall_id += 1
        x.doing = _SENDING
        tx.event.fail(MessageLost(msg))
        box = self._losses.get(f.dst) if f.bg is None else None
        if box is not None:
            box.put(msg)
        if f.queue:
            f.cur = f.queue.popleft()
            self._begin(f, now)
        else:
            f.cur = None

    def _fail_node(self, node: str, now: float, dirty: dict[_Res, None]) -> None:
        """`node` crashed: its flows' messages that have not finished transmitting fail; connections to and from it
        close."""
        for f in self._flows.values():
            if f.bg is not None or node not in (f.src, f.dst):
                continue
            f.x.connected = False
            if f.src != node or f.cur is None:
                continue
            x, tx = f.x, f.cur
            if x.doing == _SENDING and f.res and f in f.res[0][0].flows:
                self._detach(f, now, dirty)  # transmitting: what it sent so far counts on its links
            sent = int((8.0 * tx.wire_bytes - f.remaining) // 8) if not math.isnan(tx.t_start) else 0
            x.stall_id += 1  # a give-up timer of a stall is void
            x.doing = _SENDING  # a handshake under way is void
            x.start_at = math.nan
            failed = [(tx, sent), *((q, 0) for q in (f.queue or ()))]
            f.cur = None
            if f.queue:
                f.queue.clear()
            for t, nbytes in failed:
                retx = t.retx * nbytes // t.wire_bytes if t.wire_bytes else 0
                msg = Message(t.msg_id, f.src, f.dst, t.kind, t.phase, t.round, t.payload_bits, nbytes, t.n_packets,
                              f.n_hops, t.t_send, t.t_start, math.nan, math.nan, t.payload, retx, LOST)
                self.recorder.record_message(msg)
                t.event.fail(MessageLost(msg))
        self._pending = [f for f in self._pending if f.cur is not None]

    # ------------------------------------------------------------------ timers: handshakes, traces, faults
    def _timer(self, t: float, kind: int, obj: Any, version: int) -> None:
        heapq.heappush(self._timers, (t, self._timer_seq, kind, obj, version))
        self._timer_seq += 1

    def _arm_edges(self) -> None:
        """Make sure the next fault edge is handled when it comes (while some flow has a head message)."""
        if self._faults and not self._edge_armed and self._next_edge < math.inf:
            self._edge_armed = True
            self._timer(self._next_edge, _EDGE, None, 0)

    def _trace_on(self, r: _Res, now: float) -> None:
        """A traced resource starts carrying flows: its capacity now, and a timer for its next change point."""
        trace = r.trace
        k, i = trace.position(self._lim(now))
        r.capacity = trace.rates[i]
        r.tpos = trace.following(k, i)
        r.tversion += 1
        if r.tpos is not None:
            self._timer(trace.change_time(*r.tpos), _CAPACITY, r, r.tversion)

    def _unfinished(self) -> int:
        """Messages that have not finished transmitting and are not lost (they sit at or behind a flow's head)."""
        return self.sent - self.lost - self.delivered - len(self._deliveries)

    def _stale(self, entry: tuple[float, int, int, Any, int]) -> bool:
        _, _, kind, obj, version = entry
        if kind == _EDGE:
            return not self._unfinished()
        if kind == _CAPACITY:
            return not obj.n or obj.tversion != version
        if kind == _CRASH:
            return False
        return obj.cur is None or obj.x.stall_id != version or obj.x.doing != _STALLED

    def _timed(self, now: float, lim: float, dirty: dict[_Res, None]) -> None:
        """Handle the timers due by `lim` (and a fault state changed by a send): reroute on fault edges, change
        traced capacities, give up on stalled messages."""
        timers = self._timers
        due = []
        while timers and timers[0][0] <= lim:
            due.append(heapq.heappop(timers))
        due.sort(key=lambda e: (e[2], e[1]))
        for entry in due:
            if entry[2] == _EDGE:
                self._edge_armed = False
        if self._faults:
            self._advance(lim)
            if self._epoch != self._routed_epoch:
                self._routed_epoch = self._epoch
                self._reroute(now, dirty)
            if self._unfinished():
                self._arm_edges()
        for entry in due:
            kind, obj = entry[2], entry[3]
            if kind == _EDGE or self._stale(entry):
                continue
            if kind == _CRASH:
                self._fail_node(obj, now, dirty)
            elif kind == _CAPACITY:
                trace = obj.trace
                obj.capacity = trace.rates[obj.tpos[1]]
                obj.tpos = trace.following(*obj.tpos)
                if obj.tpos is not None:
                    self._timer(trace.change_time(*obj.tpos), _CAPACITY, obj, obj.tversion)
                dirty[obj] = None
            else:
                self._lose(obj, now)

    def _reroute(self, now: float, dirty: dict[_Res, None]) -> None:
        """The fault state changed: every flow with a head message gets its route over what is up now."""
        for f in self._flows.values():
            x = f.x
            if f.cur is None or x.epoch == self._epoch:
                continue
            if self._info(f.src, f.dst)[0] == x.hops:
                x.epoch = self._epoch
                continue
            attached = bool(f.res) and f in f.res[0][0].flows
            if attached:
                self._detach(f, now, dirty)
            self._route(f)
            if x.doing == _STALLED:
                if x.hops is not None:
                    self._resume(f, now, dirty)
            elif x.hops is None:
                self._stall(f, now)
            elif attached:
                self._attach(f, now, dirty)
        self._pending = [f for f in self._pending if f.x.doing == _SENDING and f.x.hops is not None]

    # ------------------------------------------------------------------ the batch of one instant
    def _wake(self, t: float) -> None:
        wt = self._wake_times
        if wt and wt[0] <= t:
            return
        env = self.env
        delay = t - env.now
        heapq.heappush(wt, env.now + delay)  # the same float simpy computes for the event's time
        _Wake(env, delay, self._process)

    def _process(self, _event: Event) -> None:
        env = self.env
        now = env.now
        wt = self._wake_times
        while wt and wt[0] <= now:
            heapq.heappop(wt)
        heap = self._heap
        heappop, heappush = heapq.heappop, heapq.heappush
        lim = now + _TOL * (1.0 + now)
        timers, starts = self._timers, self._start_times
        while True:
            done: list[_Flow] = []
            if heap and heap[0][0] <= lim:
                done = [f for _, _, version, f in _pop_due(heap, lim) if version == f.version]
            due = (timers and timers[0][0] <= lim) or self._epoch != self._routed_epoch
            if not done and not self._pending and not due and not (starts and starts[0] <= lim):
                break
            dirty: dict[_Res, None] = {}
            for f in done:
                self._finish(f, now, dirty)
            if starts and starts[0] <= lim:
                self._handshakes_end(lim)
            if due:
                self._timed(now, lim, dirty)
            pending = self._pending
            self._pending = []
            links = self.links
            for f in pending:
                for r, m in f.res:
                    if r.n == 0:
                        links.busy(r.idx, now)
                        if r.trace is not None:
                            self._trace_on(r, now)
                    r.n += m
                    r.flows[f] = m
                    dirty[r] = None
                f.cur.t_start = now
                f.t_last = now
                f.rate = 0.0
            for f in self._allocate(dirty):
                rate = f.new_rate
                if rate != f.rate:
                    if f.rate:
                        rem = f.remaining - f.rate * (now - f.t_last)
                        f.remaining = rem if rem > 0.0 else 0.0
                    f.t_last = now
                    f.rate = rate
                    f.version += 1
                    if rate:  # 0: a best-effort flow behind control traffic waits for it
                        heappush(heap, (now + f.remaining / rate, f.id, f.version, f))
        deliveries = self._deliveries
        if deliveries and deliveries[0][0] <= lim:
            due = _pop_due(deliveries, lim)
            due.reverse()  # delivered from the end: each entry (and its message's state) goes as it is delivered
            while due:
                self._deliver(due.pop()[2], now)
        while heap and heap[0][2] != heap[0][3].version:
            heappop(heap)
        while timers and self._stale(timers[0]):
            if heappop(timers)[2] == _EDGE:
                self._edge_armed = False
        t_next = heap[0][0] if heap else math.inf
        if deliveries and deliveries[0][0] < t_next:
            t_next = deliveries[0][0]
        if timers and timers[0][0] < t_next:
            t_next = timers[0][0]
        if starts and starts[0] < t_next:
            t_next = starts[0]
        if t_next < math.inf:
            self._wake(t_next)

    def _rates(self, dirty: dict[_Res, None]) -> list[_Flow]:
        """Max-min fair rates (in `new_rate`) for the flows connected to the `dirty` resources; returns those flows.

        Only the connected component of the changed resources (resources linked by the flows that cross them) can
        change; the rates of all other flows stay max-min fair. Progressive filling: every unfixed flow's rate
        rises at one level; a resource saturates at (C - load of its fixed flows) / (occupancies of its unfixed
        flows); the resource that saturates first fixes its unfixed flows at that level; repeat. A heap holds the
        saturation levels, which only rise as flows are fixed, so each is pushed again only when it changes.
        """
        if self._classes:
            return self._rates_classes(dirty)
        self._stamp += 1
        stamp = self._stamp
        stack = []
        for r in dirty:
            r.mark = stamp
            stack.append(r)
        flows: list[_Flow] = []
        heap: list[tuple[float, int]] = []
        while stack:
            r = stack.pop()
            if not r.n:
                continue
            r.wf_load = 0.0
            r.wf_m = r.n
            r.wf_key = key = r.capacity / r.n
            heap.append((key, r.idx))
            for f in r.flows:
                if f.mark != stamp:
                    f.mark = stamp
                    f.new_rate = 0.0
                    flows.append(f)
                    for r2, _ in f.res:
                        if r2.mark != stamp:
                            r2.mark = stamp
                            stack.append(r2)
        heapq.heapify(heap)
        heappop, heappush = heapq.heappop, heapq.heappush
        res_list = self._res_list
        level = 0.0
        while heap:
            key, idx = heappop(heap)
            r = res_list[idx]
            if key != r.wf_key or not r.wf_m:
                continue  # superseded by a later entry, or all its flows are fixed
            if key > level:
                level = key
            touched: dict[_Res, None] = {}
            for f in r.flows:
                if not f.new_rate:
                    f.new_rate = level
                    for r2, m in f.res:
                        r2.wf_load += m * level
                        r2.wf_m -= m
                        touched[r2] = None
            for r2 in touched:
                if r2.wf_m:
                    key = (r2.capacity - r2.wf_load) / r2.wf_m
                    if key < level:  # rounding: a level never falls
                        key = level
                    if key != r2.wf_key:
                        r2.wf_key = key
                        heappush(heap, (key, r2.idx))
        return flows

    def _rates_station(self, dirty: dict[_Res, None]) -> list[_Flow]:
        """`_rates` under station access (module docstring): every shared cell of the component gives each of its
        k active transmitters' slots one share s_c, such that the cell carries C x eta(k), or less when none of
        its slots is at its share. A cell that was idle starts from s_c = C eta(k) / k, the others from their
        shares so far; each fill
        (`_rates`, or `_rates_classes`, with the slots as resources) gives the cells' loads L_c, piecewise linear
        in the shares, and Newton's step on them (`_share_step`) the next shares: a few fills find them."""
        cells = self._cell_slots
        for r in dirty:
            if r in cells:
                k = sum(1 for slot in cells[r] if slot.n)
                if not self._cell_k.get(r):  # it was idle: C eta(k) / k (else its shares so far are the best start)
                    self._set_share(r, r.capacity * contention_efficiency(k) / k if k else 0.0)
                self._cell_k[r] = k
        flows = self._rates(dirty)
        stamp = self._stamp  # `_rates` marked the component's flows with it
        found = [cell for cell, slots in cells.items()
                 if any(f.mark == stamp for slot in slots if slot.n for f in slot.flows)]
        for _ in range(_SHARE_ROUNDS):
            step = self._share_step(found)
            if not step:
                break
            for cell, share in step.items():
                self._set_share(cell, share)
            self._rates(dict.fromkeys(found))  # the cells' components: among the flows of the first fill
        return flows

    def _set_share(self, cell: _Res, share: float) -> None:
        """Give each slot of `cell` the share s."""
        for slot in self._cell_slots[cell]:
            slot.capacity = share

    def _share_step(self, found: list[_Res]) -> dict[_Res, float]:
        """Newton's step on the shares of the cells `found` after a fill: {cell: its next share} for the cells not
        settled ({} when all are). The slope dL_c / ds_d sums, over each flow bottlenecked at a slot (a full one
        where no flow is faster; of several, the one with the most occupancies u by such flows, in cell d), its
        crossings of c / u (a flow also bottlenecked elsewhere makes it too steep: the next step corrects it)."""
        load: dict[_Res, float] = {}
        share = [self._cell_slots[c][0].capacity for c in found]
        gap, open_ = [], []
        for i, cell in enumerate(found):
            active = [slot for slot in self._cell_slots[cell] if slot.n]
            for slot in active:
                load[slot] = sum(m * f.new_rate for f, m in slot.flows.items())
            target = cell.capacity * contention_efficiency(len(active))
            gap.append(target - sum(load[slot] for slot in active))
            full = any(load[slot] >= share[i] * (1.0 - _SHARE_TOL) for slot in active)
            if abs(gap[i]) > _SHARE_TOL * target and (gap[i] < 0.0 or full):
                open_.append(i)
        if not open_:
            return {}
        row = {cell: i for i, cell in enumerate(found)}
        slope = [[0.0] * len(found) for _ in found]
        necks: dict[_Flow, list[_Res]] = {}  # a flow -> the full slots where no flow is faster
        u: dict[_Res, int] = {}  # a slot's occupancies by the flows bottlenecked there
        for i, cell in enumerate(found):
            for slot in self._cell_slots[cell]:
                if not slot.n or load[slot] < share[i] * (1.0 - 1e-9):
                    continue
                top = max(f.new_rate for f in slot.flows) * (1.0 - 1e-9)
                for f, m in slot.flows.items():
                    if f.new_rate >= top:
                        necks.setdefault(f, []).append(slot)
                        u[slot] = u.get(slot, 0) + m
        for f, held in necks.items():  # its rate rises with the share of its slowest-rising bottleneck
            slot = max(held, key=u.__getitem__)
            d = row[self._slot_cell[slot]]
            for r, m in f.res:
                if r in row:
                    slope[row[r]][d] += m / u[slot]
        moved = _solve([[slope[i][j] for j in open_] for i in open_], [gap[i] for i in open_]) or [0.0] * len(open_)
        out = {}
        for i, delta in zip(open_, moved):
            nxt = share[i] + delta
            if not 0.0 < nxt < math.inf or delta == 0.0:  # no usable slope: the proportional step
                load_i = sum(load.get(slot, 0.0) for slot in self._cell_slots[found[i]])
                nxt = share[i] * (load_i + gap[i]) / load_i if load_i > 0.0 else share[i]
            out[found[i]] = nxt
        return out

    def _rates_classes(self, dirty: dict[_Res, None]) -> list[_Flow]:
        """`_rates` with strict priority: the control streams' flows are filled first, max-min among themselves on
        the full capacities; then every other flow, max-min on what they leave (C - control load; possibly 0)."""
        self._stamp += 1
        stamp = self._stamp
        stack = []
        for r in dirty:
            r.mark = stamp
            stack.append(r)
        flows: list[_Flow] = []
        occupancy: list[tuple[_Res, int]] = []  # each busy resource of the component and its control occupancies
        while stack:
            r = stack.pop()
            if not r.n:
                continue
            control = 0
            for f, m in r.flows.items():
                if f.bg is not None and f.bg.control:
                    control += m
                if f.mark != stamp:
                    f.mark = stamp
                    f.new_rate = -1.0  # not fixed yet
                    flows.append(f)
                    for r2, _ in f.res:
                        if r2.mark != stamp:
                            r2.mark = stamp
                            stack.append(r2)
            r.wf_load = 0.0
            r.wf_m = control
            occupancy.append((r, control))
        self._fill(occupancy, True)
        for r, control in occupancy:
            r.wf_m = r.n - control
        self._fill(occupancy, False)
        return flows

    def _fill(self, occupancy: list[tuple[_Res, int]], control: bool) -> None:
        """Progressive filling of one class (`_rates_classes`): each resource's `wf_m` counts the occupancies of the
        class's unfixed flows and `wf_load` the load fixed so far (of both classes). The loop of `_rates` with a
        class test; kept apart so that a network without control traffic runs the plain loop at its old speed."""
        res_list = self._res_list
        heap = []
        for r, _ in occupancy:
            if r.wf_m:
                key = (r.capacity - r.wf_load) / r.wf_m
                r.wf_key = key if key > 0.0 else 0.0
                heap.append((r.wf_key, r.idx))
        heapq.heapify(heap)
        level = 0.0
        while heap:
            key, idx = heapq.heappop(heap)
            r = res_list[idx]
            if key != r.wf_key or not r.wf_m:
                continue
            if key > level:
                level = key
            touched: dict[_Res, None] = {}
            for f in r.flows:
                if f.new_rate < 0.0 and (f.bg is not None and f.bg.control) == control:
                    f.new_rate = level
                    for r2, m in f.res:
                        r2.wf_load += m * level
                        r2.wf_m -= m
                        touched[r2] = None
            for r2 in touched:
                if r2.wf_m:
                    key = (r2.capacity - r2.wf_load) / r2.wf_m
                    if key < level:
                        key = level
                    if key != r2.wf_key:
                        r2.wf_key = key
                        heapq.heappush(heap, (key, r2.idx))

    def _finish(self, f: _Flow, now: float, dirty: dict[_Res, None]) -> None:
        tx = f.cur
        tx.t_tx = now
        tx.hops = f.n_hops
        x = f.x
        wire = tx.wire_bytes if x is None else tx.wire_bytes - x.counted  # bytes sent before a reroute: counted
        links = self.links
        for r, m in f.res:
            r.n -= m
            del r.flows[f]
            links.carried(r.idx, wire, m)
            if r.n == 0:
                links.idle(r.idx, now)
            dirty[r] = None
        f.rate = 0.0
        f.remaining = 0.0
        f.version += 1
        if x is not None and x.loss and f.bg is not None and f.bg.datagram and self._frame_lost(f, tx, now):
            self._next(f, now)
            return
        t = now + f.latency + tx.packet_bits * f.sf_per_bit
        if x is not None and x.loss and x.rtt and f.bg is None:  # FL's tail timeouts (see the module docstring)
            if not f.queue:  # the last of a burst: no later segments to trigger a fast retransmit
                to = self._timeouts
                t += to.tail_wait(tx.n_packets, x.loss, to.first_rto(x.rtt, x.fallback))
            x.fallback = False
        if x is not None and x.jitter:
            draw = self._jitter.draw
            for mean in x.jitter:
                t += draw(mean)
        if t < f.last_deliver:  # a short message behind a long one: keep the flow's delivery order
            t = f.last_deliver
        f.last_deliver = t
        heapq.heappush(self._deliveries, (t, tx.msg_id, tx))
        if f.queue:  # inline `_next`: this is the hot path of every message
            f.cur = f.queue.popleft()
            if x is None:
                f.remaining = 8.0 * f.cur.wire_bytes
                self._pending.append(f)
            else:
                self._begin(f, now)
        else:
            f.cur = None

    def _next(self, f: _Flow, now: float) -> None:
        """The flow's head message has finished transmitting: the next one in its queue begins."""
        if f.queue:
            f.cur = f.queue.popleft()
            if f.x is None:
                f.remaining = 8.0 * f.cur.wire_bytes
                self._pending.append(f)
            else:
                self._begin(f, now)
        else:
            f.cur = None

    def _frame_lost(self, f: _Flow, tx: _Tx, now: float) -> bool:
        """Draw whether a datagram frame of n packets survives its lossy route ((1 - p)^n); a lost one is recorded
        (t_tx now, t_deliver NaN) and its event fails."""
        if self._bg_loss.random() < (1.0 - f.x.loss) ** tx.n_packets:
            return False
        msg = Message(tx.msg_id, f.src, f.dst, tx.kind, tx.phase, tx.round, tx.payload_bits, tx.wire_bytes,
                      tx.n_packets, f.n_hops, tx.t_send, tx.t_start, now, math.nan, tx.payload, 0, LOST)
        self.recorder.record_message(msg)
        tx.event.fail(MessageLost(msg))
        return True

    def _deliver(self, tx: _Tx, now: float) -> None:
        f = tx.flow
        if self._crashed and f.dst in self._crashed and f.bg is None:
            msg = Message(tx.msg_id, f.src, f.dst, tx.kind, tx.phase, tx.round, tx.payload_bits, tx.wire_bytes,
                          tx.n_packets, tx.hops, tx.t_send, tx.t_start, tx.t_tx, now, tx.payload, tx.retx,
                          TO_CRASHED)
            self.recorder.record_message(msg)
            tx.event.fail(MessageLost(msg))
            return
        msg = new_message(tx.msg_id, f.src, f.dst, tx.kind, tx.phase, tx.round, tx.payload_bits, tx.wire_bytes,
                          tx.n_packets, tx.hops, tx.t_send, tx.t_start, tx.t_tx, now, tx.payload, tx.retx)
        self.recorder.record_message(msg)
        self.delivered += 1
        tx.event.succeed(msg)
        if f.bg is None:
            self.mailboxes.put(msg)
