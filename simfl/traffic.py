"""Background traffic: the plant's own flows ([[traffic]]) as SimPy processes on the simulated network, and their
latency and loss with and without the workload.

Each [[traffic]] entry (`simfl.config.Traffic`) is one process that sends frames: messages of phase "background",
kind = the flow's name and round = the frame's index in its flow (`seq`), on the flow's own `simfl.network.Stream`
(its own FIFO flow; strict priority when its priority is control; datagram or tcp transport). Frame k is sent at

    cbr       start + k g,  g = 8 packet / rate              (a frame of `packet` payload bytes)
    periodic  start + k period                               (a frame of `bytes`)
    onoff     start + j (on + off) + i g  for i g < on        (cbr during each on period, on first)
    bulk      start + k every, or once at start               (one message of `bytes` per upload)

computed from k (never accumulated), while it is earlier than `stop`; a flow without a stop sends until the
workload ends (a frame due at the very instant the workload ends may or may not go: SimPy orders the two events).
`Background.finish` then lets the flows with a stop run on to it and the network deliver every frame already sent;
the run ends when the last one has arrived or been lost. `run_alone` replays exactly the same frames (the same
count per flow, so the same send times) on a fresh `World` without the workload: the background without FL.

Statistics per flow and run (`flow_stats`): frames sent, delivered, lost, loss = lost / frames, and the latency
(t_deliver - t_send) of the delivered frames: p50 and p99 by nearest rank (the smallest latency that at least 50% /
99% of the delivered frames do not exceed), max and mean. A bulk flow's latency is an upload's completion time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import polars as pl
import simpy

from simfl.config import NetworkParams, Scenario, ScenarioError, Traffic
from simfl.messages import packetize
from simfl.network import Stream
from simfl.summary import BackgroundFlow, LatencyStats
from simfl.topology import Topology
from simfl.trace import BACKGROUND, BACKGROUND_SCHEMA
from simfl.world import World

__all__ = ["Background", "frame_times", "run_alone", "flow_stats", "nearest_rank", "verdict", "background_summary",
           "wire_rate", "check_control_load"]

_P99_MARGIN = 1.1  # "FL raises p99" when the p99 with FL exceeds the p99 without by more than 10%


def frame_times(flow: Traffic) -> Iterator[float]:
    """The send times of a flow's frames, in order, before its stop (for ever without one)."""
    start, stop = flow.start, flow.stop if flow.stop is not None else math.inf
    gap = flow.gap
    if flow.kind == "onoff":
        cycle = flow.on + flow.off  # type: ignore[operator]
        j = 0
        while True:
            base = start + j * cycle
            i = 0
            while i * gap < flow.on:  # type: ignore[operator]
                t = base + i * gap  # type: ignore[operator]
                if t >= stop:
                    return
                yield t
                i += 1
            j += 1
    k = 0
    while True:
        t = start + k * gap if gap is not None else start
        if t >= stop:
            return
        yield t
        if gap is None:
            return
        k += 1


def wire_rate(flow: Traffic, network: NetworkParams) -> float:
    """The flow's mean wire rate in the long run (bit/s, packet headers included): frames per second x wire bits
    of a frame (an onoff flow: ceil(on / gap) frames per on + off; a single bulk upload: 0)."""
    if flow.gap is None:
        return 0.0
    wire = 8 * packetize(8 * flow.frame_bytes, network.mtu, network.ip_header_bytes, network.link_header_bytes,
                         network.headers).wire_bytes
    if flow.kind == "onoff":
        return math.ceil(flow.on / flow.gap) * wire / (flow.on + flow.off)  # type: ignore[operator]
    return wire / flow.gap


def check_control_load(scenario: Scenario) -> None:
    """Refuse control flows without a stop whose long-run wire rates, summed per link direction or cell on their
    routes, reach its long-run capacity: strict priority gives them all of it for ever, so every other flow there
    starves and the run never ends (flows with a stop end, and the rest then drains). The routes are those of the
    long run: over what stays up once the outages that never end have begun."""
    whole = Topology.from_scenario(scenario)
    capacity = {r.id: r.trace.long_run() if r.trace is not None else r.capacity_bps for r in whole.resources}
    topo = whole.without_edges(frozenset(e for f, edges in whole.faults if f.every is None and math.isinf(f.up)
                                         for e in edges))
    load: dict[str, float] = {}
    users: dict[str, list[int]] = {}
    where: dict[str, str] = {}
    for i, flow in enumerate(scenario.traffic):
        if flow.priority != "control" or flow.stop is not None:
            continue
        rate = wire_rate(flow, scenario.network)
        for hop in topo.route_or_none(flow.src, flow.dst) or ():  # no route: its frames are lost, or given up on
            load[hop.resource] = load.get(hop.resource, 0.0) + rate
            users.setdefault(hop.resource, []).append(i)
            where.setdefault(hop.resource, f"cell {hop.link}" if hop.medium == "cell" else
                             f"{hop.src}>{hop.dst} (link {hop.link})")
    rid = max(load, key=lambda r: load[r] / capacity[r], default=None)  # the most overloaded, if any
    if rid is None or load[rid] < capacity[rid]:
        return
    flows = " and ".join(f"traffic[{i}] = \"{scenario.traffic[i].name}\"" for i in sorted(set(users[rid])))
    raise ScenarioError(
        f"{scenario.source or '<dict>'}: {flows}: control traffic without a stop sends {load[rid] / 1e6:,.6g} Mbit/s "
        f"on the wire (headers included) through {where[rid]}, whose capacity is {capacity[rid] / 1e6:,.6g} Mbit/s: "
        "strict priority would take all of it for ever, so every other flow there would starve and the run would "
        "never end; lower the rate, give the flow a stop, or make it best_effort")


class Background:
    """The [[traffic]] flows of `world`'s scenario, started at once (at the world's current time, normally 0).

    `limits`: the frames each flow sends at most; given, the run is the background alone and waits for every flow
    to send them (`done`). `sent[i]` counts flow i's frames. Frame events never raise: a lost frame is traced."""

    def __init__(self, world: World, limits: list[int] | None = None) -> None:
        self.world = world
        self.env = world.env
        self.flows = world.scenario.traffic
        self.limits = limits
        self.sent = [0] * len(self.flows)
        self.gone = [False] * len(self.flows)  # flow i's process has returned
        self.ended = False  # the workload has finished: flows without a stop send no more
        self.closing = limits is not None  # `done` may fire (after finish(), or from the start when alone)
        self.outstanding = 0  # frames sent and not yet delivered or lost
        self.done = self.env.event()
        world.background = self
        for i, flow in enumerate(self.flows):
            stream = Stream(flow.name, control=flow.priority == "control", datagram=flow.transport == "datagram")
            self.env.process(self._flow(i, flow, stream, None if limits is None else limits[i]))

    def _flow(self, i: int, flow: Traffic, stream: Stream, limit: int | None) -> Iterator[simpy.Event]:
        env, net = self.env, self.world.network
        bits = 8 * flow.frame_bytes
        for seq, t in enumerate(frame_times(flow)):
            if limit is not None and seq >= limit:
                break
            if t > env.now:
                yield env.timeout(t - env.now)
            if self.ended and flow.stop is None:
                break
            ev = net.send(flow.src, flow.dst, kind=flow.name, phase=BACKGROUND, round=seq, payload_bits=bits,
                          stream=stream)
            ev.defused = True  # a lost frame is traced, not raised
            ev.callbacks.append(self._settled)
            self.outstanding += 1
            self.sent[i] += 1
        self.gone[i] = True
        self._check()

    def _settled(self, _ev: simpy.Event) -> None:
        self.outstanding -= 1
        if self.closing and not self.outstanding:
            self._check()

    def _check(self) -> None:
        """`done` fires once every frame sent has settled and no flow the run waits for may send again (with the
        workload ended, flows without a stop are not waited for)."""
        if not self.closing or self.outstanding or self.done.triggered:
            return
        if all(gone or (f.stop is None and self.limits is None) for gone, f in zip(self.gone, self.flows)):
            self.done.succeed()

    def finish(self) -> None:
        """The workload has ended: flows without a stop send no more; run on until the flows with a stop have
        sent their last frame and every frame sent has been delivered or lost."""
        self.ended = True
        self.closing = True
        self._check()
        self.env.run(until=self.done)


def run_alone(scenario: Scenario, limits: list[int]) -> World:
    """The background alone: a fresh World of `scenario` without its workload, each flow sending its first
    `limits[i]` frames, run until they have all been delivered or lost."""
    world = World(scenario)
    bg = Background(world, limits)
    bg._check()  # nothing to send at all
    world.env.run(until=bg.done)
    return world


# ------------------------------------------------------------------------------------------------- statistics
def nearest_rank(values: np.ndarray, percent: int) -> float:
    """The smallest of the sorted `values` that at least `percent`% of them do not exceed (nearest rank)."""
    n = len(values)
    return float(values[(percent * n + 99) // 100 - 1])


def flow_stats(frames: pl.DataFrame) -> LatencyStats:
    """One flow's frames (`BACKGROUND_SCHEMA` rows) in one run: counts, loss and latency percentiles."""
    n = frames.height
    lost = int(frames["lost"].sum()) if n else 0
    lat = np.sort(frames.filter(~pl.col("lost"))["latency"].to_numpy())
    stats: dict[str, Any] = {"p50_s": None, "p99_s": None, "max_s": None, "mean_s": None}
    if len(lat):
        stats = {"p50_s": nearest_rank(lat, 50), "p99_s": nearest_rank(lat, 99), "max_s": float(lat[-1]),
                 "mean_s": float(lat.mean())}
    return LatencyStats(frames=n, delivered=n - lost, lost=lost, loss=lost / n if n else None,
                        wire_bytes=int(frames["wire_bytes"].sum()) if n else 0, **stats)


def verdict(flow: Traffic, with_fl: LatencyStats, without: LatencyStats) -> str:
    """One phrase on what the workload does to the flow: a periodic flow's p99 against its period, then loss, then
    p99 against the background alone."""
    if not with_fl.frames:
        return "no frames"
    if with_fl.p99_s is None:
        return "every frame lost"
    if flow.kind == "periodic" and with_fl.p99_s > flow.period:  # type: ignore[operator]
        also = without.p99_s is not None and without.p99_s > flow.period  # type: ignore[operator]
        return "p99 above the period" + (" (also without FL)" if also else "")
    if (with_fl.loss or 0.0) > (without.loss or 0.0):
        return "FL adds loss"
    if without.p99_s and with_fl.p99_s > _P99_MARGIN * without.p99_s:
        return f"FL raises p99 x{with_fl.p99_s / without.p99_s:.3g}"
    return "ok" if flow.kind == "periodic" else "unaffected by FL"


def background_summary(flows: tuple[Traffic, ...], frames: pl.DataFrame) -> dict[str, BackgroundFlow]:
    """Per flow (in scenario order) its description, statistics with and without the workload, and verdict;
    `frames` holds both runs' rows (`with_fl`)."""
    out: dict[str, BackgroundFlow] = {}
    for flow in flows:
        mine = frames.filter(pl.col("flow") == flow.name)
        with_fl = flow_stats(mine.filter(pl.col("with_fl")))
        without = flow_stats(mine.filter(~pl.col("with_fl")))
        out[flow.name] = BackgroundFlow(src=flow.src, dst=flow.dst, kind=flow.kind, priority=flow.priority,
                                        transport=flow.transport, frame_bytes=flow.frame_bytes, gap_s=flow.gap,
                                        with_fl=with_fl, without_fl=without, verdict=verdict(flow, with_fl, without))
    return out


def run_background(bg: Background, say: Callable[[str], None]) -> tuple[pl.DataFrame, dict[str, BackgroundFlow]]:
    """After the workload: finish `bg`'s run, run the background alone, and return both runs' frames
    (`BACKGROUND_SCHEMA`) and the per-flow summary."""
    bg.finish()
    say(f"background traffic alone: {sum(bg.sent):,} frames of {len(bg.flows)} flows, without the workload")
    alone = run_alone(bg.world.scenario, bg.sent)
    frames = pl.concat([bg.world.recorder.background_frame(True), alone.recorder.background_frame(False)])
    frames = frames.sort("with_fl", "flow", "seq", descending=[True, False, False]).select(BACKGROUND_SCHEMA.names())
    return frames, background_summary(bg.flows, frames)
