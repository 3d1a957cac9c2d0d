"""The shipped plants on both network backends: the default run's federated learning on each plant's network.

    .venv/bin/python benchmarks/plants_ns3.py                      # private-lte, wifi-cells-traffic, ...
    .venv/bin/python benchmarks/plants_ns3.py --only private-lte --out /tmp/plants

Each plant (PLANTS) runs with the experiment of topologies/default.toml capped at --samples samples per client and
without baselines (the preset of validate_ns3.py's fedad cases), as `simfl run` runs it (the runner, the learning
cache), once on the fluid model and once on ns-3 (network.model = "ns3"), into OUT/<plant>-<backend>. Overrides per
plant (OVERRIDES, on both backends): wifi-cells-traffic's [[traffic]] flows stop at 60 s (its background also runs
alone for as long as the workload: minutes of 802.11 in ns-3 otherwise), and a key the ns3 backend refuses is set
to what it supports (jitter 0). Printed per plant and backend: payload bytes of phase I and II (and whether the two
backends' are equal, byte for byte), the communities phase I found (their number and ARI), phase I and II
durations (simulated s), messages delivered and lost, and the run's wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simfl.config import load_scenario  # noqa: E402
from simfl.errors import SimflError  # noqa: E402
from simfl.ns3 import refuse_scenario  # noqa: E402
from simfl.runner import run  # noqa: E402
from simfl.topology import Topology  # noqa: E402

PLANTS = ("private-lte", "wifi-cells-traffic", "constrained-plant", "wifi-factory")
OVERRIDES = {"wifi-cells-traffic": ["traffic[*].stop=60 s"]}
JITTER_OFF = ["cells[*].jitter=0"]  # where the ns3 backend refuses jitter
PHASES = ("phase1", "phase2")


def scenario(plant: str, samples: int) -> tuple[object, list[str]]:
    """The plant with the default run's capped experiment, and the overrides it needed."""
    default = load_scenario(ROOT / "topologies" / "default.toml", [f"experiment.max_samples_per_client={samples}",
                                                                   "experiment.baselines=[]"])
    extra = list(OVERRIDES.get(plant, []))
    sc = load_scenario(ROOT / "topologies" / f"{plant}.toml", extra).replace(experiment=default.experiment)
    try:
        refuse_scenario(Topology.from_scenario(sc), sc)
    except SimflError as e:
        if "jitter" not in str(e):
            raise
        extra += JITTER_OFF
        sc = load_scenario(ROOT / "topologies" / f"{plant}.toml", extra).replace(experiment=default.experiment)
    return sc, extra


def one(sc: object, model: str, out: Path) -> dict:
    s = sc.replace(network=dataclasses.replace(sc.network, model=model))
    t0 = time.perf_counter()
    run(s, out, progress=False, force=True)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    summary["wall"] = time.perf_counter() - t0
    return summary


def row(plant: str, model: str, s: dict, same: bool) -> str:
    t = s["totals"]
    pay = " / ".join(f"{s['payload_bytes'][p]:,.0f}" for p in PHASES)
    dur = " / ".join(f"{s['duration_s'][p]:.4g}" for p in PHASES)
    ari = "-" if s.get("ari") is None else f"{s['ari']:.3f}"
    return (f"| {plant} | {model} | {pay} | {'yes' if same else 'NO'} | {len(s['communities'])} ({ari}) | {dur} | "
            f"{t['messages']:,} / {t['messages_lost']:,} | {s['wall']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", default=list(PLANTS), metavar="PLANT")
    ap.add_argument("--samples", type=int, default=100, help="samples per client (default 100)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/simfl-plants"), help="run folders' parent")
    args = ap.parse_args()
    rows = []
    for plant in args.only:
        sc, extra = scenario(plant, args.samples)
        print(f"- {plant}: overrides {extra or 'none'}", flush=True)
        f = one(sc, "fluid", args.out / f"{plant}-fluid")
        n = one(sc, "ns3", args.out / f"{plant}-ns3")
        same = all(f["payload_bytes"][p] == n["payload_bytes"][p] for p in PHASES)
        rows += [row(plant, "fluid", f, same), row(plant, "ns3", n, same)]
        print("\n".join(rows[-2:]), flush=True)
    print("\n| plant | backend | payload B, phase I / II | equal | communities (ARI) | phase I / II (s) | "
          "messages delivered / lost | wall (s) |\n|---|---|---:|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
