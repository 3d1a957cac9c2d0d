"""Sweeps of the shipped network-only scenario: durations against the network model by hand, list-valued and
comma-holding values, resumption after an interrupt, and the parallel executor."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest

import simfl.runner
import simfl.sweep as sweep_mod
from simfl.cli import main
from simfl.config import REPO_ROOT
from simfl.sweep import Level, parse_vary, run_sweep

ALLPAIRS = REPO_ROOT / "topologies" / "allpairs-90.toml"

# allpairs-90 (paper-90's network): 90 clients, each on its own uplink to switch s1 (0.5 ms per link), the server
# on 1 Gbps; messages of 12,868 payload bytes; 1500-byte MTU, 40 bytes IPv4+TCP and 38 bytes Ethernet per packet.
N, LATENCY, SERVER_BPS, MSS, HEADERS = 90, 0.5e-3, 1e9, 1500 - 40, 40 + 38


def wire_bits(payload: int) -> tuple[int, int]:
    """(wire bits of a message, wire bits of its first packet)."""
    packets = max(1, math.ceil(payload / MSS))
    return 8 * (payload + packets * HEADERS), 8 * (min(payload, MSS) + HEADERS)


def handshake_s(latency: float, *capacities: float) -> float:
    """TCP's handshake before a pair's first message (on by default): a header-only packet (78 bytes) there and one
    back, each alone on the path of the given hops: 2 x sum (latency + 8 x 78 / C)."""
    return 2 * sum(latency + 8 * HEADERS / c for c in capacities)


def allpairs_s(payload: int, uplink_bps: float, latency: float = LATENCY) -> float:
    """All-pairs on the star: after the handshake, each client's n - 1 flows share its uplink (and n - 1 flows
    share each downlink), so each message runs at C / (n - 1) and all end at (n - 1) W / C; plus two hops' latency
    and the store-and-forward term P (1/C + 1/C - 1/C) of the first packet on the second (equal) hop."""
    w, p = wire_bits(payload)
    return handshake_s(latency, uplink_bps, uplink_bps) + (N - 1) * w / uplink_bps + 2 * latency + p / uplink_bps


def gather_s(payload: int, uplink_bps: float) -> float:
    """Gather at the server: after the handshake, its 1 Gbps downlink, shared by the n flows, is the bottleneck
    (C_s / n < uplink), so all end at n W / C_s; store-and-forward adds P (1/C_up + 1/C_s - 1/C_up) = P / C_s."""
    w, p = wire_bits(payload)
    assert SERVER_BPS / N < uplink_bps
    return handshake_s(LATENCY, uplink_bps, SERVER_BPS) + N * w / SERVER_BPS + 2 * LATENCY + p / SERVER_BPS


def test_synthetic_sweep_of_the_shipped_scenario_matches_the_network_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bw"
    assert main(["sweep", str(ALLPAIRS), "--vary", "node_groups[0].uplink.bandwidth=10 Mbps,100 Mbps",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "duration_s_allpairs" in printed and f"{out / 'sweep.parquet'}" in printed
    t = pl.read_parquet(out / "sweep.parquet")
    assert t["node_groups[0].uplink.bandwidth"].to_list() == ["10 Mbps", "100 Mbps"]
    assert t["node_groups[0].uplink.bandwidth__value"].to_list() == [1e7, 1e8]
    for c, got in zip((1e7, 1e8), t["duration_s_allpairs"].to_list()):
        assert got == pytest.approx(allpairs_s(12868, c), rel=1e-12)
    # the formula, worked by hand: 0.09774144 s (test_runner) + a handshake of 2 x 2 x (0.5 ms + 624 / 1e8 s)
    assert t["duration_s_allpairs"][1] == pytest.approx(0.09774144 + 0.00202496, rel=1e-12)
    assert t["sim_time_s"].to_list() == t["duration_s_allpairs"].to_list()  # one pattern: it is the whole run
    pairs = N * (N - 1)
    assert t["messages"].to_list() == t["messages_allpairs"].to_list() == [pairs, pairs]
    assert t["payload_bytes"].to_list() == [pairs * 12868] * 2
    assert t["wire_bytes"].to_list() == [pairs * wire_bits(12868)[0] // 8] * 2
    assert t["workload"].to_list() == ["synthetic"] * 2 and t["message_bytes"].to_list() == [12868] * 2
    assert (out / "durations.png").stat().st_size > 0 and (out / "sweep.csv").exists()
    assert not (out / "crossover.json").exists()  # that is the learning sweeps' comparison


def test_list_valued_and_comma_holding_values(tmp_path: Path) -> None:
    (size,) = parse_vary(['synthetic.message_bytes=["12,868 B", "1 kB"]'])
    assert size == ("synthetic.message_bytes", [Level("12,868 B", "12,868 B"), Level("1 kB", "1 kB")])
    (plain,) = parse_vary(['k= 12 kB ,"12,868 B", 3,2.5e3 ,true,""'])
    assert [lv.value for lv in plain[1]] == ["12 kB", "12,868 B", 3, 2500.0, True, ""]
    assert [lv.text for lv in plain[1]] == ["12 kB", "12,868 B", "3", "2.5e3", "true", ""]
    (js,) = parse_vary(['k=[{"a": 1}, 2]'])  # JSON where TOML would not read it
    assert [lv.value for lv in js[1]] == [{"a": 1}, 2]
    vary = parse_vary(['synthetic.pattern=[["gather"], ["broadcast", "gather"]]',
                       'synthetic.message_bytes=["12,868 B", "1 kB"]'])
    assert vary[0][1][1] == Level('["broadcast", "gather"]', ["broadcast", "gather"])
    t = run_sweep(ALLPAIRS, vary, tmp_path / "s", progress=False)
    assert t["synthetic.pattern"].to_list() == ['["gather"]'] * 2 + ['["broadcast", "gather"]'] * 2
    assert t["message_bytes"].to_list() == [12868, 1000] * 2
    assert t["synthetic.message_bytes__value"].to_list() == [12868.0, 1000.0] * 2
    assert t["messages"].to_list() == [N, N, 2 * N, 2 * N]
    for got, b in zip(t["duration_s_gather"].to_list(), (12868, 1000, 12868, 1000)):
        assert got == pytest.approx(gather_s(b, 1e8), rel=1e-12)
    # broadcast mirrors gather: the server's uplink shared by n flows, then each client's downlink
    assert t["duration_s_broadcast"].to_list()[:2] == [None, None]
    assert t["duration_s_broadcast"].to_list()[2:] == pytest.approx(t["duration_s_gather"].to_list()[2:], rel=1e-12)
    assert t["sim_time_s"].to_list()[2:] == pytest.approx([2 * gather_s(12868, 1e8), 2 * gather_s(1000, 1e8)])
    points = sorted(p.name for p in (tmp_path / "s" / "points").iterdir())
    assert points == ["p000-gather-12868B-seed1", "p001-gather-1kB-seed1", "p002-broadcastgather-12868B-seed1",
                      "p003-broadcastgather-1kB-seed1"]
    assert (tmp_path / "s" / "durations.png").stat().st_size > 0  # against message size, one line per pattern set


def test_interrupted_sweep_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sweep", str(ALLPAIRS), "--vary", "node_groups[0].uplink.bandwidth=10 Mbps,100 Mbps,1 Gbps",
            "--out", str(tmp_path / "s"), "--quiet", "--set", 'synthetic.pattern=["gather"]']  # 90 messages a point
    real_write, calls = simfl.runner.write_traces, []

    def interrupted_on_second_point(recorder: object, out: Path) -> None:
        calls.append(out)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second point writes its traces
        real_write(recorder, out)

    monkeypatch.setattr(simfl.runner, "write_traces", interrupted_on_second_point)
    assert main(argv) == 130
    pts = tmp_path / "s" / "points"
    first, second = pts / "p000-10Mbps-seed1", pts / "p001-100Mbps-seed1"
    assert (first / "summary.json").exists() and (second / "INCOMPLETE").exists()
    assert not (pts / "p002-1Gbps-seed1").exists() and not (tmp_path / "s" / "sweep.parquet").exists()
    kept = (first / "messages.parquet").stat().st_mtime_ns

    monkeypatch.setattr(simfl.runner, "write_traces", real_write)
    runs: list[Path] = []
    real_run = sweep_mod.run_scenario
    monkeypatch.setattr(sweep_mod, "run_scenario", lambda sc, out, **kw: runs.append(out) or real_run(sc, out, **kw))
    capsys.readouterr()
    assert main(argv) == 0
    assert runs == [second, pts / "p002-1Gbps-seed1"]  # the finished point is read back, not rerun
    assert (first / "messages.parquet").stat().st_mtime_ns == kept
    resumed = pl.read_parquet(tmp_path / "s" / "sweep.parquet")
    fresh = run_sweep(ALLPAIRS, parse_vary(argv[3:4]), tmp_path / "fresh", base_overrides=argv[-1:], progress=False)
    assert resumed.drop("wall_time_s").equals(fresh.drop("wall_time_s"))
    runs.clear()
    assert main(argv) == 0 and runs == []  # all finished: nothing runs


def test_parallel_jobs_give_the_serial_table(tmp_path: Path) -> None:
    vary = parse_vary(["node_groups[0].uplink.latency=0.1 ms,1 ms,5 ms"])
    a = run_sweep(ALLPAIRS, vary, tmp_path / "a", jobs=1, progress=False)
    b = run_sweep(ALLPAIRS, vary, tmp_path / "b", jobs=2, progress=False)
    assert a.drop("wall_time_s").equals(b.drop("wall_time_s"))
    # two client links per message, crossed once by the data and four times by the handshake: each added
    # millisecond of link latency adds 6 ms to the exchange
    d = a["duration_s_allpairs"].to_list()
    assert d[2] - d[0] == pytest.approx(6 * (5e-3 - 0.1e-3), rel=1e-9)
    assert d[1] == pytest.approx(allpairs_s(12868, 1e8, latency=1e-3), rel=1e-12)


def test_seeds_follow_a_varied_seed(tmp_path: Path) -> None:
    t = run_sweep(ALLPAIRS, parse_vary(["seed=5,9"]), tmp_path / "s", seeds=2,
                  base_overrides=['synthetic.pattern=["gather"]'], progress=False)
    assert t["seed"].to_list() == [5, 6, 9, 10]
    assert t["duration_s_gather"].n_unique() == 1  # the network model draws nothing at random
