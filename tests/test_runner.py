from __future__ import annotations

import contextlib
import json
import tomllib
from pathlib import Path

import polars as pl
import pytest

import simfl.workloads
from simfl.cli import main
from simfl.config import load_scenario, scenario_from_dict
from simfl.errors import SimflError
from simfl.progress import Progress, make_progress
from simfl.runner import INCOMPLETE, LOCK, run_scenario
from simfl.summary import FedadPart, read_summary, summary_from_dict, write_summary
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
    # by hand: 6 messages of 1,000 B, one packet each (+78 B of headers); each pair's TCP handshake first: a
    # 78-byte packet there and back, 2 x 2 x (1 ms + 624 / 1e8 s) = 4.02496e-3 s; then on each 100 Mbps link
    # direction two transfers share: 8,624 bits at 50 Mbps = 1.7248e-4 s; + 2 x 1 ms + one packet at 100 Mbps
    # (8.624e-5 s)
    t = on_disk["totals"]
    assert (t["payload_bytes"], t["wire_bytes"]) == (6000, 6 * 1078)
    assert t["sim_time_s"] == pytest.approx(4.02496e-3 + 0.002 + 1.7248e-4 + 8.624e-5, rel=1e-12)
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
    def boom(world, scenario, say):
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
    import simfl.report

    calls = []
    part = {k: v for k, v in json.loads(OLD_FEDAD).items() if k in FedadPart.__dataclass_fields__}

    def fake(world, scenario, run_dir, say):
        calls.append((scenario.name, Path(run_dir), say.mode))
        world.network.send("c0", "c1", kind="model", phase="phase1", round=0, payload_bits=800)
        world.env.run()
        return {"workload": "fedad", **part}

    reports = []
    monkeypatch.setattr(simfl.report, "write_report", lambda out, s: reports.append((out, s.fedad.k)))

    monkeypatch.setattr(simfl.fedad, "run_fedad", fake)
    sc = scenario_from_dict({
        "name": "tiny", "workload": "fedad",
        "nodes": [{"name": "s1", "kind": "switch"},
                  {"name": "srv", "kind": "server", "uplink": {"to": "s1", "bandwidth": "1 Gbps"}}],
        "node_groups": [{"prefix": "c", "count": 2, "uplink": {"to": "s1", "bandwidth": "100 Mbps"}}],
        "experiment": {"classes": [0, 1], "clients_per_class": 1},
    })
    s = run_scenario(sc, tmp_path / "f", progress=False)
    assert calls == [("tiny", tmp_path / "f", "quiet")]
    assert s["k"] == 2 and s["workload"] == "fedad" and s["totals"]["messages"] == 1
    # the fedad keys payload_bytes / wire_bytes are per phase: the totals of those names stay under "totals"
    assert s["payload_bytes"] == part["payload_bytes"] and s["totals"]["payload_bytes"] == 100
    assert reports == [(tmp_path / "f", 2)]  # the report is written from the summary read back


def test_cli_run_default_dirs_and_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sc = tmp_path / "s.toml"
    sc.write_text((TOPO / "allpairs-90.toml").read_text().replace('extends = "paper-90.toml"',
                                                                   f'extends = "{TOPO / "paper-90.toml"}"'))
    assert main(["run", str(sc), "--quiet", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("simfl: results in runs/allpairs-90-seed3\n")
    assert len(out.strip().splitlines()) == 5 and "8,010 delivered" in out
    # by hand: each pair's TCP handshake, 2 x 2 x (0.5 ms + 624 / 1e8 s) = 0.00202496 s; then 89 transfers share
    # each 100 Mbps link direction: 89 x 108,560 bits / 1e8 = 0.0966184 s, + 2 x 0.5 ms + one 12,304-bit packet
    # at 100 Mbps (1.2304e-4 s) = 0.09774144 s: 0.0997664 s in all
    s = json.loads((tmp_path / "runs" / "allpairs-90-seed3" / "summary.json").read_text())
    assert s["sim_time_s"] == pytest.approx(0.00202496 + 0.09774144, rel=1e-12)
    assert s["wire_bytes"] == 8010 * 13_570 and s["payload_bytes"] == 8010 * 12_868
    assert main(["run", str(sc), "--quiet", "--seed", "3"]) == 0
    assert "runs/allpairs-90-seed3-2" in capsys.readouterr().out
    assert (tmp_path / "runs" / "allpairs-90-seed3-2" / "summary.json").is_file()
    # an explicit --out that holds a finished run is refused, and left as it was; --force replaces it
    done = tmp_path / "runs" / "allpairs-90-seed3"
    before = {p.name: p.read_bytes() for p in done.iterdir()}
    assert main(["run", str(sc), "--quiet", "--out", "runs/allpairs-90-seed3", "--seed", "4"]) == 2
    assert capsys.readouterr().err == ("simfl: error: run folder runs/allpairs-90-seed3: already holds a finished "
                                       "run (summary.json); pass --force to replace it, or choose another --out\n")
    assert {p.name: p.read_bytes() for p in done.iterdir()} == before
    assert main(["run", str(sc), "--quiet", "--out", "runs/allpairs-90-seed3", "--seed", "4", "--force"]) == 0
    assert json.loads((done / "summary.json").read_text())["seed"] == 4


def test_cli_runs_the_default_scenario(tmp_path, capsys):
    # the default scenario's network with the quick network-only workload (its own workload trains for minutes)
    assert main(["run", "--quiet", "--out", str(tmp_path / "d"), "--set", 'workload="synthetic"',
                 "--set", "synthetic.pattern=[\"gather\"]"]) == 0
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert s["scenario"] == "default" and s["totals"]["messages"] == 90


# ------------------------------------------------------------------------------------------------ run folders
def test_rerun_into_an_interrupted_run_starts_from_an_empty_folder(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / INCOMPLETE).write_text("simfl run of star3 (seed 5) started; it has not finished.\n")
    (out / "messages.parquet").write_text("half a file")
    (out / "stale-plot.png").write_text("from the interrupted run")
    (out / "export").mkdir()
    (out / "export" / "old.pcap").write_text("x")
    run_scenario(star3(), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES + ["summary.json"])
    assert pl.read_parquet(out / "messages.parquet").height == 6


@pytest.mark.parametrize("content", [
    {"notes.txt": "mine"},  # a folder of other files
    {"summary.json": "{}"},  # a summary without its scenario: not a simfl run
    {INCOMPLETE: "my own file of that name", "data.csv": "1,2"},  # a marker simfl did not write
])
def test_a_folder_that_is_not_a_simfl_run_is_never_touched(tmp_path, content):
    out = tmp_path / "r"
    out.mkdir()
    for name, text in content.items():
        (out / name).write_text(text)
    with pytest.raises(SimflError, match=f"run folder {out}: holds"):
        run_scenario(star3(), out, progress=False, force=True)
    assert {p.name: p.read_text() for p in out.iterdir()} == content


def test_a_locked_run_folder_is_refused_at_once_and_the_lock_goes_with_the_run(tmp_path):
    import fcntl
    import os

    out = tmp_path / "r"
    out.mkdir()
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a run in another process holds
    try:
        with pytest.raises(SimflError, match=rf"run folder {out}: another simfl run is writing into it right now "
                                             r"\(process 4242 holds"):
            run_scenario(star3(), out, progress=False)
        assert [p.name for p in out.iterdir()] == [LOCK]  # nothing written
    finally:
        os.close(fd)
    run_scenario(star3(), out, progress=False)
    assert not (out / LOCK).exists()  # released and removed after the run


def test_two_runs_started_together_into_one_folder(tmp_path):
    """Exactly one of them writes the folder; the other is refused in one line (locked, or already finished)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "r"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    cmd = [sys.executable, "-m", "simfl.cli", "run", str(TOPO / "allpairs-90.toml"), "--quiet", "--out", str(out)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = sorted((p.wait(timeout=120), p.stderr.read()) for p in procs)
    assert [r for r, _ in results] == [0, 2]
    assert all(line.startswith("simfl: warning: ") for line in results[0][1].splitlines())  # incast: 89 into 1
    refused = results[1][1]
    assert len(refused.splitlines()) == 1 and refused.startswith(f"simfl: error: run folder {out}: ")
    assert ("another simfl run is writing into it" in refused) or ("already holds a finished run" in refused)
    assert read_summary(out).totals.messages == 90 * 89
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES + ["summary.json"])


def test_run_folder_path_problems_are_one_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SimflError, match=f"run folder {f}: is a file, not a folder"):
        run_scenario(star3(), f, progress=False)
    with pytest.raises(SimflError, match=f"run folder {f / 'r'}: a part of this path is a file"):
        run_scenario(star3(), f / "r", progress=False)


# ------------------------------------------------------------------------------------------------ the summary
# summary.json of the TINY fedad scenario of tests/test_fedad.py, as simfl f02fc1b wrote it (before RunSummary)
OLD_FEDAD = """{"scenario":"tiny","seed":3,"workload":"fedad","clients":4,"classes":[1,7],
"samples_per_client":[3000,3000,3000,3000],
"payload_bytes":{"centralised":9408000.0,"ideal":907296.0,"phase1":154489.5,"phase2":907296.0},
"wire_bytes":{"centralised":9910632,"ideal":955968,"phase1":164328,"phase2":955968},
"closed_form_bytes":{"eq1":154441.5,"eq1_measured_structure":154489.5,"eq2":1814592.0,"eq3":907296.0,
"centralised":9408000.0},
"duration_s":{"centralised":0.4918513759999996,"ideal":14.674075162399994,"local":7.315660800000003,
"phase1":1.5518627200000001,"phase2":14.675101402399996},
"phase_span_s":{"centralised":[30.90001304479999,31.39186442079999],"ideal":[16.225937882399997,30.90001304479999],
"local":[31.39186442079999,38.707525220799994],"phase1":[0.0,1.5518627200000001],
"phase2":[1.55083648,16.225937882399997]},
"centralised_upload_s":0.1992249440000009,
"auc_mean":{"local":0.790259009009009,"method":0.9231126126126126,"ideal":0.9231126126126126,
"centralised":0.484009009009009},
"detector":"global","auc_mean_by_detector":{"global":{"method":0.9231126126126126,"ideal":0.9231126126126126},
"last_fit":{"method":0.9233558558558559,"ideal":0.9233558558558559}},
"auc_by_class":{"1":{"local":0.6952972972972973,"method":0.9018558558558558,"ideal":0.9018558558558558,
"centralised":0.7474504504504504},"7":{"local":0.8852207207207208,"method":0.9443693693693693,
"ideal":0.9443693693693693,"centralised":0.2205675675675676}},
"method_above_local":[2,2],"communities":[[0,1],[2,3]],"community_member_classes":[[1,1],[7,7]],"k":2,
"ari":1.0,"nmi":1.0,"leader_communities_match":true,
"learning_wall_s":{"phase1":29.514952772000015,"phase2":48.93597312499992,"ideal":0.021793509000076483,
"baselines":44.61271593499998,"phase1_cross_evaluation":11.16088417800006,"total":138.20844874},
"learning_from_cache":false,"simulation_wall_s":0.006900997000002462,"preset_note":"test preset",
"experiment":{"classes":[1,7],"clients_per_class":2,"clients":null,"outlier_fraction":0.1,"split":"balanced",
"split_seed":null,"max_samples_per_client":null,"tau":0.06,"community_method":"leiden","phase1_model":"ae5",
"phase1_epochs":1,"phase2_model":"ae7","rounds":2,"local_epochs":[1],"local_baseline_epochs":1,"patience":3,
"restore_best":false,"centralised_epochs":1,"aggregator":"member","batch_size":32,"lr":0.001,"val_fraction":0.1,
"persist_optimizer":true,"detector":"global","baselines":["local","ideal","centralised"],"data_dir":null,
"device":"auto","workers":0,"preset_note":"test preset"},
"totals":{"messages":50,"messages_undelivered":0,"payload_bits":91016652,"payload_bytes":11377081.5,
"wire_bytes":11986896,"sim_time_s":38.707525220799994,"wall_time_s":147.81041549099996,"events_processed":289},
"messages":50,"messages_undelivered":0,"payload_bits":91016652,"sim_time_s":38.707525220799994,
"wall_time_s":147.81041549099996,"events_processed":289}"""
LATER_KEYS = ("samples_per_client", "detector", "auc_mean_by_detector", "method_above_local", "learning_from_cache")


def test_summary_is_written_by_one_function_and_reads_back_typed(tmp_path):
    out = tmp_path / "run"
    returned = run_scenario(star3(), out, progress=False)
    text = (out / "summary.json").read_text()
    s = read_summary(out)
    assert s.to_dict() == json.loads(text) == returned
    assert (s.scenario, s.seed, s.workload, s.fedad, s.cache) == ("star3", 5, "synthetic", None, None)
    assert s.totals.messages == 6 and s.totals.payload_bytes == 6000 and s.totals.wire_bytes == 6 * 1078
    (p,) = s.synthetic.patterns
    assert (p.pattern, p.messages, p.t_start, p.t_end) == ("allpairs", 6, 0, s.totals.sim_time_s)
    # read -> write gives the same file
    (tmp_path / "again").mkdir()
    assert write_summary(tmp_path / "again", s).read_text() == text
    assert not list((tmp_path / "again").glob(".*tmp*"))


def test_an_old_fedad_summary_reads_back_and_renders(tmp_path):
    from simfl.report import render

    old = json.loads(OLD_FEDAD)
    (tmp_path / "summary.json").write_text(OLD_FEDAD)
    s = read_summary(tmp_path / "summary.json")
    f = s.fedad
    new_totals = {"messages_lost": 0, "retransmitted_bytes": 0}  # totals an old summary lacks: their defaults
    new_fedad = {"participation": {}, "rounds_skipped": 0, "failovers": 0, "auc_mean_fault_free": None}
    assert s.to_dict() == old | {"data_dir": None, "data_files": None, **new_totals, **new_fedad,
                                 "totals": old["totals"] | new_totals}  # every key kept; the new ones unknown
    assert (s.scenario, s.seed, s.totals.messages, s.totals.payload_bytes) == ("tiny", 3, 50, 11377081.5)
    assert f.payload_bytes["phase1"] == 154489.5 and f.communities == [[0, 1], [2, 3]] and f.k == 2
    assert f.data_dir is None and f.data_files is None and s.cache is None and s.extra == {}
    report = render(s)
    assert "| G0 | 2 | I1 (2) |" in report and "| G1 | 2 | I7 (2) |" in report
    assert "Method above local in 2 of 2 inlier classes (paper: 7 of 10)." in report
    # 154,489.5 payload bytes and 164,328 wire bytes of phase I, in MB with two decimals
    assert "| phase I | 0.15 | Eq. 1: 0.15 (measured structure: 0.15) | 0.16 |" in report
    assert "Learning results: computed in this run" in report and "Data folder" not in report
    # a summary from before samples_per_client, detector, ... existed reads back too, with their defaults
    older = {k: v for k, v in old.items() if k not in LATER_KEYS}
    s2 = summary_from_dict(older)
    assert s2.fedad.detector == "global" and s2.fedad.samples_per_client == [] and s2.fedad.learning_from_cache is None
    assert "Learning results: not recorded" in render(s2)


def test_report_names_the_data_folder_its_hashes_and_the_cache():
    from simfl.report import render

    d = json.loads(OLD_FEDAD) | {
        "data_dir": "/data/fm", "data_files": {"train-images-idx3-ubyte.gz": "ab" * 32},
        "learning_from_cache": True, "cache": {"from_cache": True, "saved": False, "note": "read-only"},
        "ari": float("nan"), "resumed": True,
    }
    s = summary_from_dict(d)
    assert s.cache == {"from_cache": True, "saved": False, "note": "read-only"} and s.extra == {"resumed": True}
    assert s.fedad.ari is None and s.to_dict()["ari"] is None  # JSON has no nan
    report = render(s)
    assert f"Data folder `/data/fm`; sha256 (first 16 hex digits): `train-images-idx3-ubyte.gz` {'ab' * 8}." in report
    assert ("Learning results: read from the learning cache. Cache: from_cache True, saved False, note read-only."
            in report)
    assert "ARI -, NMI 1.000" in report


@pytest.mark.parametrize(("text", "match"), [
    ("{}", "missing"),
    ('{"scenario": "x", "seed": 1, "workload": "fedad", "totals": {}}', "missing messages"),
    ("[1, 2]", "a JSON object was expected"),
    ('{"scenario": ', "not valid JSON"),
])
def test_a_damaged_summary_is_one_clear_error(tmp_path, text, match):
    (tmp_path / "summary.json").write_text(text)
    with pytest.raises(SimflError, match=match):
        read_summary(tmp_path)
    with pytest.raises(SimflError, match="no such file"):
        read_summary(tmp_path / "nothing")


def test_fedad_records_the_data_folder_and_its_file_hashes():
    import subprocess

    from simfl.data import FILES, find_data_dir
    from simfl.fedad import data_used

    d = data_used(None)
    folder = find_data_dir(None)
    assert d["data_dir"] == str(folder) and sorted(d["data_files"]) == sorted(FILES.values())
    name = FILES["y_test"]  # the smallest file: checked with the system's sha256sum
    want = subprocess.run(["sha256sum", str(folder / name)], capture_output=True, text=True, check=True).stdout
    assert d["data_files"][name] == want.split()[0]


# ------------------------------------------------------------------------------------------------ progress
def test_plain_progress_lines_and_counts():
    import io

    clock = iter([0.0, 1.5, 2.0, 10.0, 45.0, 61.25, 70.0])
    buf = io.StringIO()
    p = Progress("plain", buf, clock=lambda: next(clock))  # created at t = 0
    p("phase I: training")  # 1.5 s
    p.count(1, 4, "clients trained")  # 2.0 s: within 30 s of the start, no line
    p.count(2, 4, "clients trained")  # 10.0 s
    p.count(3, 4, "clients trained")  # 45.0 s: a line
    p.count(4, 4, "clients trained")  # 61.25 s: the end of the stage is not a count line
    p("replaying")  # 70.0 s
    assert buf.getvalue() == ("  [00:01.5] phase I: training\n  [00:45.0]   ... 3/4 clients trained\n"
                              "  [01:10.0] replaying\n")
    quiet = io.StringIO()
    q = Progress("quiet", quiet)
    q("x")
    q.count(1, 2, "y")
    assert quiet.getvalue() == ""


def test_live_progress_draws_a_bar_with_counts_per_stage():
    import io

    from rich.console import Console

    from simfl import plan
    from simfl.learning import Engine

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    p = make_progress(stream=term)
    assert p.mode == "live" and make_progress(stream=io.StringIO()).mode == "plain"
    assert make_progress(quiet=True, stream=term).mode == "quiet"
    eng = Engine(workers=0)
    with p:
        p("phase I: training ae5 on 4 clients")
        with plan._ticking(eng, p, "clients trained"):  # the learning engine's counts go to the bar
            eng.on_progress(3, 4)
        shown = Console(file=io.StringIO(), width=120, record=True)
        shown.print(p._bars.get_renderable())
        text = shown.export_text()
        assert "phase I: training ae5 on 4 clients" in text and "3/4 clients trained" in text
        p("replaying every message")
        assert [t.description for t in p._bars.tasks] == ["replaying every message"]  # one bar: the current stage
    assert p._bars is None and "phase I: training ae5 on 4 clients" in term.getvalue()


def test_live_progress_on_a_real_terminal(tmp_path):
    """`simfl run` with stderr on a pseudo-terminal: the live display runs and the run ends normally."""
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), COLUMNS="100")
    proc = subprocess.run([sys.executable, "-m", "simfl.cli", "run", str(TOPO / "allpairs-90.toml"), "--out",
                           str(tmp_path / "r")], stderr=follower, stdout=subprocess.PIPE, env=env, timeout=120)
    os.close(follower)
    seen = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(leader, 65536):
            seen += chunk
    os.close(leader)
    assert proc.returncode == 0 and proc.stdout.startswith(b"simfl: results in ")
    assert b"synthetic: pattern 1/1, allpairs: 8,010 messages" in seen
    assert b"\x1b[" in seen  # drawn with terminal control sequences (plain mode writes none)
