"""A catalogue of bad scenario inputs: scenario files, `--set` overrides, `--seed`, units, bounds, cross references,
extends and data folders. Each goes through `simfl run` (simfl.cli.main) and must end with exit status 2 and one
stderr line, "simfl: error: ...", that names the key or path at fault: never a traceback, never a run.

Then hypothesis fuzzing of the loader: random TOML-like trees made from the schema table (valid and invalid
values, unknown keys, wrong types) must load or raise ScenarioError, nothing else.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_config import BASE  # switch s1, server srv, clients c0 .. c2 (synthetic workload)

from simfl import schema
from simfl.cli import main
from simfl.config import ScenarioError, load_scenario, scenario_from_dict
from simfl.data import FILES, find_data_dir

# a fedad run small enough to start: 2 classes x 1 client
FEDAD = BASE.replace('"synthetic"', '"fedad"') + "\n[experiment]\nclasses = [0, 1]\nclients_per_class = 1\n"
LINK = '\n[[links]]\na = "c0"\nb = "c1"\nbandwidth = {bw}\nlatency = {lat}\n'
AP = '\n[[nodes]]\nname = "ap1"\nkind = "ap"\nuplink = { to = "s1", bandwidth = "1 Gbps" }\n'


@dataclass(frozen=True)
class Bad:
    """A scenario `text` ({tmp}: the test's folder) run with `args`; the error line must contain `names`."""

    names: str
    text: str = BASE
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    path: str = "x.toml"  # where the scenario is written; the path run
    run: str | None = None  # run this path instead ({tmp})


def exp(body: str) -> str:
    return BASE + "\n[experiment]\n" + body + "\n"


CASES = {
    # ----------------------------------------------------------------------------------------- files and TOML
    "missing-file": Bad("nope.toml: no such scenario file", run="{tmp}/nope.toml"),
    "directory": Bad("is a directory", run="{tmp}"),
    "not-toml": Bad("x.toml: not valid TOML", text='name = "x"\n[[nodes]\n'),
    "not-utf8": Bad("x.toml: cannot read", text="\udcff"),
    "empty-file": Bad("nodes: the scenario declares no nodes", text=""),
    "extends-missing": Bad('extends = "base.toml": no such file', text='extends = "base.toml"\n'),
    "extends-cycle": Bad('extends = "x.toml": scenarios extend each other in a cycle', text='extends = "x.toml"\n'),
    "extends-number": Bad("extends = 3: expected the path", text="extends = 3\n" + BASE),
    "extends-bad-base": Bad("bad-base.toml: not valid TOML", text='extends = "bad-base.toml"\n'),
    # ----------------------------------------------------------------------------------------- top level
    "unknown-table": Bad("experimnt = { rounds = 3 }: unknown key; did you mean 'experiment'?",
                         BASE + "\n[experimnt]\nrounds = 3\n"),
    "name-with-space": Bad('name = "my run": names may use only', BASE.replace('"t"', '"my run"')),
    "seed-negative": Bad("seed = -1: must be >= 0", "seed = -1\n" + BASE),
    "seed-2^32": Bad("seed = 4294967296: must be <= 4,294,967,295", "seed = 4294967296\n" + BASE),
    "seed-bool": Bad("seed = true: expected an integer", "seed = true\n" + BASE),
    "seed-float": Bad("seed = 1.5: expected an integer", "seed = 1.5\n" + BASE),
    "workload-typo": Bad("workload = \"fedadd\": must be one of fedad, synthetic; did you mean 'fedad'?",
                         BASE.replace('"synthetic"', '"fedadd"')),
    "description-number": Bad("description = 5: expected a string", 'description = 5\n' + BASE),
    # ----------------------------------------------------------------------------------------- [network]
    "network-typo": Bad("network.mttu = 1500: unknown key; did you mean 'mtu'?", BASE + "\n[network]\nmttu = 1500\n"),
    "mtu-huge": Bad("network.mtu = 70000: must be <= 65,535", BASE + "\n[network]\nmtu = 70000\n"),
    "mtu-below-headers": Bad("network.mtu = 40: mtu must exceed ip_header_bytes (40)",
                             BASE + "\n[network]\nmtu = 40\n"),
    "headers-string": Bad('network.headers = "yes": expected true or false', BASE + '\n[network]\nheaders = "yes"\n'),
    "ip-header-negative": Bad("network.ip_header_bytes = -1: must be >= 0",
                              BASE + "\n[network]\nip_header_bytes = -1\n"),
    "network-not-table": Bad("network = 3: expected a table", "network = 3\n" + BASE),
    # ----------------------------------------------------------------------------------------- [profiles]
    "profile-too-fast": Bad('profiles.fast = "1e30 FLOP/s": compute speed must be at most 1 EFLOP/s',
                            BASE + '\n[profiles]\nfast = "1e30 FLOP/s"\n'),
    "profile-zero": Bad('profiles.slow = "0 GFLOP/s": compute speed must be positive',
                        BASE + '\n[profiles]\nslow = "0 GFLOP/s"\n'),
    "profile-bad-name": Bad('profiles."a b" = "1 GFLOP/s": a profile name may use only',
                            BASE + '\n[profiles]\n"a b" = "1 GFLOP/s"\n'),
    "profile-newline-name": Bad('profiles."edge\\n" = "1 GFLOP/s": a profile name may use only',
                                BASE + '\n[profiles]\n"edge\\n" = "1 GFLOP/s"\n'),
    "node-newline-name": Bad('nodes[2].name = "x\\n": names may use only',
                             BASE + '\n[[nodes]]\nname = "x\\n"\nkind = "switch"\n'),
    "profile-unit": Bad("profiles.slow = \"1 GHz\": unknown unit 'GHz'", BASE + '\n[profiles]\nslow = "1 GHz"\n'),
    # ----------------------------------------------------------------------------------------- [[nodes]]
    "node-no-kind": Bad("nodes[2].kind: missing (required", BASE + '\n[[nodes]]\nname = "x"\n'),
    "node-kind": Bad('nodes[2].kind = "router": must be one of', BASE + '\n[[nodes]]\nname = "x"\nkind = "router"\n'),
    "node-duplicate": Bad('nodes[2].name = "s1": duplicate node (already declared at nodes[0])',
                          BASE + '\n[[nodes]]\nname = "s1"\nkind = "switch"\n'),
    "node-profile-unknown": Bad('nodes[2].profile = "turbo": unknown profile',
                                BASE + '\n[[nodes]]\nname = "x"\nkind = "switch"\nprofile = "turbo"\n'),
    "node-profile-and-flops": Bad('nodes[2].flops = "1 GFLOP/s": give either profile or flops',
                                  BASE + '\n[[nodes]]\nname = "x"\nkind = "switch"\nprofile = "edge"\n'
                                         'flops = "1 GFLOP/s"\n'),
    "node-cell-unknown": Bad('nodes[2].cell = "w9": unknown cell',
                             BASE + '\n[[nodes]]\nname = "x"\nkind = "client"\ncell = "w9"\n'),
    "node-disconnected": Bad('nodes[2] = "lone": client lone is disconnected',
                             BASE + '\n[[nodes]]\nname = "lone"\nkind = "client"\n'),
    "two-servers": Bad('nodes[2] = "cloud": at most one node of kind server/cloud',
                       BASE + '\n[[nodes]]\nname = "cloud"\nkind = "cloud"\nuplink = { to = "s1", bandwidth = 1e9 }\n'),
    "nodes-not-list": Bad('nodes = "s1": expected a list of tables', 'name = "bad"\nnodes = "s1"\n'),
    # ----------------------------------------------------------------------------------------- uplinks
    "uplink-to-unknown": Bad('nodes[1].uplink.to = "s2": unknown node; did you mean \'s1\' or \'c2\'?',
                             BASE.replace('to = "s1", bandwidth = "1 Gbps"', 'to = "s2", bandwidth = "1 Gbps"')),
    "uplink-no-bandwidth": Bad("nodes[1].uplink.bandwidth: missing (required",
                               BASE.replace('bandwidth = "1 Gbps", ', "")),
    "bandwidth-subnormal": Bad('node_groups[0].uplink.bandwidth = "1e-320 bps": bandwidth must be at least 1 bps',
                               BASE.replace('"100 Mbps"', '"1e-320 bps"')),
    "bandwidth-huge": Bad('node_groups[0].uplink.bandwidth = "2 Pbps": bandwidth must be at most 1 Pbps',
                          BASE.replace('"100 Mbps"', '"2 Pbps"')),
    "bandwidth-infinite": Bad('node_groups[0].uplink.bandwidth = "1e400 bps": \'1e400 bps\' is not a finite rate',
                              BASE.replace('"100 Mbps"', '"1e400 bps"')),
    "latency-1e300": Bad('node_groups[0].uplink.latency = "1e300 s": latency must be at most 3600 s',
                         BASE.replace('"1 ms"', '"1e300 s"')),
    "latency-negative": Bad('node_groups[0].uplink.latency = "-1 ms": latency must not be negative',
                            BASE.replace('"1 ms"', '"-1 ms"')),
    "latency-hours": Bad("node_groups[0].uplink.latency = \"2 h\": unknown unit 'h'", BASE.replace('"1 ms"', '"2 h"')),
    "latency-no-unit": Bad("node_groups[0].uplink.latency = \"5\": '5' has no unit", BASE.replace('"1 ms"', '"5"')),
    # ----------------------------------------------------------------------------------------- [[node_groups]]
    "group-count-zero": Bad("node_groups[0].count = 0: must be >= 1", BASE.replace("count = 3", "count = 0")),
    "group-count-huge": Bad("node_groups[0].count = 1000000: must be <= 100,000",
                            BASE.replace("count = 3", "count = 1000000")),
    "group-count-bool": Bad("node_groups[0].count = true: expected an integer", BASE.replace("count = 3",
                            "count = true")),
    "group-no-prefix": Bad("node_groups[0].prefix: missing (required", BASE.replace('prefix = "c"\n', "")),
    "group-uplink-name": Bad('node_groups[0].uplink.name = "l": a group\'s uplinks are named <node>-<to>',
                             BASE.replace('latency = "1 ms" }', 'latency = "1 ms", name = "l" }')),
    "group-start-negative": Bad("node_groups[0].start = -1: must be >= 0", BASE.replace("count = 3",
                                "count = 3\nstart = -1")),
    "group-name-clash": Bad('node_groups[1].prefix = "c0": duplicate node (already declared at node_groups[0])',
                            BASE + '\n[[node_groups]]\nprefix = "c"\ncount = 1\n'
                                   'uplink = { to = "s1", bandwidth = 1e9 }\n'),
    # ----------------------------------------------------------------------------------------- [node_overrides]
    "override-unknown-node": Bad('node_overrides.c7 = { profile = "edge" }: unknown node',
                                 BASE + '\n[node_overrides.c7]\nprofile = "edge"\n'),
    "override-unknown-key": Bad("node_overrides.c1.speed = 5: unknown key",
                                BASE + "\n[node_overrides.c1]\nspeed = 5\n"),
    "override-latency": Bad('node_overrides.c1.uplink.latency = "1e9 s": latency must be at most 3600 s',
                            BASE + '\n[node_overrides.c1]\nuplink.latency = "1e9 s"\n'),
    "override-new-uplink-partial": Bad("node_overrides.s1.uplink.bandwidth: missing",
                                       BASE + '\n[node_overrides.s1]\nuplink.to = "srv"\n'),
    # ----------------------------------------------------------------------------------------- [[links]], [[cells]]
    "link-end-unknown": Bad('links[0].b = "c9": unknown node', BASE + LINK.format(bw='"1 Gbps"', lat='"1 ms"')
                            .replace('b = "c1"', 'b = "c9"')),
    "link-loop": Bad('links[0].b = "c0": a link needs two different ends',
                     BASE + LINK.format(bw='"1 Gbps"', lat='"1 ms"').replace('b = "c1"', 'b = "c0"')),
    "link-duplicate-pair": Bad("node_groups[0].uplink = \"c0-s1\": duplicate link between c0 and s1",
                               BASE + '\n[[links]]\na = "c0"\nb = "s1"\nbandwidth = "1 Gbps"\nname = "extra"\n'),
    "link-bandwidth-word": Bad('links[0].bandwidth = "fast": cannot read', BASE + LINK.format(bw='"fast"', lat="0")),
    "link-bandwidth-bool": Bad("links[0].bandwidth = true: expected a rate", BASE + LINK.format(bw="true", lat="0")),
    "link-bandwidth-zero": Bad("links[0].bandwidth = 0: bandwidth must be positive", BASE + LINK.format(bw="0",
                               lat="0")),
    "link-latency-inf": Bad("links[0].latency = inf: ", BASE + LINK.format(bw="1e9", lat="inf")),
    "link-typo": Bad("links[0].bandwith = \"1 Gbps\": unknown key; did you mean 'bandwidth'?",
                     BASE + '\n[[links]]\na = "c0"\nb = "c1"\nbandwith = "1 Gbps"\n'),
    "cell-ap-not-ap": Bad('cells[0].ap = "s1": a cell\'s access point must be a node of kind "ap"',
                          BASE + '\n[[cells]]\nname = "w"\nap = "s1"\nbandwidth = "54 Mbps"\n'),
    "cell-duplicate": Bad('cells[1].name = "w": duplicate cell', BASE + AP + '\n[[cells]]\nname = "w"\nap = "ap1"\n'
                          'bandwidth = "54 Mbps"\n\n[[cells]]\nname = "w"\nap = "ap1"\nbandwidth = "54 Mbps"\n'),
    "cell-bandwidth-zero": Bad('cells[0].bandwidth = "0 Mbps": bandwidth must be positive',
                               BASE + AP + '\n[[cells]]\nname = "w"\nap = "ap1"\nbandwidth = "0 Mbps"\n'),
    # ----------------------------------------------------------------------------------------- [experiment]
    "classes-10": Bad("experiment.classes[1] = 10: must be <= 9 (Fashion-MNIST classes are 0..9)",
                      exp("classes = [0, 10]")),
    "classes-repeat": Bad("experiment.classes = [1, 1]: entries must be unique", exp("classes = [1, 1]")),
    "classes-one": Bad("experiment.classes = [3]: need at least 2 entries", exp("classes = [3]")),
    "outlier-half": Bad("experiment.outlier_fraction = 0.5: must lie in (0, 0.5)", exp("outlier_fraction = 0.5")),
    "outlier-nan": Bad("experiment.outlier_fraction = nan: must be finite", exp("outlier_fraction = nan")),
    "split-seed-2^32": Bad("experiment.split_seed = 4294967296: must be <= 4,294,967,295",
                           exp("split_seed = 4294967296")),
    "split-typo": Bad("experiment.split = \"author\": must be one of balanced, authors; did you mean 'authors'?",
                      exp('split = "author"')),
    "rounds-zero": Bad("experiment.rounds = 0: must be >= 1", exp("rounds = 0")),
    "rounds-word": Bad('experiment.rounds = "ten": expected an integer', exp('rounds = "ten"')),
    "local-epochs-empty": Bad("experiment.local_epochs = []: need at least 1 entry", exp("local_epochs = []")),
    "lr-inf": Bad("experiment.lr = inf: must be finite", exp("lr = inf")),
    "val-fraction-one": Bad("experiment.val_fraction = 1.0: must lie in [0, 1)", exp("val_fraction = 1.0")),
    "cap-one": Bad("experiment.max_samples_per_client = 1: must be >= 2", exp("max_samples_per_client = 1")),
    "cap-emptied-by-validation": Bad("experiment.max_samples_per_client = 2: leaves no training sample",
                                     exp("max_samples_per_client = 2\nval_fraction = 0.6")),
    "clients-mismatch": Bad("experiment.clients = 3: must equal clients_per_class x len(classes)",
                            exp("clients_per_class = 1\nclasses = [0, 1]\nclients = 3")),
    "too-few-client-nodes": Bad("experiment.clients_per_class = 9: workload \"fedad\" needs n",
                                BASE.replace('"synthetic"', '"fedad"')),
    "authors-empty-shards": Bad("experiment.clients_per_class = 5401: too many clients per class for split \"authors\"",
                                exp('split = "authors"\nclasses = [0, 1]\nclients_per_class = 5401')),
    "balanced-empty-shards": Bad("experiment.clients_per_class = 6000: too many clients per class",
                                 exp("classes = [0, 1]\nclients_per_class = 6000")),
    "aggregator-no-server": Bad('experiment.aggregator = "server": needs a node of kind server or cloud',
                                FEDAD.replace('kind = "server"', 'kind = "gateway"')
                                + 'baselines = ["local"]\naggregator = "server"\n'),
    "centralised-no-server": Bad("experiment.baselines = [\"local\", \"ideal\", \"centralised\"]: the \"centralised\"",
                                 FEDAD.replace('kind = "server"', 'kind = "gateway"')),
    "detector-typo": Bad('experiment.detector = "globl": must be one of global, last_fit', exp('detector = "globl"')),
    "baselines-repeat": Bad('experiment.baselines = ["local", "local"]: entries must be unique',
                            exp('baselines = ["local", "local"]')),
    "data-dir-number": Bad("experiment.data_dir = 5: expected a string", exp("data_dir = 5")),
    "device-tpu": Bad('experiment.device = "tpu": must be one of cpu, cuda, auto', args=("--device", "tpu")),
    # ----------------------------------------------------------------------------------------- [synthetic]
    "message-2e18": Bad('synthetic.message_bytes = "2e18 B": size must be at most 1 TiB',
                        BASE + '\n[synthetic]\nmessage_bytes = "2e18 B"\n'),
    "message-fraction": Bad('synthetic.message_bytes = "12 bit": must be a whole number of bytes',
                            BASE + '\n[synthetic]\nmessage_bytes = "12 bit"\n'),
    "pattern-typo": Bad("synthetic.pattern[0] = \"allpair\": must be one of allpairs, gather, broadcast; did you mean",
                        BASE + '\n[synthetic]\npattern = ["allpair"]\n'),
    "pattern-empty": Bad("synthetic.pattern = []: need at least 1 entry", BASE + "\n[synthetic]\npattern = []\n"),
    "target-unknown": Bad('synthetic.target = "srvr": unknown node; did you mean \'srv\'?',
                          BASE + '\n[synthetic]\ntarget = "srvr"\n'),
    "memory": Bad('workload = "synthetic": 100,000 clients send about 9,999,900,000 messages',
                  BASE.replace("count = 3", "count = 100000")),
    # ----------------------------------------------------------------------------------------- --set, --seed
    "set-no-equals": Bad("--set experiment.rounds: expected KEY=VALUE", args=("--set", "experiment.rounds")),
    "set-unknown-key": Bad("--set experiment.roundz=3: unknown key 'roundz' in [experiment]; did you mean 'rounds'?",
                           args=("--set", "experiment.roundz=3")),
    "set-unknown-table": Bad("--set experimnt.rounds=3: unknown key 'experimnt' in the top level",
                             args=("--set", "experimnt.rounds=3")),
    "set-no-entries": Bad("--set links[0].bandwidth=1 Mbps: links has no entries",
                          args=("--set", "links[0].bandwidth=1 Mbps")),
    "set-index-out": Bad("--set node_groups[4].count=1: node_groups has 1 entries (indices 0..0)",
                         args=("--set", "node_groups[4].count=1")),
    "set-into-value": Bad("--set experiment.rounds.x=1: experiment.rounds is a value, not a table",
                          args=("--set", "experiment.rounds.x=1")),
    "set-bad-key": Bad("--set a..b=1: cannot read the key", args=("--set", "a..b=1")),
    "set-newline": Bad("--set links[0].a=c0\\n: links has no entries", args=("--set", "links[0].a=c0\n")),
    "set-bandwidth": Bad('node_groups[0].uplink.bandwidth = "1e-320 bps"',
                         args=("--set", "node_groups[0].uplink.bandwidth=1e-320 bps")),
    "set-seed": Bad("seed = 4294967296: must be <= 4,294,967,295", args=("--set", "seed=4294967296")),
    "set-list-item": Bad('experiment.local_epochs[1] = "x": expected an integer',
                         args=("--set", 'experiment.local_epochs=[1, "x"]')),
    # ----------------------------------------------------------------------------------------- data folders
    "data-dir-missing": Bad('experiment.data_dir = "{tmp}/nowhere": this folder lacks',
                            FEDAD + 'data_dir = "{tmp}/nowhere"\n'),
    "data-dir-partial": Bad('experiment.data_dir = "{tmp}/partial": this folder lacks the Fashion-MNIST file(s) '
                            "t10k-labels-idx1-ubyte.gz;", FEDAD + 'data_dir = "{tmp}/partial"\n'),
    "data-env-missing": Bad("$SIMFL_DATA = {tmp}/empty: this folder lacks", FEDAD, env={"SIMFL_DATA": "{tmp}/empty"}),
}


@pytest.fixture()
def partial_data(tmp_path):
    """{tmp}/partial: three of the four IDX files; {tmp}/empty: none."""
    real = find_data_dir()
    (tmp_path / "partial").mkdir()
    (tmp_path / "empty").mkdir()
    for name in list(FILES.values())[:3]:
        (tmp_path / "partial" / name).symlink_to(real / name)


def test_the_catalogue_is_large_and_distinct():
    assert len(CASES) >= 60
    assert len({(c.text, c.args, tuple(c.env.items()), c.run) for c in CASES.values()}) == len(CASES)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_ends_in_one_line_naming_it(case, tmp_path, monkeypatch, capsys, partial_data):
    tmp = str(tmp_path)
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SIMFL_DATA", raising=False)
    for k, v in case.env.items():
        monkeypatch.setenv(k, v.replace("{tmp}", tmp))
    path = tmp_path / case.path
    path.write_bytes(case.text.replace("{tmp}", tmp).encode("utf-8", "surrogateescape"))
    (tmp_path / "bad-base.toml").write_text("[[nodes]\n")
    run = case.run.replace("{tmp}", tmp) if case.run else str(path)
    rc = main(["run", run, "--out", str(tmp_path / "out"), "--quiet", *case.args])
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert rc == 2 and "Traceback" not in out.err
    assert len(lines) == 1 and lines[0].startswith("simfl: error: "), out.err
    assert case.names.replace("{tmp}", tmp) in lines[0], lines[0]
    if not (case.run or case.env or "bad-base" in case.names):  # a scenario's mistake names its file first
        assert lines[0].startswith(f"simfl: error: {path}: "), lines[0]


# --------------------------------------------------------------------------------------------------- fuzzing
NAMES = ["s1", "srv", "c0", "c1", "c2", "ap1", "x", "edge"]
BAD_NAMES = ["bad name", "", "c0\n"]
# names in [profiles] and [node_overrides]; a dict built in code may even use numbers
_MAP_KEYS = st.one_of(st.sampled_from(NAMES), st.sampled_from(NAMES), st.sampled_from(BAD_NAMES), st.integers(0, 3))
_UNITS = {"rate": ["bps", "Mbps", "Gbps", "MB/s", "Pbps", "Hz"], "time": ["s", "ms", "us", "min", "h"],
          "size": ["B", "kB", "MiB", "TiB", "bit"], "flops": ["FLOP/s", "GFLOP/s", "EFLOP/s", "GHz"]}
_ANY = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8),
                 st.lists(st.integers(-3, 12), max_size=3), st.dictionaries(st.sampled_from(["a", "to"]),
                                                                          st.integers(), max_size=2))


def _rarely(usual: st.SearchStrategy, rare: st.SearchStrategy, one_in: int) -> st.SearchStrategy:
    """`usual`, and one time in `one_in` `rare` instead."""
    return st.integers(1, one_in).flatmap(lambda i: rare if i == 1 else usual)


def value_of(key: schema.Key) -> st.SearchStrategy:
    """Values for `key`: mostly of its kind (in or out of bounds), one in ten anything."""
    lo = -10 if key.lo is None else key.lo
    hi = 10**6 if key.hi is None else key.hi
    kind = key.kind
    if kind == "int":
        typed = st.integers(int(lo) - 2, min(int(hi) + 2, int(lo) + 60))
    elif kind == "float":
        typed = st.floats(lo - 1, hi + 1, allow_nan=False)
    elif kind == "bool":
        typed = st.booleans()
    elif kind in ("str", "name"):
        typed = _rarely(st.sampled_from(key.choices or NAMES), st.sampled_from(BAD_NAMES), 5)
    elif kind == "list":
        assert key.item is not None
        typed = st.lists(value_of(key.item), max_size=4)
    else:
        num = st.one_of(st.floats(-10, 1e20, allow_nan=False), st.just(1e-320), st.just(1e300))
        typed = st.one_of(num, st.builds(lambda x, u: f"{x:g} {u}", num, st.sampled_from(_UNITS[kind])))
    return _rarely(typed, _ANY, 10)


def table_of(spec: schema.Table, depth: int = 0) -> st.SearchStrategy:
    """Partial tables of `spec`, one in thirty with an unknown key."""
    optional = {}
    for e in spec.entries:
        if isinstance(e, schema.Key):
            optional[e.name] = value_of(e)
        elif isinstance(e, schema.Table):
            optional[e.name] = table_of(e, depth + 1)
        elif isinstance(e, schema.Array):
            optional[e.name] = st.lists(table_of(e.table, depth + 1), max_size=2)
        elif isinstance(e.value, schema.Key):
            optional[e.name] = st.dictionaries(_MAP_KEYS, value_of(e.value), max_size=2)
        else:
            optional[e.name] = st.dictionaries(_MAP_KEYS, table_of(e.value, depth + 1), max_size=2)
    unknown = st.fixed_dictionaries({"unknwn": _ANY}, optional=optional)
    return _rarely(st.fixed_dictionaries({}, optional=optional), unknown, 30)


BASE_DICT = tomllib.loads(BASE)


def _overlay(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _overlay(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(tree=table_of(schema.SCENARIO), on_base=st.integers(0, 3).map(bool))
def test_fuzzed_trees_load_or_raise_scenario_error(tree, on_base):
    d = _overlay(BASE_DICT, tree) if on_base else tree
    d.pop("extends", None)
    try:
        sc = scenario_from_dict(d)
    except ScenarioError as e:
        assert "\n" not in str(e) and str(e).startswith("<dict>: ")
        return
    assert len(sc.nodes) >= 1 and all(math.isfinite(ln.bandwidth_bps) for ln in sc.links)


def _set_keys(spec: schema.Table, where: str = "") -> list[tuple[str, schema.Key]]:
    out = []
    for e in spec.entries:
        w = f"{where}.{e.name}" if where else e.name
        if isinstance(e, schema.Key):
            out.append((w, e))
        elif isinstance(e, schema.Table):
            out += _set_keys(e, w)
        elif isinstance(e, schema.Array):
            out += _set_keys(e.table, f"{w}[0]")
    return out


SET_KEYS = _set_keys(schema.SCENARIO)


@FUZZ
@given(data=st.data())
def test_fuzzed_set_overrides_load_or_raise_scenario_error(data, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz-base.toml"
    if not path.exists():
        path.write_text(BASE)
    key, spec = data.draw(st.sampled_from(SET_KEYS))
    value = data.draw(value_of(spec))
    raw = value if isinstance(value, str) and data.draw(st.booleans()) else _toml(value)
    try:
        load_scenario(path, [f"{key}={raw}"])
    except ScenarioError as e:
        assert "\n" not in str(e) and str(e).startswith(f"{path}: ")


def _toml(v) -> str:
    if v is None:
        return ""
    return schema.show(v).replace("...", "")


def test_the_fuzz_base_loads_and_a_non_table_does_not():
    """The fuzz targets' premise: the base they overlay is sound, and even a non-table raises ScenarioError."""
    assert scenario_from_dict(BASE_DICT).clients == ("c0", "c1", "c2")
    with pytest.raises(ScenarioError, match="a scenario must be a table"):
        scenario_from_dict([1, 2])  # type: ignore[arg-type]
