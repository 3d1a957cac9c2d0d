"""Command line: thin wrappers over the library (`simfl run`, `simfl costs`, ...)."""

from __future__ import annotations

import argparse
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
    r.set_defaults(handler=_cmd_run)

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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
