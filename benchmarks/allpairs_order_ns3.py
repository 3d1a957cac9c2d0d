"""Why all-pairs of 10 clients in id order with fair-queueing hosts ends later on ns-3 than in the fluid model.

    .venv/bin/python benchmarks/allpairs_order_ns3.py          # a few minutes (43 small ns-3 runs, its import once)

The case of benchmarks/validate_ns3.py ("all-pairs 10, id order, fq hosts"): the first 10 clients of paper-90 (100
Mbps, 0.5 ms links to one switch) each send one 12,868-byte message to every other at t = 0. Printed:

1. the last delivery in the fluid model and on ns-3 (host queue discipline "fq", the backend's default), in id and in
   rotated send order, for ten salts of fq_codel's flow hash (ns-3's `Perturbation`; the backend leaves it at
   ns-3's default, 0) and with ns-3's set-associative hash (`EnableSetAssociativeHash`: no two of a host's flows
   share a queue);
2. for three of those runs, from ns-3's own pcap files: per receiver, when its switch port starts and ends sending
   the data of its 9 incoming messages, the pure ACKs it sends meanwhile and the time it stays idle (docs/ns3.md,
   "All-pairs in id order with fair-queueing hosts", reads the figures).
"""

from __future__ import annotations

import statistics
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simfl.config import load_scenario  # noqa: E402
from simfl.ns3 import Ns3Network, Ns3Options  # noqa: E402
from simfl.workloads import pattern_pairs  # noqa: E402
from simfl.world import World  # noqa: E402

P90 = load_scenario(ROOT / "topologies" / "paper-90.toml")
CLIENTS = list(P90.clients[:10])
ORDERS = {"id": pattern_pairs("allpairs", CLIENTS, None),
          "rotated": [(a, CLIENTS[(i + k) % 10]) for i, a in enumerate(CLIENTS) for k in range(1, 10)]}
RATE = 100e6  # the clients' links, bit/s
LINK_HEADER = 38  # bytes on the wire beyond the IP packet (the pcap holds a 2-byte PPP header instead)


def run(order: str, salt: int | None, assoc: bool = False, pcap: Path | None = None) -> float:
    """The last delivery (s): fluid with salt None, else ns-3 with that hash salt (and set-associative hashing)."""
    w = World(P90)
    if salt is not None:
        from ns import ns

        ns.Config.SetDefault("ns3::FqCoDelQueueDisc::Perturbation", ns.UintegerValue(salt))
        ns.Config.SetDefault("ns3::FqCoDelQueueDisc::EnableSetAssociativeHash", ns.BooleanValue(assoc))
        w.network = Ns3Network.for_scenario(w.env, w.topology, P90, w.recorder, pcap_dir=pcap,
                                            options=Ns3Options(host_qdisc="fq", ns3_pcap=pcap is not None))
    w.network.keep_unclaimed = False
    for a, b in ORDERS[order]:
        w.network.send(a, b, kind="synthetic", phase="synthetic", round=0, payload_bits=8 * 12868)
    w.env.run()
    w.close()
    return max(w.recorder.messages_frame()["t_deliver"].to_list())


def packets(path: Path) -> list[tuple[float, int, int]]:
    """(time, IP bytes, TCP payload bytes) of each TCP packet of an ns-3 pcap file (PPP link type, ns timestamps)."""
    b = path.read_bytes()
    out, off = [], 24
    while off + 16 <= len(b):
        sec, ns_, incl, _ = struct.unpack("<IIII", b[off:off + 16])
        ip = b[off + 18:off + 16 + incl]  # after the 2-byte PPP header
        off += 16 + incl
        if ip[9] == 6:
            ihl, total = (ip[0] & 15) * 4, struct.unpack(">H", ip[2:4])[0]
            out.append((sec + ns_ * 1e-9, total, total - ihl - (ip[ihl + 12] >> 4) * 4))
    return out


def ports(folder: Path) -> None:
    """Per receiver: its switch port's data period, the pure ACKs it carries then, and its idle time in it."""
    for c in CLIENTS:
        down = packets(folder / f"{c}-s1.s1.pcap")
        wire = [(t, (ipb + LINK_HEADER) * 8 / RATE, data) for t, ipb, data in down]
        data = [p for p in wire if p[2]]
        t0, t1 = data[0][0], data[-1][0] + data[-1][1]
        inside = [p for p in wire if t0 <= p[0] < t1]
        acks = [p for p in inside if not p[2]]
        idle = (t1 - t0) - sum(p[1] for p in inside)
        ack_s = sum(p[1] for p in acks)
        print(f"  {c}: data {t0 * 1e3:.3f}-{t1 * 1e3:.3f} ms, {len(acks)} pure ACKs ({ack_s * 1e3:.3f} ms) among it, "
              f"idle {max(0.0, idle) * 1e3:.3f} ms")


def main() -> None:
    for order in ORDERS:
        print(f"{order} order: fluid last {run(order, None) * 1e3:.3f} ms")
        for assoc in (False, True):
            last = [run(order, s, assoc) * 1e3 for s in range(10)]
            print(f"  ns-3, {'set-associative hash' if assoc else 'fq_codel hash'}, salts 0-9: last "
                  f"{' '.join(f'{x:.2f}' for x in last)} ms (median {statistics.median(last):.2f})")
    with tempfile.TemporaryDirectory() as tmp:
        for order, assoc in (("id", False), ("id", True), ("rotated", False)):
            folder = Path(tmp) / f"{order}-{assoc}"
            last = run(order, 0, assoc, folder)
            print(f"{order} order, salt 0{', set-associative hash' if assoc else ''}: last {last * 1e3:.3f} ms; "
                  "receivers' switch ports:")
            ports(folder)


if __name__ == "__main__":
    main()
