"""One run: scenario -> world -> workload -> trace files -> summary.json (-> report), in a run folder of its own.

Run folder layout: `INCOMPLETE` (only while running or after a failure), `scenario.toml` (the resolved
scenario), `messages|compute|links.parquet` and `.csv`, `summary.json`, plus what the workload writes itself
(fedad: communities.csv, auc.parquet, report.md and plots). A scenario with [[traffic]] also gets
`background.parquet` / `.csv`: its flows run beside the workload, then alone on a second World for the frames the
first run sent (`simfl.traffic`); summary.json's `background` compares the two.

The folder is atomic from the user's view:
- a run holds an exclusive lock (`.simfl-lock`, fcntl.flock) on it from start to end: a second run into the same
  folder fails at once;
- a folder holding simfl's INCOMPLETE marker (a run that failed or was interrupted) is emptied and run afresh;
- a finished run (summary.json, no marker) is replaced only with `force`; a folder holding anything else is never
  touched;
- on any failure (errors, Ctrl-C, SIGTERM) the INCOMPLETE marker stays and there is no summary.json.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from simfl.config import DEFAULT_SCENARIO, Scenario, ScenarioError, load_scenario
from simfl.errors import SimflError, os_error_of
from simfl.incast import fluid_findings, warn_incast
from simfl.progress import Progress, make_progress
from simfl.summary import SUMMARY_FILE, RunSummary, read_summary, summary_from_dict, write_summary
from simfl.trace import write_frame, write_traces
from simfl.world import World

__all__ = ["run", "run_scenario", "run_cli", "default_run_dir", "preflight", "INCOMPLETE", "LOCK"]

INCOMPLETE = "INCOMPLETE"
LOCK = ".simfl-lock"
_MARKER_TEXT = "simfl run of"  # how simfl's INCOMPLETE marker begins (a file of that name from elsewhere is kept)


def _run_workload(world: World, scenario: Scenario, out: Path, say: Progress) -> dict[str, Any]:
    if scenario.workload == "synthetic":
        from simfl.workloads import run_synthetic

        return run_synthetic(world, scenario, say)
    if scenario.workload == "fedad":
        from simfl.fedad import run_fedad

        return run_fedad(world, scenario, out, say)
    raise SimflError(f"unknown workload {scenario.workload!r}")


def _finish(out: Path, summary: RunSummary) -> None:
    """What a workload writes from its finished summary (fedad: report.md and the plots)."""
    if summary.workload == "fedad":
        from simfl.report import write_report

        write_report(out, read_summary(out))


# ------------------------------------------------------------------------------------------- the run folder
def _os_problem(out: Path, e: OSError) -> SimflError:
    where = e.filename or out
    return SimflError(f"run folder {out}: cannot use it: {where}: {e.strerror or e}; choose another --out "
                      "(a folder you can write to, on a disk with free space)")


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Create `out` if needed and hold its lock file's exclusive flock while inside."""
    if out.exists() and not out.is_dir():
        raise SimflError(f"run folder {out}: is a file, not a folder; choose another --out")
    lock = out / LOCK
    fd = -1
    try:
        out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                raise SimflError(f"run folder {out}: another simfl run is writing into it right now (process "
                                 f"{holder or '?'} holds {lock}); wait for it to end or choose another --out") from None
            with contextlib.suppress(FileNotFoundError):  # the holder may have removed the file before we locked it
                if os.path.samestat(os.fstat(fd), os.stat(lock)):
                    break
            os.close(fd)
            fd = -1
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        if isinstance(e, NotADirectoryError | FileExistsError):
            raise SimflError(f"run folder {out}: a part of this path is a file, not a folder; choose another "
                             "--out") from None
        if isinstance(e, OSError):
            raise _os_problem(out, e) from None
        raise
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _is_marker(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(_MARKER_TEXT)).decode(errors="replace") == _MARKER_TEXT
    except OSError:
        return False


def _old_files(out: Path, force: bool) -> list[Path]:
    """What must go before a new run in `out`: an interrupted run's files, a finished run's with `force`; a folder
    holding anything else is refused."""
    entries = sorted(p for p in out.iterdir() if p.name not in (LOCK, INCOMPLETE))
    marker = out / INCOMPLETE
    if marker.exists() or marker.is_symlink():
        if not _is_marker(marker):
            raise SimflError(f"run folder {out}: holds a file named {INCOMPLETE} that simfl did not write; "
                             "choose another --out")
        return entries
    if not entries:
        return []
    if not ((out / SUMMARY_FILE).is_file() and (out / "scenario.toml").is_file()):
        names = ", ".join(p.name for p in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise SimflError(f"run folder {out}: holds other files ({names}), not a simfl run; choose an empty or new "
                         "folder for --out")
    if not force:
        raise SimflError(f"run folder {out}: already holds a finished run ({SUMMARY_FILE}); pass --force to "
                         "replace it, or choose another --out")
    return entries


def _remove(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


# ------------------------------------------------------------------------------------------------- the run
def preflight(scenario: Scenario) -> None:
    """What stops a valid scenario from running here, found before its folder is touched (ScenarioError): the ns3
    backend without the ns3 package, or with what it cannot model; control traffic that starves the rest for ever."""
    if scenario.network.model == "ns3":
        from simfl.ns3 import available

        if not available():
            raise ScenarioError(f"{scenario.source or '<dict>'}: network.model = \"ns3\": the ns3 package (ns-3 "
                                "with cppyy bindings) is not installed here: pip install ns3 (or pip install -e "
                                ".[ns3]), or use network.model = \"fluid\"")
        from simfl.ns3.network import refuse_scenario  # loads no ns-3

        try:
            refuse_scenario(scenario)
        except SimflError as e:
            raise ScenarioError(f"{scenario.source or scenario.name}: {e}") from None
    if scenario.traffic:
        from simfl.traffic import check_control_load

        check_control_load(scenario)


def run(scenario: Scenario, out_dir: str | Path, progress: bool | Progress = True, *,
        force: bool = False) -> RunSummary:
    """Run `scenario` into the run folder `out_dir` (see the module docstring); returns the summary it wrote.

    `progress`: a `Progress`, or True for one that suits stderr, False for none. `force`: replace a finished run.
    The old run's files go only after the new run's INCOMPLETE marker is written: a run stopped at any point leaves
    a folder that the next run empties."""
    preflight(scenario)
    out = Path(out_dir)
    say = progress if isinstance(progress, Progress) else make_progress(quiet=not progress)
    with _locked(out), (contextlib.nullcontext() if say is progress else say):
        try:
            old = _old_files(out, force)
            (out / INCOMPLETE).write_text(f"{_MARKER_TEXT} {scenario.name} (seed {scenario.seed}) started; it has "
                                          "not finished. Run it again to start it afresh.\n")
            _remove(old)
        except OSError as e:
            raise _os_problem(out, e) from None
        say(f"running {scenario.name} ({scenario.workload}, seed {scenario.seed}) into {out}")
        try:
            summary = _run(scenario, out, say)
            (out / INCOMPLETE).unlink()
        except BaseException as e:
            (out / SUMMARY_FILE).unlink(missing_ok=True)
            if not isinstance(e, Exception):  # Ctrl-C, SIGTERM: say where the unfinished run is
                e.add_note(f"{out} keeps its {INCOMPLETE} marker: run again with --out {out} to start it afresh")
            oe = os_error_of(e, out) if isinstance(e, Exception) and not isinstance(e, SimflError) else None
            if oe is not None and oe is not e:
                raise oe from e
            raise
    return summary


def run_scenario(scenario: Scenario, out_dir: str | Path, progress: bool | Progress = True, *,
                 force: bool = False) -> dict[str, Any]:
    """`run`, returning the summary.json object: the workload's keys plus `scenario`, `seed`, `workload` and
    `totals` (messages, payload_bits, payload_bytes, wire_bytes, sim_time_s, wall_time_s, events_processed), the
    totals also at the top level where the workload has no key of that name."""
    return run(scenario, out_dir, progress, force=force).to_dict()


def _run(scenario: Scenario, out: Path, say: Progress) -> RunSummary:
    (out / "scenario.toml").write_text(scenario.to_toml(), encoding="utf-8")
    t0 = time.perf_counter()
    world = World(scenario, run_dir=out)
    bg = None
    if scenario.traffic:
        from simfl.traffic import Background

        bg = Background(world)
    result = dict(_run_workload(world, scenario, out, say))
    background = None
    if bg is not None:
        from simfl.traffic import run_background

        frames, background = run_background(bg, say)
        write_frame(frames, out, "background")
    incast, contention = fluid_findings(world.recorder.messages_frame(), world.topology, scenario)
    warn_incast([*incast, *contention])
    write_traces(world.recorder, out)
    totals = world.network.totals()
    world.close()
    totals.update(sim_time_s=float(world.env.now), wall_time_s=time.perf_counter() - t0,
                  events_processed=world.events_processed)
    flat = {**result, "scenario": scenario.name, "seed": scenario.seed, "workload": scenario.workload,
            "totals": totals, "incast": [w.to_dict() for w in incast], "contention": [w.to_dict() for w in contention]}
    summary = summary_from_dict(flat, f"{scenario.name} ({scenario.workload})")
    summary.background = background
    write_summary(out, summary)
    _finish(out, summary)
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


def _claim_default(scenario: Scenario) -> Path:
    """A new default run folder, created here so that two runs started together never pick the same one."""
    for _ in range(1000):
        out = default_run_dir(scenario)
        try:
            out.mkdir(parents=True)
            return out
        except FileExistsError:
            continue
        except OSError as e:
            raise _os_problem(out, e) from None
    raise SimflError(f"{default_run_dir(scenario)}: cannot find a free default run folder; pass --out")


def _fmt_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def run_cli(args: argparse.Namespace) -> int:
    """`simfl run [SCENARIO] [--out DIR] [--seed N] [--set KEY=VALUE ...] [--device D] [--quiet] [--force]`."""
    path = args.scenario or DEFAULT_SCENARIO
    overrides = list(getattr(args, "overrides", None) or [])
    if getattr(args, "device", None):
        overrides.append(f"experiment.device={json.dumps(args.device)}")
    scenario = load_scenario(path, overrides, seed=getattr(args, "seed", None))
    out = Path(args.out) if getattr(args, "out", None) else _claim_default(scenario)
    with make_progress(quiet=bool(getattr(args, "quiet", False))) as say:
        s = run(scenario, out, say, force=bool(getattr(args, "force", False)))
    t = s.totals
    print(f"simfl: results in {out}")
    print(f"  scenario   {scenario.name}: workload {scenario.workload}, seed {scenario.seed}, "
          f"{len(scenario.nodes)} nodes ({len(scenario.clients)} clients)")
    lost = f", {t.messages_lost:,} lost" if t.messages_lost else ""
    print(f"  messages   {t.messages:,} delivered{lost}; payload {_fmt_bytes(t.payload_bytes)}, "
          f"wire {_fmt_bytes(t.wire_bytes)}")
    print(f"  simulated  {t.sim_time_s:.6g} s in {t.events_processed:,} events")
    for name, f in (s.background or {}).items():
        w, a = f.with_fl, f.without_fl
        print(f"  background {name}: {w.frames:,} frames, p99 {_ms(w.p99_s)} (alone {_ms(a.p99_s)}), loss "
              f"{_pct(w.loss)} (alone {_pct(a.loss)}): {f.verdict}")
    print(f"  wall time  {t.wall_time_s:.2f} s")
    return 0


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.3g} ms"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.3g}%"
