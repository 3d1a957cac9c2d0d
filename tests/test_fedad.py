"""The method end to end on real data (a small setting), the learning cache and sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import simfl.learner as learner_mod
from simfl.cli import main
from simfl.config import load_scenario
from simfl.errors import SimflError
from simfl.runner import run_scenario
from simfl.sweep import crossover, parse_vary, run_sweep, seed_spread

TINY = """
name = "tiny"
seed = 3
workload = "fedad"
[profiles]
edge = "10 GFLOP/s"
server = "1 TFLOP/s"
[[nodes]]
name = "s1"
kind = "switch"
[[nodes]]
name = "server"
kind = "server"
uplink = { to = "s1", bandwidth = "1 Gbps", latency = "0.5 ms" }
[[node_groups]]
prefix = "c"
count = 4
kind = "client"
uplink = { to = "s1", bandwidth = "100 Mbps", latency = "0.5 ms" }
[experiment]
classes = [1, 7]
clients_per_class = 2
phase1_epochs = 1
rounds = 2
local_epochs = [1]
local_baseline_epochs = 1
centralised_epochs = 1
workers = 0
preset_note = "test preset"
"""


@pytest.fixture()
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    return p


@pytest.fixture()
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the learning engines started: a run starts one only when it must compute something (not all of its
    learning is in the cache)."""
    calls: list[int] = []
    real = learner_mod.Engine

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(learner_mod, "Engine", counting)
    return calls


def test_end_to_end_small_run(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", str(tiny), "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert not (out / "INCOMPLETE").exists()
    for f in ("messages.parquet", "compute.parquet", "links.parquet", "communities.csv", "auc.parquet",
              "report.md", "scenario.toml", "bytes_over_time.png", "auc_by_class.png"):
        assert (out / f).exists(), f
    n = 4
    # measured phase-I bytes equal the closed form for the structure the run produced, to the byte
    comms = s["communities"]
    msgs = pl.read_parquet(out / "messages.parquet")
    p1 = msgs.filter(pl.col("phase") == "phase1")
    model_bits = p1.filter(pl.col("kind") == "model")["payload_bits"]
    assert set(model_bits.to_list()) == {32 * (3217 + 1)}
    assert s["payload_bytes"]["phase1"] == s["closed_form_bytes"]["eq1_measured_structure"]
    # that closed form, by hand: n(n-1)(S_m+4) + n(n-1)/8 + 2*(IDs in candidates + IDs in community messages)
    cand_ids = sum(p1.filter(pl.col("kind") == "candidates")["payload_bits"]) // 16
    comm_ids = sum(len(c) for c in comms for i in c if i != 0)
    assert s["payload_bytes"]["phase1"] == n * (n - 1) * 4 * 3218 + n * (n - 1) / 8 + 2 * (cand_ids + comm_ids)
    k = len(comms)
    assert s["payload_bytes"]["phase2"] == 2 * 2 * (n - k) * 4 * 28353 == s["closed_form_bytes"]["eq3"]
    assert s["payload_bytes"]["ideal"] == 2 * 2 * (n - 2) * 4 * 28353
    assert s["payload_bytes"]["centralised"] == 784 * sum(s["samples_per_client"])
    assert set(s["auc_mean"]) == {"local", "method", "ideal", "centralised"}
    assert all(0.0 <= v <= 1.0 for v in s["auc_mean"].values())
    assert s["leader_communities_match"] is True
    walls = s["learning_wall_s"]
    assert s["learning_from_cache"] is False  # a fresh cache: every wall time below was measured now
    assert 0 < walls["phase1_cross_evaluation"] < walls["phase1"] < walls["total"]
    report = (out / "report.md").read_text()
    for title in ("Table 2", "Table 3", "Table 4", "test preset"):
        assert title in report
    sizes = s["samples_per_client"]
    assert f"Data: 4 shards of {min(sizes)}-{max(sizes)} Fashion-MNIST training images, simfl's balanced" in report
    assert "the run seed (`experiment.split`)" in report
    above = sum(1 for r in s["auc_by_class"].values() if r["method"] > r["local"])
    assert s["method_above_local"] == [above, 2]
    assert f"Method above local in {above} of 2 inlier classes (paper: 7 of 10)." in report
    auc = pl.read_parquet(out / "auc.parquet")
    assert auc.height == n and set(auc.columns) >= {"client", "inlier_class", "local", "method", "ideal"}


def test_failed_run_leaves_incomplete_marker(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise RuntimeError("simulated crash in the middle of learning")

    monkeypatch.setattr(learner_mod.Learner, "flush", boom)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        run_scenario(load_scenario(tiny), out, progress=False)
    assert (out / "INCOMPLETE").exists()
    assert not (out / "summary.json").exists()


def test_network_only_sweep_trains_once_and_resumes(tiny: Path, tmp_path: Path, builds: list[int]) -> None:
    vary = parse_vary(["node_groups[0].uplink.bandwidth=1 Mbps,10 Mbps,1 Gbps"])
    base = ['experiment.baselines=["centralised"]']
    t1 = run_sweep(tiny, vary, tmp_path / "sw", base_overrides=base, progress=False)
    assert len(builds) == 1  # three network points, one learning
    assert t1.height == 3
    assert t1["auc_method"].n_unique() == 1 and t1["payload_bytes_phase1"].n_unique() == 1
    up = t1.sort("node_groups[0].uplink.bandwidth__value")["centralised_upload_s"].to_list()
    assert up[0] > up[1] > up[2]  # slower links, slower upload
    # each client's shard crosses its own uplink: upload time at 1 Mbps is at least its bits / 1e6
    assert up[0] >= 8 * max(t1["payload_bytes_centralised"].to_list()) / 4 / 1e6
    # resumed: nothing recomputed, same table
    t2 = run_sweep(tiny, vary, tmp_path / "sw", base_overrides=base, progress=False)
    assert len(builds) == 1
    assert t2.drop("wall_time_s").equals(t1.drop("wall_time_s"))
    # a learning parameter changes the cache key: it retrains
    run_sweep(tiny, parse_vary(["experiment.lr=0.002"]), tmp_path / "sw2", base_overrides=base, progress=False)
    assert len(builds) == 2


def test_parallel_local_executor_gives_the_same_table(tiny: Path, tmp_path: Path) -> None:
    vary = parse_vary(["node_groups[0].uplink.latency=0.1 ms,5 ms,20 ms"])
    base = ["experiment.baselines=[]"]
    a = run_sweep(tiny, vary, tmp_path / "a", base_overrides=base, progress=False)
    b = run_sweep(tiny, vary, tmp_path / "b", base_overrides=base, jobs=2, progress=False)
    assert a.drop("wall_time_s", "learning_from_cache").equals(b.drop("wall_time_s", "learning_from_cache"))


def test_sweep_bad_input(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(SimflError, match="KEY=V1"):
        parse_vary(["experiment.rounds"])
    with pytest.raises(SimflError, match="at least one value"):
        parse_vary(["experiment.rounds="])
    assert main(["sweep", str(tiny), "--vary", "experiment.roundz=1,2", "--out", str(tmp_path / "x")]) == 2
    assert main(["sweep", str(tiny), "--vary", "experiment.rounds=0,1", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()  # validated before anything ran
    assert main(["sweep", str(tiny), "--out", str(tmp_path / "z")]) == 2  # neither --vary nor --seeds >= 2


def test_seed_spread_is_mean_and_sample_sd_per_point() -> None:
    table = pl.DataFrame({"k": ["a", "a", "b", "b", "b"], "auc_method": [0.6, 0.8, 0.5, 0.7, 0.9],
                          "ari": [None] * 5}, schema_overrides={"ari": pl.Float64})
    lines = seed_spread(table, ["k"], ["auc_method", "ari", "missing"])
    # a: mean 0.7, sd sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.1414; b: mean 0.7, sd sqrt((0.04 + 0 + 0.04) / 2) = 0.2
    assert lines == ["k = a, over 2 seeds (mean +- sd): auc_method 0.7 +- 0.14",
                     "k = b, over 3 seeds (mean +- sd): auc_method 0.7 +- 0.2"]
    assert seed_spread(table, [], ["auc_method"]) == ["the scenario, over 5 seeds (mean +- sd): auc_method 0.7 +- 0.16"]


def test_crossover_interpolates_in_log_space() -> None:
    # fed - cen = +1 at x=1, -1 at x=100: crossing at the geometric midpoint, 10
    assert crossover([1, 100], [2, 1], [1, 2]) == pytest.approx(10.0)
    assert crossover([1, 10], [1, 1], [2, 2]) is None


def test_progress_counts_are_scoped_to_one_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from simfl import plan
    from simfl.learning import Engine

    monkeypatch.setattr(plan, "PLAIN_EVERY_S", 0.0)
    said: list[str] = []
    eng = Engine(workers=0)
    with plan._ticking(eng, said.append, "clients trained"):
        eng.on_progress(1, 3)
        eng.on_progress(3, 3)  # the last one is the stage's end: not repeated as a count
    assert said == ["  ... 1/3 clients trained"] and eng.on_progress is None
    with pytest.raises(RuntimeError), plan._ticking(eng, said.append, "x"):
        raise RuntimeError
    assert eng.on_progress is None


def test_last_fit_detector_scores_each_clients_own_last_fit(tiny: Path, tmp_path: Path, builds: list[int]) -> None:
    """detector = last_fit computes nothing new (every value is in the cache), and its method/ideal AUCs are those
    of each client's own last local fit, recomputed here with a plain torch forward pass and scikit-learn."""
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    from simfl import models
    from simfl.cache import NodeStore
    from simfl.learner import Learner
    from simfl.plan import partition_of
    from simfl.protocol import simulate
    from simfl.world import World

    main(["run", str(tiny), "--out", str(tmp_path / "g"), "--quiet"])
    assert main(["run", str(tiny), "--out", str(tmp_path / "l"), "--quiet",
                 "--set", 'experiment.detector="last_fit"']) == 0
    assert len(builds) == 1  # the second run trained nothing
    g = json.loads((tmp_path / "g" / "summary.json").read_text())
    s = json.loads((tmp_path / "l" / "summary.json").read_text())
    assert s["detector"] == "last_fit" and s["auc_mean_by_detector"]["global"]["method"] == g["auc_mean"]["method"]
    cache = str(tmp_path / "cache")
    # phase I 4 x 3; the method's 2 rounds of 4 updates and 2 averages (its communities are the true groups here:
    # the ideal baseline shares all of it); the baselines 4 + 1; AUCs of 12 distinct (model, test set) pairs: 2 last
    # averages, 4 last fits, 4 local models, the centralised one on both test sets
    assert g["communities"] == [[0, 1], [2, 3]]
    assert g["cache"] == {"path": cache, "from_cache": False, "saved": True, "note": "", "cached": 0, "computed": 41}
    assert s["cache"] == {"path": cache, "from_cache": True, "saved": False, "note": "", "cached": 41, "computed": 0}
    assert s["payload_bytes"]["phase2"] == g["payload_bytes"]["phase2"] and s["auc_mean"]["local"] == g["auc_mean"][
        "local"]
    sc = load_scenario(tiny)
    exp = sc.experiment
    part = partition_of(exp, 3)
    auc = pl.read_parquet(tmp_path / "l" / "auc.parquet")
    with Learner(exp, part, NodeStore(Path(cache))) as lr:  # the run again, every value from the cache
        fed = simulate(World(sc), lr, exp, clients=sc.clients[:4], server=sc.server, seed=3)
        last = {name: {i: lr.value(run.last_fit(i), "state") for i in range(4)}
                for name, run in (("method", fed.record.method), ("ideal", fed.record.ideal))}
    assert len(builds) == 1
    for name in ("method", "ideal"):
        want = []
        for shard in part.clients:
            net = models.build_model("ae7")
            net.load_state_dict(last[name][shard.client])
            x, is_out = part.tests[shard.inlier_class]
            xt = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
            with torch.no_grad():
                dist = (net(xt) - xt).flatten(1).norm(dim=1).numpy()
            want.append(roc_auc_score(is_out, dist))
        assert np.allclose(auc[name].to_list(), want, atol=1e-6), name
    msgs = pl.read_parquet(tmp_path / "l" / "messages.parquet").filter(pl.col("phase") == "phase2")
    assert msgs.sort("t_send")["kind"][0] == "global"  # the aggregator sends the initial model first
    assert (tmp_path / "l" / "report.md").read_text().count("last local fit") == 1


def test_report_names_the_authors_data_when_their_draw_and_seed_are_used() -> None:
    from simfl.report import _data_line

    summary = {"experiment": {"split": "authors", "split_seed": 42}, "samples_per_client": [664, 668, 667]}
    assert _data_line(summary) == (
        "Data: 3 shards of 664-668 Fashion-MNIST training images, the authors' own draw (their "
        "`datautil.partition`), split_seed 42, the authors' seed: the very shards and test sets of the paper's "
        "runs (`experiment.split`).")
    summary["experiment"]["split_seed"] = 7
    assert _data_line(summary).endswith("own draw (their `datautil.partition`), split_seed 7 (`experiment.split`).")
