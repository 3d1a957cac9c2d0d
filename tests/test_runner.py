from __future__ import annotations

import json
import tomllib
from pathlib import Path

import polars as pl
import pytest

import simfl.workloads
from simfl.cli import main
from simfl.config import load_scenario, scenario_from_dict
from simfl.runner import run_scenario
from simfl.trace import COMPUTE_SCHEMA, LINK_SCHEMA, MESSAGE_SCHEMA

TOPO = Path(__file__).resolve().parent.parent / "topologies"
FILES = ["scenario.toml"] + [f"{t}.{ext}" for t in ("messages", "compute", "links") for ext in ("parquet", "csv")]


def star3(**synthetic):
    return scenario_from_dict({
        "name": "star3", "seed": 5, "workload": "synthetic",
        "nodes": [{"name": "s1", "kind": "switch"}],
        "node_groups": [{"prefix": "c", "count": 3, "uplink": {"to": "s1", "bandwidth": "100 Mbps",
                                                                "latency": "1 ms"}}],
        "synthetic": {"message_bytes": 1000, "pattern": ["allpairs"], **synthetic},
    })


def test_run_writes_the_run_directory(tmp_path):
    out = tmp_path / "run"
    summary = run_scenario(star3(), out, progress=False)
    for f in FILES + ["summary.json"]:
        assert (out / f).is_file(), f
    assert not (out / "INCOMPLETE").exists()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["totals"]["messages"] == summary["messages"] == 6
    # by hand: 6 messages of 1,000 B, one packet each (+78 B of headers); on each 100 Mbps link direction two
    # transfers share: 8,624 bits at 50 Mbps = 1.7248e-4 s; + 2 x 1 ms + one packet at 100 Mbps (8.624e-5 s)
    t = on_disk["totals"]
    assert (t["payload_bytes"], t["wire_bytes"]) == (6000, 6 * 1078)
    assert t["sim_time_s"] == pytest.approx(0.002 + 1.7248e-4 + 8.624e-5, rel=1e-12)
    assert t["events_processed"] > 0 and t["wall_time_s"] > 0
    assert on_disk["patterns"][0]["messages"] == 6
    msgs = pl.read_parquet(out / "messages.parquet")
    assert msgs.schema == MESSAGE_SCHEMA and msgs.height == 6
    assert msgs["msg_id"].to_list() == list(range(6))
    assert set(msgs["phase"]) == {"synthetic"} and set(msgs["kind"]) == {"synthetic"}
    assert pl.read_parquet(out / "compute.parquet").schema == COMPUTE_SCHEMA
    links = pl.read_parquet(out / "links.parquet")
    assert links.schema == LINK_SCHEMA and links.height == 6
    assert links["bytes"].to_list() == [2 * 1078] * 6
    assert pl.read_csv(out / "messages.csv").height == 6
    assert tomllib.loads((out / "scenario.toml").read_text())["seed"] == 5


def test_gather_and_broadcast_patterns(tmp_path):
    sc = scenario_from_dict({
        "workload": "synthetic",
        "nodes": [{"name": "s1", "kind": "switch"},
                  {"name": "srv", "kind": "server", "uplink": {"to": "s1", "bandwidth": "1 Gbps"}}],
        "node_groups": [{"prefix": "c", "count": 4, "uplink": {"to": "s1", "bandwidth": "100 Mbps"}}],
        "synthetic": {"message_bytes": "1 kB", "pattern": ["gather", "broadcast", "allpairs"]},
    })
    s = run_scenario(sc, tmp_path / "r", progress=False)
    assert [p["messages"] for p in s["patterns"]] == [4, 4, 12]
    assert s["patterns"][1]["t_start"] == s["patterns"][0]["t_end"]
    msgs = pl.read_parquet(tmp_path / "r" / "messages.parquet")
    assert msgs.filter(pl.col("round") == 0)["dst"].unique().to_list() == ["srv"]
    assert msgs.filter(pl.col("round") == 1)["src"].unique().to_list() == ["srv"]


def test_same_scenario_and_seed_give_identical_files(tmp_path):
    pattern = ['synthetic.pattern=["allpairs", "gather", "broadcast"]']
    a = tmp_path / "a"
    b = tmp_path / "b"
    run_scenario(load_scenario(TOPO / "allpairs-90.toml", pattern), a, progress=False)
    run_scenario(load_scenario(TOPO / "allpairs-90.toml", pattern), b, progress=False)
    for f in FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert pl.read_parquet(a / "messages.parquet").height == 90 * 89 + 90 + 90


def test_failure_leaves_incomplete_marker_and_no_summary(tmp_path, monkeypatch):
    def boom(world, scenario):
        raise RuntimeError("workload failed")

    monkeypatch.setattr(simfl.workloads, "run_synthetic", boom)
    out = tmp_path / "r"
    with pytest.raises(RuntimeError):
        run_scenario(star3(), out, progress=False)
    assert (out / "INCOMPLETE").is_file()
    assert (out / "scenario.toml").is_file()
    assert not (out / "summary.json").exists()


def test_fedad_workload_is_dispatched(tmp_path, monkeypatch):
    import simfl.fedad

    calls = []

    def fake(world, scenario, run_dir, progress):
        calls.append((scenario.name, Path(run_dir), progress))
        world.network.send("c0", "c1", kind="model", phase="phase1", round=0, payload_bits=800)
        world.env.run()
        return {"workload": "fedad", "k": 2}

    monkeypatch.setattr(simfl.fedad, "run_fedad", fake)
    sc = scenario_from_dict({
        "name": "tiny", "workload": "fedad",
        "nodes": [{"name": "s1", "kind": "switch"},
                  {"name": "srv", "kind": "server", "uplink": {"to": "s1", "bandwidth": "1 Gbps"}}],
        "node_groups": [{"prefix": "c", "count": 2, "uplink": {"to": "s1", "bandwidth": "100 Mbps"}}],
        "experiment": {"classes": [0, 1], "clients_per_class": 1},
    })
    s = run_scenario(sc, tmp_path / "f", progress=False)
    assert calls == [("tiny", tmp_path / "f", False)]
    assert s["k"] == 2 and s["workload"] == "fedad" and s["totals"]["messages"] == 1


def test_cli_run_default_dirs_and_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sc = tmp_path / "s.toml"
    sc.write_text((TOPO / "allpairs-90.toml").read_text().replace('extends = "paper-90.toml"',
                                                                   f'extends = "{TOPO / "paper-90.toml"}"'))
    assert main(["run", str(sc), "--quiet", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("simfl: results in runs/allpairs-90-seed3\n")
    assert len(out.strip().splitlines()) == 5 and "8,010 delivered" in out
    # by hand: 89 transfers share each 100 Mbps link direction: 89 x 108,560 bits / 1e8 = 0.0966184 s,
    # + 2 x 0.5 ms + one 12,304-bit packet at 100 Mbps (1.2304e-4 s) = 0.09774144 s
    s = json.loads((tmp_path / "runs" / "allpairs-90-seed3" / "summary.json").read_text())
    assert s["sim_time_s"] == pytest.approx(0.09774144, rel=1e-12)
    assert s["wire_bytes"] == 8010 * 13_570 and s["payload_bytes"] == 8010 * 12_868
    assert main(["run", str(sc), "--quiet", "--seed", "3"]) == 0
    assert "runs/allpairs-90-seed3-2" in capsys.readouterr().out
    assert (tmp_path / "runs" / "allpairs-90-seed3-2" / "summary.json").is_file()
    # an explicit --out that holds a finished run is refused; an INCOMPLETE one is reused
    assert main(["run", str(sc), "--quiet", "--out", "runs/allpairs-90-seed3"]) == 2
    assert "already holds" in capsys.readouterr().err
    (tmp_path / "runs" / "allpairs-90-seed3" / "INCOMPLETE").write_text("")
    assert main(["run", str(sc), "--quiet", "--out", "runs/allpairs-90-seed3"]) == 0
    assert not (tmp_path / "runs" / "allpairs-90-seed3" / "INCOMPLETE").exists()


def test_cli_runs_the_default_scenario(tmp_path, capsys):
    # the default scenario's network with the quick network-only workload (its own workload trains for minutes)
    assert main(["run", "--quiet", "--out", str(tmp_path / "d"), "--set", 'workload="synthetic"',
                 "--set", "synthetic.pattern=[\"gather\"]"]) == 0
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert s["scenario"] == "default" and s["totals"]["messages"] == 90
