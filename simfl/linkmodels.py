"""Imperfect links: packet loss, loss-limited TCP throughput, retransmissions, jitter, and capacity traces.

The formulas the fluid network (`simfl.network`) applies; each has one home here.

Loss. A hop loses each packet with probability p_h: independently (`loss`), or as a Gilbert-Elliott two-state
chain (`burst_loss`: loss probability `good` in the good state and `bad` in the bad state, mean run lengths of
`burst` packets in the bad state and `gap` packets in the good state, i.e. it leaves the bad state with probability
1/burst per packet and the good state with 1/gap), whose stationary loss rate is

    p_h = (gap * good + burst * bad) / (burst + gap).

The fluid model uses the stationary rate only (the burst structure matters to a packet-level backend). A route
loses a packet with probability p = 1 - prod_h (1 - p_h) (a hop through a cell counts once per crossing).

Loss-limited TCP throughput: Mathis, Semke, Mahdavi and Ott, "The macroscopic behavior of the TCP congestion
avoidance algorithm" (1997): a long TCP transfer with loss probability p carries sqrt(3 / (2 p)) segments per
round trip, i.e. a goodput of MSS * 8 / RTT * sqrt(3 / (2 p)) bit/s. On the wire each segment is a full packet of
P_full = MSS + h bytes (h: the per-packet header bytes), so a flow's rate is capped at

    cap = 8 * P_full / RTT * sqrt(3 / (2 p))        (wire bit/s; 0 loss or 0 RTT: no cap)

with RTT the route's unloaded round trip (`simfl.network` says which terms it sums).

Retransmissions: a packet is sent 1 / (1 - p) times on average, so a message of n packets sends
n * p / (1 - p) packets again in expectation. The network keeps it deterministic: each flow charges whole packets,
the running total of its charged packets being the running total of its expected ones rounded half up (so one
message alone is charged round(n p / (1 - p)) packets, and many messages are charged their expectation); each
charged packet is a full (first) packet of the message.

Timeouts (short flows): fast retransmit needs three duplicate ACKs, so a loss among a burst's last TAIL_SEGMENTS = 3
segments (all of them for a message of fewer) waits for the retransmission timeout, and a lost SYN or SYN-ACK for
the SYN timeout. `Timeouts` draws them, seeded: a handshake fails with q = 1 - (1 - p) (1 - p_back) per attempt
(p, p_back: the loss there and back), so its failed attempts k are geometric, P(k) = q^k (1 - q) (at most
SYN_RETRIES); a message's tail loses some segment with probability 1 - (1 - p)^min(n, 3), and then its timeouts k
are 1 plus a geometric count of probability p (the retransmission lost again; at most DATA_RETRIES). k timeouts
of a first timer T wait T (2^k - 1) (each doubles, at most RTO_MAX). In expectation (k uncapped, q, p < 1/2):
E[2^k - 1] = q / (1 - 2 q) for a handshake, 1 / (1 - 2 p) for a tail that lost a segment. The first data timer
is RFC 6298's after one round-trip sample R: max(min_rto, 3 R), or RTO_FALLBACK = 3 s after a retransmitted SYN.

Jitter: a hop with jitter J adds to each message's delivery an extra delay drawn per message and hop, of mean J:
uniform on [0, 2 J) or exponential (`network.jitter_distribution`).

Capacity traces: a CSV file of change points `time_s,bandwidth_bps` (first time 0, times increasing, at least
`simfl.schema.MIN_INTERVAL` = 1 us apart); the capacity is piecewise constant: a row's bandwidth holds from its time
to the next row's. After the last row it holds for ever, or with a period the whole trace repeats (the period must
exceed the last time, and be at least 1 us).
"""

from __future__ import annotations

import errno
import math
import os
import random
import stat
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Loss", "NO_LOSS", "CapacityTrace", "read_trace", "path_loss", "mathis_cap", "expected_retransmissions",
           "retransmitted_packets", "Jitter", "Timeouts", "TRACE_HEADER"]

TRACE_HEADER = "time_s,bandwidth_bps"
TAIL_SEGMENTS = 3  # duplicate ACKs fast retransmit needs: a loss among a burst's last 3 segments waits for a timeout
SYN_RETRIES = 6  # Linux's tcp_syn_retries
DATA_RETRIES = 15  # Linux's tcp_retries2
RTO_FALLBACK = 3.0  # RFC 6298 (5.7): the first data timer after a retransmitted SYN, s
RTO_MAX = 120.0  # Linux's TCP_RTO_MAX: a backed-off timer stops doubling here, s
MAX_TRACE_ROWS = 1_000_000


@dataclass(frozen=True, slots=True)
class Loss:
    """Packet loss on a hop: independent with probability `good` (burst = 0), or Gilbert-Elliott (burst > 0)."""

    good: float = 0.0
    bad: float = 0.0
    burst: float = 0.0  # mean bad-state run in packets; 0: independent loss
    gap: float = 0.0  # mean good-state run in packets

    @property
    def rate(self) -> float:
        """The stationary probability that a packet is lost."""
        if not self.burst:
            return self.good
        return (self.gap * self.good + self.burst * self.bad) / (self.burst + self.gap)

    @property
    def bursty(self) -> bool:
        return self.burst > 0


NO_LOSS = Loss()


def path_loss(rates: Iterable[float]) -> float:
    """p = 1 - prod (1 - p_h): the probability that a packet is lost somewhere on a route."""
    keep = 1.0
    for p in rates:
        keep *= 1.0 - p
    return 1.0 - keep


def mathis_cap(packet_bits: float, rtt: float, p: float) -> float:
    """The loss-limited wire rate (bit/s) of one TCP flow: packet_bits / rtt * sqrt(3 / (2 p)); inf without loss
    or without a round trip."""
    if p <= 0.0 or rtt <= 0.0:
        return math.inf
    return packet_bits / rtt * math.sqrt(1.5 / p)


def expected_retransmissions(n_packets: int, p: float) -> float:
    """Packets sent again, in expectation, for n packets with loss probability p: n p / (1 - p)."""
    return n_packets * p / (1.0 - p)


def retransmitted_packets(expected_before: float, charged_before: int, expected_now: float) -> int:
    """Whole packets to charge a message: the running expectation rounded half up, less what was charged."""
    return math.floor(expected_before + expected_now + 0.5) - charged_before


class Timeouts:
    """Seeded draws of TCP's timeouts on a lossy route (see the module docstring): the wait of a handshake's failed
    attempts and of a message's tail, under the timers `min_rto` and `syn_timeout` (s)."""

    __slots__ = ("_rng", "min_rto", "syn_timeout")

    def __init__(self, seed: int, min_rto: float, syn_timeout: float) -> None:
        self._rng = random.Random(f"simfl tcp timeouts {seed}")  # str seeds are hashed with sha512: stable
        self.min_rto = min_rto
        self.syn_timeout = syn_timeout

    def first_rto(self, rtt: float, after_syn_retry: bool = False) -> float:
        """RFC 6298's first timeout after one round-trip sample R: SRTT + 4 RTTVAR = 3 R, at least min_rto (and at
        least RTO_FALLBACK after a retransmitted SYN)."""
        rto = max(self.min_rto, 3.0 * rtt)
        return max(rto, RTO_FALLBACK) if after_syn_retry else rto

    def syn_wait(self, q: float) -> float:
        """The extra wait of a handshake whose attempts fail with probability q: syn_timeout (2^k - 1) after k
        failed attempts (no draw if q = 0)."""
        k = 0
        while q and k < SYN_RETRIES and self._rng.random() < q:
            k += 1
        return _backoff(self.syn_timeout, k)

    def tail_wait(self, n_packets: int, p: float, rto: float) -> float:
        """The extra wait of a message of n packets at the end of a burst: 0 unless one of its last min(n, 3) is
        lost (one draw), then rto (2^k - 1), k = 1 + its retransmissions lost again."""
        if not p or not n_packets or self._rng.random() >= 1.0 - (1.0 - p) ** min(n_packets, TAIL_SEGMENTS):
            return 0.0
        k = 1
        while k < DATA_RETRIES and self._rng.random() < p:
            k += 1
        return _backoff(rto, k)


def _backoff(first: float, k: int) -> float:
    """k timeouts in a row, the first of `first` s, each doubling up to RTO_MAX: first (2^k - 1) uncapped."""
    return sum(min(first * 2.0 ** i, RTO_MAX) for i in range(k))


class Jitter:
    """Seeded per-hop extra delays of a given mean: "uniform" on [0, 2 mean) or "exponential"."""

    __slots__ = ("_rng", "exponential")

    def __init__(self, seed: int, distribution: str) -> None:
        self._rng = random.Random(f"simfl jitter {seed}")  # str seeds are hashed with sha512: stable everywhere
        self.exponential = distribution == "exponential"

    def draw(self, mean: float) -> float:
        if self.exponential:
            return self._rng.expovariate(1.0 / mean)
        return 2.0 * mean * self._rng.random()


# ------------------------------------------------------------------------------------------------ capacity traces
@dataclass(frozen=True)
class CapacityTrace:
    """A piecewise-constant capacity over time (see the module docstring); `path` is where it was read from."""

    path: str
    times: tuple[float, ...]
    rates: tuple[float, ...]
    period: float | None = None

    def position(self, t: float) -> tuple[int, int]:
        """(k, i): time t lies in row i of repetition k (k = 0 without a period)."""
        if self.period is None:
            return 0, bisect_right(self.times, t) - 1
        k = math.floor(t / self.period)
        while k > 0 and k * self.period > t:
            k -= 1
        while (k + 1) * self.period <= t:
            k += 1
        return k, bisect_right(self.times, t - k * self.period) - 1

    def change_time(self, k: int, i: int) -> float:
        """When row i of repetition k begins."""
        return self.times[i] if self.period is None else k * self.period + self.times[i]

    def following(self, k: int, i: int) -> tuple[int, int] | None:
        """The row after row i of repetition k, or None when the last row holds for ever."""
        if i + 1 < len(self.times):
            return k, i + 1
        return (k + 1, 0) if self.period is not None else None

    def at(self, t: float) -> float:
        return self.rates[self.position(t)[1]]

    def integral(self, t: float) -> float:
        """The capacity integrated over [0, t] (bits)."""
        if t <= 0.0:
            return 0.0
        k, i = self.position(t)
        total = k * self._span_integral(len(self.times)) if k else 0.0
        total += self._span_integral(i) + self.rates[i] * (t - self.change_time(k, i))
        return total

    def _span_integral(self, rows: int) -> float:
        """The integral over rows 0..rows-1 of one repetition (rows = all: the whole period)."""
        total = 0.0
        for j in range(rows):
            end = self.times[j + 1] if j + 1 < len(self.times) else self.period
            total += self.rates[j] * (end - self.times[j])
        return total

    def long_run(self) -> float:
        """The mean capacity in the long run: over one period, or the last value (which holds for ever)."""
        return self.integral(self.period) / self.period if self.period is not None else self.rates[-1]

    def mean(self, t: float) -> float:
        """The mean capacity over [0, t] (the value at 0 when t = 0)."""
        return self.integral(t) / t if t > 0.0 else self.rates[0]


def read_trace(path: str | Path, lo: float, hi: float,
               step: float = 0.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The change points of a capacity trace file: bandwidths in [lo, hi] bit/s, times at least `step` s apart;
    ValueError("line N: ...") for a malformed one. Lines starting with '#' are comments; the first other line may
    be the header "time_s,bandwidth_bps"."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # a folder, or a pipe or device that open() could wait on for ever
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        raise ValueError(f"not a regular file (a device, pipe or socket); expected a CSV file of {TRACE_HEADER}")
    times: list[float] = []
    rates: list[float] = []
    with open(path, encoding="utf-8-sig") as fh:  # -sig: a byte-order mark, as spreadsheets save CSV, is dropped
        for n, line in enumerate(_text_lines(fh), 1):
            s = line.strip()
            if not s or s.startswith("#") or (not times and s.replace(" ", "") == TRACE_HEADER):
                continue
            parts = [x.strip() for x in s.split(",")]
            if len(parts) != 2:
                raise ValueError(f"line {n}: expected two numbers, time_s,bandwidth_bps (got {s[:60]!r})")
            try:
                t, r = float(parts[0]), float(parts[1])
            except ValueError:
                raise ValueError(f"line {n}: expected two numbers, time_s,bandwidth_bps (got {s[:60]!r})") from None
            if not (math.isfinite(t) and math.isfinite(r)):
                raise ValueError(f"line {n}: numbers must be finite")
            if not times and t != 0.0:
                raise ValueError(f"line {n}: the first change point must be at time 0 (got {t:g})")
            if times and t <= times[-1]:
                raise ValueError(f"line {n}: times must increase ({t:g} after {times[-1]:g})")
            if times and t - times[-1] < step:
                raise ValueError(f"line {n}: change points must be at least {step:g} s apart ({t:g} after "
                                 f"{times[-1]:g})")
            if not lo <= r <= hi:
                raise ValueError(f"line {n}: bandwidth {r:g} bit/s is outside {lo:g} .. {hi:g} bit/s")
            if len(times) >= MAX_TRACE_ROWS:
                raise ValueError(f"line {n}: more than {MAX_TRACE_ROWS:,} change points")
            times.append(t)
            rates.append(r)
    if not times:
        raise ValueError(f"no change points (expected lines of {TRACE_HEADER})")
    return tuple(times), tuple(rates)


def _text_lines(fh: Iterable[str]) -> Iterator[str]:
    """The lines of a text file; ValueError for one that is not UTF-8 text."""
    try:
        yield from fh
    except UnicodeDecodeError as e:
        raise ValueError(f"not a text file ({e.reason} at byte {e.start}); expected lines of {TRACE_HEADER}") from None
