"""The method end to end on real data (a small setting), the learning cache and sweeps."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import TINY  # noqa: F401  (the scenario's text; other test modules import it from here)
from sklearn.metrics import roc_auc_score

import simfl.learner as learner_mod
from simfl import models
from simfl.cache import NodeStore, default_cache_dir
from simfl.cli import main
from simfl.config import load_scenario
from simfl.data import find_data_dir, load_fashion_mnist, make_partition
from simfl.errors import SimflError
from simfl.learner import Learner
from simfl.plan import partition_of as run_partition
from simfl.protocol import FedRecord, simulate
from simfl.runner import run_scenario
from simfl.sweep import crossover, parse_vary, run_sweep, seed_spread
from simfl.world import World


@pytest.fixture()
def tiny(tiny_fresh: Path) -> Path:
    """The tiny scenario with an empty learning cache of its own (tests/test_sweep_ray.py imports this name)."""
    return tiny_fresh


_PLAIN_AUC: dict[tuple[bytes, bytes], float] = {}  # (weights, test set) -> AUC: each pair is scored once


def plain_aucs(states: list[dict], classes: list[int], tests: dict) -> list[float]:
    """Each client's AUC, recomputed without simfl's engine: a plain torch forward pass (batches of 256), the L2
    reconstruction distance, scikit-learn's ROC AUC."""
    done = _PLAIN_AUC
    out = []
    for state, c in zip(states, classes, strict=True):
        x, is_out = tests[c]
        key = (b"".join(v.numpy().tobytes() for v in state.values()), hashlib.sha256(x.tobytes()).digest())
        if key not in done:
            net = models.build_model("ae7")
            net.load_state_dict(state)
            xt = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
            with torch.no_grad():
                dist = torch.cat([(net(xb) - xb).flatten(1).norm(dim=1) for xb in xt.split(256)]).numpy()
            done[key] = float(roc_auc_score(is_out, dist))
        out.append(done[key])
    return out


def learned(scenario: Path, overrides: tuple[str, ...] = ()) -> tuple[Learner, FedRecord]:
    """The run of `scenario` (with `overrides`) again, every value read from its learning cache ($SIMFL_CACHE;
    starting the engine fails the test): (its learner, what its processes did), to read an earlier run's models."""
    sc = load_scenario(scenario, overrides)
    exp = sc.experiment
    lr = Learner(exp, run_partition(exp, sc.seed), NodeStore(default_cache_dir()),
                 engine=lambda: pytest.fail("the cached run computed something"))
    fed = simulate(World(sc), lr, exp, clients=sc.clients[:exp.n_clients], server=sc.server, seed=sc.seed)
    return lr, fed.record


def partition_of(scenario: Path):
    """The run's shards and test sets, drawn here with simfl.data (the run seed 3, the scenario's cap)."""
    exp = load_scenario(scenario).experiment
    part = make_partition(load_fashion_mnist(find_data_dir(None)), exp.classes, exp.clients_per_class,
                          exp.outlier_fraction, 3)
    return part.capped(exp.max_samples_per_client)


def check_phase_bytes(s: dict, out: Path, rounds: int, n: int = 4) -> None:
    """Measured bytes of a run against the closed forms, to the byte."""
    comms = s["communities"]
    p1 = pl.read_parquet(out / "messages.parquet").filter(pl.col("phase") == "phase1")
    assert set(p1.filter(pl.col("kind") == "model")["payload_bits"].to_list()) == {32 * (3217 + 1)}
    assert s["payload_bytes"]["phase1"] == s["closed_form_bytes"]["eq1_measured_structure"]
    # that closed form, by hand: n(n-1)(S_m+4) + n(n-1)/8 + 2*(IDs in candidates + IDs in community messages)
    cand_ids = sum(p1.filter(pl.col("kind") == "candidates")["payload_bits"]) // 16
    comm_ids = sum(len(c) for c in comms for i in c if i != 0)
    assert s["payload_bytes"]["phase1"] == n * (n - 1) * 4 * 3218 + n * (n - 1) / 8 + 2 * (cand_ids + comm_ids)
    # each non-aggregator sends one update and gets one average per round
    assert s["payload_bytes"]["phase2"] == 2 * rounds * (n - len(comms)) * 4 * 28353 == s["closed_form_bytes"]["eq3"]


def test_end_to_end_small_run(tiny_cached: Path, tmp_path: Path) -> None:
    """Every output of a run of the tiny scenario (its plan from the session's cache) against closed forms and
    independent recomputations."""
    out = tmp_path / "run"
    assert main(["run", str(tiny_cached), "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert not (out / "INCOMPLETE").exists() and s["learning_from_cache"] is True
    for f in ("messages.parquet", "compute.parquet", "links.parquet", "communities.csv", "auc.parquet",
              "report.md", "scenario.toml", "bytes_over_time.png", "auc_by_class.png"):
        assert (out / f).exists(), f
    n = 4
    part = partition_of(tiny_cached)
    assert s["samples_per_client"] == [len(c.x) for c in part.clients] == [300] * n  # the cap
    check_phase_bytes(s, out, rounds=2)
    assert s["payload_bytes"]["ideal"] == 2 * 2 * (n - 2) * 4 * 28353
    assert s["payload_bytes"]["centralised"] == 784 * 300 * n
    auc = pl.read_parquet(out / "auc.parquet")
    assert auc["client"].to_list() == list(range(n)) and auc["inlier_class"].to_list() == [1, 1, 7, 7]
    assert s["auc_mean"] == {a: pytest.approx(auc[a].mean(), abs=1e-12) for a in ("local", "method", "ideal",
                                                                                   "centralised")}
    # the local and centralised models' AUCs, recomputed from the cached models (plain forward pass, scikit-learn)
    lr, record = learned(tiny_cached)
    classes = [c.inlier_class for c in part.clients]
    assert auc["centralised"].to_list() == pytest.approx(
        plain_aucs([lr.value(record.central, "state")] * n, classes, part.tests), abs=1e-6)
    assert auc["local"].to_list() == pytest.approx(
        plain_aucs([lr.value(r, "state") for r in record.local], classes, part.tests), abs=1e-6)
    assert s["leader_communities_match"] is True
    report = (out / "report.md").read_text()
    for title in ("Table 2", "Table 3", "Table 4", "test preset"):
        assert title in report
    assert "Data: 4 shards of 300-300 Fashion-MNIST training images, simfl's balanced" in report
    assert "the run seed (`experiment.split`)" in report
    above = sum(1 for r in s["auc_by_class"].values() if r["method"] > r["local"])
    assert s["method_above_local"] == [above, 2]
    assert f"Method above local in {above} of 2 inlier classes (paper: 7 of 10)." in report


@pytest.mark.slow
def test_end_to_end_on_full_shards(tiny_full: Path, tmp_path: Path) -> None:
    """The one end-to-end check on full shards (3,000 Fashion-MNIST images per client), from an empty cache: phase I
    and one FedAvg round of the method (the baselines and later rounds are checked on the capped shards above)."""
    out = tmp_path / "run"
    overrides = ("experiment.baselines=[]", "experiment.rounds=1")
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["run", str(tiny_full), "--out", str(out), "--quiet", *sets]) == 0
    s = json.loads((out / "summary.json").read_text())
    part = partition_of(tiny_full)
    assert s["samples_per_client"] == [len(c.x) for c in part.clients] == [3000] * 4
    walls = s["learning_wall_s"]
    assert s["learning_from_cache"] is False  # a fresh cache: every wall time below was measured now
    assert 0 < walls["phase1_cross_evaluation"] < walls["phase1"] < walls["total"]
    # on real data phase I finds the two classes, and FedAvg in them learns to tell the other classes
    assert s["communities"] == [[0, 1], [2, 3]] and s["ari"] == 1.0
    check_phase_bytes(s, out, rounds=1)
    lr, record = learned(tiny_full, overrides)
    want = plain_aucs([lr.value(record.method.final(c.client), "state") for c in part.clients],
                      [c.inlier_class for c in part.clients], part.tests)
    auc = pl.read_parquet(out / "auc.parquet")
    assert auc["method"].to_list() == pytest.approx(want, abs=1e-6)
    assert s["auc_mean"]["method"] > 0.7  # one round: 0.78 (0.5 would be chance)


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


def test_parallel_local_executor_gives_the_same_table(tiny_cached: Path, tmp_path: Path) -> None:
    vary = parse_vary(["node_groups[0].uplink.latency=0.1 ms,5 ms,20 ms"])
    a = run_sweep(tiny_cached, vary, tmp_path / "a", progress=False)
    b = run_sweep(tiny_cached, vary, tmp_path / "b", jobs=2, progress=False)
    assert a["learning_from_cache"].to_list() == b["learning_from_cache"].to_list() == [True] * 3
    assert a.drop("wall_time_s").equals(b.drop("wall_time_s"))
    # the points differ in what the latency changes, and only there: a later phase-I end on slower links
    lat = a.sort("node_groups[0].uplink.latency__value")
    assert lat["payload_bytes_phase1"].n_unique() == 1 and lat["auc_method"].n_unique() == 1
    ends = lat["duration_s_phase1"].to_list()
    assert ends[0] < ends[1] < ends[2]


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


def test_last_fit_detector_scores_each_clients_own_last_fit(tiny_cached: Path, tmp_path: Path,
                                                            builds: list[int]) -> None:
    """Both detectors come from one cached learning: every method/ideal AUC in auc.parquet is that of the client's
    group's final average (detector global) or of its own last local fit (last_fit), recomputed here with a plain
    torch forward pass and scikit-learn."""
    main(["run", str(tiny_cached), "--out", str(tmp_path / "g"), "--quiet"])
    lr, record = learned(tiny_cached)
    part = partition_of(tiny_cached)
    classes = [c.inlier_class for c in part.clients]
    g_auc = pl.read_parquet(tmp_path / "g" / "auc.parquet")
    for name, fl in (("method", record.method), ("ideal", record.ideal)):
        want = plain_aucs([lr.value(fl.final(c.client), "state") for c in part.clients], classes, part.tests)
        assert g_auc[name].to_list() == pytest.approx(want, abs=1e-6), name
    assert main(["run", str(tiny_cached), "--out", str(tmp_path / "l"), "--quiet",
                 "--set", 'experiment.detector="last_fit"']) == 0
    assert builds == []  # neither run trained: both read the session's cached learning
    g = json.loads((tmp_path / "g" / "summary.json").read_text())
    s = json.loads((tmp_path / "l" / "summary.json").read_text())
    assert s["detector"] == "last_fit" and s["auc_mean_by_detector"]["global"]["method"] == g["auc_mean"]["method"]
    assert g["cache"] == s["cache"] == {"path": str(tmp_path / "cache"), "from_cache": True, "saved": False,
                                        "note": "", "cached": g["cache"]["cached"], "computed": 0}
    assert g["cache"]["cached"] > 30  # phase I alone is 12 values
    assert s["payload_bytes"]["phase2"] == g["payload_bytes"]["phase2"] and s["auc_mean"]["local"] == g["auc_mean"][
        "local"]
    auc = pl.read_parquet(tmp_path / "l" / "auc.parquet")
    for name, fl in (("method", record.method), ("ideal", record.ideal)):
        want = plain_aucs([lr.value(fl.last_fit(c.client), "state") for c in part.clients], classes, part.tests)
        assert auc[name].to_list() == pytest.approx(want, abs=1e-6), name
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
