"""Command line: thin wrappers over the library (`simfl run`, `simfl costs`, ...)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from simfl.errors import SimflError

Handler = Callable[[argparse.Namespace], int]


def _cmd_run(args: argparse.Namespace) -> int:
    from simfl.runner import run_cli

    return run_cli(args)


def _cmd_costs(args: argparse.Namespace) -> int:
    from simfl.costs import costs_cli

    return costs_cli(args)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from simfl.sweep import sweep_cli

    return sweep_cli(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from simfl.export import export_cli

    return export_cli(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simfl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run one scenario and write a run directory")
    r.add_argument("scenario", nargs="?", default=None, help="scenario TOML (default: topologies/default.toml)")
    r.add_argument("--out", default=None, help="run directory (default: runs/<scenario>-seed<N>)")
    r.add_argument("--seed", type=int, default=None, help="seed that fixes everything (default: the scenario's)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. --set experiment.rounds=3 (repeatable)")
    r.add_argument("--device", default=None, help="learning device: cpu, cuda or auto")
    r.add_argument("--quiet", action="store_true", help="no progress display")
    r.add_argument("--no-cache", action="store_true",
                   help="always retrain (learning results are otherwise cached in $SIMFL_CACHE or .cache/simfl)")
    r.set_defaults(handler=_cmd_run)

    w = sub.add_parser("sweep", help="run a grid of scenario variants; one table row per point")
    w.add_argument("scenario", nargs="?", default=None, help="scenario TOML (default: topologies/default.toml)")
    w.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...|KEY=[V1,...]",
                   help='vary a scenario key (repeatable: the grid is the product). Plain values: '
                        '"node_groups[0].uplink.bandwidth=1 Mbps,10 Mbps"; a value in double quotes keeps its '
                        'commas: \'synthetic.message_bytes=12 kB,"12,868 B"\'. A TOML/JSON array for any values, '
                        'lists included: \'synthetic.pattern=[["gather"], ["allpairs"]]\'')
    w.add_argument("--seeds", type=int, default=1,
                   help="seeds per point: the scenario's seed, +1, ... (default 1; every seed < 2^32)")
    w.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key for every point (repeatable)")
    w.add_argument("--out", default=None, help="sweep directory (default: runs/sweep-<scenario>)")
    w.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local processes (default) or Ray tasks")
    w.add_argument("--jobs", type=int, default=1,
                   help="parallel local processes for the replayed points (>= 1; default 1); with --executor ray, "
                        "the CPUs of the local Ray instance (at least 2)")
    w.add_argument("--address", default=None,
                   help="Ray cluster address (default: start a local Ray instance); a cluster with token "
                        "authentication needs RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN, the file "
                        "RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token")
    w.add_argument("--quiet", action="store_true", help="no progress display")
    w.add_argument("--no-cache", action="store_true", help="retrain at every point (for comparison)")
    w.set_defaults(handler=_cmd_sweep)

    c = sub.add_parser("costs", help="print the paper's closed-form communication costs")
    c.add_argument("--clients-per-class", "-p", type=int, default=9)
    c.add_argument("--classes", type=int, default=10)
    c.add_argument("--rounds", "-r", type=int, default=10)
    c.add_argument("--communities", "-k", type=int, default=7)
    c.add_argument("--phase1-params", type=int, default=3217,
                   help="phase-I model params (default: AE-5, 3,217)")
    c.add_argument("--phase2-params", type=int, default=28353,
                   help="phase-II model params (default: AE-7, 28,353)")
    c.add_argument("--samples-per-client", type=int, default=None,
                   help="samples per client for the centralised cost (default: the 60,000-image train set)")
    c.set_defaults(handler=_cmd_costs)

    x = sub.add_parser("export", help="export a run's traffic: pcap for tshark/Wireshark, or the message trace")
    x.add_argument("run", metavar="RUN", help="run directory written by `simfl run`")
    x.add_argument("--format", required=True, metavar="pcap|csv|parquet",
                   help="pcap: one record per packet (raw IPv4/UDP, ns timestamps); csv/parquet: the message trace")
    x.add_argument("--per-link", action="store_true",
                   help="pcap: one file per link direction and per shared cell instead of one for the network")
    x.add_argument("--out", default=None, metavar="PATH",
                   help="output file (or directory with --per-link); default: RUN/export/network.pcap, "
                        "RUN/export/pcap/, RUN/export/messages.csv|parquet")
    x.add_argument("--snaplen", type=int, default=None, metavar="N",
                   help="pcap: bytes captured per packet, 28..65535 (default 64); orig_len keeps the true size")
    x.add_argument("--force", action="store_true", help="overwrite existing output")
    x.set_defaults(handler=_cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "no_cache", False):
        os.environ["SIMFL_CACHE"] = "off"
    try:
        return int(args.handler(args) or 0)
    except SimflError as e:
        print(f"simfl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simfl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
