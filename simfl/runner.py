"""One run: scenario -> world -> workload -> trace files -> summary.json, with an INCOMPLETE marker until done.

Run directory layout: `INCOMPLETE` (only while running or after a failure), `scenario.toml` (the resolved
scenario), `messages|compute|links.parquet` and `.csv`, `summary.json`, plus what the workload writes itself.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from simfl.config import DEFAULT_SCENARIO, Scenario, load_scenario
from simfl.errors import SimflError
from simfl.trace import write_traces
from simfl.world import World

__all__ = ["run_scenario", "run_cli", "default_run_dir", "INCOMPLETE"]

INCOMPLETE = "INCOMPLETE"


def _json_default(o: Any) -> Any:
    if hasattr(o, "item") and callable(o.item):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set | frozenset):
        return sorted(o)
    raise TypeError(f"cannot write {type(o).__name__} to summary.json")


def _clean(o: Any) -> Any:
    """JSON has no inf/nan: write them as null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    return o


def _run_workload(world: World, scenario: Scenario, out: Path, progress: bool) -> dict[str, Any]:
    if scenario.workload == "synthetic":
        from simfl.workloads import run_synthetic

        return run_synthetic(world, scenario)
    if scenario.workload == "fedad":
        from simfl.fedad import run_fedad

        return run_fedad(world, scenario, out, progress)
    raise SimflError(f"unknown workload {scenario.workload!r}")


def run_scenario(scenario: Scenario, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run `scenario` into `out_dir` and return the summary (also written as summary.json).

    The summary is the workload's dict plus `scenario`, `seed`, `workload` and `totals` (messages, payload_bits,
    payload_bytes, wire_bytes, sim_time_s, wall_time_s, events_processed); the totals are also copied to the top
    level where the workload did not use the same key. On any exception the INCOMPLETE marker stays and no
    summary.json exists."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / INCOMPLETE
    marker.write_text(f"simfl run of {scenario.name} (seed {scenario.seed}) started; it has not finished.\n")
    (out / "summary.json").unlink(missing_ok=True)
    (out / "scenario.toml").write_text(scenario.to_toml(), encoding="utf-8")
    t0 = time.perf_counter()
    world = World(scenario)
    result = dict(_run_workload(world, scenario, out, progress))
    write_traces(world.recorder, out)
    wall = time.perf_counter() - t0
    totals = world.network.totals()
    totals.update(sim_time_s=float(world.env.now), wall_time_s=wall, events_processed=world.events_processed)
    summary: dict[str, Any] = {"scenario": scenario.name, "seed": scenario.seed, "workload": scenario.workload}
    summary.update(result)
    summary["totals"] = totals
    for k, v in totals.items():
        summary.setdefault(k, v)
    text = json.dumps(_clean(summary), indent=2, default=_json_default)
    (out / "summary.json").write_text(text + "\n", encoding="utf-8")
    marker.unlink()
    return summary


def default_run_dir(scenario: Scenario, root: str | Path = "runs") -> Path:
    """runs/<name>-seed<N>, or -2, -3, ... when it exists."""
    base = Path(root) / f"{scenario.name}-seed{scenario.seed}"
    if not base.exists():
        return base
    i = 2
    while Path(f"{base}-{i}").exists():
        i += 1
    return Path(f"{base}-{i}")


def _check_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise SimflError(f"--out {out}: exists and is not a directory")
        if any(out.iterdir()) and not (out / INCOMPLETE).exists():
            raise SimflError(f"--out {out}: already holds a finished run or other files; choose another directory "
                             "or remove it")


def _fmt_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def run_cli(args: argparse.Namespace) -> int:
    path = args.scenario or DEFAULT_SCENARIO
    overrides = list(getattr(args, "overrides", None) or [])
    if getattr(args, "device", None):
        overrides.append(f"experiment.device={json.dumps(args.device)}")
    scenario = load_scenario(path, overrides, seed=getattr(args, "seed", None))
    if getattr(args, "out", None):
        out = Path(args.out)
        _check_out(out)
    else:
        out = default_run_dir(scenario)
    quiet = bool(getattr(args, "quiet", False))
    if quiet or scenario.workload != "synthetic":  # the fedad workload reports its own progress
        summary = run_scenario(scenario, out, progress=not quiet)
    else:
        from rich.console import Console

        console = Console(stderr=True)
        with console.status(f"simfl: running {scenario.name} ({scenario.workload}, seed {scenario.seed})..."):
            summary = run_scenario(scenario, out, progress=True)
    t = summary["totals"]
    print(f"simfl: results in {out}")
    print(f"  scenario   {scenario.name}: workload {scenario.workload}, seed {scenario.seed}, "
          f"{len(scenario.nodes)} nodes ({len(scenario.clients)} clients)")
    print(f"  messages   {t['messages']:,} delivered; payload {_fmt_bytes(t['payload_bytes'])}, "
          f"wire {_fmt_bytes(t['wire_bytes'])}")
    print(f"  simulated  {t['sim_time_s']:.6g} s in {t['events_processed']:,} events")
    print(f"  wall time  {t['wall_time_s']:.2f} s")
    return 0
