"""Bad input to `simfl sweep`: exit status 2, no traceback, one line that names the flag, key, value or path.

Everything here fails before a point runs (or on its first write), on the shipped network-only scenario."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import polars as pl
import pytest

import simfl.runner
from simfl.cli import main
from simfl.config import REPO_ROOT

ALLPAIRS = str(REPO_ROOT / "topologies" / "allpairs-90.toml")
GATHER = ["--set", 'synthetic.pattern=["gather"]']  # 90 messages a point, for the cases that run one


def sweep_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `simfl sweep ARGV`; assert exit status 2 and no traceback; return the error line."""
    capsys.readouterr()
    try:
        rc = main(["sweep", *argv])
    except SystemExit as e:  # argparse's own checks (a choice, a type) exit from the parser
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("simfl: warning: ")]  # e.g. incast
    if "usage:" in err:  # argparse: its usage, then one error line
        return lines[-1]
    assert len(lines) == 1 and lines[0].startswith("simfl: error: "), err
    return lines[0]


# (case, arguments after the scenario, what the line must say); {out} is the sweep directory
BEFORE_ANYTHING_RUNS = [
    ("no =", ["--vary", "experiment.rounds"], "--vary experiment.rounds: expected KEY=V1,V2,..."),
    ("no key", ["--vary", "=1,2"], "--vary =1,2: needs a key"),
    ("no values", ["--vary", "synthetic.message_bytes="], "--vary synthetic.message_bytes=: needs a key and at least"),
    ("empty list", ["--vary", "synthetic.message_bytes=[]"], "synthetic.message_bytes=[]: needs at least one value"),
    ("stray comma", ["--vary", "synthetic.message_bytes=1 kB,,2 kB"], "synthetic.message_bytes=1 kB,,2 kB: value 2 is"),
    ("unclosed quote", ["--vary", 'synthetic.message_bytes=1 kB,"2 kB'], "unclosed double quote in value 2"),
    ("bad array", ["--vary", 'synthetic.pattern=[["gather"], ["allpairs"'], "synthetic.pattern=[[\"gather\"], "
     "[\"allpairs\": not a TOML or JSON array (Unclosed array"),
    ("two arrays", ["--vary", 'synthetic.pattern=["gather"],["allpairs"]'],
     'put them in one: synthetic.pattern=[["gather"],["allpairs"]]'),
    ("null value", ["--vary", "synthetic.message_bytes=[null]"], "synthetic.message_bytes=[null]: null is not"),
    ("duplicate key", ["--vary", "synthetic.message_bytes=1 kB", "--vary", "synthetic.message_bytes=2 kB"],
     "--vary synthetic.message_bytes: given twice"),
    ("duplicate value", ["--vary", "synthetic.message_bytes=1 kB,2 kB,1 kB"], 'value "1 kB" given twice'),
    ("unknown key", ["--vary", "synthetic.message_bites=1 kB,2 kB"],
     "--vary synthetic.message_bites=1 kB: unknown key 'message_bites' in [synthetic]; did you mean 'message_bytes'"),
    ("bad unit", ["--vary", "synthetic.message_bytes=1 kB,1 parsec"],
     "--vary point synthetic.message_bytes=1 parsec: "),
    ("bad list item", ["--vary", 'synthetic.pattern=[["gather"], ["everything"]]'],
     'synthetic.pattern=["everything"]: ' + ALLPAIRS + ': synthetic.pattern[0] = "everything": must be one of'),
    ("jobs 0", ["--vary", "seed=1,2", "--jobs", "0"], "argument --jobs: '0': must be >= 1"),
    ("jobs -3", ["--vary", "seed=1,2", "--jobs", "-3"], "argument --jobs: '-3': must be >= 1"),
    ("jobs -3 on ray", ["--vary", "seed=1,2", "--jobs", "-3", "--executor", "ray"],
     "argument --jobs: '-3': must be >= 1"),
    ("jobs not a number", ["--vary", "seed=1,2", "--jobs", "two"],
     "argument --jobs: 'two': expected a whole number >= 1"),
    ("seeds 0", ["--seeds", "0"], "argument --seeds: '0': must be >= 1"),
    ("seeds -1", ["--vary", "seed=1,2", "--seeds", "-1"], "argument --seeds: '-1': must be >= 1"),
    ("huge seeds", ["--seeds", str(2**32)], "--seeds 4294967296: seeds 1..4294967296 pass the largest seed"),
    ("seeds past 2^32", ["--vary", f"seed=7,{2**32 - 2}", "--seeds", "3"],
     "--seeds 3: seeds 4294967294..4294967296 pass the largest seed"),
    ("executor bogus", ["--vary", "seed=1,2", "--executor", "bogus"], "argument --executor: invalid choice: 'bogus'"),
    ("address without ray", ["--vary", "seed=1,2", "--address", "10.0.0.1:6379"],
     "--address 10.0.0.1:6379: only used with --executor ray"),
    ("nothing to vary", [], "give at least one --vary"),
    ("bad --set", ["--vary", "seed=1,2", "--set", "synthetic.patern=1"], "--set synthetic.patern=1: unknown key"),
    # the network keys added since: every point is checked before the first runs
    ("give_up 0", ["--vary", "network.give_up=1 s,0"],
     "--vary point network.give_up=0: " + ALLPAIRS + ": network.give_up = 0: time must be positive"),
    ("loss above 0.5", ["--vary", "node_groups[0].uplink.loss=0,0.7"],
     "node_groups[0].uplink.loss = 0.7: must lie in [0, 0.5]"),
    ("loss nan", ["--vary", "node_groups[0].uplink.loss=0.01,nan"], "node_groups[0].uplink.loss = nan: must be finite"),
    ("model typo", ["--vary", "network.model=fluid,ns4"], "network.model = \"ns4\": must be one of fluid, ns3"),
    ("jitter distribution", ["--vary", "network.jitter_distribution=uniform,gauss"],
     'network.jitter_distribution = "gauss": must be one of uniform, exponential'),
    ("buffer 0", ["--vary", "network.buffer=0,10"], "network.buffer = 0: must be >= 1"),
    ("send order twice", ["--vary", "synthetic.send_order=id,rotated,id"],
     '--vary synthetic.send_order: value "id" given twice'),
    ("fault of no entry", ["--vary", "faults[0].down=1 s,2 s"], "--vary faults[0].down=1 s: faults has no entries"),
    ("every fault of none", ["--vary", "faults[*].down=1 s,2 s"], "--vary faults[*].down=1 s: faults has no entries"),
    ("traffic of no entry", ["--vary", "traffic[0].period=1 ms,2 ms"],
     "--vary traffic[0].period=1 ms: traffic has no entries"),
    ("fault lists, one bad", ["--vary", 'faults=[[{link="c00-s1",down="0 s",up="1 s"}],[{link="c00-s2",down="0 s"}]]'],
     'faults[0].link = "c00-s2": unknown link; did you mean \'c00-s1\''),
    ("outages every nanosecond", ["--vary", 'faults=[[{link="c00-s1",every="1 ns",duration="0.5 ns"}]]'],
     'faults[0].every = "1 ns": time must be at least 1 us'),
    ("missing trace instead of a bandwidth", ["--vary", "node_groups[0].uplink.bandwidth_trace=a.csv,b.csv"],
     'node_groups[0].uplink.bandwidth_trace = "a.csv": no such trace file (' + str(REPO_ROOT / "topologies" / "a.csv")),
    ("control flow over capacity", ["--vary", 'traffic=[[{name="ctl",src="server",dst="c00",kind="cbr",rate="1 Mbps",'
                                    'priority="control"}],[{name="ctl",src="server",dst="c00",kind="cbr",'
                                    'rate="1 Gbps",priority="control"}]]'],
     'traffic[0] = "ctl": control traffic without a stop sends 1,053.42 Mbit/s on the wire (headers included) '
     "through s1>c00 (link c00-s1)"),
]


@pytest.mark.parametrize("argv, says", [c[1:] for c in BEFORE_ANYTHING_RUNS], ids=[c[0] for c in BEFORE_ANYTHING_RUNS])
def test_bad_input_is_one_line_and_nothing_is_written(argv: list[str], says: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    line = sweep_error([ALLPAIRS, *argv, "--out", str(tmp_path / "s"), "--quiet"], capsys)
    assert says in line
    assert not (tmp_path / "s").exists()


def test_unknown_scenario_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.toml"
    line = sweep_error([str(missing), "--vary", "seed=1,2", "--out", str(tmp_path / "s")], capsys)
    assert line == f"simfl: error: {missing}: no such scenario file"


def test_out_is_a_file_or_under_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "f"
    f.write_text("not a directory\n")
    line = sweep_error([ALLPAIRS, "--vary", "seed=1,2", "--out", str(f)], capsys)
    assert line == f"simfl: error: --out {f}: exists and is not a directory"
    line = sweep_error([ALLPAIRS, "--vary", "seed=1,2", "--out", str(f / "sub")], capsys)
    assert line == f"simfl: error: --out {f / 'sub'}: cannot write there (Not a directory); choose a writable directory"
    assert f.read_text() == "not a directory\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/sys: Linux's read-only kernel file system")
def test_out_on_a_file_system_nobody_writes(capsys: pytest.CaptureFixture[str]) -> None:
    line = sweep_error([ALLPAIRS, "--vary", "seed=1,2", "--out", "/sys/simfl-sweep-test"], capsys)
    assert line.startswith("simfl: error: --out /sys/simfl-sweep-test: cannot write there (")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not stop root")
def test_read_only_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        line = sweep_error([ALLPAIRS, "--vary", "seed=1,2", "--out", str(ro)], capsys)
    finally:
        ro.chmod(0o700)
    assert line == f"simfl: error: --out {ro}: cannot write there (Permission denied); choose a writable directory"


def test_disk_full_during_a_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    def full(recorder: object, out: Path) -> None:  # the disk fills while a point writes its traces
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "messages.parquet"))

    monkeypatch.setattr(simfl.runner, "write_traces", full)
    out = tmp_path / "s"
    line = sweep_error([ALLPAIRS, *GATHER, "--vary", "seed=1,2", "--out", str(out), "--quiet"], capsys)
    point = out / "points" / "p000-1-seed1"
    assert line.startswith(f"simfl: error: {point / 'messages.parquet'}: cannot write (No space left on device); ")
    assert (point / "INCOMPLETE").exists()  # the run of it resumes once there is room


def test_point_directory_holding_another_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "s" / "points" / "p001-2-seed2"
    taken.mkdir(parents=True)
    (taken / "summary.json").write_text("{}")
    line = sweep_error([ALLPAIRS, *GATHER, "--vary", "seed=1,2", "--out", str(tmp_path / "s"), "--quiet"], capsys)
    assert line == f"simfl: error: {taken}: holds a different finished run; remove it or sweep into another directory"
    assert (taken / "summary.json").read_text() == "{}"


def test_an_ns3_point_without_the_ns3_package_stops_the_sweep_before_any_point(tmp_path: Path, monkeypatch,
                                                                              capsys: pytest.CaptureFixture[str]):
    """As on a machine without the ns3 package: the fluid point used to run first, then the ns3 one failed."""
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "ns3" else find(name, *a, **k))
    line = sweep_error([ALLPAIRS, *GATHER, "--vary", "network.model=fluid,ns3", "--out", str(tmp_path / "s"),
                        "--quiet"], capsys)
    assert line.startswith(f'simfl: error: --vary point network.model=ns3: {ALLPAIRS}: network.model = "ns3": the ns3 '
                           "package (ns-3 with cppyy bindings) is not installed here")
    assert not (tmp_path / "s").exists()


def test_a_sweep_over_capacity_traces_replaces_the_bandwidth(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """--vary of bandwidth_trace on a scenario that gives a bandwidth (refused before: "give bandwidth or
    bandwidth_trace, not both"). Gather of 90 models into the server's 1 Gbps port, every client's link a constant
    trace of 1 Gbps or 10 Mbps: at 10 Mbps each client's link is its message's bottleneck (90 x 10 Mbps fit in the
    server's port): handshake 2 x (0.5 ms + 624 / 1e7 + 0.5 ms + 624 / 1e9), then 108,560 / 1e7 + 1 ms +
    12,304 / 1e9, in all 0.013994352 s."""
    for name, bps in (("fast.csv", "1e9"), ("slow.csv", "1e7")):
        (tmp_path / name).write_text(f"0,{bps}\n")
    out = tmp_path / "s"
    assert main(["sweep", ALLPAIRS, *GATHER, "--vary", f"node_groups[0].uplink.bandwidth_trace={tmp_path}/fast.csv,"
                 f"{tmp_path}/slow.csv", "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    durations = pl.read_parquet(out / "sweep.parquet")["duration_s_gather"].to_list()
    assert durations[1] == pytest.approx(0.013994352, rel=1e-9) and durations[0] < durations[1]
