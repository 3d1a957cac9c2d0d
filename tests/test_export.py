"""`simfl export`: pcap (checked with tshark and with an independent reader), csv/parquet, bad input.

Two run directories: a real run of a small synthetic scenario (a switched star, a server and a WiFi cell), and a
hand-built one whose message trace and links table are written by this file from hand-coded routes, with message
sizes that hit the packetisation edges (0 and 1 payload bit, exactly one MSS, one byte more) and several kinds.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from simfl.cli import main
from simfl.errors import SimflError
from simfl.export import export_run
from simfl.trace import LINK_SCHEMA, MESSAGE_SCHEMA

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

SCENARIO = """
name = "tiny"
seed = 3
workload = "synthetic"
[network]
headers = {headers}
[[nodes]]
name = "s1"
kind = "switch"
[[nodes]]
name = "srv"
kind = "server"
uplink = {{ to = "s1", bandwidth = "1 Gbps", latency = "1 ms" }}
[[nodes]]
name = "ap1"
kind = "ap"
uplink = {{ to = "s1", bandwidth = "1 Gbps", latency = "500 us" }}
[[node_groups]]
prefix = "c"
count = 3
kind = "client"
uplink = {{ to = "s1", bandwidth = "100 Mbps", latency = "250 us" }}
[[node_groups]]
prefix = "w"
count = 2
kind = "client"
cell = "cellA"
[[cells]]
name = "cellA"
ap = "ap1"
bandwidth = "54 Mbps"
latency = "2 ms"
[synthetic]
message_bytes = 5000
pattern = ["allpairs", "gather", "broadcast"]
"""
# declaration order -> 10.0.0.1, 10.0.0.2, ...
NODES = ["s1", "srv", "ap1", "c0", "c1", "c2", "w0", "w1"]
IP = {n: f"10.0.0.{i + 1}" for i, n in enumerate(NODES)}
MSS, HDR = 1460, 78


# ---------------------------------------------------------------------------------------------- hand-coded routes
def _up(n: str) -> list[tuple[str, str, str, float, float]]:
    """Hops (link, links.parquet src, links.parquet dst, latency, capacity) from n to the switch s1."""
    if n == "srv":
        return [("srv-s1", "srv", "s1", 1e-3, 1e9)]
    if n.startswith("c"):
        return [(f"{n}-s1", n, "s1", 250e-6, 1e8)]
    return [("cellA", "ap1", "*", 2e-3, 54e6), ("ap1-s1", "ap1", "s1", 500e-6, 1e9)]


def _down(n: str) -> list[tuple[str, str, str, float, float]]:
    out = []
    for link, a, b, lat, cap in reversed(_up(n)):
        out.append((link, a, b, lat, cap) if b == "*" else (link, b, a, lat, cap))
    return out


def route(src: str, dst: str) -> list[tuple[str, str, str, float, float]]:
    if src.startswith("w") and dst.startswith("w"):
        return [("cellA", "ap1", "*", 2e-3, 54e6)] * 2
    return _up(src) + _down(dst)


def route_terms(src: str, dst: str, bits: int, headers: bool = True) -> tuple[float, float, int]:
    """(summed latency L, store-and-forward S = sum 1/C - max 1/C, first packet bits P) of a message, by hand."""
    hops = route(src, dst)
    inv = [1 / h[4] for h in hops]
    first = 8 * (min((bits + 7) // 8, MSS) + (HDR if headers else 0))
    return sum(h[3] for h in hops), sum(inv) - max(inv), first


def _packets(bits: int, headers: bool) -> tuple[int, int, int]:
    """(payload bytes, packets, wire bytes) by hand."""
    b = (bits + 7) // 8
    n = max(1, -(-b // MSS))
    return b, n, b + n * (HDR if headers else 0)


def make_hand_run(path: Path, *, headers: bool = True, seed: int = 0) -> pl.DataFrame:
    """A finished-looking run directory whose traces follow the network model's closed form."""
    path.mkdir(parents=True)
    (path / "scenario.toml").write_text(SCENARIO.format(headers=str(headers).lower()))
    rng = np.random.default_rng(seed)
    sizes = [0, 1, 8 * MSS, 8 * (MSS + 1), 8 * 12868, 8 * 100_000, 16 * 7]
    kinds = ["model", "assoc", "update", "global", "zzz_custom"]
    senders = ["c0", "c1", "c2", "w0", "w1", "srv"]
    rows = []
    link_bytes: dict[tuple[str, str, str], int] = defaultdict(int)
    for i in range(60):
        src, dst = (str(x) for x in rng.choice(senders, 2, replace=False))
        bits = sizes[i % len(sizes)]
        _, n, wire = _packets(bits, headers)
        hops = route(src, dst)
        lat, sf, first = route_terms(src, dst, bits, headers)
        share = int(rng.integers(1, 4))
        t_send = float(rng.uniform(0, 2))
        t_start = t_send + float(rng.choice([0.0, 0.01]))
        t_tx = t_start + 8 * wire * share / min(h[4] for h in hops)
        rows.append(dict(msg_id=i, phase="synthetic", round=i % 3, kind=kinds[i % len(kinds)], src=src, dst=dst,
                         payload_bits=bits, wire_bytes=wire, retransmitted_bytes=0, n_packets=n, hops=len(hops),
                         t_send=t_send, t_start=t_start, t_tx=t_tx, t_deliver=t_tx + lat + first * sf))
        for link, a, b_, *_ in hops:
            link_bytes[(link, a, b_)] += wire
    msgs = pl.DataFrame(rows, schema=MESSAGE_SCHEMA)
    msgs.write_parquet(path / "messages.parquet")
    keys = [("srv-s1", "srv", "s1"), ("srv-s1", "s1", "srv"), ("ap1-s1", "ap1", "s1"), ("ap1-s1", "s1", "ap1")]
    for c in ("c0", "c1", "c2"):
        keys += [(f"{c}-s1", c, "s1"), (f"{c}-s1", "s1", c)]
    keys.append(("cellA", "ap1", "*"))
    links = pl.DataFrame([dict(link=k[0], medium="cell" if k[2] == "*" else "p2p", src=k[1], dst=k[2],
                               capacity_bps=1.0, latency_s=0.0, bytes=link_bytes[k], messages=0, busy_s=0.0,
                               utilisation=0.0) for k in keys], schema=LINK_SCHEMA)
    links.write_parquet(path / "links.parquet")
    (path / "summary.json").write_text("{}\n")
    return msgs


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    from simfl.config import load_scenario
    from simfl.runner import run_scenario

    d = tmp_path_factory.mktemp("real")
    sc_path = d / "tiny.toml"
    sc_path.write_text(SCENARIO.format(headers="true"))
    run_scenario(load_scenario(sc_path), d / "run", progress=False)
    return d / "run"


@pytest.fixture(scope="module")
def hand_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hand") / "run"
    make_hand_run(d)
    return d


# ---------------------------------------------------------------------------------------------- an independent reader
def read_pcap(path: Path) -> tuple[dict, list[dict]]:
    data = path.read_bytes()
    magic, vmaj, vmin, _tz, _sig, snaplen, linktype = struct.unpack_from("<IHHiIII", data, 0)
    head = dict(magic=magic, version=(vmaj, vmin), snaplen=snaplen, linktype=linktype)
    recs = []
    off = 24
    while off < len(data):
        sec, nsec, incl, orig = struct.unpack_from("<IIII", data, off)
        pkt = data[off + 16: off + 16 + incl]
        off += 16 + incl
        ver_ihl, _tos, tot, ident, frag, ttl, proto, csum = struct.unpack_from(">BBHHHBBH", pkt, 0)
        words = struct.unpack_from(">10H", pkt, 0)
        s = sum(words)
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        src, dst = ".".join(map(str, pkt[12:16])), ".".join(map(str, pkt[16:20]))
        sport, dport, ulen, ucsum = struct.unpack_from(">HHHH", pkt, 20)
        r = dict(ts_ns=sec * 1_000_000_000 + nsec, incl=incl, orig=orig, ver_ihl=ver_ihl, tot=tot, ident=ident,
                 frag=frag, ttl=ttl, proto=proto, csum_ok=s == 0xFFFF, src=src, dst=dst, sport=sport, dport=dport,
                 ulen=ulen, ucsum=ucsum, marker=None)
        if incl >= 52:
            tag, msg_id, k, n, rnd = struct.unpack_from(">4sQIIi", pkt, 28)
            r["marker"] = (tag, msg_id, k, n, rnd)
        recs.append(r)
    assert off == len(data)
    return head, recs


def export(run: Path, *extra: str) -> int:
    return main(["export", str(run), *extra])


def exported(run: Path, out: Path, *extra: str) -> Path:
    """Export `run` as pcap to `out` (a file, or a directory with --per-link) and return `out`."""
    assert export(run, "--format", "pcap", "--out", str(out), *extra) == 0
    return out


def per_direction(msgs: pl.DataFrame, col: str) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = defaultdict(int)
    for r in msgs.iter_rows(named=True):
        out[(IP[r["src"]], IP[r["dst"]])] += r[col]
    return dict(out)


# ---------------------------------------------------------------------------------------------- tshark helpers
def tshark(*args: str) -> str:
    p = subprocess.run([TSHARK, *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


_UNITS = {"bytes": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3}
_CONV = re.compile(r"^(\S+)\s+<->\s+(\S+)\s+(\d+)\s+(\d+) (\S+)\s+(\d+)\s+(\d+) (\S+)\s+(\d+)\s+(\d+) (\S+)")


def conv_ip(path: Path) -> dict[tuple[str, str], tuple[int, int, int]]:
    """tshark -z conv,ip as {(A, B): (frames, bytes, byte-unit)} per direction A -> B ("->": A to B)."""
    out = {}
    for line in tshark("-r", str(path), "-q", "-z", "conv,ip").splitlines():
        m = _CONV.match(line)
        if m:
            a, b = m.group(1), m.group(2)
            out[(b, a)] = (int(m.group(3)), int(m.group(4)), _UNITS[m.group(5)])
            out[(a, b)] = (int(m.group(6)), int(m.group(7)), _UNITS[m.group(8)])
    return out


def io_sums(path: Path, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
    """Exact per-direction (frames, bytes) from tshark's io,stat (its conv tables round bytes to kB)."""
    cols = []
    for a, b in pairs:
        f = f"ip.src=={a} && ip.dst=={b}"
        cols += [f"COUNT(frame)frame && {f}", f"SUM(frame.len)frame.len && {f}"]
    text = tshark("-r", str(path), "-q", "-z", "io,stat,0," + ",".join(cols))
    row = [ln for ln in text.splitlines() if "<>" in ln][-1]
    vals = [int(v) for v in row.split("|")[2:-1] if v.strip()]
    assert len(vals) == 2 * len(pairs)
    return {p: (vals[2 * i], vals[2 * i + 1]) for i, p in enumerate(pairs)}


def file_totals(path: Path) -> tuple[int, int]:
    text = tshark("-r", str(path), "-q", "-z", "io,stat,0,COUNT(frame)frame,SUM(frame.len)frame.len")
    rows = [ln for ln in text.splitlines() if "<>" in ln]
    if not rows:
        return 0, 0
    vals = [int(v) for v in rows[-1].split("|")[2:-1] if v.strip()]
    return vals[0], vals[1]


# ---------------------------------------------------------------------------------------------- pcap: one file
@pytest.mark.parametrize("which", ["real_run", "hand_run"])
def test_pcap_records_follow_the_trace(which, request, tmp_path):
    run = request.getfixturevalue(which)
    out = exported(run, tmp_path / "net.pcap")
    msgs = pl.read_parquet(run / "messages.parquet")
    head, recs = read_pcap(out)
    assert head == dict(magic=0xA1B23C4D, version=(2, 4), snaplen=64, linktype=101)
    assert len(recs) == msgs["n_packets"].sum()
    by_msg = {r["msg_id"]: r for r in msgs.iter_rows(named=True)}
    seen: dict[int, list[dict]] = defaultdict(list)
    for r in recs:
        assert r["incl"] == min(r["orig"], 64)
        assert r["tot"] == r["orig"] and r["ulen"] == r["orig"] - 20
        assert (r["ver_ihl"], r["proto"], r["frag"], r["ttl"], r["ucsum"]) == (0x45, 17, 0x4000, 64, 0)
        assert r["csum_ok"]
        tag, msg_id, k, n, rnd = r["marker"]
        m = by_msg[msg_id]
        assert tag == b"SIMF" and n == m["n_packets"] and rnd == m["round"] and r["ident"] == k
        assert (r["src"], r["dst"]) == (IP[m["src"]], IP[m["dst"]])
        # within the message's interval (1 ns for the rounding to nanoseconds)
        assert m["t_start"] * 1e9 - 1 <= r["ts_ns"] <= m["t_deliver"] * 1e9 + 1
        seen[msg_id].append(r)
    assert set(seen) == set(by_msg)
    for msg_id, rs in seen.items():
        m = by_msg[msg_id]
        assert sorted(r["marker"][2] for r in rs) == list(range(m["n_packets"]))
        assert sum(r["orig"] for r in rs) == m["wire_bytes"]
        assert [r["ts_ns"] for r in sorted(rs, key=lambda r: r["marker"][2])] == sorted(r["ts_ns"] for r in rs)
        assert min(r["ts_ns"] for r in rs) == round(m["t_start"] * 1e9)  # the first packet leaves at t_start
    ts = [r["ts_ns"] for r in recs]
    assert ts == sorted(ts)


def test_pcap_times_spread_packets_over_the_transmission(hand_run, tmp_path):
    """Sender-side rule: packet k at t_start + (bytes before k / W) * (t_tx - t_start), t_tx from the closed form."""
    out = exported(hand_run, tmp_path / "net.pcap")
    msgs = {r["msg_id"]: r for r in pl.read_parquet(hand_run / "messages.parquet").iter_rows(named=True)}
    _, recs = read_pcap(out)
    for r in recs:
        _, msg_id, k, n, _ = r["marker"]
        m = msgs[msg_id]
        lat, sf, first = route_terms(m["src"], m["dst"], m["payload_bits"])
        t_tx = m["t_deliver"] - lat - first * sf
        want = m["t_start"] + k * (MSS + HDR) / m["wire_bytes"] * (t_tx - m["t_start"])
        assert abs(r["ts_ns"] - want * 1e9) <= 1.0


def test_pcap_times_follow_the_traces_t_tx(tmp_path):
    """The packets are spread over [t_start, t_tx] as the trace records it (t_tx is read, not re-derived from
    t_deliver): halve every transmission in the trace and the packet times follow."""
    run = tmp_path / "run"
    make_hand_run(run)
    p = run / "messages.parquet"
    df = pl.read_parquet(p).with_columns(t_tx=pl.col("t_start") + (pl.col("t_tx") - pl.col("t_start")) / 2)
    df.write_parquet(p)
    msgs = {r["msg_id"]: r for r in df.iter_rows(named=True)}
    _, recs = read_pcap(exported(run, tmp_path / "net.pcap"))
    assert max(r["marker"][3] for r in recs) > 1  # multi-packet messages, whose times depend on t_tx
    for r in recs:
        _, msg_id, k, _, _ = r["marker"]
        m = msgs[msg_id]
        want = m["t_start"] + k * (MSS + HDR) / m["wire_bytes"] * (m["t_tx"] - m["t_start"])
        assert abs(r["ts_ns"] - want * 1e9) <= 1.0


@needs_tshark
@pytest.mark.parametrize("which", ["real_run", "hand_run"])
def test_tshark_conversations_equal_the_trace(which, request, tmp_path):
    run = request.getfixturevalue(which)
    out = exported(run, tmp_path / "net.pcap")
    msgs = pl.read_parquet(run / "messages.parquet")
    want_bytes = per_direction(msgs, "wire_bytes")
    want_frames = per_direction(msgs, "n_packets")
    conv = conv_ip(out)
    for pair in {*want_bytes, *conv}:
        frames, shown, unit = conv.get(pair, (0, 0, 1))
        assert frames == want_frames.get(pair, 0), pair
        assert abs(shown * unit - want_bytes.get(pair, 0)) <= unit, pair  # conv rounds to its unit
    exact = io_sums(out, sorted(want_bytes))
    assert exact == {p: (want_frames[p], want_bytes[p]) for p in want_bytes}


@needs_tshark
def test_tshark_sees_a_port_per_kind_and_the_times(hand_run, tmp_path):
    out = exported(hand_run, tmp_path / "net.pcap")
    msgs = {r["msg_id"]: r for r in pl.read_parquet(hand_run / "messages.parquet").iter_rows(named=True)}
    ports = {"model": 50001, "assoc": 50002, "update": 50005, "global": 50006, "zzz_custom": 50100}
    text = tshark("-r", str(out), "-T", "fields", "-e", "frame.time_epoch", "-e", "udp.srcport", "-e",
                  "udp.dstport", "-e", "data.data")
    lines = text.splitlines()
    assert len(lines) == sum(m["n_packets"] for m in msgs.values())
    for ln in lines:
        t, sport, dport, data = ln.split("\t")
        m = msgs[int(data[8:24], 16)]
        assert int(sport) == int(dport) == ports[m["kind"]]
        assert m["t_start"] - 1e-9 <= float(t) <= m["t_deliver"] + 1e-9


# ---------------------------------------------------------------------------------------------- pcap: per link
@pytest.mark.parametrize("which", ["real_run", "hand_run"])
def test_per_link_files_carry_the_links_bytes(which, request, tmp_path):
    run = request.getfixturevalue(which)
    out = exported(run, tmp_path / "pcap", "--per-link")
    links = pl.read_parquet(run / "links.parquet")
    msgs = {r["msg_id"]: r for r in pl.read_parquet(run / "messages.parquet").iter_rows(named=True)}
    index = pl.read_csv(out / "index.csv")
    assert index.select("link", "src", "dst").rows() == links.select("link", "src", "dst").rows()
    assert index["bytes"].to_list() == links["bytes"].to_list()
    expected_files = {f"{r['link']}.pcap" if r["dst"] == "*" else f"{r['link']}.{r['src']}.pcap"
                      for r in links.iter_rows(named=True)}
    assert {p.name for p in out.glob("*.pcap")} == expected_files == set(index["file"])
    crossings: dict[int, int] = defaultdict(int)
    for row in index.iter_rows(named=True):
        _, recs = read_pcap(out / row["file"])
        assert sum(r["orig"] for r in recs) == row["bytes"] and len(recs) == row["packets"]
        assert [r["ts_ns"] for r in recs] == sorted(r["ts_ns"] for r in recs)
        for r in recs:
            m = msgs[r["marker"][1]]
            assert m["t_start"] * 1e9 - 1 <= r["ts_ns"] <= m["t_deliver"] * 1e9 + 1
            crossings[r["marker"][1]] += 1
            assert 64 - m["hops"] < r["ttl"] <= 64
    assert crossings == {i: m["hops"] * m["n_packets"] for i, m in msgs.items()}
    assert (out / "hosts").read_text().splitlines()[:2] == ["10.0.0.1\ts1", "10.0.0.2\tsrv"]


@needs_tshark
def test_tshark_per_link_totals_equal_links_parquet(real_run, tmp_path):
    out = exported(real_run, tmp_path / "pcap", "--per-link")
    links = pl.read_parquet(real_run / "links.parquet")
    for r in links.filter(pl.col("link").is_in(["cellA", "ap1-s1", "c0-s1"])).iter_rows(named=True):
        name = f"{r['link']}.pcap" if r["dst"] == "*" else f"{r['link']}.{r['src']}.pcap"
        _, total = file_totals(out / name)
        assert total == r["bytes"], name


def test_per_link_hops_are_in_route_order(hand_run, tmp_path):
    """A packet crosses hop j+1 no earlier than hop j, and on the last hop it arrives by t_deliver."""
    out = exported(hand_run, tmp_path / "pcap", "--per-link")
    msgs = {r["msg_id"]: r for r in pl.read_parquet(hand_run / "messages.parquet").iter_rows(named=True)}
    times: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for f in out.glob("*.pcap"):
        for r in read_pcap(f)[1]:
            times[(r["marker"][1], r["marker"][2])].append((64 - r["ttl"], r["ts_ns"]))
    for (msg_id, _k), hops in times.items():
        hops.sort()
        assert [j for j, _ in hops] == list(range(msgs[msg_id]["hops"]))
        ts = [t for _, t in hops]
        assert ts == sorted(ts)


# ---------------------------------------------------------------------------------------------- options
def test_headerless_pcap_adds_28_bytes_per_packet(tmp_path, capsys):
    run = tmp_path / "run"
    msgs = make_hand_run(run, headers=False)
    out = exported(run, tmp_path / "h.pcap")
    said = capsys.readouterr().out
    assert f"{msgs['n_packets'].sum():,} packet records" in said and "adds 28 bytes" in said
    _, recs = read_pcap(out)
    assert sum(r["orig"] for r in recs) == msgs["wire_bytes"].sum() + 28 * msgs["n_packets"].sum()
    assert min(r["orig"] for r in recs) == 28  # the 0-bit message


@pytest.mark.parametrize("snaplen", [28, 52, 200, 65535])
def test_snaplen(hand_run, tmp_path, snaplen):
    out = exported(hand_run, tmp_path / "s.pcap", "--snaplen", str(snaplen))
    head, recs = read_pcap(out)
    assert head["snaplen"] == snaplen
    assert all(r["incl"] == min(r["orig"], snaplen) for r in recs)
    msgs = pl.read_parquet(hand_run / "messages.parquet")
    assert out.stat().st_size == 24 + sum(16 + min(r["orig"], snaplen) for r in recs)
    assert sum(r["orig"] for r in recs) == msgs["wire_bytes"].sum()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_export(real_run, tmp_path, fmt):
    out = tmp_path / f"m.{fmt}"
    assert export(real_run, "--format", fmt, "--out", str(out)) == 0
    want = pl.read_parquet(real_run / "messages.parquet")
    got = pl.read_csv(out, schema=MESSAGE_SCHEMA) if fmt == "csv" else pl.read_parquet(out)
    assert got.equals(want)


def test_default_outputs_go_under_run_export(tmp_path):
    run = tmp_path / "run"
    make_hand_run(run)
    assert export(run, "--format", "pcap") == 0
    assert export(run, "--format", "pcap", "--per-link") == 0
    assert export(run, "--format", "csv") == 0
    assert export(run, "--format", "parquet") == 0
    names = sorted(p.relative_to(run / "export").as_posix() for p in (run / "export").rglob("*") if p.is_file())
    assert "network.pcap" in names and "network.hosts" in names and "messages.csv" in names
    assert "messages.parquet" in names and "pcap/index.csv" in names and "pcap/cellA.pcap" in names
    assert not [n for n in names if "tmp" in n]
    # the same files an explicit --out gets
    assert (run / "export" / "network.pcap").read_bytes() == exported(run, tmp_path / "x.pcap").read_bytes()
    assert export(run, "--format", "csv", "--out", str(tmp_path / "m.csv")) == 0
    assert (run / "export" / "messages.csv").read_bytes() == (tmp_path / "m.csv").read_bytes()


# ---------------------------------------------------------------------------------------------- bad input
def _bad(tmp_path: Path, case: str) -> tuple[list[str], str]:
    run = tmp_path / "run"
    if case == "missing":
        return [str(tmp_path / "nope"), "--format", "pcap"], "no such run directory"
    if case == "file":
        f = tmp_path / "f.txt"
        f.write_text("x")
        return [str(f), "--format", "pcap"], "not a run directory"
    if case == "empty":
        run.mkdir()
        return [str(run), "--format", "pcap"], "not a run directory"
    make_hand_run(run)
    if case == "incomplete":
        (run / "INCOMPLETE").write_text("")
        return [str(run), "--format", "pcap"], "incomplete"
    if case == "no_messages":
        (run / "messages.parquet").unlink()
        return [str(run), "--format", "csv"], "missing messages.parquet"
    if case == "no_scenario":
        (run / "scenario.toml").unlink()
        return [str(run), "--format", "pcap"], "missing scenario.toml"
    if case == "bad_parquet":
        (run / "messages.parquet").write_bytes(b"not parquet")
        return [str(run), "--format", "csv"], "cannot read the message trace"
    if case == "format":
        return [str(run), "--format", "pcapng"], "unknown export format 'pcapng'"
    if case == "snaplen":
        return [str(run), "--format", "pcap", "--snaplen", "20"], "--snaplen 20"
    if case == "snaplen_csv":
        return [str(run), "--format", "csv", "--snaplen", "100"], "--snaplen applies to --format pcap"
    if case == "no_column":
        pl.read_parquet(run / "messages.parquet").drop("hops").write_parquet(run / "messages.parquet")
        return [str(run), "--format", "pcap"], "missing column(s) hops"
    if case == "per_link_csv":
        return [str(run), "--format", "csv", "--per-link"], "--per-link applies to --format pcap"
    if case == "out_is_source":
        return [str(run), "--format", "parquet", "--out", str(run / "messages.parquet")], "run's own"
    if case == "foreign_scenario":
        (run / "scenario.toml").write_text(SCENARIO.replace('uplink = {{ to = "s1", bandwidth = "100 Mbps"',
                                                            'uplink = {{ to = "ap1", bandwidth = "100 Mbps"')
                                           .format(headers="true"))
        return [str(run), "--format", "pcap"], "do not belong together"
    raise AssertionError(case)


BAD = ["missing", "file", "empty", "incomplete", "no_messages", "no_scenario", "bad_parquet", "no_column", "format",
       "snaplen", "snaplen_csv", "per_link_csv", "out_is_source", "foreign_scenario"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_clear_error(tmp_path, capsys, case):
    argv, words = _bad(tmp_path, case)
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("simfl: error: ") and words in err and "Traceback" not in err
    assert err.count("\n") == 1
    run = tmp_path / "run"
    assert not (run / "export").exists()


@pytest.mark.parametrize("fmt,per_link", [("pcap", False), ("pcap", True), ("csv", False), ("parquet", False)])
def test_existing_output_is_not_overwritten_without_force(hand_run, tmp_path, capsys, fmt, per_link):
    out = tmp_path / "out"
    extra = ["--per-link"] if per_link else []
    if per_link:
        out.mkdir()
    (out / "keep" if per_link else out).write_text("precious")
    assert export(hand_run, "--format", fmt, "--out", str(out), *extra) == 2
    assert "already exists; use --force" in capsys.readouterr().err
    assert (out / "keep" if per_link else out).read_text() == "precious"
    assert export(hand_run, "--format", fmt, "--out", str(out), *extra, "--force") == 0
    fresh = tmp_path / "fresh"
    assert export(hand_run, "--format", fmt, "--out", str(fresh), *extra) == 0
    if per_link:  # every file of a fresh export, the same bytes
        assert all((out / f.name).read_bytes() == f.read_bytes() for f in fresh.iterdir())
    else:
        assert out.read_bytes() == fresh.read_bytes()


def test_library_raises_simfl_error(tmp_path):
    with pytest.raises(SimflError, match="no such run directory"):
        export_run(tmp_path / "none", "pcap")
