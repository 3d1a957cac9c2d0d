from __future__ import annotations

import dataclasses
import pickle
import re
import tomllib
from pathlib import Path

import pytest

from simfl import config, schema
from simfl.cli import main
from simfl.config import (
    DEFAULT_SCENARIO,
    Experiment,
    NetworkParams,
    ScenarioError,
    SyntheticParams,
    estimated_messages,
    load_scenario,
    scenario_from_dict,
)
from simfl.errors import SimflError

TOPO = Path(__file__).resolve().parent.parent / "topologies"

BASE = """\
name = "t"
workload = "synthetic"

[[nodes]]
name = "s1"
kind = "switch"

[[nodes]]
name = "srv"
kind = "server"
uplink = { to = "s1", bandwidth = "1 Gbps", latency = "0.5 ms" }

[[node_groups]]
prefix = "c"
count = 3
uplink = { to = "s1", bandwidth = "100 Mbps", latency = "1 ms" }
"""


def write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(path: Path, overrides=()) -> str:
    with pytest.raises(ScenarioError) as e:
        load_scenario(path, overrides)
    assert isinstance(e.value, SimflError)
    return str(e.value)


# ------------------------------------------------------------------------------------------------ shipped files
def test_paper_90():
    sc = load_scenario(TOPO / "paper-90.toml")
    assert sc.name == "paper-90" and sc.workload == "fedad"
    assert sc.clients == tuple(f"c{i:02d}" for i in range(90))
    assert sc.server == "server"
    assert len(sc.links) == 91
    c07 = next(ln for ln in sc.links if ln.a == "c07")
    assert (c07.b, c07.bandwidth_bps, c07.latency_s) == ("s1", 100e6, 0.5e-3)
    srv = next(ln for ln in sc.links if ln.a == "server")
    assert srv.bandwidth_bps == 1e9
    assert sc.node("c00").flops == 10e9 and sc.node("server").flops == 1e12
    e = sc.experiment
    assert (e.phase1_epochs, e.rounds, e.local_epochs, e.tau, e.n_clients) == (100, 10, (1, 10), 0.06, 90)
    assert [e.epochs_in_round(i) for i in range(10)] == [1] + [10] * 9
    assert (sc.network.mtu, sc.network.ip_header_bytes, sc.network.link_header_bytes, sc.network.headers) == \
        (1500, 40, 38, True)


def test_wifi_factory_cells():
    sc = load_scenario(TOPO / "wifi-factory.toml")
    assert len(sc.clients) == 90 and sc.clients[0] == "c1-00" and sc.clients[-1] == "c3-29"
    assert [c.name for c in sc.cells] == ["cell1", "cell2", "cell3"]
    assert all(sc.node(c).cell == f"cell{c[1]}" for c in sc.clients)
    assert sc.cells[0].bandwidth_bps == 65e6


def test_default_and_allpairs_extend_paper_90():
    paper = load_scenario(TOPO / "paper-90.toml")
    for name, workload in (("default", "fedad"), ("allpairs-90", "synthetic")):
        sc = load_scenario(TOPO / f"{name}.toml")
        assert sc.name == name and sc.workload == workload
        assert sc.nodes == paper.nodes and sc.links == paper.links
    assert DEFAULT_SCENARIO == TOPO / "default.toml" and DEFAULT_SCENARIO.is_file()
    default = load_scenario(DEFAULT_SCENARIO)
    # the default is the paper's setting with less training, and says so
    assert default.experiment.n_clients == 90 and default.experiment.tau == paper.experiment.tau
    assert default.experiment.phase1_epochs < paper.experiment.phase1_epochs and default.experiment.preset_note
    assert load_scenario(TOPO / "allpairs-90.toml").synthetic.target == "server"


def test_experiment_fields_and_defaults():
    want = dict(classes=tuple(range(10)), clients_per_class=9, clients=None, outlier_fraction=0.1, split="balanced",
                split_seed=None, max_samples_per_client=None, tau=0.06,
                community_method="leiden", phase1_model="ae5", phase1_epochs=100, phase2_model="ae7", rounds=10,
                local_epochs=(1, 10), local_baseline_epochs=40, patience=3, restore_best=False,
                centralised_epochs=10,
                aggregator="member", batch_size=32, lr=1e-3, val_fraction=0.1, persist_optimizer=True,
                detector="global", baselines=("local", "ideal", "centralised"), data_dir=None, device="auto",
                workers=2, preset_note="", send_order="id", round_deadline=None, min_participants=1,
                late_updates="drop", fraction_fit=1.0, dropout=0.0, phase1_deadline=None, failover_timeout=None)
    assert [f.name for f in dataclasses.fields(Experiment)] == list(want)
    assert dataclasses.asdict(Experiment()) == want


@pytest.mark.parametrize("name", sorted(p.stem for p in TOPO.glob("*.toml")))
def test_resolved_toml_loads_back_equal(name, tmp_path):
    sc = load_scenario(TOPO / f"{name}.toml", ["experiment.rounds=3", "network.headers=false"], seed=7)
    text = sc.to_toml()
    again = scenario_from_dict(tomllib.loads(text), source="resolved.toml")
    assert again == sc
    assert again.to_toml().split("\n", 1)[1] == text.split("\n", 1)[1]


def test_resolved_toml_keeps_what_the_shipped_files_do_not_set(tmp_path):
    """Direct flops, cells, renamed links, optional experiment keys and a synthetic target survive the writer."""
    p = write(tmp_path, BASE + '\n[[nodes]]\nname = "ap1"\nkind = "ap"\nflops = "3.5 GFLOP/s"\n'
                               'uplink = { to = "s1", bandwidth = "866.7 Mbps", latency = "12 us", name = "air" }\n'
                               '\n[[cells]]\nname = "w"\nap = "ap1"\nbandwidth = "54 Mbps"\nlatency = "0.1 ms"\n'
                               '\n[[nodes]]\nname = "c9"\nkind = "client"\ncell = "w"\n'
                               '\n[experiment]\nsplit_seed = 42\nmax_samples_per_client = 64\nclients = 90\n'
                               'data_dir = "/some/where"\n\n[synthetic]\ntarget = "c1"\nmessage_bytes = "1 MiB"\n')
    sc = load_scenario(p)
    again = scenario_from_dict(tomllib.loads(sc.to_toml()))
    assert again == sc and again.node("ap1").flops == 3.5e9 and again.synthetic.message_bytes == 2**20
    assert (again.experiment.split_seed, again.experiment.data_dir, again.synthetic.target) == (42, "/some/where", "c1")
    assert next(ln for ln in again.links if ln.name == "air").bandwidth_bps == 866.7e6


# ------------------------------------------------------------------------------------------------ features
def test_groups_overrides_and_profiles(tmp_path):
    p = write(tmp_path, BASE + """
[profiles]
slow = "1 GFLOP/s"

[node_overrides.c1]
profile = "slow"
uplink.bandwidth = "10 Mbps"
""")
    sc = load_scenario(p)
    assert sc.clients == ("c0", "c1", "c2")
    assert sc.node("c1").flops == 1e9 and sc.node("c0").flops == 10e9
    bw = {ln.a: ln.bandwidth_bps for ln in sc.links}
    assert bw == {"srv": 1e9, "c0": 100e6, "c1": 10e6, "c2": 100e6}
    assert next(ln for ln in sc.links if ln.a == "c1").latency_s == 1e-3  # kept from the group


def test_group_name_width():
    def names(count, start=0):
        return scenario_from_dict({"workload": "synthetic", "nodes": [{"name": "hub", "kind": "switch"}],
                                   "node_groups": [{"prefix": "n", "count": count, "start": start,
                                                    "uplink": {"to": "hub", "bandwidth": "1 Gbps"}}]}).clients
    assert names(1) == ("n0",)
    assert names(90)[:2] == ("n00", "n01") and names(90)[-1] == "n89"
    assert names(101)[0] == "n000" and names(101)[-1] == "n100"


def test_overrides(tmp_path):
    p = write(tmp_path, BASE)
    sc = load_scenario(p, ["experiment.rounds=3", "experiment.community_method=fastgreedy",
                           "node_groups[0].uplink.bandwidth=10 Mbps", "profiles.edge=2 GFLOP/s",
                           "experiment.local_epochs=[2, 5]", "synthetic.pattern=[\"gather\"]",
                           "node_overrides.c2.uplink.latency=\"3 ms\""], seed=42)
    assert sc.seed == 42
    assert sc.experiment.rounds == 3 and sc.experiment.community_method == "fastgreedy"
    assert sc.experiment.local_epochs == (2, 5)
    assert {ln.a: ln.bandwidth_bps for ln in sc.links}["c0"] == 10e6
    assert {ln.a: ln.latency_s for ln in sc.links}["c2"] == 3e-3
    assert sc.node("c0").flops == 2e9
    assert sc.synthetic.pattern == ("gather",) and sc.synthetic.target == "srv"


def test_extends_relative_and_cycle(tmp_path):
    write(tmp_path, BASE, "base.toml")
    child = write(tmp_path, 'extends = "base.toml"\nname = "child"\n[synthetic]\npattern = ["broadcast"]\n', "c.toml")
    sc = load_scenario(child)
    assert sc.name == "child" and len(sc.clients) == 3 and sc.synthetic.pattern == ("broadcast",)
    a = write(tmp_path, 'extends = "b.toml"\n', "a.toml")
    write(tmp_path, 'extends = "a.toml"\n', "b.toml")
    assert "cycle" in error_of(a)


# ------------------------------------------------------------------------------------------------ bad input
LINK = '\n[[links]]\na = "c0"\nb = "c1"\nbandwidth = {bw}\nlatency = "1 ms"\n'


@pytest.mark.parametrize("text, key, value, why", [
    (BASE + LINK.format(bw='"-5 Mbps"'), "links[0].bandwidth", '"-5 Mbps"', "bandwidth must be positive"),
    (BASE + LINK.format(bw='"0 Mbps"'), "links[0].bandwidth", '"0 Mbps"', "bandwidth must be positive"),
    (BASE + LINK.format(bw="0"), "links[0].bandwidth", "0", "bandwidth must be positive"),
    (BASE + LINK.format(bw='"100 Mbs"'), "links[0].bandwidth", '"100 Mbs"', "unknown unit 'Mbs'"),
    (BASE + LINK.format(bw='"fast"'), "links[0].bandwidth", '"fast"', "cannot read"),
    (BASE + '\n[[links]]\na = "c0"\nb = "s9"\nbandwidth = "1 Gbps"\n', "links[0].b", '"s9"', "unknown node"),
    (BASE + '\n[[links]]\na = "c0"\nb = "c1"\nbandwith = "1 Gbps"\n', "links[0].bandwith", '"1 Gbps"',
     "unknown key; did you mean 'bandwidth'?"),
    (BASE + '\n[[nodes]]\nname = "s1"\nkind = "switch"\n', "nodes[2].name", '"s1"',
     "duplicate node (already declared at nodes[0])"),
    (BASE + '\n[[node_groups]]\nprefix = "c"\ncount = 2\nuplink = {to = "s1", bandwidth = "1 Gbps"}\n',
     "node_groups[1].prefix", '"c0"', "duplicate node (already declared at node_groups[0])"),
    (BASE + '\n[[nodes]]\nname = "c9"\nkind = "client"\n', "nodes[2]", '"c9"', "client c9 is disconnected"),
    (BASE + '\n[experimnt]\nrounds = 3\n', "experimnt", "{ rounds = 3 }", "did you mean 'experiment'?"),
    (BASE + '\n[[nodes]]\nname = "x"\nkind = "router"\n', "nodes[2].kind", '"router"', "must be one of"),
    (BASE + '\n[node_overrides.c7]\nprofile = "edge"\n', "node_overrides.c7", '{ profile = "edge" }',
     "unknown node"),
    (BASE + '\n[node_overrides.c1]\nprofile = "turbo"\n', "node_overrides.c1.profile", '"turbo"',
     "unknown profile"),
    (BASE + '\n[[nodes]]\nname = "w"\nkind = "client"\ncell = "cellX"\n', "nodes[2].cell", '"cellX"',
     "unknown cell"),
    (BASE + '\n[[cells]]\nname = "k"\nap = "s1"\nbandwidth = "54 Mbps"\n', "cells[0].ap", '"s1"',
     "must be a node of kind \"ap\""),
    (BASE + '\n[[nodes]]\nname = "cloud"\nkind = "cloud"\nuplink = {to = "s1", bandwidth = "1 Gbps"}\n',
     "nodes[2]", '"cloud"', "at most one node of kind server/cloud"),
    (BASE + '\n[[links]]\na = "c0"\nb = "s1"\nbandwidth = "1 Gbps"\nname = "extra"\n', "node_groups[0].uplink",
     '"c0-s1"', "duplicate link between c0 and s1 (already linked at links[0])"),
    (BASE + '\n[[links]]\na = "c0"\nb = "c1"\nbandwidth = "1 Gbps"\nname = "c2-s1"\n',
     "node_groups[0].uplink.name", '"c2-s1"', "duplicate link name (already used at links[0])"),
    (BASE + '\n[network]\nmtu = 40\n', "network.mtu", "40", "mtu must exceed ip_header_bytes"),
    (BASE + '\n[synthetic]\npattern = ["allpair"]\n', "synthetic.pattern[0]", '"allpair"',
     "did you mean 'allpairs'?"),
    (BASE.replace('"synthetic"', '"fedad"'), "experiment.clients_per_class", "9",
     "needs n = clients_per_class x len(classes) = 9 x 10 = 90 client nodes; the scenario has 3"),
    (BASE + '\n[experiment]\nclients_per_class = 1\nclasses = [0, 1]\nclients = 3\n', "experiment.clients", "3",
     "must equal clients_per_class x len(classes)"),
    (BASE.replace('"synthetic"', '"fedad"').replace('kind = "server"', 'kind = "gateway"')
     + '\n[experiment]\nclients_per_class = 1\nclasses = [0, 1]\n', "experiment.baselines",
     '["local", "ideal", "centralised"]', "needs a node of kind server or cloud"),
    (BASE.replace('"synthetic"', '"fedad"').replace('kind = "server"', 'kind = "gateway"')
     + '\n[experiment]\nclients_per_class = 1\nclasses = [0, 1]\nbaselines = ["local"]\naggregator = "server"\n',
     "experiment.aggregator", '"server"', "needs a node of kind server or cloud"),
    (BASE + '\n[experiment]\nclasses = [0, 1, 10]\n', "experiment.classes[2]", "10", "classes are 0..9"),
    (BASE + '\n[experiment]\nclasses = [1, 1]\n', "experiment.classes", "[1, 1]", "unique"),
    (BASE + '\n[experiment]\noutlier_fraction = 0.5\n', "experiment.outlier_fraction", "0.5", "(0, 0.5)"),
    (BASE + '\n[experiment]\nlocal_epochs = [1, 0]\n', "experiment.local_epochs[1]", "0", "must be >= 1"),
    (BASE + '\n[experiment]\ncommunity_method = "louvian"\n', "experiment.community_method", '"louvian"',
     "must be one of leiden, fastgreedy"),
    (BASE + '\n[experiment]\ndetector = "final"\n', "experiment.detector", '"final"',
     "must be one of global, last_fit"),
    (BASE + '\n[experiment]\nsplit = "paper"\n', "experiment.split", '"paper"', "must be one of balanced, authors"),
    (BASE + '\n[experiment]\nsplit_seed = -1\n', "experiment.split_seed", "-1", "must be >= 0"),
    (BASE + '\n[experiment]\nbaselines = ["local", "oracle"]\n', "experiment.baselines[1]", '"oracle"',
     "must be one of"),
    (BASE + '\n[experiment]\nrounds = "ten"\n', "experiment.rounds", '"ten"', "expected an integer"),
])
def test_bad_input_names_file_key_and_value(tmp_path, text, key, value, why):
    p = write(tmp_path, text)
    msg = error_of(p)
    assert msg.startswith(f"{p}: {key} = {value}: "), msg
    assert why in msg


def test_negative_bandwidth_message_exactly(tmp_path):
    p = write(tmp_path, BASE + LINK.format(bw='"-5 Mbps"'))
    assert error_of(p) == f'{p}: links[0].bandwidth = "-5 Mbps": bandwidth must be positive'


def test_malformed_and_missing_files(tmp_path):
    p = write(tmp_path, 'name = "x"\n[[nodes]\n')
    msg = error_of(p)
    assert msg.startswith(f"{p}: not valid TOML") and "line 2" in msg
    assert error_of(tmp_path / "nope.toml") == f"{tmp_path / 'nope.toml'}: no such scenario file"


def test_set_bad_key_lists_nearby_keys(tmp_path):
    p = write(tmp_path, BASE)
    msg = error_of(p, ["experiment.roundz=3"])
    assert msg.startswith(f"{p}: --set experiment.roundz=3: unknown key 'roundz' in [experiment]")
    assert "did you mean 'rounds'?" in msg and "keys there:" in msg and "local_epochs" in msg
    msg = error_of(p, ["experimnt.rounds=3"])
    assert "did you mean 'experiment'?" in msg
    assert error_of(p, ["links[0].bandwidth=1 Mbps"]).endswith("--set links[0].bandwidth=1 Mbps: links has no entries")
    assert error_of(p, ["node_groups[3].count=1"]).endswith("node_groups has 1 entries (indices 0..0)")
    assert "expected KEY=VALUE" in error_of(p, ["experiment.rounds"])
    msg = error_of(p, ["experiment.rounds=0"])
    assert msg == f"{p}: experiment.rounds = 0: must be >= 1"


def test_cli_errors_exit_nonzero_without_traceback(tmp_path, capsys):
    bad = write(tmp_path, BASE + LINK.format(bw='"-5 Mbps"'), "bad.toml")
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip() == f'simfl: error: {bad}: links[0].bandwidth = "-5 Mbps": bandwidth must be positive'
    good = write(tmp_path, BASE, "good.toml")
    assert main(["run", str(good), "--set", "experiment.roundz=3", "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'rounds'" in err and "Traceback" not in err
    assert main(["run", str(good), "--device", "tpu", "--out", str(tmp_path / "o3")]) == 2
    assert 'experiment.device = "tpu"' in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "no such scenario file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ the schema table
def _keys(spec=schema.SCENARIO, where=""):
    """(dotted key, Key) of every value key in the schema (Map values under "<name>")."""
    for e in spec.entries:
        w = f"{where}.{e.name}" if where else e.name
        if isinstance(e, schema.Key):
            yield w, e
        elif isinstance(e, schema.Table):
            yield from _keys(e, w)
        elif isinstance(e, schema.Array):
            yield from _keys(e.table, w)
        elif isinstance(e.value, schema.Key):
            yield f"{w}.<name>", e.value
        else:
            yield from _keys(e.value, f"{w}.<name>")


def test_every_default_passes_its_own_check():
    ck = schema.Checker("t")
    checked = 0
    for where, key in _keys():
        if key.default is not schema.REQUIRED and key.default is not None:
            assert ck.value(key, key.default, where) == key.default, where
            checked += 1
    assert checked >= 40


@pytest.mark.parametrize("where, key", [(w, k) for w, k in _keys() if k.kind in ("int", "float", "rate", "time",
                                                                                   "size", "flops")])
def test_no_number_accepts_a_boolean(where, key):
    with pytest.raises(ScenarioError, match=rf"^t: {re.escape(where)} = true: "):
        schema.Checker("t").value(key, True, where)


def test_dataclasses_are_generated_from_the_table():
    for cls, spec in ((Experiment, schema.EXPERIMENT), (NetworkParams, schema.NETWORK),
                      (SyntheticParams, schema.SYNTHETIC)):
        fields = dataclasses.fields(cls)
        assert [f.name for f in fields] == [k.name for k in spec.entries]
        assert [f.default for f in fields] == [k.default for k in spec.entries]
        with pytest.raises(dataclasses.FrozenInstanceError):
            cls().x = 1
    assert NetworkParams().header_bytes == 78 and NetworkParams(headers=False).header_bytes == 0
    e = Experiment(classes=(3, 4, 5), clients_per_class=2, local_epochs=(1, 4, 7))
    assert e.n_clients == 6 and [e.epochs_in_round(i) for i in range(5)] == [1, 4, 7, 7, 7]
    assert pickle.loads(pickle.dumps(e)) == e  # sweeps and workers pickle it


def test_committed_reference_matches_the_schema():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "scenarios.md").read_text(encoding="utf-8")
    assert doc == schema.markdown(), "regenerate: python -m simfl.schema --markdown > docs/scenarios.md"
    for where, _ in _keys():  # every key has a row in its table's section
        rel = (where.split(".", 1)[1] if "." in where else where).removeprefix("<name>.")
        assert f"| `{rel}` |" in doc, where


@pytest.mark.parametrize("where, value, why", [
    ("node_groups[0].uplink.latency", '"1e300 s"', "latency must be at most 3600 s"),
    ("node_groups[0].uplink.latency", '"-1 ms"', "latency must not be negative"),
    ("node_groups[0].uplink.bandwidth", '"1e-320 bps"', "bandwidth must be at least 1 bps"),
    ("node_groups[0].uplink.bandwidth", '"2 Pbps"', "bandwidth must be at most 1 Pbps"),
    ("synthetic.message_bytes", '"2e18 B"', "size must be at most 1 TiB"),
    ("synthetic.message_bytes", '"12 bit"', "must be a whole number of bytes"),
    ("profiles.edge", '"1e30 FLOP/s"', "compute speed must be at most 1 EFLOP/s"),
    ("profiles.edge", '"10 FLOP/s"', "compute speed must be at least 1 kFLOP/s"),
    ("seed", "4294967296", "must be <= 4,294,967,295 (seeds are 32-bit: 0 .. 2^32 - 1)"),
    ("experiment.split_seed", "-1", "must be >= 0 (seeds are 32-bit: 0 .. 2^32 - 1)"),
    ("network.mtu", "65536", "must be <= 65,535"),
    ("node_groups[0].count", "100001", "must be <= 100,000"),
    ("experiment.lr", "inf", "must be finite"),
    ("experiment.tau", "nan", "must be finite"),
])
def test_numbers_at_the_edges(tmp_path, where, value, why):
    p = write(tmp_path, BASE)
    assert error_of(p, [f"{where}={value}"]) == f"{p}: {where} = {value}: {why}"


def test_values_on_the_bounds_load_and_round_trip(tmp_path):
    p = write(tmp_path, BASE)
    sc = load_scenario(p, ['node_groups[0].uplink.latency="3600 s"', "node_groups[0].uplink.bandwidth=1",
                           'synthetic.message_bytes="1 TiB"', 'profiles.edge="1 EFLOP/s"', "network.mtu=65535",
                           'synthetic.pattern="gather"'], seed=2**32 - 1)
    c0 = next(ln for ln in sc.links if ln.a == "c0")
    assert (c0.latency_s, c0.bandwidth_bps, sc.synthetic.message_bytes) == (3600.0, 1.0, 2**40)
    assert sc.seed == 2**32 - 1 and sc.node("c0").flops == 1e18
    assert scenario_from_dict(tomllib.loads(sc.to_toml())) == sc
    with pytest.raises(ScenarioError, match=r"--seed 4294967296: the seed must be an integer in 0 \.\. 4294967295"):
        load_scenario(p, seed=2**32)


def test_estimated_messages_by_hand():
    assert estimated_messages("synthetic", 90, 10, ["allpairs"]) == 90 * 89
    assert estimated_messages("synthetic", 5, 10, ["allpairs", "gather", "broadcast"]) == 20 + 5 + 5
    # fedad: 2 x 90 x 89 (models, association bits) + 4 x 90 x 10 (FedAvg both ways, method and ideal) + 2 x 90;
    # the paper-90 run (10 rounds, detector last_fit) sent 19,548 messages
    assert estimated_messages("fedad", 90, 10, ["allpairs"]) == 16020 + 3600 + 180 == 19800


def test_a_run_too_big_for_memory_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "physical_memory", lambda: 2**30)
    p = write(tmp_path, BASE)
    # 600 clients: 600 x 599 = 359,400 messages x 2,200 B = 0.74 GiB fits; 700: 489,300 x 2,200 B = 1.0026 GiB not
    assert len(load_scenario(p, ["node_groups[0].count=600"]).clients) == 600
    msg = error_of(p, ["node_groups[0].count=700"])
    assert msg.startswith(f'{p}: workload = "synthetic": 700 clients send about 489,300 messages, which need about '
                          "1.0 GiB of memory (2,200 bytes each); this machine has 1.0 GiB")
    # gather adds one message per client: 700 + 489,300
    assert "about 490,000 messages" in error_of(p, ["node_groups[0].count=700",
                                                    'synthetic.pattern=["gather", "allpairs"]'])


@pytest.mark.parametrize("sets, key, why", [
    (["experiment.clients_per_class=5401", 'experiment.split="authors"', "experiment.classes=[0, 1]"],
     "experiment.clients_per_class", "leave the smallest shard at best 0 samples"),
    (["experiment.clients_per_class=5401", "experiment.classes=[0, 1]"], "experiment.clients_per_class",
     "leave the smallest shard exactly 0 samples"),
    (["experiment.clients_per_class=2700", "experiment.classes=[0, 1]", "experiment.val_fraction=0.6"],
     "experiment.clients_per_class", "exactly 2 samples, and with val_fraction = 0.6 a client needs at least 3"),
    (["experiment.max_samples_per_client=2", "experiment.val_fraction=0.6"], "experiment.max_samples_per_client",
     "with val_fraction = 0.6 a client needs at least 3 samples"),
])
def test_shards_the_data_cannot_fill_are_refused(tmp_path, sets, key, why):
    p = write(tmp_path, BASE)
    msg = error_of(p, sets)
    assert msg.startswith(f"{p}: {key} = ") and why in msg, msg


def test_connectivity_through_cells_and_links(tmp_path):
    p = write(tmp_path, BASE + '\n[[nodes]]\nname = "ap"\nkind = "ap"\n\n[[cells]]\nname = "w"\nap = "ap"\n'
                               'bandwidth = "54 Mbps"\n\n[[nodes]]\nname = "far"\nkind = "client"\ncell = "w"\n')
    assert "client far is disconnected" in error_of(p)  # the cell is an island
    sc = load_scenario(p, ['links=[{a = "ap", b = "s1", bandwidth = "1 Gbps"}]'])
    assert "far" in sc.clients and sc.node("far").cell == "w"


_PEAK = """
import re, sys, tempfile
from pathlib import Path
from simfl.config import scenario_from_dict
from simfl.runner import run_scenario
sc = scenario_from_dict({"workload": "synthetic", "nodes": [{"name": "s1", "kind": "switch"}],
                         "node_groups": [{"prefix": "c", "count": int(sys.argv[1]),
                                          "uplink": {"to": "s1", "bandwidth": "100 Mbps", "latency": "0.5 ms"}}]})
with tempfile.TemporaryDirectory() as out:
    run_scenario(sc, out, progress=False)
# this process's own peak (ru_maxrss would carry over the parent's from before exec)
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024)
"""


@pytest.mark.slow
def test_the_memory_per_message_is_what_a_run_takes():
    """The marginal peak RSS of an all-pairs run, per message, against the constant the estimate uses."""
    import os
    import subprocess
    import sys

    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux's /proc/self/status (VmHWM)")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    peak = {n: int(subprocess.run([sys.executable, "-c", _PEAK, str(n)], capture_output=True, text=True, env=env,
                                  check=True).stdout) for n in (100, 220)}
    per_message = (peak[220] - peak[100]) / (220 * 219 - 100 * 99)
    assert 0.6 * schema.MESSAGE_BYTES_IN_MEMORY < per_message < 1.2 * schema.MESSAGE_BYTES_IN_MEMORY, per_message
