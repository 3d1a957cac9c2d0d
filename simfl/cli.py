"""Command line: thin wrappers over the library (`simfl run`, `simfl costs`, ...).

Exit status: 0 done; 2 a mistake in the input or a problem of the environment (one line on stderr says what, where
and what to do); 130 interrupted (Ctrl-C, SIGINT); 143 terminated (SIGTERM); 1 a bug (with its traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from simfl.errors import SimflError, os_error_of

Handler = Callable[[argparse.Namespace], int]
SEED_MAX = 2**32 - 1  # numpy's legacy RandomState (the authors' data split) takes seeds below 2^32
EXIT_USER, EXIT_SIGINT, EXIT_SIGTERM = 2, 130, 143


class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so that every `finally` and context manager runs (the learning
    engine stops its worker processes and removes its temp folders), like KeyboardInterrupt for SIGINT."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `simfl: error: ... (see simfl run --help)`, exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"simfl: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: the seed must be an integer from 0 to {SEED_MAX} (2^32 - 1)")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= {minimum}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: must be >= {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


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
    p = _Parser(prog="simfl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run one scenario and write a run directory")
    r.add_argument("scenario", nargs="?", default=None, help="scenario TOML (default: topologies/default.toml)")
    r.add_argument("--out", default=None, help="run directory (default: runs/<scenario>-seed<N>)")
    r.add_argument("--seed", type=_seed, default=None,
                   help=f"seed that fixes everything, 0..{SEED_MAX} (default: the scenario's)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. --set experiment.rounds=3 (repeatable)")
    r.add_argument("--device", default=None, help="learning device: cpu, cuda or auto")
    r.add_argument("--quiet", action="store_true", help="no progress display")
    r.add_argument("--no-cache", action="store_true",
                   help="always retrain (learning results are otherwise cached in $SIMFL_CACHE or .cache/simfl)")
    r.add_argument("--force", action="store_true", help="replace the finished run in --out (else refused)")
    r.set_defaults(handler=_cmd_run)

    w = sub.add_parser("sweep", help="run a grid of scenario variants; one table row per point")
    w.add_argument("scenario", nargs="?", default=None, help="scenario TOML (default: topologies/default.toml)")
    w.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...|KEY=[V1,...]",
                   help='vary a scenario key (repeatable: the grid is the product). Plain values: '
                        '"node_groups[0].uplink.bandwidth=1 Mbps,10 Mbps"; a value in double quotes keeps its '
                        'commas: \'synthetic.message_bytes=12 kB,"12,868 B"\'. A TOML/JSON array for any values, '
                        'lists included: \'synthetic.pattern=[["gather"], ["allpairs"]]\'')
    w.add_argument("--seeds", type=_count(1), default=1,
                   help="seeds per point: the scenario's seed, +1, ... (default 1; every seed < 2^32)")
    w.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key for every point (repeatable)")
    w.add_argument("--out", default=None, help="sweep directory (default: runs/sweep-<scenario>)")
    w.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local processes (default) or Ray tasks")
    w.add_argument("--jobs", type=_count(1), default=1,
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


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises Terminated in the main thread (once; a second SIGTERM during the clean-up is
    ignored so that the clean-up finishes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write to another disk",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
    errno.EACCES: "permission denied: choose a path you can write to, or change its permissions",
    errno.EPERM: "not permitted: choose a path you can write to, or change its permissions",
    errno.EROFS: "the file system is read-only: choose a path on a writable disk",
    errno.EISDIR: "it is a folder where a file is needed: give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EEXIST: "it exists already: remove it or choose another path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or run less at once",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
}


def _os_error_line(e: OSError) -> str:
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    what = e.strerror or str(e)
    hint = _HINTS.get(e.errno or 0, "check the path and the disk")
    if e.errno in (errno.EEXIST, errno.ENOTDIR) and e.filename is not None and os.path.isfile(e.filename):
        hint = "it is a file where a folder is needed: choose another path"
    return f"{where or 'a file operation'}: {what} ({hint})"


def _stdout_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone; if so stdout now points at /dev/null (the
    interpreter's last flush would fail again)."""
    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        if not any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0)):
            return False
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured output)
        return False
    return True


def _fail(line: str, status: int = EXIT_USER) -> int:
    print(f"simfl: {' '.join(line.splitlines())}", file=sys.stderr)  # one line, whatever the message holds
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a one-line usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USER
    if getattr(args, "no_cache", False):
        os.environ["SIMFL_CACHE"] = "off"
    try:
        with _sigterm_raises():
            status = int(args.handler(args) or 0)
            sys.stdout.flush()  # a closed stdout shows here, not in the interpreter's exit
            return status
    except SimflError as e:
        return _fail(f"error: {e}")
    except KeyboardInterrupt as e:
        return _fail("; ".join(["interrupted (SIGINT)", *getattr(e, "__notes__", [])]), EXIT_SIGINT)
    except Terminated as e:
        return _fail("; ".join(["terminated (SIGTERM)", *getattr(e, "__notes__", [])]), EXIT_SIGTERM)
    except BrokenPipeError as e:
        if e.filename is None and _stdout_gone():
            return _fail("error: standard output: broken pipe (the program reading simfl's output closed it "
                         "early); read all of it or redirect it to a file")
        return _fail(f"error: {_os_error_line(e)}")
    except MemoryError:
        return _fail("error: out of memory; free memory, or make the run smaller (fewer clients, "
                     "experiment.max_samples_per_client, experiment.workers)")
    except Exception as e:
        oe = os_error_of(e)
        if oe is None:
            raise
        return _fail(f"error: {_os_error_line(oe)}")


if __name__ == "__main__":
    sys.exit(main())
