"""Phase II under conditions (round deadline, min_participants, late updates, fraction_fit, dropout) on the fake
engine: which updates each round averages, what the trace says about the others, and the seeded draws.

Three clients of 10, 20 and 30 samples (9, 18 and 27 train with val_fraction 0.1) form one community; c00 is its
aggregator. A FedAvg round trains one epoch of AE-7 (27.1 MFLOP per sample at 10 GFLOP/s: 24, 49 and 73 ms). c02
sits behind a 1 Mbps link: its update (113,412 payload bytes) needs more than 0.9 s to cross it, while c01's crosses
two 100 Mbps links in about 11 ms, so a 0.5 s deadline cuts c02 and only c02.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from simfl.conditions import Participation
from simfl.config import Experiment, scenario_from_dict
from simfl.data import ClientShard, Partition
from simfl.learner import FakeEngine, Learner
from simfl.plan import derive_seed
from simfl.protocol import FedAD, simulate
from simfl.world import World

SEED = 5


def world(n: int, slow: tuple[int, ...] = (), *, slow_cpu: tuple[int, ...] = (), **extra: object) -> World:
    """n clients on 100 Mbps uplinks to one switch (those in `slow` on 1 Mbps), 10 GFLOP/s each (those in
    `slow_cpu` 0.1 GFLOP/s); `extra`: more scenario keys (faults, network)."""
    def link(i: int) -> dict[str, str]:
        return {"to": "s1", "bandwidth": "1 Mbps" if i in slow else "100 Mbps", "latency": "0.5 ms"}

    return World(scenario_from_dict({
        "name": "t", "seed": SEED, "workload": "synthetic",
        "profiles": {"edge": "10 GFLOP/s", "slow": "0.1 GFLOP/s"},
        "nodes": [{"name": "s1", "kind": "switch"},
                  *({"name": f"c{i:02d}", "kind": "client", "profile": "slow" if i in slow_cpu else "edge",
                     "uplink": link(i)} for i in range(n))],
        **extra,
    }))


def learner(sizes: list[int], rounds: int, **exp: object) -> tuple[Learner, FakeEngine]:
    """One class, one client per size (blank images); the fake cross-evaluation puts them all in one community."""
    n = len(sizes)
    shards = tuple(
        ClientShard(client=i, inlier_class=0, x=np.zeros((s, 28, 28), np.uint8), labels=np.zeros(s, np.int64),
                    is_outlier=np.zeros(s, bool), index=np.arange(s))
        for i, s in enumerate(sizes)
    )
    part = Partition(classes=(0,), p=n, d=0.1, seed=0, clients=shards, tests={})
    fields = {"local_epochs": (1,), "tau": 0.06, "baselines": (), "workers": 0, "phase2_model": "ae7", **exp}
    e = Experiment(classes=(0,), clients_per_class=n, rounds=rounds, **fields)  # type: ignore[arg-type]
    fake = FakeEngine(np.full((n, n), 0.9))
    return Learner(e, part, None, engine=lambda: fake, engine_kind="fake"), fake


def run(sizes: list[int], rounds: int, slow: tuple[int, ...] = (), *, net: dict[str, object] | None = None,
        **exp: object) -> tuple[FedAD, World]:
    lr, _ = learner(sizes, rounds, **exp)
    w = world(len(sizes), slow, **(net or {}))
    fed = simulate(w, lr, lr.exp, clients=[f"c{i:02d}" for i in range(len(sizes))], server=None, seed=SEED)
    return fed, w


def rounds(fed: FedAD) -> list[dict[str, object]]:
    """rounds.parquet's FedAvg rows (phase I's collection at the leader is the first row)."""
    rows = fed.rounds()
    assert rows[0]["phase"] == "phase1" and rows[0]["outcome"] == "collected"
    return rows[1:]


def state(fed: FedAD, ref: object) -> torch.Tensor:
    return fed.learner.value(ref, "state")["w"]  # type: ignore[arg-type]


def test_fedavg_of_k_of_n_is_the_sample_weighted_average_of_those_k() -> None:
    fed, w = run([10, 20, 30], rounds=1, slow=(2,), round_deadline=0.5)
    method = fed.record.method
    assert fed.record.communities == [[0, 1, 2]]
    u = [method.updates[(i, 1)] for i in range(3)]
    assert [r.n_train for r in u] == [9, 18, 27]
    avg = method.models[(0, 2)]
    want = (9 * state(fed, u[0]) + 18 * state(fed, u[1])) / 27  # c02's update missed the deadline
    assert torch.allclose(state(fed, avg), want)
    (row,) = rounds(fed)
    t0 = row["t_start"]
    assert row["t_deadline"] == t0 + 0.5
    assert (row["outcome"], row["invited"], row["arrived"], row["late"], row["dropped"]) == ("averaged", 3, 2, 1, 1)
    assert (row["arrived_ids"], row["late_ids"], row["weight"]) == ([0, 1], [2], 27.0)
    # the close at the deadline, then the average's compute: 2 x 2 parts x 28,353 parameters at 10 GFLOP/s
    assert abs(row["t_end"] - (t0 + 0.5 + 4 * 28353 / 1e10)) < 1e-12
    msgs = w.recorder.messages_frame().filter(pl.col("kind") == "update")
    late = msgs.filter(pl.col("status") == "late")
    assert late["src"].to_list() == ["c02"] and late["t_deliver"].item() > t0 + 0.5
    assert msgs.filter(pl.col("src") == "c01")["t_deliver"].item() < t0 + 0.5


def test_min_participants_skips_the_round_and_the_previous_model_stands() -> None:
    fed, w = run([10, 20, 30], rounds=2, slow=(2,), round_deadline=0.5, min_participants=3)
    method = fed.record.method
    start = method.models[(0, 1)]
    assert method.models[(0, 2)] is start and method.models[(0, 3)] is start  # both rounds skipped
    assert [r["outcome"] for r in rounds(fed)] == ["skipped", "skipped"]
    compute = w.recorder.compute_frame()
    assert compute.filter(pl.col("kind") == "aggregate").height == 0
    # round 2's training starts from the standing model again: depth 1, like round 1's
    assert state(fed, method.updates[(1, 2)])[1].item() == 1.0


def test_fraction_fit_invites_the_seeded_sample_and_only_they_train() -> None:
    group = list(range(10))
    fed, w = run([10] * 10, rounds=3, fraction_fit=0.3)
    assert fed.record.communities == [group]
    train = w.recorder.compute_frame().filter((pl.col("phase") == "phase2") & (pl.col("kind") == "train"))
    for r in (1, 2, 3):
        rng = np.random.default_rng(derive_seed(SEED, "fraction_fit", tuple(group), r))
        want = sorted(int(x) for x in rng.choice(np.asarray(group), 3, replace=False))
        trained = sorted(int(n[1:]) for n in train.filter(pl.col("round") == r)["node"])
        assert trained == want
        row = rounds(fed)[r - 1]
        assert (row["invited"], row["arrived_ids"]) == (3, want)
    assert len({tuple(fed.part.invited(group, r)) for r in (1, 2, 3)}) > 1  # the sample changes with the round


def test_participation_sizes_and_dropout_draws() -> None:
    exp = Experiment(fraction_fit=0.25, min_participants=3, dropout=0.5, round_deadline=1.0)
    p = Participation(exp, SEED)
    assert [p.size(m) for m in (1, 2, 4, 12, 20)] == [1, 2, 3, 3, 5]  # min(m, max(1, 3, floor(m / 4)))
    draws = [np.random.default_rng(derive_seed(SEED, "dropout", 4, r)).random() for r in range(1, 41)]
    assert [p.available(4, r) for r in range(1, 41)] == [d >= 0.5 for d in draws]
    assert 0 < sum(d < 0.5 for d in draws) < 40


def test_a_client_that_sits_a_round_out_sends_no_update_and_the_round_closes_at_its_deadline() -> None:
    p = Participation(Experiment(dropout=0.5, round_deadline=1.0), SEED)
    out = [(i, r) for r in (1, 2) for i in (1, 2) if not p.available(i, r)]
    assert out, "the seed must make some member sit out (pick another dropout)"
    fed, w = run([10, 10, 10], rounds=2, round_deadline=1.0, dropout=0.5)
    train = w.recorder.compute_frame().filter((pl.col("phase") == "phase2") & (pl.col("kind") == "train"))
    for r in (1, 2):
        absent = {i for i, rr in out if rr == r}
        assert sorted(int(n[1:]) for n in train.filter(pl.col("round") == r)["node"]) == sorted({0, 1, 2} - absent)
        row = rounds(fed)[r - 1]
        assert row["unavailable"] == len(absent) and row["missing"] == len(absent)
        if absent:  # the aggregator waited for the absent member until the deadline
            assert row["t_end"] >= row["t_deadline"]


def test_next_round_folds_a_late_update_into_the_next_average() -> None:
    # deadline 0.6 s: c02's round-1 update (sent about 73 ms into round 1) arrives about 1.04 s after round 1 began,
    # inside round 2 (0.6 .. 1.2 s); its round-2 update comes after the last round
    fed, w = run([10, 20, 30], rounds=2, slow=(2,), round_deadline=0.6, late_updates="next_round")
    method = fed.record.method
    r1, r2 = rounds(fed)
    msgs = w.recorder.messages_frame().filter((pl.col("kind") == "update") & (pl.col("src") == "c02"))
    late1 = msgs.filter(pl.col("round") == 1)["t_deliver"].item()
    assert r1["t_end"] < late1 < r2["t_deadline"]  # c02's round-1 update reaches c00 during round 2
    u = method.updates
    want = (9 * state(fed, u[(0, 2)]) + 18 * state(fed, u[(1, 2)]) + 27 * state(fed, u[(2, 1)])) / 54
    assert torch.allclose(state(fed, method.models[(0, 3)]), want)
    assert (r1["late_ids"], r1["dropped"], r1["folded"]) == ([2], 0, 0)
    assert (r2["arrived_ids"], r2["folded"], r2["weight"]) == ([0, 1], 1, 54.0)
    assert (r2["late_ids"], r2["dropped"]) == ([2], 1)
    assert msgs["status"].to_list() == ["late", "late"]


def test_conditions_that_could_leave_a_wait_without_end_are_refused_in_one_line() -> None:
    import pytest

    from simfl.schema import ScenarioError

    base = {"name": "t", "workload": "fedad", "profiles": {"edge": "1 GFLOP/s"},
            "nodes": [{"name": "s1", "kind": "switch"},
                      *({"name": f"c{i:02d}", "kind": "client", "profile": "edge",
                         "uplink": {"to": "s1", "bandwidth": "1 Gbps"}} for i in range(2))],
            "experiment": {"classes": [0, 1], "clients_per_class": 1, "baselines": []}}

    def refused(exp: dict[str, object], faults: tuple[dict[str, object], ...] = ()) -> str:
        d = {**base, "experiment": {**base["experiment"], **exp}, "faults": list(faults)}  # type: ignore[dict-item]
        with pytest.raises(ScenarioError) as e:
            scenario_from_dict(d)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "experiment.dropout = 0.1: needs experiment.round_deadline" in refused({"dropout": 0.1})
    assert "must exceed experiment.round_deadline" in refused({"round_deadline": "2 s", "failover_timeout": "2 s"})
    assert "experiment.failover_timeout = \"3 s\": needs experiment.round_deadline" in refused(
        {"failover_timeout": "3 s"})
    assert "experiment.phase1_deadline = \"1 s\": needs experiment.round_deadline" in refused(
        {"phase1_deadline": "1 s"})
    msg = refused({"round_deadline": "2 s"}, ({"node": "c00", "down": "1 s"},))
    assert "faults[0].node" in msg and "experiment.phase1_deadline, experiment.failover_timeout" in msg
    # a repeating schedule of a client's node is an outage of its links (e.g. leaving radio coverage), no crash
    ok = {**base, "faults": [{"node": "c00", "start": "1 s", "every": "10 s", "duration": "1 s"}]}
    assert scenario_from_dict(ok).faults


def complete_but(n: int, *pairs: tuple[int, int]) -> np.ndarray:
    adj = ~np.eye(n, dtype=bool)
    for a, b in pairs:
        adj[a, b] = adj[b, a] = False
    return adj


def test_a_model_lost_in_phase_one_removes_exactly_that_pairs_edge() -> None:
    """c03 computes at 0.1 GFLOP/s: its phase-I training (2.44e7 FLOPs) ends at 0.2439 s, long after the others
    have exchanged theirs (by 16 ms). c05's link is down from 0.1 s to 0.45 s and the network gives up after 0.2 s:
    c03's model to c05 is lost at 0.4439 s, and c03's verdict about c05's model, sent later, waits for the link."""
    fault = {"link": "c05-s1", "down": "0.1 s", "up": "0.45 s"}
    fed, w = run([10] * 6, 1, phase1_epochs=1,
                 net={"slow_cpu": (3,), "faults": [fault], "network": {"give_up": "0.2 s"}})
    msgs = w.recorder.messages_frame()
    lost = msgs.filter(pl.col("status") != "delivered")
    assert lost.select("kind", "src", "dst", "status").rows() == [("model", "c03", "c05", "lost")]
    assert abs(lost["t_send"].item() - 2.4385536e7 / 1e8) < 1e-12
    assert (fed.record.adjacency == complete_but(6, (3, 5))).all()
    assert fed.record.communities == [list(range(6))]


def test_a_candidate_group_after_the_phase_one_deadline_leaves_its_client_a_loner() -> None:
    """phase1_deadline 0.1 s: c03 (0.1 GFLOP/s) sends its model at 0.2439 s, after every peer's model wait
    (from 2.4 ms) has closed, and its candidate group long after the leader's wait closed: c03 is a loner."""
    fed, w = run([10] * 6, 1, phase1_epochs=1, phase1_deadline=0.1, round_deadline=1.0, net={"slow_cpu": (3,)})
    assert (fed.record.adjacency == complete_but(6, *((3, j) for j in range(6) if j != 3))).all()
    assert sorted(fed.record.communities) == [[0, 1, 2, 4, 5], [3]]
    assert fed.known_community[3] == [3]
    row = fed.rounds()[0]
    assert (row["phase"], row["arrived_ids"], row["late_ids"]) == ("phase1", [0, 1, 2, 4, 5], [3])
    late = w.recorder.messages_frame().filter(pl.col("status") == "late")
    assert set(late.filter(pl.col("kind") == "candidates")["src"]) == {"c03"}
    assert set(late.filter(pl.col("kind") == "model")["src"]) == {"c03"}  # to every peer


def test_without_round_deadline_a_member_lost_to_its_community_stalls_the_run_with_one_line() -> None:
    """The community message to c05 (sent at 26.6 ms, after c05's candidate group arrived at 25.6 ms) meets c05's
    link down from 26 ms and is lost 0.1 s later: c05 runs FedAvg alone, and its community's aggregator c00,
    without a round deadline, would wait for its update for ever."""
    import pytest

    from simfl.errors import SimflError

    with pytest.raises(SimflError) as e:
        run([10, 10, 10, 30, 10, 10], 1, phase1_epochs=1,
            net={"faults": [{"link": "c05-s1", "down": "26 ms"}], "network": {"give_up": "0.1 s"}})
    msg = str(e.value)
    assert "\n" not in msg and ": c00, c01, c02, c03, c04 wait for messages that will not come" in msg
    assert msg.endswith("set experiment.round_deadline (and experiment.phase1_deadline) so that rounds close")


def test_a_crashed_aggregator_s_community_continues_under_the_next_lowest_id_after_the_failover_timeout() -> None:
    """c00 (leader and aggregator, 0.1 GFLOP/s) crashes at 0.5 s, in round 2, while the round-1 average it sent is
    still on the wire (lost with it). Failover timeout 2 s, round deadline 1 s: c01 hears nothing for 2 s after it
    sent its round-1 update, takes over, tells c02 (which re-sends its update at once) and closes round 1 again when
    that update arrives, then runs round 2."""
    cond = {"round_deadline": 1.0, "phase1_deadline": 1.0, "failover_timeout": 2.0}
    fed, w = run([10, 10, 20], 2, phase1_epochs=1, **cond, net={
        "slow_cpu": (0,), "faults": [{"node": "c00", "down": "0.5 s"}], "workload": "fedad",
        "experiment": {"classes": [0, 1], "clients_per_class": 1, "baselines": [], **cond}})
    msgs = w.recorder.messages_frame().filter(pl.col("phase") == "phase2")
    u1 = msgs.filter((pl.col("kind") == "update") & (pl.col("src") == "c01") & (pl.col("round") == 1))
    assert u1["dst"].item() == "c00" and u1["t_send"].item() < 0.5
    # the averages c00 sent at 0.488 s had not left when it crashed: lost
    assert msgs.filter(pl.col("src") == "c00")["status"].to_list() == ["lost", "lost"]
    (take,) = msgs.filter(pl.col("kind") == "takeover").iter_rows(named=True)
    assert (take["src"], take["dst"], take["round"]) == ("c01", "c02", 1)
    assert take["t_send"] == u1["t_send"].item() + 2.0  # the failover timeout after its update left
    again = msgs.filter((pl.col("kind") == "update") & (pl.col("src") == "c02") & (pl.col("dst") == "c01"))
    assert again["round"].to_list() == [1, 2]
    assert again["t_send"][0] == take["t_deliver"]  # re-sent the moment the takeover arrives
    rows = rounds(fed)
    assert [(r["aggregator"], r["round"], r["outcome"], r["failover"]) for r in rows] == [
        ("c00", 1, "averaged", False), ("c00", 2, "aborted", False),
        ("c01", 1, "averaged", True), ("c01", 2, "averaged", False)]
    assert rows[1]["t_end"] == 0.5
    reopened = rows[2]
    assert reopened["t_start"] == take["t_send"] and reopened["arrived_ids"] == [1, 2]
    assert reopened["invited"] == 2  # c00 is suspected
    assert abs(reopened["t_end"] - (again["t_deliver"][0] + 4 * 28353 / 1e10)) < 1e-12
    assert fed.failovers == 1
    # c00's trainings stopped at the crash: rows up to 0.5 s with the FLOPs done by then (0.1 GFLOP/s)
    c00 = w.recorder.compute_frame().filter((pl.col("node") == "c00") & (pl.col("kind") == "train")
                                            & (pl.col("phase") == "phase2"))
    for r in c00.iter_rows(named=True):
        assert r["t_end"] == 0.5 and abs(r["flops"] - (0.5 - r["t_start"]) * 1e8) < 1e-3
    method = fed.record.method
    assert method.held[2] is method.models[(0, 3)]  # c02 ends with c01's round-2 average
    u = method.updates
    want = (9 * state(fed, u[(1, 2)]) + 18 * state(fed, u[(2, 2)])) / 27
    assert torch.allclose(state(fed, method.models[(0, 3)]), want)


def test_summary_and_report_give_participation_and_the_fault_free_aucs_from_the_cache(tmp_path, monkeypatch) -> None:
    """Four clients (100 Mbps star, 1 GFLOP/s; AE-7, one epoch on 18 training samples: 0.4877 s) and a 0.49 s round
    deadline: each aggregator's own update is in time, the others' arrive at least one model transfer (113 kB over
    two 100 Mbps hops: over 9 ms) after theirs, late. The fault-free AUCs come from a replay on the cache: known
    after a fault-free run, "not cached" in a fresh cache."""
    import json

    import simfl.learner as learner_mod
    from simfl.config import load_scenario
    from simfl.runner import run_scenario

    monkeypatch.setattr(learner_mod, "Engine", lambda **_k: FakeEngine())
    toml = tmp_path / "four.toml"
    toml.write_text('name = "four"\nworkload = "fedad"\n[profiles]\nedge = "1 GFLOP/s"\n'
                    '[[nodes]]\nname = "s1"\nkind = "switch"\n'
                    '[[node_groups]]\nprefix = "c"\ncount = 4\nprofile = "edge"\n'
                    'uplink = { to = "s1", bandwidth = "100 Mbps" }\n'
                    '[experiment]\nclasses = [1, 7]\nclients_per_class = 2\nbaselines = ["ideal"]\nrounds = 2\n'
                    'max_samples_per_client = 20\nphase1_epochs = 1\nlocal_epochs = [1]\n')
    base = ["experiment.round_deadline=\"0.49 s\""]
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "fresh"))
    alone = run_scenario(load_scenario(toml, base), tmp_path / "alone", progress=False)
    assert alone["auc_mean_fault_free"] == "not cached"
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "cache"))
    free = run_scenario(load_scenario(toml), tmp_path / "free", progress=False)
    assert free["auc_mean_fault_free"] is None and free["rounds_skipped"] == 0
    cut = run_scenario(load_scenario(toml, base), tmp_path / "cut", progress=False)
    assert cut["auc_mean_fault_free"] == free["auc_mean"]
    k = len(cut["communities"])
    p = cut["participation"]
    assert p["phase1"] == {"groups_arrived": 4, "clients": 4, "pairs_complete": 6, "pairs": 6}
    assert p["phase2"]["rounds"] == 2 * k and p["phase2"]["invited"] == 2 * 4
    assert p["phase2"]["arrived"] == 2 * k and p["phase2"]["rate"] == k / 4  # one per community and round
    assert p["phase2"]["late"] == 2 * (4 - k) == p["phase2"]["dropped"]
    assert p["ideal"]["arrived"] == 2 * 2 and p["ideal"]["rate"] == 0.5  # two true groups of two
    rows = pl.read_parquet(tmp_path / "cut" / "rounds.parquet")
    assert rows.height == 1 + 2 * k + 2 * 2
    assert abs((rows["t_deadline"] - rows["t_start"]).drop_nulls().max() - 0.49) < 1e-9
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["failovers"] == 0
    report = (tmp_path / "cut" / "report.md").read_text()
    assert "## Participation under the round conditions" in report and "round_deadline = 0.49 s" in report
    assert "## Participation" not in (tmp_path / "free" / "report.md").read_text()


def test_failover_with_sampled_rounds_waits_a_timeout_per_round_since_the_last_model() -> None:
    """Detector last_fit, 8 clients, fraction_fit 0.5 (rounds 1-4 invite [1, 4, 5, 7], [2, 3, 4, 6], [1, 3, 5, 7],
    [0, 1, 3, 4]); c00 crashes at 0.2 s, in round 2. c01 awaits the model of round 3 from its round-1 update on:
    two rounds, so it suspects c00 after 2 x 2 s and takes round 3 over; every live member follows it (no model
    arrives at a wait that had closed)."""
    cond = {"round_deadline": 1.0, "phase1_deadline": 1.0, "failover_timeout": 2.0}
    fed, w = run([10] * 8, 4, phase1_epochs=1, detector="last_fit", fraction_fit=0.5, **cond, net={
        "faults": [{"node": "c00", "down": "0.2 s"}], "workload": "fedad",
        "experiment": {"classes": [0, 1], "clients_per_class": 4, "baselines": [], **cond}})
    assert [fed.part.invited(list(range(8)), r) for r in range(1, 5)] == [
        [1, 4, 5, 7], [2, 3, 4, 6], [1, 3, 5, 7], [0, 1, 3, 4]]
    msgs = w.recorder.messages_frame().filter(pl.col("phase") == "phase2")
    assert "late" not in msgs["status"].to_list()
    u1 = msgs.filter((pl.col("kind") == "update") & (pl.col("src") == "c01"))["t_send"][0]
    rows = rounds(fed)
    assert [(r["aggregator"], r["round"], r["outcome"], r["failover"], r["invited"], r["arrived"]) for r in rows] == [
        ("c00", 1, "averaged", False, 4, 4), ("c00", 2, "aborted", False, 4, 0),
        ("c01", 3, "averaged", True, 4, 4), ("c01", 4, "averaged", False, 3, 3)]  # c00 left out of round 4
    assert rows[2]["t_start"] == u1 + 2 * 2.0
    take = msgs.filter(pl.col("kind") == "takeover")
    assert take["src"].unique().to_list() == ["c01"] and sorted(take["dst"]) == [f"c0{i}" for i in range(2, 8)]


def test_a_crashed_client_sends_and_receives_nothing_and_its_rounds_close_at_the_deadline() -> None:
    """c02 (0.1 GFLOP/s: its round-1 training of 18 samples takes 4.88 s) crashes at 1 s, mid-training: its
    computation stops, it sends no update, each round closes at its 1 s deadline without it, and the models sent to
    it fail (to_crashed)."""
    cond = {"round_deadline": 1.0, "phase1_deadline": 1.0, "failover_timeout": 2.0}
    fed, w = run([10, 10, 20], 2, phase1_epochs=1, **cond, net={
        "slow_cpu": (2,), "faults": [{"node": "c02", "down": "1 s"}], "workload": "fedad",
        "experiment": {"classes": [0, 1], "clients_per_class": 1, "baselines": [], **cond}})
    assert fed.record.communities == [[0, 1, 2]]
    rows = rounds(fed)
    for r in rows:
        assert (r["outcome"], r["arrived_ids"], r["missing"]) == ("averaged", [0, 1], 1)
        assert r["t_end"] == r["t_deadline"] + 4 * 28353 / 1e10  # closed at the deadline, then averaged
    msgs = w.recorder.messages_frame().filter(pl.col("phase") == "phase2")
    assert msgs.filter(pl.col("src") == "c02").height == 0
    to_c02 = msgs.filter(pl.col("dst") == "c02")
    assert to_c02["status"].to_list() == ["to_crashed", "to_crashed"] and (to_c02["t_deliver"] > 1.0).all()
    (cut,) = w.recorder.compute_frame().filter((pl.col("node") == "c02") & (pl.col("phase") == "phase2")).rows(
        named=True)
    assert cut["t_end"] == 1.0 and abs(cut["flops"] - (1.0 - cut["t_start"]) * 1e8) < 1e-3


FOUR = ('name = "four"\nworkload = "fedad"\n[profiles]\nedge = "1 GFLOP/s"\n[[nodes]]\nname = "s1"\nkind = "switch"\n'
        '[[node_groups]]\nprefix = "c"\ncount = 4\nprofile = "edge"\nuplink = { to = "s1", bandwidth = "100 Mbps" }\n'
        '[experiment]\nclasses = [1, 7]\nclients_per_class = 2\nbaselines = ["ideal"]\nrounds = 2\n'
        'max_samples_per_client = 20\nphase1_epochs = 1\nlocal_epochs = [1]\n')


def test_a_deadline_sweep_learns_the_shared_part_once(tmp_path, monkeypatch) -> None:
    """Deadlines none, 0.49 s and 0.1 s on the four-client plant (an aggregator's own training takes 0.4877 s):
    the points share a learning identity, the first runs alone and computes everything; 0.49 s reuses phase I and
    round 1's trainings and computes only the averages, later rounds and AUCs that differ; at 0.1 s no update is in
    time and every round is skipped (the models stay at their seeded starts): fewer results, round 2's trainings
    (from the start, not from an average) and the AUCs new."""
    import json

    import simfl.learner as learner_mod
    from simfl.sweep import parse_vary, run_sweep

    monkeypatch.setattr(learner_mod, "Engine", lambda **_k: FakeEngine())
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "cache"))
    toml = tmp_path / "four.toml"
    toml.write_text(FOUR)
    table = run_sweep(toml, parse_vary(['experiment.round_deadline=["none", "0.49 s", "0.1 s"]']), tmp_path / "sw",
                      progress=False)
    assert table.height == 3
    got = {}
    for f in (tmp_path / "sw" / "points").glob("*/summary.json"):
        s = json.loads(f.read_text())
        got[s["experiment"]["round_deadline"]] = s
    free, cut, none_in_time = got[None], got[0.49], got[0.1]
    assert free["cache"]["cached"] == 0 and free["auc_mean_fault_free"] is None
    total = free["cache"]["computed"]
    assert 0 < cut["cache"]["computed"] < total and cut["cache"]["cached"] > 0
    assert cut["auc_mean_fault_free"] == free["auc_mean"]
    assert none_in_time["rounds_skipped"] == none_in_time["participation"]["phase2"]["rounds"] + 4  # ideal: 2 x 2
    assert none_in_time["participation"]["phase2"]["arrived"] == 0
    assert 0 < none_in_time["cache"]["computed"] < cut["cache"]["computed"]
    by_deadline = {r["experiment.round_deadline"]: r for r in table.iter_rows(named=True)}  # the table's cache columns
    for text, s in (("none", free), ("0.49 s", cut), ("0.1 s", none_in_time)):
        row = by_deadline[text]
        assert (row["learn_cached"], row["learn_computed"]) == (s["cache"]["cached"], s["cache"]["computed"])


def test_a_crashed_server_aggregator_fails_over_to_the_lowest_member() -> None:
    """Eq. 2 mode: the server (0.01 GFLOP/s: averaging three AE-7 updates takes 17 ms) crashes at 0.1 s with the
    round-1 average on the wire. Every member suspects it 2 s after its update; c00, the lowest, takes over, reuses
    its own round-1 update (no training again), takes the re-sent ones and runs round 2."""
    cond = {"round_deadline": 1.0, "phase1_deadline": 1.0, "failover_timeout": 2.0}
    lr, _ = learner([10, 10, 20], 2, phase1_epochs=1, aggregator="server", **cond)
    up = {"to": "s1", "bandwidth": "100 Mbps", "latency": "0.5 ms"}
    w = World(scenario_from_dict({
        "name": "t", "seed": SEED, "workload": "fedad", "profiles": {"edge": "10 GFLOP/s", "srv": "0.01 GFLOP/s"},
        "nodes": [{"name": "s1", "kind": "switch"},
                  {"name": "server", "kind": "server", "profile": "srv", "uplink": up},
                  *({"name": f"c{i:02d}", "kind": "client", "profile": "edge", "uplink": up} for i in range(3))],
        "faults": [{"node": "server", "down": "0.1 s"}],
        "experiment": {"classes": [0, 1], "clients_per_class": 1, "baselines": [], "aggregator": "server", **cond}}))
    fed = simulate(w, lr, lr.exp, clients=["c00", "c01", "c02"], server="server", seed=SEED)
    msgs = w.recorder.messages_frame().filter(pl.col("phase") == "phase2")
    u0 = msgs.filter((pl.col("src") == "c00") & (pl.col("kind") == "update"))["t_send"][0]
    take = msgs.filter(pl.col("kind") == "takeover")
    assert take["src"].unique().to_list() == ["c00"] and take["dst"].to_list() == ["c01", "c02"]
    assert (take["t_send"] == u0 + 2.0).all()
    rows = rounds(fed)
    assert [(r["aggregator"], r["round"], r["outcome"], r["failover"], r["arrived_ids"]) for r in rows] == [
        ("server", 1, "averaged", False, [0, 1, 2]), ("server", 2, "aborted", False, []),
        ("c00", 1, "averaged", True, [0, 1, 2]), ("c00", 2, "averaged", False, [0, 1, 2])]
    c00_trains = w.recorder.compute_frame().filter((pl.col("node") == "c00") & (pl.col("kind") == "train")
                                                   & (pl.col("phase") == "phase2"))
    assert c00_trains["round"].to_list() == [1, 2]  # round 1 trained once
    assert fed.failovers == 1


def test_an_aggregator_whose_late_training_still_runs_sits_the_next_round_out() -> None:
    """c00 aggregates at 0.1 GFLOP/s: its AE-7 training (9 samples x 27.1 MFLOP) takes 2.44 s, past the 1 s
    deadline, so round 1 averages c01 and c02. Round 2 starts while that training runs: c00 does not train in it,
    and round 2 closes on time with c01's and c02's updates, before c00's round-1 update exists; that one is late
    and, after the last round, dropped (late_updates = "next_round" has no later round to fold it into)."""
    fed, w = run([10, 10, 10], 2, round_deadline=1.0, late_updates="next_round", net={"slow_cpu": (0,)})
    train = w.recorder.compute_frame().filter((pl.col("node") == "c00") & (pl.col("phase") == "phase2")
                                              & (pl.col("kind") == "train"))
    r1, r2 = rounds(fed)
    assert train["round"].to_list() == [1]  # one training: none in round 2
    assert train["t_start"][0] == r1["t_start"] and abs(train["t_end"][0] - (r1["t_start"] + 2.4385536)) < 1e-9
    assert r1["t_end"] < r2["t_deadline"] < train["t_end"][0]
    assert (r1["arrived_ids"], r1["late_ids"], r1["dropped"]) == ([1, 2], [0], 1)
    assert (r2["arrived_ids"], r2["folded"], r2["outcome"]) == ([1, 2], 0, "averaged")
    assert r2["t_end"] < train["t_end"][0]  # round 2 closed on time, before c00's update existed


def test_the_centralised_baseline_trains_on_the_shards_that_reached_the_server() -> None:
    """c02 crashes for good at 50 ms, in its FedAvg training: it uploads nothing, and the centralised model trains
    on c00's and c01's 10 + 10 samples (18 train with val_fraction 0.1), not on all 40 (36)."""
    cond = {"round_deadline": 1.0, "phase1_deadline": 1.0, "failover_timeout": 2.0}
    lr, fake = learner([10, 10, 20], 1, phase1_epochs=1, baselines=("centralised",), **cond)
    up = {"to": "s1", "bandwidth": "100 Mbps", "latency": "0.5 ms"}
    w = World(scenario_from_dict({
        "name": "t", "seed": SEED, "workload": "fedad", "profiles": {"edge": "10 GFLOP/s"},
        "nodes": [{"name": "s1", "kind": "switch"}, {"name": "server", "kind": "server", "profile": "edge",
                                                     "uplink": up},
                  *({"name": f"c{i:02d}", "kind": "client", "profile": "edge", "uplink": up} for i in range(3))],
        "faults": [{"node": "c02", "down": "50 ms"}],
        "experiment": {"classes": [0, 1], "clients_per_class": 1, "baselines": ["centralised"], **cond}}))
    fed = simulate(w, lr, lr.exp, clients=["c00", "c01", "c02"], server="server", seed=SEED)
    raw = w.recorder.messages_frame().filter(pl.col("kind") == "raw_data")
    assert raw["src"].to_list() == ["c00", "c01"] and fed.record.central is not None
    assert fed.record.central.n_train == 18
    assert lr.value(fed.record.central, "meta")["n_train"] == 18  # the engine's count of the data it was given
    assert ("train", [-1]) in fake.calls  # the centralised job, alone in its call


CRASH = {"round_deadline": 1.0, "phase1_deadline": 1.0, "failover_timeout": 2.0}


def crash_run(sizes: list[int], rounds: int, fault: dict[str, str], **exp: object) -> tuple[FedAD, World]:
    """`run` with one node fault (a crash) and the conditions a crash needs: deadlines of 1 s, failover after 2 s."""
    return run(sizes, rounds, phase1_epochs=1, **CRASH, **exp, net={
        "faults": [fault], "workload": "fedad",
        "experiment": {"classes": [0, 1], "clients_per_class": len(sizes) // 2, "baselines": [], **CRASH}})


def test_a_crashed_leader_fails_over_to_the_next_lowest_id_which_collects_the_re_sent_groups() -> None:
    """Four clients; the leader c00 crashes at 13 ms, while it collects the candidate groups: c01's arrived (12.7
    ms), c02's and c03's reach it after the crash (to_crashed), and no community is ever sent. c01 hears nothing
    for 2 s after it sent its group, suspects c00 and takes over: `takeover` (2 bytes) to c02 and c03, which re-send
    their groups (the same 4 IDs: 8 bytes) the moment it arrives; c01 runs community detection on its own group and
    the two re-sent ones as soon as both are in. c00's own group never arrives: it is a loner."""
    from simfl.communities import find_communities
    from simfl.messages import ids_bits

    fed, w = crash_run([10] * 4, 1, {"node": "c00", "down": "13 ms"})
    msgs = w.recorder.messages_frame().filter(pl.col("phase") == "phase1")
    first = msgs.filter((pl.col("kind") == "candidates") & (pl.col("dst") == "c00"))
    assert first["src"].to_list() == ["c01", "c02", "c03"]
    assert first["status"].to_list() == ["delivered", "to_crashed", "to_crashed"]
    assert first["t_deliver"][0] < 0.013 < first["t_deliver"][1]
    take = msgs.filter(pl.col("kind") == "takeover")
    assert take.select("src", "dst", "payload_bits").rows() == [("c01", "c02", ids_bits(1)), ("c01", "c03", 16)]
    assert (take["t_send"] == first["t_send"][0] + 2.0).all()  # the failover timeout after c01's group left
    again = msgs.filter((pl.col("kind") == "candidates") & (pl.col("dst") == "c01"))
    assert again["src"].to_list() == ["c02", "c03"] and (again["payload_bits"] == ids_bits(4)).all()
    assert again["t_send"].to_list() == take["t_deliver"].to_list()  # re-sent when the takeover arrives
    comm = msgs.filter(pl.col("kind") == "community")
    assert comm.select("src", "dst").rows() == [("c01", "c02"), ("c01", "c03")]  # none to c00, none from it
    assert (comm["t_send"] == again["t_deliver"].max()).all()  # every live group in: detection takes no time
    # the association graph of the groups that reached c01 (every client names every other): c00's row is empty
    want = np.zeros((4, 4), dtype=bool)
    want[1:, 1:] = ~np.eye(3, dtype=bool)
    assert (fed.record.adjacency == want).all()
    found = find_communities(want, fed.exp.community_method, seed=derive_seed(SEED, "communities"))
    assert fed.record.communities == found and sorted(found) == [[0], [1, 2, 3]]
    assert fed.known_community == {1: [1, 2, 3], 2: [1, 2, 3], 3: [1, 2, 3]}
    p1 = [r for r in fed.rounds() if r["phase"] == "phase1"]
    assert [(r["aggregator"], r["outcome"], r["failover"], r["invited"], r["arrived_ids"]) for r in p1] == [
        ("c00", "aborted", False, 4, []), ("c01", "collected", True, 3, [1, 2, 3])]
    assert abs(p1[0]["t_end"] - 0.013) < 1e-12
    assert (p1[1]["t_start"], p1[1]["t_end"]) == (take["t_send"][0], again["t_deliver"].max())
    assert p1[1]["t_deadline"] == take["t_send"][0] + 2.0 and fed.failovers == 1
    # phase II runs in the new communities: c01 aggregates c02 and c03; c00's model is its seeded start
    (row,) = [r for r in fed.rounds() if r["phase"] == "phase2"]
    assert (row["aggregator"], row["arrived_ids"], row["weight"]) == ("c01", [1, 2, 3], 27.0)
    assert fed.record.method.final(0) is fed.record.method.starts[0]


def test_a_client_back_from_a_crash_rejoins_and_is_averaged_again_from_the_round_that_starts_after() -> None:
    """c02 (27 training samples) crashes at 30 ms, in its round-1 training, and is up again at 1.5 s. Rounds 1 and 2
    close at their 1 s deadlines without it (the average of round 1, sent to it at about 1.02 s, fails: to_crashed).
    At 1.5 s it sends `rejoin` (2 bytes) to c00, which arrives during round 2; round 3 starts at round 2's close
    (about 2.02 s): c02 receives round 2's average, trains from it and is averaged in rounds 3 and 4 again."""
    fed, w = crash_run([10, 20, 30], 4, {"node": "c02", "down": "30 ms", "up": "1.5 s"})
    msgs = w.recorder.messages_frame().filter(pl.col("phase") == "phase2")
    (rejoin,) = msgs.filter(pl.col("kind") == "rejoin").iter_rows(named=True)
    assert (rejoin["src"], rejoin["dst"], rejoin["payload_bits"], rejoin["t_send"]) == ("c02", "c00", 16, 1.5)
    rows = rounds(fed)
    assert rows[1]["t_start"] < 1.5 and rejoin["t_deliver"] < rows[2]["t_start"]  # arrived during round 2
    assert [(r["round"], r["invited"], r["arrived_ids"], r["weight"]) for r in rows] == [
        (1, 3, [0, 1], 27.0), (2, 3, [0, 1], 27.0), (3, 3, [0, 1, 2], 54.0), (4, 3, [0, 1, 2], 54.0)]
    for r in rows[:2]:  # closed at the deadline, then the average of two updates
        assert abs(r["t_end"] - (r["t_start"] + 1.0 + 4 * 28353 / 1e10)) < 1e-12
    to_c02 = msgs.filter((pl.col("kind") == "global") & (pl.col("dst") == "c02"))
    assert to_c02["round"].to_list() == [1, 2, 3, 4]
    assert to_c02["status"].to_list() == ["to_crashed", "delivered", "delivered", "delivered"]
    train = w.recorder.compute_frame().filter((pl.col("node") == "c02") & (pl.col("kind") == "train")
                                              & (pl.col("phase") == "phase2"))
    assert train["round"].to_list() == [1, 3, 4] and train["t_end"][0] == 0.03  # round 1's cut by the crash
    assert train["t_start"][1] == to_c02["t_deliver"][1]  # trains from round 2's average as it arrives
    method = fed.record.method
    u = method.updates
    assert state(fed, u[(2, 3)])[1].item() == 3.0  # from the average of round 2 (depth 2), not a stale model
    want = (9 * state(fed, u[(0, 3)]) + 18 * state(fed, u[(1, 3)]) + 27 * state(fed, u[(2, 3)])) / 54
    assert torch.allclose(state(fed, method.models[(0, 4)]), want)
    assert method.held[2] is method.models[(0, 5)]  # it ends with the last average, as the others


def test_a_former_aggregator_back_from_a_crash_rejoins_as_a_member_under_the_one_that_took_over() -> None:
    """c00 (aggregator) crashes at 30 ms; c01 takes over 2 s after its round-1 update (sent at 66 ms) and runs the
    rounds with c02. c00 is up at 2.1 s: it sends `rejoin` to c01 (the lowest member besides itself), which arrives
    during round 2; c01 invites it again from round 3, and c00 trains from the averages c01 sends."""
    fed, w = crash_run([10, 20, 30], 4, {"node": "c00", "down": "30 ms", "up": "2.1 s"})
    msgs = w.recorder.messages_frame().filter(pl.col("phase") == "phase2")
    (rejoin,) = msgs.filter(pl.col("kind") == "rejoin").iter_rows(named=True)
    assert (rejoin["src"], rejoin["dst"], rejoin["t_send"]) == ("c00", "c01", 2.1)
    rows = rounds(fed)
    assert [(r["aggregator"], r["round"], r["outcome"], r["invited"], r["arrived_ids"]) for r in rows] == [
        ("c00", 1, "aborted", 3, []), ("c01", 1, "averaged", 2, [1, 2]), ("c01", 2, "averaged", 2, [1, 2]),
        ("c01", 3, "averaged", 3, [0, 1, 2]), ("c01", 4, "averaged", 3, [0, 1, 2])]
    assert rows[2]["t_start"] < rejoin["t_deliver"] < rows[3]["t_start"]
    to_c00 = msgs.filter((pl.col("kind") == "global") & (pl.col("dst") == "c00"))
    assert to_c00.select("src", "round").rows() == [("c01", 2), ("c01", 3), ("c01", 4)]
    assert state(fed, fed.record.method.updates[(0, 3)])[1].item() == 3.0
    assert fed.failovers == 1
