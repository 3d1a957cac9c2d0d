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
           "retransmitted_packets", "Jitter", "TRACE_HEADER"]

TRACE_HEADER = "time_s,bandwidth_bps"
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
