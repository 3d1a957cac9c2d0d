"""A run's summary: the typed `RunSummary`, written to summary.json by `write_summary`, read by `read_summary`.

summary.json is one flat JSON object (the layout every simfl version wrote, kept so that old files read back):

    scenario, seed, workload      the run
    totals                        {messages, messages_undelivered, messages_lost, payload_bits, payload_bytes,
                                   wire_bytes, retransmitted_bytes, sim_time_s, wall_time_s, events_processed}
    <the workload's keys>         fedad: bytes per phase, closed forms, durations, AUCs, communities, ...
                                  (`FedadPart`); synthetic: message_bytes, target, patterns (`SyntheticPart`)
    <each total>                  copied to the top level where the workload has no key of that name (so for
                                  fedad the top-level payload_bytes and wire_bytes are per phase)
    cache                         what the learning cache did (fedad; absent when not reported)
    incast                        per phase where the fluid model is optimistic, its worst port (`simfl.incast`:
                                  phase, port, flows, packets, buffer, initial_window, ..., message); [] when
                                  none; absent in runs made before the check
    contention                    per phase where a WiFi cell's channel access makes the fluid model optimistic,
                                  its worst cell (`simfl.incast.Contention`: phase, kind, cell, ap, flows,
                                  stations, ..., message); [] when none; absent in runs made before the check
    background                    per [[traffic]] flow (`BackgroundFlow`): src, dst, kind, priority, transport,
                                  frame_bytes, gap_s, with_fl and without_fl (`LatencyStats`: frames, delivered,
                                  lost, loss, p50_s, p99_s, max_s, mean_s, wire_bytes) and a verdict; absent
                                  without [[traffic]]. The totals count the workload's messages only.

JSON has no inf/nan: they are written as null and read back as None.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simfl.errors import SimflError

__all__ = ["SUMMARY_FILE", "RunSummary", "Totals", "FedadPart", "SyntheticPart", "SyntheticPattern",
           "LatencyStats", "BackgroundFlow", "summary_from_dict", "write_summary", "read_summary"]

SUMMARY_FILE = "summary.json"


@dataclass(kw_only=True)
class Totals:
    """What the network carried in the whole run, and how long it took (simulated and on this machine)."""

    messages: int
    messages_undelivered: int = 0
    messages_lost: int = 0  # given up on by the network (fluid: network.give_up; ns3: TCP), or their sender crashed
    payload_bits: int
    payload_bytes: float
    wire_bytes: int
    retransmitted_bytes: int = 0  # included in wire_bytes
    sim_time_s: float
    wall_time_s: float
    events_processed: int = 0


@dataclass(kw_only=True)
class SyntheticPattern:
    pattern: str
    round: int
    messages: int
    t_start: float
    t_end: float
    duration_s: float


@dataclass(kw_only=True)
class SyntheticPart:
    """The synthetic workload's results: one entry per pattern, in the order they ran."""

    message_bytes: int
    target: str | None = None
    patterns: list[SyntheticPattern] = field(default_factory=list)


@dataclass(kw_only=True)
class FedadPart:
    """The fedad workload's results. Bytes and durations are keyed by trace phase (phase1, phase2, ideal, local,
    centralised); AUC tables by approach (local, method, ideal, centralised)."""

    clients: int
    classes: list[int]
    samples_per_client: list[int] = field(default_factory=list)
    payload_bytes: dict[str, float]
    wire_bytes: dict[str, int]
    closed_form_bytes: dict[str, float]  # eq1, eq1_measured_structure, eq2, eq3, centralised
    duration_s: dict[str, float]
    phase_span_s: dict[str, list[float]]  # [first send or compute start, last delivery or compute end]
    centralised_upload_s: float | None = None
    auc_mean: dict[str, float | None]
    detector: str = "global"
    auc_mean_by_detector: dict[str, dict[str, float | None]] = field(default_factory=dict)
    auc_by_class: dict[str, dict[str, float | None]]  # inlier class (as text) -> approach -> mean AUC
    method_above_local: list[int] | None = None  # [classes where the method beats local, classes compared]
    communities: list[list[int]]
    community_member_classes: list[list[int]]
    k: int
    ari: float | None
    nmi: float | None
    leader_communities_match: bool
    learning_wall_s: dict[str, float]
    learning_from_cache: bool | None = None
    simulation_wall_s: float
    # the round conditions and crashes (`simfl.conditions.participation_summary`; absent in older runs)
    participation: dict[str, Any] = field(default_factory=dict)
    rounds_skipped: int = 0
    failovers: int = 0
    auc_mean_fault_free: dict[str, float] | str | None = None  # without conditions, from the cache; or why not
    preset_note: str = ""
    experiment: dict[str, Any]
    data_dir: str | None = None  # the Fashion-MNIST folder the run read
    data_files: dict[str, str] | None = None  # file name -> sha256 of the IDX files in it


@dataclass(kw_only=True)
class LatencyStats:
    """A background flow's frames in one run (`simfl.traffic.flow_stats`): latency = t_deliver - t_send in seconds
    over the delivered frames (p50 and p99 by nearest rank; None when none was delivered), loss = lost / frames."""

    frames: int
    delivered: int
    lost: int
    loss: float | None
    p50_s: float | None
    p99_s: float | None
    max_s: float | None
    mean_s: float | None
    wire_bytes: int


@dataclass(kw_only=True)
class BackgroundFlow:
    """One [[traffic]] flow: what it is, its statistics with the workload and alone, and a verdict."""

    src: str
    dst: str
    kind: str
    priority: str
    transport: str
    frame_bytes: int  # payload bytes of each frame (bulk: of each upload)
    gap_s: float | None  # seconds between frames while sending (None: one upload)
    with_fl: LatencyStats
    without_fl: LatencyStats
    verdict: str


@dataclass(kw_only=True)
class RunSummary:
    """One run's summary. Exactly one of `fedad` / `synthetic` is set, after `workload`."""

    scenario: str
    seed: int
    workload: str
    totals: Totals
    fedad: FedadPart | None = None
    synthetic: SyntheticPart | None = None
    cache: dict[str, Any] | None = None  # the learning cache's outcome, as the plan module reports it
    incast: list[dict[str, Any]] | None = None  # simfl.incast.Incast.to_dict() per phase; None: not checked
    contention: list[dict[str, Any]] | None = None  # simfl.incast.Contention.to_dict() per phase; None: not checked
    background: dict[str, BackgroundFlow] | None = None  # per [[traffic]] flow; None: the scenario has none
    extra: dict[str, Any] = field(default_factory=dict)  # keys this simfl does not know: kept, written back

    @property
    def part(self) -> FedadPart | SyntheticPart | None:
        return self.fedad if self.workload == "fedad" else self.synthetic

    def to_dict(self) -> dict[str, Any]:
        """The summary.json object (see the module docstring), with inf/nan as None."""
        d: dict[str, Any] = {"scenario": self.scenario, "seed": self.seed, "workload": self.workload}
        if self.part is not None:
            d.update(dataclasses.asdict(self.part))
        if self.cache is not None:
            d["cache"] = self.cache
        if self.incast is not None:
            d["incast"] = self.incast
        if self.contention is not None:
            d["contention"] = self.contention
        if self.background is not None:
            d["background"] = {k: dataclasses.asdict(v) for k, v in self.background.items()}
        d.update(self.extra)
        totals = dataclasses.asdict(self.totals)
        d["totals"] = totals
        for k, v in totals.items():
            d.setdefault(k, v)
        return _finite(d)


_PARTS: dict[str, type] = {"fedad": FedadPart, "synthetic": SyntheticPart}
_TOP = ("scenario", "seed", "workload", "totals", "cache", "incast", "contention", "background")


def _finite(o: Any) -> Any:
    """JSON-ready: inf/nan as None, tuples as lists, numpy scalars as Python numbers, paths as text."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple | set | frozenset):
        return [_finite(v) for v in (sorted(o) if isinstance(o, set | frozenset) else o)]
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item") and callable(o.item) and getattr(o, "ndim", 0) == 0:  # numpy scalar
        return _finite(o.item())
    if hasattr(o, "tolist"):
        return _finite(o.tolist())
    return o


def _build(cls: type, d: dict[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{what}: missing {', '.join(missing)}")
    return cls(**{k: v for k, v in d.items() if k in names})


def summary_from_dict(d: dict[str, Any], source: str = "summary") -> RunSummary:
    """A RunSummary from the summary.json object (or a workload's flat dict with the totals under `totals`);
    ValueError when a key it needs is missing."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: a JSON object was expected, not {type(d).__name__}")
    d = _finite(d)
    workload = d.get("workload")
    totals = _build(Totals, d["totals"] if isinstance(d.get("totals"), dict) else d, f"{source}: totals")
    part_cls = _PARTS.get(workload)  # type: ignore[arg-type]
    part = None
    if part_cls is not None:
        part = _build(part_cls, d, f"{source} ({workload})")
        if isinstance(part, SyntheticPart):
            part.patterns = [p if isinstance(p, SyntheticPattern) else _build(SyntheticPattern, p, source)
                             for p in part.patterns]
    known = set(_TOP) | {f.name for f in dataclasses.fields(part_cls)} if part_cls else set(_TOP)
    copied = {k for k in dataclasses.asdict(totals) if k not in known}
    extra = {k: v for k, v in d.items() if k not in known and k not in copied}
    bg = d.get("background")
    if isinstance(bg, dict):
        bg = {k: _background_flow(v, f"{source}: background.{k}") for k, v in bg.items()}
    base = _build(RunSummary, {**d, "totals": totals, "background": bg}, source)
    return dataclasses.replace(base, fedad=part if workload == "fedad" else None,
                               synthetic=part if workload == "synthetic" else None, extra=extra)


def _background_flow(v: Any, what: str) -> BackgroundFlow:
    if isinstance(v, BackgroundFlow):
        return v
    if not isinstance(v, dict):
        raise ValueError(f"{what}: a JSON object was expected")
    stats = {k: v[k] if isinstance(v.get(k), LatencyStats) else _build(LatencyStats, v.get(k) or {}, f"{what}.{k}")
             for k in ("with_fl", "without_fl")}
    return _build(BackgroundFlow, {**v, **stats}, what)


def write_summary(run_dir: str | Path, summary: RunSummary) -> Path:
    """Write `summary` as `run_dir`/summary.json (atomically: a reader sees the old file or the whole new one)."""
    path = Path(run_dir) / SUMMARY_FILE
    tmp = path.with_name(f".{SUMMARY_FILE}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(summary.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_summary(path: str | Path) -> RunSummary:
    """The summary of a run: `path` is its summary.json or its run folder."""
    p = Path(path)
    if p.is_dir():
        p = p / SUMMARY_FILE
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SimflError(f"{p}: no such file (a run folder holds summary.json once its run has finished)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SimflError(f"{p}: cannot read: {e}") from None
    except ValueError as e:
        raise SimflError(f"{p}: not valid JSON ({e}); the file is damaged") from None
    try:
        return summary_from_dict(d, str(p))
    except (ValueError, TypeError) as e:
        raise SimflError(f"not a simfl run summary: {e}; the file is damaged or was not written by simfl") from None
