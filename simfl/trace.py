"""The trace recorder and its three fixed schemas; parquet and CSV writers.

messages (one row per delivered or lost message, sorted by msg_id):
    msg_id i64, phase str, round i32, kind str, src str, dst str, payload_bits i64, wire_bytes i64,
    retransmitted_bytes i64, n_packets i64, hops i32, t_send f64, t_start f64, t_tx f64, t_deliver f64, status str
    (times in simulated seconds: send called, transmission start, transmission end (last bit left the sender),
    delivery; wire_bytes includes retransmitted_bytes (lossy routes); status "delivered", "late" (delivered after
    the wait it was meant for had closed: a workload marks it), "lost" (given up on, or its sender crashed: NaN
    t_tx and t_deliver, and t_start if it never began, and the wire bytes it sent) or "to_crashed" (it reached a
    crashed node at t_deliver))
compute (one row per computation, in the order they ended):
    node str, phase str, round i32, kind str, t_start f64, t_end f64, flops f64, wall_s f64
    (wall_s is measured on this machine and never feeds the clock; it is the only column that can differ between two
    runs of the same scenario and seed)
links (one row per link direction, then one per shared cell, in scenario order):
    link str, medium str ("p2p" | "cell"), src str, dst str ("*" for a cell, whose src is its access point; a cell
    with one channel per direction has two rows: src "*", dst the access point for station -> AP, and the reverse),
    capacity_bps f64 (with a capacity trace: its mean up to the end time), latency_s f64, bytes i64 (wire bytes
    carried; a message crossing a cell twice counts twice; bytes sent before a reroute count on the old route),
    messages i64 (crossings of messages that finished on it), drops i64 (packets its queue dropped: 0 in the fluid
    model; the ns3 backend counts them), busy_s f64 (simulated time with at least one transfer
    on it), utilisation f64 (= 8 * bytes / (capacity_bps * simulated end time); 0 when the end time is 0)
    (the links carry background traffic too: its bytes count here)
background (one row per frame of a [[traffic]] flow, sorted by flow and seq: the frames of the run with the workload,
then those of the same background alone; written by `simfl.traffic`):
    flow str, seq i64 (the frame's index in its flow), with_fl bool (false: the background-alone run), src str,
    dst str, t_send f64, t_deliver f64 (NaN when lost), latency f64 (t_deliver - t_send, NaN when lost), bytes i64
    (payload), wire_bytes i64 (with headers and a TCP flow's retransmissions), lost bool
    (messages with phase "background" go here, never to the messages table; the totals count them apart)
rounds (workload fedad: one row per FedAvg round close at its aggregator, and one per phase-I collection of the
candidate groups at the leader, in the order they closed; written by `simfl.fedad`):
    phase str, community i32 (the group's index among the run's groups; -1: a group no run lists, e.g. a client
    that never learnt its community), round i32 (1..R; 0: phase I), aggregator str, outcome str ("averaged",
    "skipped": fewer than min_participants to average, "aborted": the aggregator crashed, "collected": phase I),
    members i32, invited i32, arrived i32 (in time), late i32 (after the close), dropped i32 (late and never
    averaged), folded i32 (earlier rounds' late updates averaged here), missing i32 (invited, never arrived),
    unavailable i32 (invited, sat the round out: the dropout draw), arrived_ids list[i32], late_ids list[i32],
    weight f64 (training samples averaged), failover bool (a member took the round over), t_start f64, t_deadline
    f64 (null: no deadline), t_end f64
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from simfl.messages import LATE, LOST, TO_CRASHED, Message

if TYPE_CHECKING:
    from simfl.topology import Topology

__all__ = ["MESSAGE_SCHEMA", "COMPUTE_SCHEMA", "LINK_SCHEMA", "BACKGROUND_SCHEMA", "ROUNDS_SCHEMA", "BACKGROUND",
           "TraceRecorder", "write_traces", "write_frame", "rounds_frame", "write_rounds"]

BACKGROUND = "background"  # the phase of background traffic's messages (their kind is the flow's name)

MESSAGE_SCHEMA = pl.Schema({
    "msg_id": pl.Int64, "phase": pl.String, "round": pl.Int32, "kind": pl.String, "src": pl.String,
    "dst": pl.String, "payload_bits": pl.Int64, "wire_bytes": pl.Int64, "retransmitted_bytes": pl.Int64,
    "n_packets": pl.Int64, "hops": pl.Int32, "t_send": pl.Float64, "t_start": pl.Float64, "t_tx": pl.Float64,
    "t_deliver": pl.Float64, "status": pl.String,
})
COMPUTE_SCHEMA = pl.Schema({
    "node": pl.String, "phase": pl.String, "round": pl.Int32, "kind": pl.String, "t_start": pl.Float64,
    "t_end": pl.Float64, "flops": pl.Float64, "wall_s": pl.Float64,
})
LINK_SCHEMA = pl.Schema({
    "link": pl.String, "medium": pl.String, "src": pl.String, "dst": pl.String, "capacity_bps": pl.Float64,
    "latency_s": pl.Float64, "bytes": pl.Int64, "messages": pl.Int64, "drops": pl.Int64, "busy_s": pl.Float64,
    "utilisation": pl.Float64,
})

BACKGROUND_SCHEMA = pl.Schema({
    "flow": pl.String, "seq": pl.Int64, "with_fl": pl.Boolean, "src": pl.String, "dst": pl.String,
    "t_send": pl.Float64, "t_deliver": pl.Float64, "latency": pl.Float64, "bytes": pl.Int64, "wire_bytes": pl.Int64,
    "lost": pl.Boolean,
})

ROUNDS_SCHEMA = pl.Schema({
    "phase": pl.String, "community": pl.Int32, "round": pl.Int32, "aggregator": pl.String, "outcome": pl.String,
    "members": pl.Int32, "invited": pl.Int32, "arrived": pl.Int32, "late": pl.Int32, "dropped": pl.Int32,
    "folded": pl.Int32, "missing": pl.Int32, "unavailable": pl.Int32, "arrived_ids": pl.List(pl.Int32),
    "late_ids": pl.List(pl.Int32), "weight": pl.Float64, "failover": pl.Boolean, "t_start": pl.Float64,
    "t_deadline": pl.Float64, "t_end": pl.Float64,
})

_MSG_COLS = tuple(MESSAGE_SCHEMA)
_BG_COLS = ("flow", "seq", "src", "dst", "t_send", "t_deliver", "bytes", "wire_bytes", "lost")
_COMPUTE_COLS = tuple(COMPUTE_SCHEMA)


class TraceRecorder:
    """Collects rows column-wise (cheap for millions of messages); frames are built on demand."""

    def __init__(self) -> None:
        self._msg: dict[str, list[Any]] = {c: [] for c in _MSG_COLS}
        self._msg_append = tuple(self._msg[c].append for c in _MSG_COLS)  # record_message's hot path
        self._frame: tuple[tuple[int, int], pl.DataFrame] | None = None  # the last messages frame, and its counts
        self._compute: dict[str, list[Any]] = {c: [] for c in _COMPUTE_COLS}
        self._links: Callable[[], dict[str, list[Any]]] | None = None
        self._bg: dict[str, list[Any]] = {c: [] for c in _BG_COLS}
        self.payload_bits = 0
        self.wire_bytes = 0
        self.retransmitted_bytes = 0
        self.messages_lost = 0  # all lost (and to_crashed) messages, background frames too (the network's own count)
        self._late: set[int] = set()  # msg_ids of delivered messages a workload marked late
        self.background_sent = 0  # counted by the network's send
        self.background_delivered = 0
        self.background_lost = 0

    # ------------------------------------------------------------------ recording
    def record_message(self, m: Message) -> None:
        if m.phase == BACKGROUND:
            self._record_background(m)
            return
        msg_id, phase, rnd, kind, src, dst, payload, wire, retx, packets, hops, send, start, tx, deliver, status = \
            self._msg_append  # each column's append, in `_MSG_COLS` order
        msg_id(m.msg_id)
        phase(m.phase)
        rnd(m.round)
        kind(m.kind)
        src(m.src)
        dst(m.dst)
        payload(m.payload_bits)
        wire(m.wire_bytes)
        retx(m.retransmitted_bytes)
        packets(m.n_packets)
        hops(m.hops)
        send(m.t_send)
        start(m.t_start)
        tx(m.t_tx)
        deliver(m.t_deliver)
        status(m.status)
        self.payload_bits += m.payload_bits
        self.wire_bytes += m.wire_bytes
        self.retransmitted_bytes += m.retransmitted_bytes
        if m.status == LOST or m.status == TO_CRASHED:
            self.messages_lost += 1

    def mark_late(self, msg_ids: Iterable[int]) -> None:
        """Give these delivered messages the status "late" (they reached a wait that had closed)."""
        self._late.update(msg_ids)

    def _record_background(self, m: Message) -> None:
        c = self._bg
        c["flow"].append(m.kind)
        c["seq"].append(m.round)
        c["src"].append(m.src)
        c["dst"].append(m.dst)
        c["t_send"].append(m.t_send)
        c["t_deliver"].append(m.t_deliver)
        c["bytes"].append(m.payload_bits // 8)
        c["wire_bytes"].append(m.wire_bytes)
        lost = m.status == LOST
        c["lost"].append(lost)
        if lost:
            self.messages_lost += 1
            self.background_lost += 1
        else:
            self.background_delivered += 1

    def record_compute(self, node: str, phase: str, round: int, kind: str, t_start: float, t_end: float,
                       flops: float, wall_s: float = 0.0) -> None:
        c = self._compute
        c["node"].append(node)
        c["phase"].append(phase)
        c["round"].append(int(round))
        c["kind"].append(kind)
        c["t_start"].append(float(t_start))
        c["t_end"].append(float(t_end))
        c["flops"].append(float(flops))
        c["wall_s"].append(float(wall_s))

    def set_compute_wall_s(self, walls: list[float]) -> None:
        """Replace the compute rows' `wall_s` (one value per row, in recording order): a workload whose learning
        runs lazily knows them only after the rows were recorded."""
        if len(walls) != len(self._compute["wall_s"]):
            raise ValueError(f"{len(walls)} wall times for {len(self._compute['wall_s'])} compute rows")
        self._compute["wall_s"] = [float(w) for w in walls]

    def set_link_source(self, source: Callable[[], dict[str, list[Any]]]) -> None:
        """Register the callable (the Network's) that returns the link table's columns."""
        self._links = source

    @property
    def n_messages(self) -> int:
        return len(self._msg["msg_id"])

    # ------------------------------------------------------------------ frames
    def messages_frame(self) -> pl.DataFrame:
        """The messages table, sorted by msg_id; built once for the messages and late marks recorded so far (a run
        hands the same frame to the incast check and to the trace files)."""
        counts = (self.n_messages, len(self._late))  # both only grow: the same counts, the same contents
        if self._frame is not None and self._frame[0] == counts:
            return self._frame[1]
        frame = pl.DataFrame(self._msg, schema=MESSAGE_SCHEMA)
        if not frame.get_column("msg_id").is_sorted():  # recorded as delivered: often in msg_id order already
            frame = frame.sort("msg_id")
        if self._late:
            late = pl.col("msg_id").is_in(sorted(self._late)) & (pl.col("status") == "delivered")
            frame = frame.with_columns(pl.when(late).then(pl.lit(LATE)).otherwise(pl.col("status")).alias("status"))
        self._frame = (counts, frame)
        return frame

    def compute_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self._compute, schema=COMPUTE_SCHEMA)

    def links_frame(self) -> pl.DataFrame:
        cols = self._links() if self._links is not None else {c: [] for c in LINK_SCHEMA}
        return pl.DataFrame(cols, schema=LINK_SCHEMA)

    def background_frame(self, with_fl: bool = True) -> pl.DataFrame:
        """The background frames recorded (delivered or lost), by flow and seq (`BACKGROUND_SCHEMA`)."""
        c = self._bg
        n = len(c["flow"])
        schema = {k: BACKGROUND_SCHEMA[k] for k in (*_BG_COLS, "with_fl")}
        f = pl.DataFrame({**c, "with_fl": [with_fl] * n}, schema=schema)
        f = f.with_columns((pl.col("t_deliver") - pl.col("t_send")).alias("latency"))
        return f.select(BACKGROUND_SCHEMA.names()).sort("flow", "seq")


def routing_states(messages: pl.DataFrame, topology: Topology) -> tuple[np.ndarray, list[Topology]]:
    """Per message of a messages trace the index of the topology it was routed on, and those topologies: with
    [[faults]], the one without the edges down just before its transmission ended (the route it finished on, where
    the trace counts its bytes; a lost message's t_tx may be NaN: then just after its t_start); without, the whole
    topology for all."""
    if not topology.faults or messages.height == 0:
        return np.zeros(messages.height, np.int64), [topology]
    t0 = messages["t_start"].to_numpy().astype(np.float64)
    t1 = messages["t_tx"].to_numpy().astype(np.float64)
    tol = 1e-12 * (1.0 + np.nan_to_num(t1))
    at = np.where(t1 - tol > t0, t1 - tol, t0 + tol)  # after an edge at t_start, before one at t_tx
    downs: dict[frozenset, int] = {}
    idx = [downs.setdefault(topology.edges_down(t), len(downs)) for t in at.tolist()]
    return np.asarray(idx, np.int64), [topology.without_edges(d) for d in downs]


def write_traces(recorder: TraceRecorder, run_dir: str | Path) -> dict[str, Path]:
    """Write messages/compute/links as parquet and CSV into run_dir; returns {name: parquet path}."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, frame in (("messages", recorder.messages_frame()), ("compute", recorder.compute_frame()),
                        ("links", recorder.links_frame())):
        out[name] = write_frame(frame, run_dir, name)
    return out


def rounds_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The rounds table (`ROUNDS_SCHEMA`) of row dicts."""
    return pl.DataFrame(rows, schema=ROUNDS_SCHEMA) if rows else pl.DataFrame(schema=ROUNDS_SCHEMA)


def write_rounds(frame: pl.DataFrame, run_dir: str | Path) -> Path:
    """rounds.parquet and rounds.csv (the ID lists as space-separated IDs) in run_dir; returns the parquet path."""
    pq = Path(run_dir) / "rounds.parquet"
    frame.write_parquet(pq, compression="zstd", statistics=True)
    ids = [c for c, t in frame.schema.items() if isinstance(t, pl.List)]
    frame.with_columns(pl.col(c).cast(pl.List(pl.String)).list.join(" ") for c in ids).write_csv(
        Path(run_dir) / "rounds.csv")
    return pq


def write_frame(frame: pl.DataFrame, run_dir: str | Path, name: str) -> Path:
    """`name`.parquet and `name`.csv in run_dir; returns the parquet path."""
    pq = Path(run_dir) / f"{name}.parquet"
    frame.write_parquet(pq, compression="zstd", statistics=True)
    frame.write_csv(Path(run_dir) / f"{name}.csv")
    return pq
