"""Validation of the ns-3 backend (simfl.ns3) against the fluid model (simfl.network), case by case.

    .venv/bin/python benchmarks/validate_ns3.py              # every case (an hour or more: WiFi is slow in ns-3)
    .venv/bin/python benchmarks/validate_ns3.py --quick      # the small reference cases only
    .venv/bin/python benchmarks/validate_ns3.py --only incast allpairs-90
    .venv/bin/python benchmarks/validate_ns3.py --skip fedad

Printed as a markdown table, per case: messages; when the last message is delivered and the median message's
completion time (delivery - send) under both backends (simulated seconds) and their ratio ns-3 / fluid (the fluid
model counts the TCP handshake, `network.handshake`, on by default); ns-3's dropped packets and retransmitted
bytes; the wall time of each backend's run (ns-3's import and compilation, paid once per process, is printed
apart). Messages lost when a TCP connection gave up (Linux's limits) are left out of the times and counted beside
ns-3's last delivery ("(n lost)").

Cases:
- reference: a 1 MB transfer over a 10 Mbps then 2 Mbps line; ten 1 MB flows through one 10 Mbps link; gather and
  all-pairs of 10 clients on the paper-90 network, clients sending in id order or rotated order, hosts with a FIFO
  or a fair-queueing queue discipline.
- duplex: a small FDD cell (10 Mbps up, 50 Mbps down): an upload and a download at once, three stations
  uploading, a model between two stations.
- incast: 90 clients, 12,868-byte messages: gather to the 1 Gbps server and all-pairs ("allpairs-90"), with 100- or
  1,000-packet switch ports and a 1 s or 200 ms minimum RTO.
- topologies: on each network of topologies/ (files that share one are run once) under the backend's defaults:
  gather to the server and all-pairs of every client, 12,868-byte messages sent at t = 0 (with WiFi cells,
  all-pairs among 15 clients spread over the cells: ns-3's WiFi costs far more per packet than its wired links).
- cells (each network with WiFi cells, its first cell): a gather into the cell (every client outside it sends to
  its first station: the access point relays everything) and an all-pairs exchange inside the cell (each message
  crosses the channel twice), with 100- and 10,000-packet forwarding ports (the access point's queue); and bulk
  transfers (500 kB each, 10,000-packet ports): the cell's stations to the server, and (cells of up to 15 stations)
  all-pairs among them.
- contention (the fluid model's eta(k), `simfl.network`): k stations of the first cell of wifi-cells (k = 1 ... 15)
  and wifi-factory (k = 1 ... 30) uploading 500 kB each to the server (10,000-packet ports), the fluid model
  sharing the cell per flow (`network.cell_access = "flow"`): fluid / ns-3 of the last delivery is eta(k).
- loss: `loss` 1% and 5% (each direction) on one 10 Mbps, 10 ms link (a 1 MB transfer; one model), `burst_loss`
  of the same stationary rate on it (bad state: loss 0.5, runs of 5 packets), and on wifi-cells' first cell (the
  gather into it, 10,000-packet ports); both backends with seeds 1..--seeds (the fluid model's loss-limited rate
  is the Mathis cap, its SYN and tail timeouts are drawn per seed): the mean last deliveries, printed as a second
  table with the ratio fluid / ns-3.
- fedad: the default run's phase I and II message schedule (the protocol of topologies/default.toml capped at
  --samples samples per client run on the network, its learning read from the learning cache or computed once;
  baselines left out): last = phase II's last delivery, median = the median message's delivery - send.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simfl.cache import NodeStore, default_cache_dir  # noqa: E402
from simfl.config import Scenario, load_scenario, scenario_from_dict  # noqa: E402
from simfl.errors import SimflError  # noqa: E402
from simfl.learner import Learner  # noqa: E402
from simfl.ns3 import Ns3Network, Ns3Options, cpp, refuse_scenario  # noqa: E402
from simfl.plan import partition_of  # noqa: E402
from simfl.protocol import simulate  # noqa: E402
from simfl.topology import Topology  # noqa: E402
from simfl.workloads import pattern_pairs  # noqa: E402
from simfl.world import World  # noqa: E402

MODEL_BYTES = 12868  # one AE-5 model
WIFI_ALLPAIRS = 15  # topologies with WiFi cells: all-pairs among this many clients, spread over the cells
BIG_BUFFER = 10_000  # packets per forwarding port: a cell case without drops
BULK_BYTES = 500_000  # a bulk transfer: long enough for TCP's steady state
FEDAD_PHASES = ("phase1", "phase2")
LOSSES = (0.01, 0.05)  # the loss cases' packet loss probabilities
BURST = 5  # the burst-loss cases' mean bad-state run, packets


@dataclass
class Case:
    name: str
    group: str
    scenario: Scenario
    pairs: list[tuple[str, str]] | None  # None: the fedad schedule (the protocol, its learning from the cache)
    message_bytes: int = MODEL_BYTES
    options: Ns3Options = field(default_factory=Ns3Options)


def rotated(clients: list[str]) -> list[tuple[str, str]]:
    """All-pairs where client i sends to i+1, i+2, ... (mod n) in that order: no two start with the same target."""
    n = len(clients)
    return [(clients[i], clients[(i + k) % n]) for i in range(n) for k in range(1, n)]


def line() -> Scenario:
    return scenario_from_dict({"name": "line", "workload": "synthetic", "nodes": [
        {"name": "a", "kind": "client", "uplink": {"to": "r", "bandwidth": "10 Mbps", "latency": "0.5 ms"}},
        {"name": "r", "kind": "switch"},
        {"name": "b", "kind": "client", "uplink": {"to": "r", "bandwidth": "2 Mbps", "latency": "0.5 ms"}}]})


def dumbbell(n: int) -> Scenario:
    """n senders and n receivers on 100 Mbps links to two routers joined by one 10 Mbps link."""
    up = {"bandwidth": "100 Mbps", "latency": "0.5 ms"}
    return scenario_from_dict({"name": "dumbbell", "workload": "synthetic",
                               "nodes": [{"name": "r1", "kind": "switch"},
                                         {"name": "r2", "kind": "switch",
                                          "uplink": {"to": "r1", "bandwidth": "10 Mbps", "latency": "0.5 ms"}}],
                               "node_groups": [{"prefix": "s", "count": n, "uplink": {"to": "r1", **up}},
                                               {"prefix": "d", "count": n, "uplink": {"to": "r2", **up}}]})


def reference_cases() -> list[Case]:
    p90 = load_scenario(ROOT / "topologies" / "paper-90.toml")
    c10 = list(p90.clients[:10])
    fifo, fq = Ns3Options(host_qdisc="fifo"), Ns3Options(host_qdisc="fq")
    db = dumbbell(10)
    ap10 = pattern_pairs("allpairs", c10, None)
    return [
        Case("line 1 MB, 10 then 2 Mbps", "reference", line(), [("a", "b")], 1_000_000),
        Case("ten 1 MB flows, one 10 Mbps link", "reference", db,
             [(f"s{i}", f"d{i}") for i in range(10)], 1_000_000),
        Case("gather 10 -> server", "reference", p90, pattern_pairs("gather", c10, "server")),
        Case("all-pairs 10, id order, fifo hosts", "reference", p90, ap10, options=fifo),
        Case("all-pairs 10, rotated, fifo hosts", "reference", p90, rotated(c10), options=fifo),
        Case("all-pairs 10, id order, fq hosts", "reference", p90, ap10, options=fq),
    ]


def duplex() -> Scenario:
    """A server on a 1 Gbps link to the base station of one FDD cell (10 Mbps, 2 ms up; 50 Mbps, 1 ms down) with
    stations c0, c1, c2."""
    return scenario_from_dict({"name": "duplex", "workload": "synthetic", "nodes": [
        {"name": "bs", "kind": "ap"},
        {"name": "server", "kind": "server", "uplink": {"to": "bs", "bandwidth": "1 Gbps"}},
        *({"name": f"c{i}", "kind": "client", "cell": "lte"} for i in range(3))],
        "cells": [{"name": "lte", "ap": "bs", "bandwidth_up": "10 Mbps", "bandwidth_down": "50 Mbps",
                   "latency_up": "2 ms", "latency_down": "1 ms"}]})


def duplex_cases() -> list[Case]:
    """A duplex cell: a 1 MB upload and a 1 MB download at once (separate channels), three stations uploading 1 MB
    each (one channel shared), a model between two stations (both channels)."""
    sc = duplex()
    return [Case("duplex cell: 1 MB c0 -> server and server -> c1 at once", "duplex", sc,
                 [("c0", "server"), ("server", "c1")], 1_000_000),
            Case("duplex cell: c0, c1, c2 -> server, 1 MB each", "duplex", sc,
                 pattern_pairs("gather", ["c0", "c1", "c2"], "server"), 1_000_000),
            Case("duplex cell: c0 -> c1, one model", "duplex", sc, [("c0", "c1")])]


def incast_cases() -> list[Case]:
    p90 = load_scenario(ROOT / "topologies" / "paper-90.toml")
    c90 = list(p90.clients)
    out = []
    for buf, rto in ((100, 1.0), (100, 0.2), (1000, 0.2)):
        o = Ns3Options(buffer_packets=buf, min_rto=rto, host_qdisc="fifo")
        out.append(Case(f"incast: gather 90 -> 1 Gbps server, {buf} p ports, RTO {rto:g} s", "incast", p90,
                        pattern_pairs("gather", c90, "server"), options=o))
    for buf, rto, order, qdisc in ((100, 1.0, "id", "fifo"), (100, 0.2, "id", "fifo"), (1000, 0.2, "id", "fifo"),
                                   (100, 0.2, "rotated", "fifo"), (100, 0.2, "id", "fq")):
        o = Ns3Options(buffer_packets=buf, min_rto=rto, host_qdisc=qdisc)
        pairs = rotated(c90) if order == "rotated" else pattern_pairs("allpairs", c90, None)
        out.append(Case(f"allpairs-90: {order} order, {qdisc} hosts, {buf} p ports, RTO {rto:g} s", "allpairs-90",
                        p90, pairs, options=o))
    return out


def networks() -> list[tuple[str, Scenario]]:
    """(file name, scenario as a synthetic workload) of each distinct network in topologies/ that the ns3 backend
    runs; of the files that share a network, the first without background traffic."""
    out: list[tuple[str, Scenario]] = []
    seen: dict[tuple, str] = {}
    loaded = [(path.name, load_scenario(path, ["workload=synthetic"]))
              for path in sorted((ROOT / "topologies").glob("*.toml"))]
    for name, sc in sorted(loaded, key=lambda x: (bool(x[1].traffic), x[0])):
        key = (sc.nodes, sc.links, sc.cells)
        if key in seen:
            print(f"- {name}: the network of {seen[key]}, not run again")
            continue
        try:
            refuse_scenario(Topology.from_scenario(sc), sc)
        except SimflError as e:
            print(f"- {name}: not run ({e})")
            continue
        seen[key] = name
        out.append((name, sc))
    return out


def topology_cases(name: str, sc: Scenario) -> list[Case]:
    clients = list(sc.clients)
    target = sc.server or clients[0]
    out = [Case(f"{name}: gather", "topologies", sc, pattern_pairs("gather", clients, target),
                sc.synthetic.message_bytes)]
    label, some = f"{name}: allpairs", clients
    if sc.cells and len(clients) > WIFI_ALLPAIRS:  # ns-3's WiFi is slow: all-pairs of a spread-out sample
        some = clients[::-(-len(clients) // WIFI_ALLPAIRS)]
        label = f"{name}: allpairs of {len(some)} ({', '.join(some[:3])}, ...)"
    out.append(Case(label, "topologies", sc, pattern_pairs("allpairs", some, None), sc.synthetic.message_bytes))
    return out


def cell_cases(name: str, sc: Scenario) -> list[Case]:
    """In the first cell: a gather into it (from every client outside it) and all-pairs among its stations, with
    the default port buffers and with BIG_BUFFER packets (no drops: the cell model alone); bulk transfers of
    BULK_BYTES with BIG_BUFFER: its stations to the server (the channel shared by contending stations) and, in
    cells of up to WIFI_ALLPAIRS stations, all-pairs among them."""
    if not sc.cells:
        return []
    cell = sc.cells[0].name
    inside = [c for c in sc.clients if sc.node(c).cell == cell]
    outside = [c for c in sc.clients if sc.node(c).cell != cell]
    into = pattern_pairs("gather", outside, inside[0])
    among = pattern_pairs("allpairs", inside, None)
    big = Ns3Options(buffer_packets=BIG_BUFFER)
    out = []
    for o in (Ns3Options(), big):
        out += [Case(f"{name}: gather of {len(outside)} into cell {cell} (-> {inside[0]})", "cells", sc, into,
                     options=o),
                Case(f"{name}: all-pairs inside cell {cell} ({len(inside)} stations)", "cells", sc, among,
                     options=o)]
    kb = f"{BULK_BYTES // 1000} kB"
    out.append(Case(f"{name}: {len(inside)} stations of cell {cell} -> server, {kb} each", "cells", sc,
                    pattern_pairs("gather", inside, sc.server), BULK_BYTES, big))
    if len(inside) <= WIFI_ALLPAIRS:
        out.append(Case(f"{name}: all-pairs inside cell {cell}, {kb} each", "cells", sc, among, BULK_BYTES, big))
    return out


def contention_cases() -> list[Case]:
    """k stations of a cell -> the server, BULK_BYTES each, BIG_BUFFER ports, the cell shared per flow crossing."""
    out = []
    for name, ks in (("wifi-cells.toml", (1, 2, 3, 5, 8, 10, 15)), ("wifi-factory.toml", (1, 2, 3, 5, 8, 10, 20, 30))):
        sc = load_scenario(ROOT / "topologies" / name, ["workload=synthetic", "network.cell_access=flow"])
        cell = sc.cells[0].name
        inside = [c for c in sc.clients if sc.node(c).cell == cell]
        out += [Case(f"{name}: {k} stations of cell {cell} -> server, per flow", "contention", sc,
                     pattern_pairs("gather", inside[:k], sc.server), BULK_BYTES, Ns3Options(buffer_packets=BIG_BUFFER))
                for k in ks]
    return out


def loss_cases() -> list[Case]:
    """Loss 1% and 5% (`loss`: each direction, independent): a 1 MB transfer and one model over one 10 Mbps, 10 ms
    link, the 1 MB transfer with Gilbert-Elliott burst loss of that stationary rate, and the gather into wifi-cells'
    first cell with the loss on the cell (BIG_BUFFER ports: no queue drops)."""
    def link(loss: dict[str, Any]) -> Scenario:
        return scenario_from_dict({"name": "link", "workload": "synthetic", "nodes": [
            {"name": "a", "kind": "client", "uplink": {"to": "b", "bandwidth": "10 Mbps", "latency": "10 ms",
                                                      **loss}},
            {"name": "b", "kind": "client"}]})

    out = []
    for p in LOSSES:
        out.append(Case(f"loss {p:.0%}: 1 MB over one 10 Mbps, 10 ms link", "loss", link({"loss": p}), [("a", "b")],
                        1_000_000))
        out.append(Case(f"loss {p:.0%}: one model over the same link", "loss", link({"loss": p}), [("a", "b")]))
        ge = {"good": 0.0, "bad": 0.5, "burst": BURST, "gap": BURST * (0.5 / p - 1)}  # stationary rate p
        out.append(Case(f"burst loss {p:.0%} (bad 0.5, runs of {BURST}): the same link", "loss",
                        link({"burst_loss": ge}), [("a", "b")], 1_000_000))
        sc = load_scenario(ROOT / "topologies" / "wifi-cells.toml", ["workload=synthetic", f"cells[0].loss={p}"])
        cell = sc.cells[0].name
        inside = [c for c in sc.clients if sc.node(c).cell == cell]
        outside = [c for c in sc.clients if sc.node(c).cell != cell]
        out.append(Case(f"loss {p:.0%}: wifi-cells.toml, gather of {len(outside)} into cell {cell} (-> {inside[0]})",
                        "loss", sc, pattern_pairs("gather", outside, inside[0]),
                        options=Ns3Options(buffer_packets=BIG_BUFFER)))
    return out


def loss_row(c: Case, seeds: int) -> str:
    """The fluid model's last delivery and median completion against ns-3's, both run with seeds 1..`seeds` (the
    fluid model draws its timeouts per seed): means, the last's range, fluid / ns-3 of the means."""
    by = {b: [run(dataclasses.replace(c, scenario=c.scenario.replace(seed=s)), b) for s in range(1, seeds + 1)]
          for b in ("fluid", "ns3")}
    failed = [r["lost"] for r in by["ns3"] if r["lost"]]
    if failed:
        return f"| {c.name} | {by['fluid'][0]['messages']} | gave up: {failed[0]} message(s) lost |"
    (fl, fm), (nl, nm) = ([[r["last"] for r in by[b]], statistics.fmean(r["median"] for r in by[b])]
                          for b in ("fluid", "ns3"))
    ratio = statistics.fmean(fl) / statistics.fmean(nl)
    return (f"| {c.name} | {by['fluid'][0]['messages']} | {_spread(fl)} | {_spread(nl)} | {ratio:.2f} | "
            f"{'yes' if abs(ratio - 1) <= 0.25 else 'no'} | {fm:.4g} | {nm:.4g} | {fm / nm:.2f} | "
            f"{statistics.fmean(r['retx'] for r in by['fluid']):,.0f} | "
            f"{statistics.fmean(r['retx'] for r in by['ns3']):,.0f} |")


def _spread(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.4g} ({min(xs):.4g} - {max(xs):.4g})"


LOSS_HEADER = ("| case | messages | fluid last (s): mean (range) of the seeds | ns-3 last (s): mean (range) | "
               "fluid / ns-3 | within 25% | fluid median (s), mean | ns-3 median (s), mean | fluid / ns-3 | "
               "retransmitted B (mean): fluid | ns-3 |\n"
               "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")


def default_run(samples: int) -> Scenario:
    """topologies/default.toml capped at `samples` per client, without the baselines; its learning is computed
    here once (on the fluid network) into the learning cache, which every fedad case then reads."""
    sc = load_scenario(ROOT / "topologies" / "default.toml", [f"experiment.max_samples_per_client={samples}",
                                                              "experiment.baselines=[]"])
    t0 = time.perf_counter()
    replay(World(sc), sc)
    print(f"learning of default.toml, {samples} samples per client: {time.perf_counter() - t0:.1f} s")
    return sc


def replay(w: World, sc: Scenario) -> None:
    """The fedad protocol of `sc` on `w`'s network, learning read from (or written to) the learning cache."""
    exp = sc.experiment
    folder = default_cache_dir()
    with Learner(exp, partition_of(exp, sc.seed), NodeStore(folder) if folder else None) as lr:
        simulate(w, lr, exp, clients=sc.clients[:exp.n_clients], server=sc.server, seed=sc.seed)


def fedad_case(name: str, sc: Scenario, default: Scenario) -> Case:
    """The default run's phase I and II on this network (the default experiment, this file's nodes and links)."""
    return Case(f"{name}: fedad phase I + II", "fedad", sc.replace(experiment=default.experiment), None)


def run(case: Case, backend: str) -> dict[str, Any]:
    """One case on one backend: last delivery, median completion, drops, retransmitted bytes, wall time."""
    t0 = time.perf_counter()
    sc = case.scenario
    w = World(sc)
    if backend == "ns3":
        w.network = Ns3Network.for_scenario(w.env, w.topology, sc, w.recorder, options=case.options)
    net = w.network
    if case.pairs is None:
        replay(w, sc)
    else:
        net.keep_unclaimed = False
        bits = 8 * case.message_bytes
        for a, b in case.pairs:
            ev = net.send(a, b, kind="synthetic", phase="synthetic", round=0, payload_bits=bits)
            ev.defused = True  # a message lost when its TCP connection gives up is counted below, not raised
        w.env.run()
    wall = time.perf_counter() - t0
    if net.in_flight:
        raise SimflError(f"{case.name}: {net.in_flight} messages undelivered under {backend}")
    m = w.recorder.messages_frame()
    if case.pairs is None:
        m = m.filter(m["phase"].is_in(FEDAD_PHASES))
    lost = int((m["status"] == "lost").sum())
    m = m.filter(m["status"] != "lost")
    t = m["t_deliver"].to_list()
    tot = net.totals()
    return {"last": max(t), "median": statistics.median((m["t_deliver"] - m["t_send"]).to_list()), "wall": wall,
            "drops": tot.get("drops", 0), "retx": tot.get("retransmitted_bytes", 0), "messages": len(t), "lost": lost}


HEADER = ("| case | ns-3 hosts, ports, min RTO | messages | fluid last (s) | ns-3 last (s) | ratio | "
          "fluid median (s) | ns-3 median (s) | ratio | drops | retransmitted B | fluid wall (s) | ns-3 wall (s) |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def row(c: Case, f: dict[str, Any], n: dict[str, Any]) -> str:
    o = c.options
    head = f"| {c.name} | {o.host_qdisc}, {o.buffer_packets} p, {o.min_rto:g} s | {f['messages']} | {f['last']:.4g} |"
    lost = f" ({n['lost']} lost)" if n["lost"] else ""
    return (f"{head} {n['last']:.4g}{lost} | {n['last'] / f['last']:.2f} | {f['median']:.4g} | "
            f"{n['median']:.4g} | {n['median'] / f['median']:.2f} | {n['drops']} | {n['retx']} | {f['wall']:.2f} | "
            f"{n['wall']:.1f} |")


def cases(args: argparse.Namespace) -> list[Case]:
    def wanted(name: str, group: str) -> bool:
        if args.only and not any(w in name or w in group for w in args.only):
            return False
        return not (args.skip and any(w in name or w in group for w in args.skip))

    out = [c for c in reference_cases() if wanted(c.name, c.group)]
    if args.quick:
        return out
    out += [c for c in duplex_cases() + incast_cases() + contention_cases() + loss_cases() if wanted(c.name, c.group)]
    fedad = wanted("fedad", "fedad")
    default = default_run(args.samples) if fedad else None
    for name, sc in networks():
        more = topology_cases(name, sc) + cell_cases(name, sc)
        if default is not None:
            more.append(fedad_case(name, sc, default))
        out += [c for c in more if wanted(c.name, c.group)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the reference cases only")
    ap.add_argument("--only", nargs="+", default=None, metavar="WORD",
                    help="run the cases whose name or group contains one of these words")
    ap.add_argument("--skip", nargs="+", default=None, metavar="WORD",
                    help="leave out the cases whose name or group contains one of these words")
    ap.add_argument("--seeds", type=int, default=10, help="loss cases: runs with seeds 1..SEEDS (default 10)")
    ap.add_argument("--samples", type=int, default=100,
                    help="fedad cases: samples per client of the default run's learning plan (default 100)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cpp.load()
    run(Case("warm-up", "", line(), [("a", "b")], 1000), "ns3")  # compiles the calls a first network makes
    print(f"ns-3 import, hub compilation and a first network: {time.perf_counter() - t0:.1f} s")
    rows, loss = [], []
    for c in cases(args):
        if c.group == "loss":
            loss.append(loss_row(c, args.seeds))
            print(loss[-1], flush=True)
            continue
        rows.append(row(c, run(c, "fluid"), run(c, "ns3")))
        print(rows[-1], flush=True)
    for head, r in ((HEADER, rows), (LOSS_HEADER, loss)):
        if r:
            print()
            print(head)
            print("\n".join(r))


if __name__ == "__main__":
    main()
