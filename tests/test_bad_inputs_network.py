"""A catalogue of bad inputs to the network keys added after the first catalogues: asymmetric links, loss and burst
loss, jitter, capacity traces (the files too), [[faults]], [[traffic]], the transport keys of [network]
(handshake, give_up, buffer, initial_window, the ns3 backend's keys), the send orders, and `--set` of them. Each goes
through `simfl run` (simfl.cli.main) on a network-only scenario and must end with exit status 2 and one stderr line,
"simfl: error: <file>: <key> = <value>: ...", that names the key (or the path) at fault: never a traceback, never a
run, never a hang (a few of them ran for ever before: the cases say which).

Then inputs that look odd but mean something: they must run, and give what a hand calculation gives.
"""

from __future__ import annotations

import builtins
import errno
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_config import BASE  # switch s1, server srv (1 Gbps, 0.5 ms), clients c0 .. c2 (100 Mbps, 1 ms)

import simfl.linkmodels
from simfl.cli import main

LINK = '\n[[links]]\na = "c0"\nb = "c1"\n'  # a direct c0-c1 link (1 ms less than through s1: routes use it)
TRACE = LINK + 'bandwidth_trace = "{}"\n'
AP = ('\n[[nodes]]\nname = "ap1"\nkind = "ap"\nuplink = { to = "s1", bandwidth = "1 Gbps" }\n'
      '[[nodes]]\nname = "w0"\nkind = "client"\ncell = "w"\n[[nodes]]\nname = "w1"\nkind = "client"\ncell = "w"\n'
      '[[cells]]\nname = "w"\nap = "ap1"\n')
PERIODIC = '\n[[traffic]]\nname = "p"\nsrc = "srv"\ndst = "c0"\nkind = "periodic"\nbytes = 100\nperiod = "10 ms"\n'
CBR = '\n[[traffic]]\nname = "{name}"\nsrc = "srv"\ndst = "c0"\nkind = "cbr"\nrate = "{rate}"\npriority = "control"\n'
# trace files written into the test's folder ("FIFO": a named pipe)
FILES: dict[str, bytes | str] = {
    "ok.csv": b"time_s,bandwidth_bps\n0,1e6\n0.5,2e6\n", "empty.csv": b"", "header.csv": b"time_s,bandwidth_bps\n",
    "unsorted.csv": b"0,1e6\n2,1e6\n1,1e6\n", "negative.csv": b"0,-1e6\n", "zero.csv": b"0,0\n",
    "words.csv": b"0,fast\n", "nan.csv": b"0,nan\n", "three.csv": b"0,1e6,3\n", "late.csv": b"1,1e6\n",
    "binary.csv": bytes([0xFF, 0xFE, 0, 1, 0x80]), "units.csv": b"0 s,1 Mbps\n", "semicolon.csv": b"0;1e6\n",
    "close.csv": b"0,1e6\n1e-300,2e6\n", "slow.csv": b"0,1e-3\n", "pipe.csv": "FIFO", "one.csv": b"0,1e8\n",
}


def net(body: str) -> str:
    return BASE + "\n[network]\n" + body + "\n"


def link(body: str) -> str:
    return BASE + LINK + body + "\n"


def fault(body: str) -> str:
    return BASE + "\n[[faults]]\n" + body + "\n"


def flow(body: str, base: str = BASE) -> str:
    return base + '\n[[traffic]]\nname = "f"\nsrc = "srv"\ndst = "c0"\n' + body + "\n"


@dataclass(frozen=True)
class Bad:
    """A scenario `text` ({tmp}: the test's folder, holding FILES) run with `args`; the error line must contain
    `names`."""

    names: str
    text: str = BASE
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


CASES = {
    # ------------------------------------------------------------------------------------ [network]: transport
    "give-up-bare-zero": Bad("network.give_up = 0: time must be positive", net("give_up = 0")),
    "give-up-negative": Bad('network.give_up = "-1 s": time must be positive', net('give_up = "-1 s"')),
    "give-up-in-days": Bad("network.give_up = \"2 days\": unknown unit 'days'", net('give_up = "2 days"')),
    "give-up-inf": Bad("network.give_up = inf: inf is not a finite time", net("give_up = inf")),
    "give-up-nan": Bad("network.give_up = nan: nan is not a finite time", net("give_up = nan")),
    "give-up-over-a-day": Bad("network.give_up = 86401: time must be at most 86400 s", net("give_up = 86401")),
    "handshake-word": Bad('network.handshake = "no": expected true or false', net('handshake = "no"')),
    "handshake-number": Bad("network.handshake = 0: expected true or false", net("handshake = 0")),
    "buffer-zero": Bad("network.buffer = 0: must be >= 1", net("buffer = 0")),
    "buffer-fraction": Bad("network.buffer = 1.5: expected an integer", net("buffer = 1.5")),
    "buffer-huge": Bad("network.buffer = 10000000000: must be <= 1,000,000,000", net("buffer = 10000000000")),
    "initial-window-zero": Bad("network.initial_window = 0: must be >= 1", net("initial_window = 0")),
    "initial-window-huge": Bad("network.initial_window = 100000: must be <= 65,535", net("initial_window = 100000")),
    "model-typo": Bad("network.model = \"ns-3\": must be one of fluid, ns3; did you mean 'ns3'?",
                      net('model = "ns-3"')),
    "qdisc-unknown": Bad('network.host_qdisc = "red": must be one of fq, fq_codel, fifo', net('host_qdisc = "red"')),
    "min-rto-zero": Bad("network.min_rto = 0: time must be positive", net("min_rto = 0")),
    "min-rto-bare-ms": Bad("network.min_rto = 200: time must be at most 60 s", net("min_rto = 200")),
    "delayed-ack-2s": Bad('network.delayed_ack = "2 s": time must be at most 1 s', net('delayed_ack = "2 s"')),
    "syn-timeout-negative": Bad('network.syn_timeout = "-1 s": time must be positive', net('syn_timeout = "-1 s"')),
    # ------------------------------------------------------------------------------------ direction keys, loss
    "bandwidth-up-negative": Bad('links[0].bandwidth_up = "-1 Mbps": bandwidth must be positive',
                                 link('bandwidth_up = "-1 Mbps"\nbandwidth_down = "1 Mbps"')),
    "bandwidth-up-alone": Bad("links[0].bandwidth: missing (required: each direction's capacity",
                              link('bandwidth_up = "1 Mbps"')),
    "bandwidth-down-nan": Bad("links[0].bandwidth_down = nan: nan is not a finite rate",
                              link("bandwidth_up = 1e6\nbandwidth_down = nan")),
    "bandwidth-up-unitless-string": Bad("links[0].bandwidth_up = \"10\": '10' has no unit",
                                        link('bandwidth_up = "10"\nbandwidth_down = 1e6')),
    "latency-up-negative": Bad('links[0].latency_up = "-1 ms": latency must not be negative',
                               link('bandwidth = 1e6\nlatency_up = "-1 ms"')),
    "latency-down-is-a-rate": Bad("links[0].latency_down = \"1 Mbps\": unknown unit 'Mbps' for a time",
                                  link('bandwidth = 1e6\nlatency_down = "1 Mbps"')),
    "loss-one": Bad("links[0].loss = 1.0: must lie in [0, 0.5]", link("bandwidth = 1e6\nloss = 1.0")),
    "loss-percent": Bad('links[0].loss = "1%": expected a number', link('bandwidth = 1e6\nloss = "1%"')),
    "loss-negative": Bad("links[0].loss = -0.1: must lie in [0, 0.5]", link("bandwidth = 1e6\nloss = -0.1")),
    "loss-nan": Bad("links[0].loss = nan: must be finite", link("bandwidth = 1e6\nloss = nan")),
    "loss-up-inf": Bad("links[0].loss_up = inf: must be finite", link("bandwidth = 1e6\nloss_up = inf")),
    "burst-zero-run": Bad("links[0].burst_loss.burst = 0: must lie in [1, 1e+09]",
                          link("bandwidth = 1e6\nburst_loss = { burst = 0, gap = 1 }")),
    "burst-good-one": Bad("links[0].burst_loss.good = 1.0: must lie in [0, 1)",
                          link("bandwidth = 1e6\nburst_loss = { burst = 1, gap = 1, good = 1.0, bad = 0.0 }")),
    "burst-key-typo": Bad("links[0].burst_loss.bda = 0.1: unknown key; did you mean 'bad'?",
                          link("bandwidth = 1e6\nburst_loss = { burst = 1, gap = 1, bda = 0.1 }")),
    "burst-not-a-table": Bad("links[0].burst_loss = 0.1: expected a table", link("bandwidth = 1e6\nburst_loss = 0.1")),
    "jitter-inf": Bad("links[0].jitter = inf: inf is not a finite time", link("bandwidth = 1e6\njitter = inf")),
    "jitter-hours": Bad('links[0].jitter = "2 h"', link('bandwidth = 1e6\njitter = "2 h"')),
    "link-buffer-zero": Bad("links[0].buffer = 0: must be >= 1", link("bandwidth = 1e6\nbuffer = 0")),
    "cell-buffer-zero": Bad("cells[0].buffer = 0: must be >= 1", BASE + AP + 'bandwidth = "10 Mbps"\nbuffer = 0\n'),
    "cell-up-alone": Bad("cells[0].bandwidth: missing (required", BASE + AP + 'bandwidth_up = "10 Mbps"\n'),
    # ------------------------------------------------------------------------------------ capacity trace files
    "trace-folder": Bad('links[0].bandwidth_trace = ".": {tmp} is a folder; give a CSV file', BASE + TRACE.format(".")),
    "trace-empty": Bad("{tmp}/empty.csv: no change points", BASE + TRACE.format("empty.csv")),
    "trace-header-only": Bad("{tmp}/header.csv: no change points", BASE + TRACE.format("header.csv")),
    "trace-negative": Bad("{tmp}/negative.csv: line 1: bandwidth -1e+06 bit/s is outside 1 .. 1e+15 bit/s",
                          BASE + TRACE.format("negative.csv")),
    "trace-zero": Bad("{tmp}/zero.csv: line 1: bandwidth 0 bit/s is outside", BASE + TRACE.format("zero.csv")),
    "trace-below-1-bps": Bad("{tmp}/slow.csv: line 1: bandwidth 0.001 bit/s is outside",
                             BASE + TRACE.format("slow.csv")),
    "trace-words": Bad("{tmp}/words.csv: line 1: expected two numbers, time_s,bandwidth_bps (got '0,fast')",
                       BASE + TRACE.format("words.csv")),
    "trace-nan": Bad("{tmp}/nan.csv: line 1: numbers must be finite", BASE + TRACE.format("nan.csv")),
    "trace-three-columns": Bad("{tmp}/three.csv: line 1: expected two numbers", BASE + TRACE.format("three.csv")),
    "trace-late-start": Bad("{tmp}/late.csv: line 1: the first change point must be at time 0 (got 1)",
                            BASE + TRACE.format("late.csv")),
    "trace-binary": Bad("{tmp}/binary.csv: not a text file (invalid start byte at byte 0)",
                        BASE + TRACE.format("binary.csv")),
    "trace-units-in-cells": Bad("{tmp}/units.csv: line 1: expected two numbers", BASE + TRACE.format("units.csv")),
    "trace-semicolons": Bad("{tmp}/semicolon.csv: line 1: expected two numbers", BASE + TRACE.format("semicolon.csv")),
    "trace-under-a-file": Bad('links[0].bandwidth_trace = "ok.csv/x.csv": cannot read {tmp}/ok.csv/x.csv: Not a '
                              "directory", BASE + TRACE.format("ok.csv/x.csv")),
    "trace-empty-path": Bad('links[0].bandwidth_trace = "": {tmp} is a folder', BASE + TRACE.format("")),
    "trace-a-number": Bad("links[0].bandwidth_trace = 5: expected a string", link("bandwidth_trace = 5")),
    # these three ran for ever: a pipe nobody writes (open waited), and change points closer than the clock
    "trace-pipe": Bad("{tmp}/pipe.csv: not a regular file (a device, pipe or socket)", BASE + TRACE.format("pipe.csv")),
    "trace-device": Bad("/dev/zero: not a regular file", BASE + TRACE.format("/dev/zero")),
    "trace-points-1e-300-apart": Bad("{tmp}/close.csv: line 2: change points must be at least 1e-06 s apart",
                                     BASE + TRACE.format("close.csv")),
    "trace-period-nanosecond": Bad("links[0].bandwidth_trace_period = 1e-09: time must be at least 1 us",
                                   link('bandwidth_trace = "ok.csv"\nbandwidth_trace_period = 1e-9')),
    "trace-period-zero": Bad("links[0].bandwidth_trace_period = 0: time must be positive",
                             link('bandwidth_trace = "ok.csv"\nbandwidth_trace_period = 0')),
    "trace-period-too-short": Bad('links[0].bandwidth_trace_period = "0.1 s": must exceed the trace\'s last time '
                                  "(0.5 s in", link('bandwidth_trace = "ok.csv"\nbandwidth_trace_period = "0.1 s"')),
    # a traceback (KeyError) before: a node's own trace, longer than the period its group gives
    "override-trace-longer-than-the-group-period": Bad(
        'node_groups[0].uplink.bandwidth_trace_period = "0.2 s": must exceed the trace\'s last time (0.5 s in '
        "{tmp}/ok.csv)", BASE.replace('bandwidth = "100 Mbps", ', 'bandwidth_trace = "one.csv", '
                                      'bandwidth_trace_period = "0.2 s", ')
        + '\n[node_overrides.c1]\nuplink.bandwidth_trace = "ok.csv"\n'),
    # ------------------------------------------------------------------------------------ [[faults]]
    "fault-link-reversed": Bad('faults[0].link = "s1-c0": unknown link (links: srv-s1, c0-s1, c1-s1, c2-s1)',
                               fault('link = "s1-c0"\ndown = "1 s"')),
    "fault-node-unknown": Bad('faults[0].node = "c9": unknown node; did you mean', fault('node = "c9"\ndown = 0')),
    "fault-link-names-a-cell": Bad('faults[0].link = "w": unknown link', BASE + AP + 'bandwidth = "10 Mbps"\n'
                                   '[[faults]]\nlink = "w"\ndown = 0\n'),
    "fault-renamed-uplink": Bad('faults[0].link = "c0-s1": unknown link; did you mean', BASE + '\n[node_overrides.c0]\n'
                                'uplink.name = "up0"\n[[faults]]\nlink = "c0-s1"\ndown = 0\n'),
    "fault-up-equals-down": Bad('faults[0].up = "2 s": must be later than down ("2 s")',
                                fault('link = "c0-s1"\ndown = "2 s"\nup = "2 s"')),
    "fault-every-zero": Bad("faults[0].every = 0: time must be positive", fault('link = "c0-s1"\nevery = 0\n'
                                                                                'duration = "1 s"')),
    "fault-duration-zero": Bad("faults[0].duration = 0: time must be positive",
                               fault('link = "c0-s1"\nevery = "1 s"\nduration = 0')),
    "fault-only-duration": Bad("faults[0].every: missing (required for repeating outages",
                               fault('link = "c0-s1"\nduration = "1 s"')),
    "fault-down-nan": Bad("faults[0].down = nan: nan is not a finite time", fault('link = "c0-s1"\ndown = nan')),
    "fault-down-1e300": Bad("faults[0].down = 1e+300: time must be at most 31536000 s",
                            fault('link = "c0-s1"\ndown = 1e300')),
    "fault-link-number": Bad("faults[0].link = 3: expected a string", fault("link = 3\ndown = 0")),
    "fault-key-typo": Bad("faults[0].dwon = 0: unknown key; did you mean 'down'?", fault('link = "c0-s1"\ndwon = 0')),
    "faults-not-a-list": Bad('faults = { link = "c0-s1" }: expected a list of tables',
                             'faults = { link = "c0-s1" }\n' + BASE),
    # these two ran for ever (an outage edge every 1e-300 s, or every nanosecond of an 8 ms exchange)
    "fault-every-1e-300": Bad("faults[0].every = 1e-300: time must be at least 1 us",
                              fault('link = "c0-s1"\nevery = 1e-300\nduration = 1e-301')),
    "fault-every-nanosecond": Bad("faults[0].every = 1e-09: time must be at least 1 us",
                                  fault('link = "c0-s1"\nevery = 1e-9\nduration = 5e-10')),
    # ------------------------------------------------------------------------------------ [[traffic]]
    "traffic-src-unknown": Bad('traffic[0].src = "plc": unknown node', flow('kind = "bulk"\nbytes = 1')
                               .replace('src = "srv"', 'src = "plc"')),
    "traffic-dst-unknown": Bad('traffic[0].dst = "c9": unknown node; did you mean', flow('kind = "bulk"\nbytes = 1')
                               .replace('dst = "c0"', 'dst = "c9"')),
    "traffic-period-nanosecond": Bad('traffic[0].period = "1 ns": time must be at least 1 us',
                                     flow('kind = "periodic"\nbytes = 100\nperiod = "1 ns"')),
    "traffic-period-negative": Bad('traffic[0].period = "-1 ms": time must be positive',
                                   flow('kind = "periodic"\nbytes = 100\nperiod = "-1 ms"')),
    "traffic-frame-over-1-TiB": Bad('traffic[0].bytes = "2 TiB": size must be at most 1 TiB',
                                    flow('kind = "bulk"\nbytes = "2 TiB"')),
    "traffic-frame-fraction": Bad("traffic[0].bytes = 1.5: must be a whole number of bytes",
                                  flow('kind = "bulk"\nbytes = 1.5')),
    "traffic-packet-zero": Bad("traffic[0].packet = 0: size must be positive",
                               flow('kind = "cbr"\nrate = "1 Mbps"\npacket = 0')),
    "traffic-kind-cyclic": Bad('traffic[0].kind = "cyclic": must be one of cbr, periodic, onoff, bulk',
                               flow('kind = "cyclic"')),
    "traffic-transport-udp": Bad('traffic[0].transport = "udp": must be one of datagram, tcp',
                                 flow('kind = "bulk"\nbytes = 1\ntransport = "udp"')),
    "traffic-cbr-without-rate": Bad('traffic[0].rate: missing (required by kind "cbr": rate, packet)',
                                    flow('kind = "cbr"')),
    "traffic-stop-equals-start": Bad('traffic[0].stop = "1 s": must be later than start (1 s)',
                                     flow('kind = "bulk"\nbytes = 1\nstart = "1 s"\nstop = "1 s"')),
    "traffic-start-negative": Bad('traffic[0].start = "-1 s": time must not be negative',
                                  flow('kind = "bulk"\nbytes = 1\nstart = "-1 s"')),
    "traffic-a-year-of-microsecond-frames": Bad(
        'traffic[0].stop = "31536000 s": the background flows send about 31,536,000,000,000 frames',
        flow('kind = "periodic"\nbytes = 100\nperiod = "1 us"\nstop = "31536000 s"')),
    "traffic-duplicate-name": Bad('traffic[1].name = "p": duplicate traffic flow (already declared at traffic[0])',
                                  BASE + PERIODIC + PERIODIC),
    "traffic-name-with-space": Bad('traffic[0].name = "my flow": names may use only', BASE + PERIODIC
                                   .replace('"p"', '"my flow"')),
    "traffic-not-a-list": Bad("traffic = 5: expected a list of tables", "traffic = 5\n" + BASE),
    "traffic-bulk-every-picosecond": Bad("traffic[0].every = 1e-12: time must be at least 1 us",
                                         flow('kind = "bulk"\nbytes = "1 MB"\nevery = 1e-12')),
    # an on period shorter than one frame's gap sent one frame per cycle: 1,000 bytes every 2 us, "at 1 Mbps"
    "traffic-on-shorter-than-a-frame": Bad('traffic[0].on = "1 us": is shorter than the gap between two frames at '
                                           "this rate (8 ms: 1,000 bytes at 1 Mbps)",
                                           flow('kind = "onoff"\nrate = "1 Mbps"\npacket = 1000\non = "1 us"\n'
                                                'off = "1 us"\nstop = "1 s"')),
    # control traffic at or above a capacity, without a stop: every other flow starved and the run never ended
    "control-over-capacity": Bad('traffic[0] = "ctl": control traffic without a stop sends 210.685 Mbit/s on the wire '
                                 "(headers included) through s1>c0 (link c0-s1), whose capacity is 100 Mbit/s",
                                 BASE + CBR.format(name="ctl", rate="200 Mbps")),
    "control-payload-at-capacity": Bad('traffic[0] = "ctl": control traffic without a stop sends 105.342 Mbit/s',
                                       BASE + CBR.format(name="ctl", rate="100 Mbps")),
    "control-flows-together": Bad('traffic[0] = "a" and traffic[1] = "b": control traffic without a stop sends '
                                  "101.129 Mbit/s", BASE + CBR.format(name="a", rate="48 Mbps")
                                  + CBR.format(name="b", rate="48 Mbps")),
    # c0's own link down for good: its 100 Mbps control flow goes over the 50 Mbps backup link, for ever (it ran for
    # ever: the check looked at the routes before the outage)
    "control-over-the-backup-link": Bad(
        'traffic[0] = "ctl": control traffic without a stop sends 105.342 Mbit/s on the wire (headers included) '
        "through c1>c0 (link c0-c1), whose capacity is 50 Mbit/s",
        BASE + LINK + 'bandwidth = "50 Mbps"\nlatency = "5 ms"\n' + CBR.format(name="ctl", rate="100 Mbps")
        + '\n[[faults]]\nlink = "c0-s1"\ndown = 0\n'),
    # ------------------------------------------------------------------------------------ send orders
    "send-order-typo": Bad("synthetic.send_order = \"rotate\": must be one of id, rotated, random; did you mean "
                           "'rotated'?", BASE + '\n[synthetic]\nsend_order = "rotate"\n'),
    "send-order-number": Bad("experiment.send_order = 3: expected a string", BASE + "\n[experiment]\nsend_order = 3\n"),
    # ------------------------------------------------------------------------------------ --set of the new keys
    "set-faults-star-none": Bad("--set faults[*].up=1 s: faults has no entries", args=("--set", "faults[*].up=1 s")),
    "set-traffic-star-none": Bad("--set traffic[*].stop=1 s: traffic has no entries",
                                 args=("--set", "traffic[*].stop=1 s")),
    "set-burst-half-table": Bad("node_groups[0].uplink.burst_loss.gap: missing",
                                args=("--set", "node_groups[0].uplink.burst_loss.burst=5")),
    "set-loss-percent": Bad('node_groups[0].uplink.loss = "5%": expected a number',
                            args=("--set", "node_groups[0].uplink.loss=5%")),
    "set-give-up-forever": Bad("network.give_up = \"forever\": cannot read 'forever' as a time",
                               args=("--set", "network.give_up=forever")),
    "set-handshake-yes": Bad('network.handshake = "yes": expected true or false',
                             args=("--set", "network.handshake=yes")),
    "set-faults-up-before-down": Bad('faults[0].up = "1 s": must be later than down ("2 s")',
                                     args=("--set", 'faults=[{link="c0-s1", down="2 s", up="1 s"}]')),
    "set-traffic-to-itself": Bad('traffic[0].dst = "c0": a flow needs two different nodes',
                                 args=("--set", 'traffic=[{name="x", src="c0", dst="c0", kind="bulk", bytes=1}]')),
    "set-traffic-to-a-lone-switch": Bad('traffic[0].dst = "lone": no chain of links or cells connects srv to lone',
                                        BASE + '\n[[nodes]]\nname = "lone"\nkind = "switch"\n',
                                        ("--set", 'traffic=[{name="x", src="srv", dst="lone", kind="bulk", bytes=1}]')),
    "set-latency-down-nan": Bad("node_groups[0].uplink.latency_down = nan: nan is not a finite time",
                                args=("--set", "node_groups[0].uplink.latency_down=nan")),
    "set-initial-window-fraction": Bad("network.initial_window = 10.5: expected an integer",
                                       args=("--set", "network.initial_window=10.5")),
    "set-period-without-trace": Bad('node_groups[0].uplink.bandwidth_trace_period = "1 s": repeats a capacity trace, '
                                    "but no bandwidth_trace is given",
                                    args=("--set", "node_groups[0].uplink.bandwidth_trace_period=1 s")),
}


@pytest.fixture()
def trace_files(tmp_path: Path) -> None:
    for name, data in FILES.items():
        if data == "FIFO":
            os.mkfifo(tmp_path / name)
        else:
            (tmp_path / name).write_bytes(data)  # type: ignore[arg-type]


def test_the_catalogue_is_large_and_distinct() -> None:
    assert len(CASES) >= 60
    assert len({(c.text, c.args) for c in CASES.values()}) == len(CASES)


def run_error(text: str, args: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    """Write `text` to {tmp}/x.toml, run it; assert exit status 2, no traceback, one line; return (path, line)."""
    path = tmp_path / "x.toml"
    path.write_text(text.replace("{tmp}", str(tmp_path)))
    capsys.readouterr()
    rc = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet", *args])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert rc == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"simfl: error: {path}: "), err
    assert not (tmp_path / "out").exists()  # refused before the run folder
    return path, lines[0]


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_network_input_ends_in_one_line_naming_it(case: Bad, tmp_path, monkeypatch, capsys, trace_files) -> None:
    monkeypatch.setenv("SIMFL_CACHE", str(tmp_path / "cache"))
    _, line = run_error(case.text, case.args, tmp_path, capsys)
    assert case.names.replace("{tmp}", str(tmp_path)) in line, line


@pytest.mark.parametrize("hidden", [("ns3",), ("cppyy",)], ids=["ns3", "cppyy"])
def test_ns3_backend_without_its_package(hidden, tmp_path, monkeypatch, capsys) -> None:
    """As on a machine without the ns3 package (or its cppyy bindings): the run stops before its folder exists (it
    used to start, and without cppyy end in a traceback)."""
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name.split(".")[0] in hidden else find(name, *a, **k))
    _, line = run_error(BASE, ("--set", "network.model=ns3"), tmp_path, capsys)
    assert 'network.model = "ns3": the ns3 package (ns-3 with cppyy bindings) is not installed here: pip install ns3' \
        in line and 'or use network.model = "fluid"' in line


# --------------------------------------------------------------------------------------------- odd but meaningful
# Numbers by hand (tests/test_network.py): an AE-5 model is 12,868 payload bytes, 9 packets, W = 108,560 wire bits,
# first packet P = 12,304 bits; BASE's clients sit on 100 Mbps / 1 ms links to s1. All-pairs among c0 .. c2, all
# six messages sent at 0: each pair's handshake takes H = 2 x 2 x (1 ms + 624 bits / 100 Mbps) = 4.02496 ms; then
# each client's uplink carries its two messages at 50 Mbps each (and each downlink two), so every message is
# delivered at H + W / 50 Mbps + 2 ms + P / 100 Mbps = 0.00402496 + 0.0021712 + 0.002 + 0.00012304 = 0.0083192 s.
ALLPAIRS_S = 0.0083192
GIVE_UP_S = 924.6


def run_ok(text: str, args: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    path = tmp_path / "x.toml"
    path.write_text(text)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet", *args]) == 0, capsys.readouterr().err
    return json.loads((tmp_path / "out" / "summary.json").read_text())


@pytest.mark.parametrize("text, args, delivered, lost, duration", [
    # c0's link down for good: its four messages stall from 0 and are given up on at give_up, the other two arrive
    (fault('link = "c0-s1"\ndown = 0'), (), 2, 4, GIVE_UP_S),
    # the switch down for good: nothing arrives, all six are lost at the (shortened) give-up
    (fault('node = "s1"\ndown = 0'), ("--set", "network.give_up=2 s"), 0, 6, 2.0),
    # the server down for good: all-pairs among the clients never uses it
    (fault('node = "srv"\ndown = 0'), ("--set", "network.give_up=1 s"), 6, 0, ALLPAIRS_S),
    # two overlapping outages of c0's link, [0, 2 s) and [1 s, 3 s): it is down for their union, so c0's messages
    # (and those to it) start at 3 s, by themselves as at 0
    (fault('link = "c0-s1"\ndown = 0\nup = "2 s"') + '\n[[faults]]\nlink = "c0-s1"\ndown = "1 s"\nup = "3 s"\n', (),
     6, 0, 3.0 + ALLPAIRS_S),
    # the same outage twice is one outage
    (fault('link = "c0-s1"\ndown = 0\nup = "2 s"') + '\n[[faults]]\nlink = "c0-s1"\ndown = 0\nup = "2 s"\n', (),
     6, 0, 2.0 + ALLPAIRS_S),
    # a loss of 1e-300 (and a subnormal 1e-320) per hop: no retransmission and a Mathis cap of about 1e158 bit/s
    (BASE, ("--set", "node_groups[0].uplink.loss=1e-300"), 6, 0, ALLPAIRS_S),
    (BASE, ("--set", "node_groups[0].uplink.loss=1e-320"), 6, 0, ALLPAIRS_S),
    # exponential jitter of a subnormal mean (1e-320 s): a draw of that mean, far below a time step
    (net('jitter_distribution = "exponential"'), ("--set", "node_groups[0].uplink.jitter=1e-320"), 6, 0, ALLPAIRS_S),
    # one client's uplink given a trace in [node_overrides] over its group's bandwidth (it was refused: "give
    # bandwidth or bandwidth_trace, not both"): c1 at 1 Mbps (ok.csv until 0.5 s), its two messages each way at
    # 500 kbit/s; its handshakes 2 x (1 ms + 624 / 1e8 + 1 ms + 624 / 1e6) = 5.26048 ms, so 0.00526048 +
    # 108,560 / 5e5 + 2 ms + 12,304 / 1e8 = 0.22450352 s
    (BASE + '\n[node_overrides.c1]\nuplink.bandwidth_trace = "ok.csv"\n', (), 6, 0, 0.22450352),
    # the same trace for every client by --set: 2 x 2 x 1.624 ms + 0.21712 + 2 ms + 12,304 / 1e6 = 0.23792 s
    (BASE, ("--set", "node_groups[0].uplink.bandwidth_trace=ok.csv"), 6, 0, 0.23792),
    # a loss model per node over the group's: c1's burst loss replaced by a plain loss (it was refused)
    (BASE.replace('latency = "1 ms" }', 'latency = "1 ms", burst_loss = { burst = 2, gap = 100 } }')
     + '\n[node_overrides.c1]\nuplink.loss = 0\n[node_overrides.c0]\nuplink.loss = 0\n'
     '[node_overrides.c2]\nuplink.loss = 0\n', (), 6, 0, ALLPAIRS_S),
    # empty messages, no headers, 30% loss, c2 down until 0.5 s: nothing to lose or retransmit (0 bits; the SYNs'
    # drawn timeouts off), c2's pairs start at 0.5 s, their handshakes 2 x 2 x 1 ms of latency alone, delivery 2 ms
    # later: 0.506 s
    (fault('node = "c2"\ndown = 0\nup = "0.5 s"').replace('latency = "1 ms" }', 'latency = "1 ms", loss = 0.3 }'),
     ("--set", "network.headers=false", "--set", "synthetic.message_bytes=0", "--set", "network.loss_timeouts=false"),
     6, 0, 0.506),
    # a trace saved by a spreadsheet: a byte-order mark and CRLF line ends (the mark made the header "not two
    # numbers"); 100 Mbps, the bandwidth it replaces
    (BASE, ("--set", "node_groups[0].uplink.bandwidth_trace=bom.csv"), 6, 0, ALLPAIRS_S),
    # a bandwidth given over a traced group's uplink for one node, and by --set for all: the group's period goes with
    # its trace (it was "repeats a capacity trace, but no bandwidth_trace is given", for a period the user cannot
    # unset). c1 at 10 Mbps, each way two messages at 5 Mbps: 2 x (1 ms + 624 / 1e7 + 1 ms + 624 / 1e8) + 108,560 /
    # 5e6 + 2 ms + 12,304 / 1e8 = 0.02797232 s; everyone at 100 Mbps: the plain all-pairs time
    (BASE.replace('bandwidth = "100 Mbps", ', 'bandwidth_trace = "one.csv", bandwidth_trace_period = "1 s", ')
     + '\n[node_overrides.c1]\nuplink.bandwidth = "10 Mbps"\n', (), 6, 0, 0.02797232),
    (BASE.replace('bandwidth = "100 Mbps", ', 'bandwidth_trace = "ok.csv", bandwidth_trace_period = "1 s", '),
     ("--set", "node_groups[0].uplink.bandwidth=100 Mbps"), 6, 0, ALLPAIRS_S),
    # a whole trace of one row is a constant capacity; repeated every microsecond it still is
    (BASE.replace('bandwidth = "100 Mbps", ', 'bandwidth_trace = "one.csv", bandwidth_trace_period = "1 us", '), (),
     6, 0, ALLPAIRS_S),
])
def test_odd_inputs_that_mean_something_give_the_hand_result(text, args, delivered, lost, duration, tmp_path,
                                                              capsys) -> None:
    (tmp_path / "one.csv").write_text("0,1e8\n")
    (tmp_path / "ok.csv").write_bytes(FILES["ok.csv"])  # type: ignore[arg-type]
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbftime_s,bandwidth_bps\r\n0,1e8\r\n")
    s = run_ok(text, args, tmp_path, capsys)["totals"]
    assert (s["messages"], s.get("messages_lost", 0)) == (delivered, lost)
    assert s["sim_time_s"] == pytest.approx(duration, rel=1e-9, abs=1e-12)


def test_a_periodic_flow_to_a_node_that_is_down_loses_every_frame(tmp_path, capsys) -> None:
    """A datagram flow of 10 ms from 0 to 1 s into c0, whose node is down for good: 100 frames, all lost at once,
    with the workload and alone."""
    s = run_ok(fault('node = "c0"\ndown = 0') + PERIODIC + 'stop = "1 s"\n', (), tmp_path, capsys)
    bg = s["background"]["p"]
    for run in ("with_fl", "without_fl"):
        assert (bg[run]["frames"], bg[run]["lost"], bg[run]["loss"]) == (100, 100, 1.0)
    assert bg["verdict"] == "every frame lost"


def test_control_traffic_over_capacity_with_a_stop_runs_and_drains(tmp_path, capsys) -> None:
    """200 Mbps of 1,460-byte control frames for 100 ms into c0's 100 Mbps link: frames k * 58.4 us for k < 1712.33,
    1,713 frames of 12,304 wire bits; the link drains them one after another, so the run lasts at least their
    21,077,752 bits / 100 Mbps = 0.21077752 s, and FL's two messages into c0 wait for them."""
    s = run_ok(BASE + CBR.format(name="ctl", rate="200 Mbps") + 'stop = "100 ms"\n', (), tmp_path, capsys)
    assert s["background"]["ctl"]["with_fl"]["frames"] == 1713
    assert s["background"]["ctl"]["with_fl"]["lost"] == 0
    assert 0.21077752 < s["totals"]["sim_time_s"] < 0.21077752 + ALLPAIRS_S


def test_an_unreadable_trace_file(tmp_path, monkeypatch, capsys) -> None:
    """A trace the user may not read: chmod 000 where permissions bind; for root, who reads through them, the
    kernel's answer (EACCES on open) stands in."""
    trace = tmp_path / "secret.csv"
    trace.write_text("0,1e6\n")
    trace.chmod(0)
    if os.access(trace, os.R_OK):  # root
        real = builtins.open

        def denied(file, *a, **k):
            if Path(file) == trace:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return real(file, *a, **k)

        monkeypatch.setattr(simfl.linkmodels, "open", denied, raising=False)
    _, line = run_error(BASE + TRACE.format("secret.csv"), (), tmp_path, capsys)
    assert f'links[0].bandwidth_trace = "secret.csv": cannot read {trace}: Permission denied' in line


NS3_REFUSED = {  # what the ns3 backend cannot model, each refused before the run folder (ns-3 itself is not loaded)
    "handshake-off": ("network.handshake = false: ns-3's TCP always opens a connection with a handshake; the fluid "
                      'model (network.model = "fluid") supports it', net('model = "ns3"\nhandshake = false'), ()),
}


@pytest.mark.parametrize("case", NS3_REFUSED, ids=list(NS3_REFUSED))
def test_what_the_ns3_backend_cannot_model_is_refused_in_one_line(case, tmp_path, monkeypatch, capsys) -> None:
    import simfl.ns3

    monkeypatch.setattr(simfl.ns3, "available", lambda: True)  # as where ns3 is installed; the refusal loads no ns-3
    expected, text, args = NS3_REFUSED[case]
    path, line = run_error(text, args, tmp_path, capsys)
    assert expected in line, line
