"""Network simulation benchmark: all-pairs exchange of 12,868-byte messages (one AE-5 model) on a star.

    .venv/bin/python benchmarks/bench_network.py            # 90 and 1,000 nodes
    .venv/bin/python benchmarks/bench_network.py --nodes 90 --repeat 5
    .venv/bin/python benchmarks/bench_network.py --no-handshake    # the model without TCP's handshake

Each client has its own 100 Mbps / 0.5 ms link to one switch (the paper-90 network without the server); every client
sends one message to every other client at t = 0 (each pair's first message waits for TCP's handshake unless
--no-handshake). Prints, per size: messages, SimPy events processed, simulated end time, wall and CPU time of the
simulation (World + sends + run; the CPU time of this process is the steadier figure on a shared machine) and the
wall time of building the polars trace frames.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simfl.config import scenario_from_dict  # noqa: E402
from simfl.workloads import run_synthetic  # noqa: E402
from simfl.world import World  # noqa: E402


def star(n: int, message_bytes: int = 12868, handshake: bool = True):
    return scenario_from_dict({
        "name": f"star-{n}",
        "workload": "synthetic",
        "network": {"handshake": handshake},
        "nodes": [{"name": "s1", "kind": "switch"}],
        "node_groups": [{"prefix": "c", "count": n, "kind": "client",
                         "uplink": {"to": "s1", "bandwidth": "100 Mbps", "latency": "0.5 ms"}}],
        "synthetic": {"message_bytes": message_bytes, "pattern": ["allpairs"]},
    }, source=f"<star-{n}>")


def bench(n: int, handshake: bool = True) -> dict[str, float]:
    sc = star(n, handshake=handshake)
    t0, c0 = time.perf_counter(), time.process_time()
    world = World(sc)
    run_synthetic(world, sc)
    t_sim, c_sim = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    world.recorder.messages_frame()
    world.recorder.links_frame()
    t_frames = time.perf_counter() - t0
    return {"nodes": n, "messages": world.network.delivered, "events": world.events_processed,
            "sim_end_s": world.env.now, "wall_s": t_sim, "cpu_s": c_sim, "frames_s": t_frames}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[90, 1000])
    ap.add_argument("--repeat", type=int, default=1, help="runs per size; the best run (least CPU time) is reported")
    ap.add_argument("--handshake", action=argparse.BooleanOptionalAction, default=True,
                    help="each pair's first message waits for TCP's handshake (the default, as in a run)")
    args = ap.parse_args()
    print(f"# python {platform.python_version()}, {platform.machine()}, {platform.system()}")
    print(f"{'nodes':>6} {'messages':>10} {'events':>10} {'sim end (s)':>12} {'wall (s)':>9} {'cpu (s)':>8}"
          f" {'frames (s)':>10} {'msgs/s':>9}")
    for n in args.nodes:
        runs = [bench(n, args.handshake) for _ in range(args.repeat)]
        r = min(runs, key=lambda x: x["cpu_s"])
        print(f"{r['nodes']:>6} {r['messages']:>10,} {r['events']:>10,} {r['sim_end_s']:>12.6f} {r['wall_s']:>9.2f}"
              f" {r['cpu_s']:>8.3f} {r['frames_s']:>10.2f} {r['messages'] / r['wall_s']:>9,.0f}", flush=True)


if __name__ == "__main__":
    main()
