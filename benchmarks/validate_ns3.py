"""Validation of the ns-3 backend (simfl.ns3) against the fluid model (simfl.network): network-only patterns.

    .venv/bin/python benchmarks/validate_ns3.py              # every case (several minutes: 90-client all-pairs)
    .venv/bin/python benchmarks/validate_ns3.py --quick      # the small reference cases only
    .venv/bin/python benchmarks/validate_ns3.py --only incast allpairs-90

Every message of a case is sent at t = 0; both backends run it to completion. Printed as a markdown table, per
case: messages; the last and the median delivery time under both backends (simulated seconds) and their ratio
ns-3 / fluid; `+hs` is that ratio once the fluid time counts the TCP handshake (one round trip of a 48-byte SYN on
the slowest pair's path, which the fluid model does not have); ns-3's dropped packets and retransmitted bytes; the
wall time of each run (ns-3's import and compilation, paid once per process, is printed apart).

Cases: reference cases (a 1 MB transfer over a 10 Mbps then 2 Mbps line; ten 1 MB flows through one 10 Mbps link;
gather and all-pairs of 10 clients on the paper-90 network, clients sending in id order or rotated order, hosts
with a FIFO or a fair-queueing queue discipline); the incast cases (90 clients, 12,868-byte messages: gather to the
1 Gbps server and all-pairs, with 100- or 1,000-packet switch ports and a 1 s or 200 ms minimum RTO); and gather and
all-pairs on each shipped topology (`--set workload=synthetic`) under the backend's defaults (with WiFi cells,
all-pairs among 15 clients spread over the cells: ns-3's WiFi costs far more per packet than its wired links).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simfl.config import Scenario, load_scenario, scenario_from_dict  # noqa: E402
from simfl.errors import SimflError  # noqa: E402
from simfl.ns3 import Ns3Network, Ns3Options, cpp  # noqa: E402
from simfl.topology import Topology  # noqa: E402
from simfl.workloads import pattern_pairs  # noqa: E402
from simfl.world import World  # noqa: E402

MODEL_BYTES = 12868  # one AE-5 model
SYN_BYTES = 48 + 38  # a SYN or SYN-ACK on the wire: 20 IP + 28 TCP (with options) + 38 of framing
WIFI_ALLPAIRS = 15  # topologies with WiFi cells: all-pairs among this many clients, spread over the cells


@dataclass
class Case:
    name: str
    group: str
    scenario: Scenario
    pairs: list[tuple[str, str]]
    message_bytes: int = MODEL_BYTES
    options: Ns3Options = field(default_factory=Ns3Options)
    note: str = ""


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


def topology_cases() -> list[Case]:
    out: list[Case] = []
    seen: dict[tuple, str] = {}
    for path in sorted((ROOT / "topologies").glob("*.toml")):
        sc = load_scenario(path, ["workload=synthetic"])
        key = (sc.nodes, sc.links, sc.cells)
        if key in seen:
            print(f"- {path.name}: the network of {seen[key]}, not run again")
            continue
        seen[key] = path.name
        clients = list(sc.clients)
        target = sc.server or clients[0]
        out.append(Case(f"{path.name}: gather", "topologies", sc, pattern_pairs("gather", clients, target),
                        sc.synthetic.message_bytes))
        name, some = f"{path.name}: allpairs", clients
        if sc.cells and len(clients) > WIFI_ALLPAIRS:  # ns-3's WiFi is slow: all-pairs of a spread-out sample
            some = clients[::-(-len(clients) // WIFI_ALLPAIRS)]
            name = f"{path.name}: allpairs of {len(some)} ({', '.join(some[:3])}, ...)"
        out.append(Case(name, "topologies", sc, pattern_pairs("allpairs", some, None), sc.synthetic.message_bytes))
    return out


def handshake_rtt(topo: Topology, pairs: list[tuple[str, str]]) -> float:
    def rtt(a: str, b: str) -> float:
        hops = topo.route_tuple(a, b) + topo.route_tuple(b, a)
        return sum(h.latency_s + 8 * SYN_BYTES / h.capacity_bps for h in hops)

    return max(rtt(a, b) for a, b in set(pairs))


def run(case: Case, backend: str) -> dict[str, float]:
    t0 = time.perf_counter()
    w = World(case.scenario)
    if backend == "ns3":
        w.network = Ns3Network(w.env, w.topology, case.scenario.network, w.recorder, seed=case.scenario.seed,
                               options=case.options)
    net = w.network
    net.keep_unclaimed = False
    bits = 8 * case.message_bytes
    for a, b in case.pairs:
        net.send(a, b, kind="synthetic", phase="synthetic", round=0, payload_bits=bits)
    w.env.run()
    wall = time.perf_counter() - t0
    if net.in_flight:
        raise SimflError(f"{case.name}: {net.in_flight} messages undelivered under {backend}")
    t = w.recorder.messages_frame()["t_deliver"].to_list()
    tot = net.totals()
    return {"last": max(t), "median": statistics.median(t), "wall": wall, "drops": tot.get("drops", 0),
            "retx": tot.get("retransmitted_bytes", 0), "messages": len(t)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the reference cases only")
    ap.add_argument("--only", nargs="+", default=None, metavar="WORD",
                    help="run the cases whose name or group contains one of these words")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cpp.load()
    print(f"ns-3 import and hub compilation: {time.perf_counter() - t0:.1f} s")
    cases = reference_cases() + ([] if args.quick else incast_cases() + topology_cases())
    if args.only:
        cases = [c for c in cases if any(w in c.name or w in c.group for w in args.only)]
    rows = []
    for c in cases:
        f, n = run(c, "fluid"), run(c, "ns3")
        hs = handshake_rtt(Topology.from_scenario(c.scenario), c.pairs)
        o = c.options
        rows.append(f"| {c.name} | {o.host_qdisc}, {o.buffer_packets} p, {o.min_rto:g} s | {n['messages']} | "
                    f"{f['last']:.4g} | {n['last']:.4g} | {n['last'] / f['last']:.2f} | "
                    f"{n['last'] / (f['last'] + hs):.3f} | {f['median']:.4g} | {n['median']:.4g} | "
                    f"{n['median'] / f['median']:.2f} | {n['drops']} | {n['retx']} | {f['wall']:.2f} | "
                    f"{n['wall']:.1f} |")
        print(rows[-1], flush=True)
    print()
    print("| case | ns-3 hosts, ports, min RTO | messages | fluid last (s) | ns-3 last (s) | ratio | +hs | "
          "fluid median (s) | ns-3 median (s) | ratio | drops | retransmitted B | fluid wall (s) | ns-3 wall (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
