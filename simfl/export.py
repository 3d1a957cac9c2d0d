"""Export a run's traffic for network tools: `simfl export RUN --format pcap|csv|parquet [--per-link]`.

csv / parquet
    The message trace (`messages.parquet`, schema in `simfl.trace`) re-written as CSV, or copied as parquet.

pcap (libpcap classic format, readable by tshark / Wireshark / tcpdump / scapy)
    One record per packet the simulation put on the wire, at its simulated time.

    * Header: nanosecond magic 0xa1b23c4d (simulated times are exact to the nanosecond, microseconds would merge
      the packets of a fast link), version 2.4, little-endian.
    * Link type 101 (LINKTYPE_RAW, raw IPv4): the simulation has no MAC addresses and its cells are not Ethernet,
      and only a raw-IP record can have an on-wire length equal to what the simulation charges for a packet.
      With Ethernet (link type 1) the captured frame would miss the preamble/SFD and inter-frame gap (20 of the
      38 link-header bytes the simulation counts), so tools' byte totals could never equal the trace's.
    * Each record: a synthetic IPv4 header (DF, TTL 64 at the sender, minus one per hop, valid header checksum,
      protocol UDP, identification = packet index in its message mod 65536), a UDP header (checksum 0, which IPv4
      allows) and a 24-byte simfl marker as the start of the UDP payload:
      b"SIMF", msg_id (u64), packet index k (u32), packets in the message K (u32), round (i32), big-endian, so a
      packet can be matched back to its row of messages.parquet. The rest of the payload is zeros and is cut off
      by the snap length.
    * Addresses: node i of the scenario in declaration order (the order that fixes client IDs) is
      10.0.0.0 + i + 1 (c00 of paper-90 is 10.0.0.1). A hosts file (`<ip> <name>`) is written beside the pcap.
      The addresses are end-to-end (message src and dst), also in the per-link files.
    * Ports: one UDP port per message kind, the same as source and destination port (`KIND_PORTS`; kinds that are
      not listed get 50100 + their index among such kinds in sorted order). These ports have no Wireshark
      dissector, so the payload shows as plain data.
    * Lengths: the IP total length, and so the record's orig_len, is the packet's size on the wire as the
      simulation counts it. A message of B = ceil(payload_bits / 8) bytes travels as K = max(1, ceil(B / MSS))
      packets, MSS = mtu - ip_header_bytes; packets 0..K-2 carry MSS payload bytes, the last one the rest; each
      adds h = ip_header_bytes + link_header_bytes header bytes (`simfl.messages.packetize`). orig_len =
      payload + max(h, 28): with headers on (h = 78 by default) the record lengths of a message add up to its
      `wire_bytes` exactly, so tshark's per-conversation byte totals equal the trace's.
      Header-less runs (network.headers = false, h = 0) charge the payload alone, but a packet cannot exist
      without headers: their pcap holds the same packets, each with its payload bytes plus the 28-byte synthetic
      IPv4/UDP header, so tools' totals are wire_bytes + 28 * n_packets there (the same applies whenever h < 28).
      Each packet is in the file once: where a backend retransmitted (`retransmitted_bytes` > 0, counted in
      `wire_bytes`), tools' totals are wire_bytes - retransmitted_bytes.
      A run of the ns3 backend (`network.model = "ns3"`) records its real segments: the same K packets except
      where a retransmission carried a message's new bytes along (K and the bytes sent once, S = wire_bytes -
      retransmitted_bytes, are then ns-3's: S = B + K h for its B payload bytes, checked) and for a 0-byte
      message, which sends no segment (K = 0: no record). Such a message's B bytes are spread evenly over its K
      records (B // K each, one more in the first B % K), none larger than the MSS. Its own pcap files
      (`network.ns3_pcap`) are a check of this export: per link direction, the same data packets with the same
      sizes where nothing was retransmitted.
    * incl_len = min(orig_len, snaplen) (default 64: IPv4 + UDP + the marker + 12 zero bytes), so a 1 M packet
      file is about 80 MB whatever the payloads; the IP header keeps the true length.
    * Times (the rule that spreads a message over its packets). The network is a fluid model (`simfl.network`):
      a message of W wire bytes transmits from t_start to t_tx, when its fair-share rate has carried all W bytes;
      both times are in the trace. The export lays the packets over that interval in proportion to the bytes sent
      before them (the fluid rate is not in the trace, so it is taken as constant over the interval): packet k
      (0-based) of a message starts crossing hop j (0-based) at

          t_start + O_j + (bytes of packets 0..k-1 / W) * (t_tx - t_start)
          O_j = (latency of hops 0..j-1) + P * (sum_{i<=j} 1/C_i - max_{i<=j} 1/C_i)

      with P the bits of its first (largest) packet and C_i the hops' capacities: the network's own store-and-
      forward offsets (`simfl.network.pipeline_offsets`). O_0 = 0 (the sender transmits over exactly
      [t_start, t_tx]); O_j grows along the route, and on the last hop the last bit arrives at the network's
      delivery time (t_deliver, or before it when the message waited for an earlier, longer one of its flow). So
      every record of a message lies in [t_start, t_deliver] (the timestamp is the packet's start on that hop,
      rounded to the nanosecond). Run folders written before t_tx was recorded cannot be exported as pcap (a
      one-line error asks to re-run them); csv and parquet exports take any trace. The whole-network file shows
      each packet once, at the sender (j = 0); per-link files show it on every hop it crosses (a message between
      two stations of one cell crosses the cell twice, so the cell's file holds its packets twice, with TTL 64
      and 63). Records in a file are in time order (ties: msg_id, then k).

    One file for the whole network (default `RUN/export/network.pcap`), or with `--per-link` one file per link
    direction and one per shared cell (a cell is one channel, so all its hops share one file, like a monitor-mode
    capture; a cell with a channel per direction has one file per channel), in the order and with the bytes of
    links.parquet (default directory `RUN/export/pcap/`, files `<link>.<sender>.pcap` for a link direction,
    `<cell>.pcap` for a cell, `<cell>.up.pcap` and `<cell>.down.pcap` for its channels, plus `index.csv` with file,
    link, medium, src, dst, packets, bytes, and `hosts`). Like ns-3's per-device pcaps: a packet that crosses three
    links is in three files. --force overwrites the files an export writes (other files in a per-link directory
    stay).

Routes come from the run's resolved `scenario.toml` (`Topology.from_scenario`); the export checks that each
message's hop count and wire bytes agree with that scenario. With [[faults]] a message's route is the one over what
was up just before its transmission ended (where the trace counts it); a message rerouted during its transmission
is shown on that last route with all its packets.

Bad input (run directory missing or incomplete, files missing, unknown format, output that exists without
--force, an output path that cannot be written: read-only, under a file, disk full, ...) raises `SimflError` naming
the path; nothing is overwritten unless --force, and files are written to a temporary name then renamed, so a
failed export leaves no half-written file.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from simfl.errors import SimflError
from simfl.messages import packetize
from simfl.network import pipeline_offsets
from simfl.trace import routing_states

__all__ = [
    "FORMATS",
    "KIND_PORTS",
    "PCAP_MAGIC_NS",
    "LINKTYPE_RAW",
    "DEFAULT_SNAPLEN",
    "MIN_SNAPLEN",
    "PacketTable",
    "node_addresses",
    "kind_ports",
    "ip_str",
    "open_run",
    "message_packets",
    "pcap_records",
    "write_pcap",
    "export_pcap",
    "export_table",
    "export_run",
    "export_cli",
]

FORMATS = ("pcap", "csv", "parquet")
KIND_PORTS: dict[str, int] = {
    "model": 50001, "assoc": 50002, "candidates": 50003, "community": 50004, "update": 50005, "global": 50006,
    "raw_data": 50007, "synthetic": 50008,
}
OTHER_KIND_PORT_BASE = 50100
PCAP_MAGIC_NS = 0xA1B23C4D
LINKTYPE_RAW = 101
IP_UDP_HEADER = 28  # IPv4 (20) + UDP (8): the smallest packet a pcap record can hold
MARKER = b"SIMF"
MARKER_BYTES = 24  # b"SIMF" + msg_id u64 + k u32 + K u32 + round i32
DEFAULT_SNAPLEN = 64
MIN_SNAPLEN = IP_UDP_HEADER
MAX_SNAPLEN = 65535
TTL0 = 64

MESSAGE_COLUMNS = ("msg_id", "round", "kind", "src", "dst", "payload_bits", "wire_bytes", "retransmitted_bytes",
                   "n_packets", "hops", "t_start", "t_tx", "t_deliver")
_GLOBAL_HEADER = struct.Struct("<IHHiIII")
_HDR = 16  # pcap record header bytes


# ------------------------------------------------------------------------------------------------ addressing
def node_addresses(nodes: Sequence[str]) -> dict[str, int]:
    """IPv4 address (as an int) of each node: the i-th node in declaration order is 10.0.0.0 + i + 1."""
    if len(nodes) > (1 << 24) - 2:
        raise SimflError(f"{len(nodes)} nodes do not fit in 10.0.0.0/8")
    base = 10 << 24
    return {n: base + i + 1 for i, n in enumerate(nodes)}


def ip_str(addr: int) -> str:
    return ".".join(str((int(addr) >> s) & 0xFF) for s in (24, 16, 8, 0))


def kind_ports(kinds: Sequence[str]) -> dict[str, int]:
    """UDP port of each message kind: `KIND_PORTS`, then 50100 + i for other kinds in sorted order."""
    out = {k: KIND_PORTS[k] for k in kinds if k in KIND_PORTS}
    others = sorted({k for k in kinds if k not in KIND_PORTS})
    for i, k in enumerate(others):
        out[k] = OTHER_KIND_PORT_BASE + i
    return out


# ------------------------------------------------------------------------------------------------ run directory
@dataclass(frozen=True)
class Run:
    path: Path

    @property
    def messages(self) -> Path:
        return self.path / "messages.parquet"

    @property
    def scenario(self) -> Path:
        return self.path / "scenario.toml"

    @property
    def links(self) -> Path:
        return self.path / "links.parquet"


_RUN_MARKERS = ("scenario.toml", "messages.parquet", "summary.json", "INCOMPLETE", "links.parquet")


def open_run(run_dir: str | Path, *, need_scenario: bool) -> Run:
    """Check that `run_dir` is a finished run directory holding what an export needs."""
    p = Path(run_dir)
    if not p.exists():
        raise SimflError(f"{p}: no such run directory")
    if not p.is_dir():
        raise SimflError(f"{p}: not a run directory (it is a file; give the directory `simfl run` wrote)")
    if not any((p / m).exists() for m in _RUN_MARKERS):
        raise SimflError(f"{p}: not a run directory (no scenario.toml, messages.parquet or summary.json in it)")
    if (p / "INCOMPLETE").exists():
        raise SimflError(f"{p}: the run is incomplete (INCOMPLETE is present: it is still running or was "
                         "interrupted); re-run it before exporting")
    run = Run(p)
    if not run.messages.is_file():
        raise SimflError(f"{p}: missing messages.parquet (the message trace); the run directory is damaged")
    if need_scenario and not run.scenario.is_file():
        raise SimflError(f"{p}: missing scenario.toml (the pcap export needs the run's scenario for the routes)")
    return run


def read_messages(run: Run, columns: Sequence[str] | None = None) -> pl.DataFrame:
    try:
        df = pl.read_parquet(run.messages)
    except Exception as e:  # noqa: BLE001 - any reader failure is a damaged file for the user
        raise SimflError(f"{run.messages}: cannot read the message trace: {e}") from None
    if columns is not None:
        if "t_tx" in columns and "t_tx" not in df.columns:
            raise SimflError(f"{run.messages}: no t_tx column (transmission ends): the run was written by an older "
                             "simfl; re-run the scenario with `simfl run` to export it as pcap")
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise SimflError(f"{run.messages}: missing column(s) {', '.join(missing)} "
                             f"(columns: {', '.join(df.columns)})")
        empty = [c for c in columns if df[c].null_count()]
        if empty:
            raise SimflError(f"{run.messages}: column {empty[0]} has {df[empty[0]].null_count()} empty value(s); the "
                             "message trace is damaged (re-run the scenario)")
    return df


# ------------------------------------------------------------------------------------------------ packets
@dataclass
class PacketTable:
    """One row per packet record (per hop in per-link mode), in file order; `group` is the file index."""

    ts_ns: np.ndarray  # simulated time in integer nanoseconds
    orig_len: np.ndarray  # IP total length = the record's on-wire length
    src_ip: np.ndarray  # IPv4 addresses as integers
    dst_ip: np.ndarray
    port: np.ndarray  # UDP port of the message kind
    ttl: np.ndarray  # 64 minus the hop index
    msg_id: np.ndarray
    k: np.ndarray  # packet index in its message
    n_packets: np.ndarray  # packets in its message
    round: np.ndarray
    group: np.ndarray | None = None  # per-link: resource index (links.parquet row); None for one file

    def __len__(self) -> int:
        return len(self.ts_ns)


@dataclass(frozen=True)
class Routes:
    """Per message: its hops as a slice of the flat per-hop arrays; per hop: the pipeline's offset terms."""

    hop_start: np.ndarray  # int64 per message: offset of its first hop in the per-hop arrays
    hop_count: np.ndarray  # int64 per message
    hop_res: np.ndarray  # int64 per hop: resource index (links.parquet row)
    hop_lat_before: np.ndarray  # float64 per hop: latency of the hops before it
    hop_sf: np.ndarray  # float64 per hop j: store-and-forward of hops 0..j (s per bit)


def _routes(df: pl.DataFrame, topology, resource_index: dict[str, int]) -> Routes:
    """Route of every message from the topology (with [[faults]]: over what was up, `simfl.trace.routing_states`),
    computed once per distinct (state, src, dst); the per-hop terms are `simfl.network.pipeline_offsets`, the
    network's own."""
    state, topos = routing_states(df, topology)
    nodes = list(topology.nodes)
    code = {n: i for i, n in enumerate(nodes)}
    unknown = sorted((set(df["src"].unique().to_list()) | set(df["dst"].unique().to_list())) - set(code))
    if unknown:
        raise SimflError(f"the trace names node(s) {', '.join(unknown[:5])} that the run's scenario.toml does not "
                         "declare; do the trace and scenario.toml belong to the same run?")
    nn = len(nodes)
    names = pl.Series(nodes)
    codes = pl.Series(np.arange(nn, dtype=np.int64))
    s = df["src"].replace_strict(names, codes, return_dtype=pl.Int64).to_numpy()
    d = df["dst"].replace_strict(names, codes, return_dtype=pl.Int64).to_numpy()
    upairs, inv = np.unique((state * nn + s) * nn + d, return_inverse=True)
    p_start: list[int] = []
    p_count: list[int] = []
    res: list[int] = []
    lat_before: list[float] = []
    sf: list[float] = []
    for pc in upairs.tolist():
        src, dst = nodes[pc // nn % nn], nodes[pc % nn]
        hops = (topos[pc // (nn * nn)].route_or_none(src, dst) or ()) if src != dst else ()
        p_start.append(len(res))
        p_count.append(len(hops))
        lat, hop_sf = pipeline_offsets(hops)
        res.extend(resource_index[h.resource] for h in hops)
        lat_before.extend(lat[:-1])
        sf.extend(hop_sf[:-1])
    p_start_a, p_count_a = np.asarray(p_start, np.int64), np.asarray(p_count, np.int64)
    return Routes(p_start_a[inv], p_count_a[inv], np.asarray(res, np.int64), np.asarray(lat_before, np.float64),
                  np.asarray(sf, np.float64))


def _check_hops(df: pl.DataFrame, routes: Routes) -> None:
    bad = np.flatnonzero(df["hops"].to_numpy().astype(np.int64) != routes.hop_count)
    if len(bad):
        r = df.row(int(bad[0]), named=True)
        raise SimflError(f"message {r['msg_id']} ({r['src']} -> {r['dst']}) took {r['hops']} hop(s) in the trace but "
                         f"{int(routes.hop_count[bad[0]])} on the run's scenario.toml route; the trace and the "
                         "scenario do not belong together")


@dataclass(frozen=True)
class Sizes:
    """Per message (arrays) and per run (ints): its packets, by `simfl.messages.packetize` or, for a message that
    a packet-level backend segmented otherwise (`spread`), its payload spread evenly over its packets."""

    n_packets: np.ndarray  # int64
    sent: np.ndarray  # int64: wire bytes sent once (wire_bytes - retransmitted_bytes)
    first_bits: np.ndarray  # float64: wire bits of the first (largest) packet
    last_payload: np.ndarray  # int64: payload bytes of the last packet
    mss: int  # payload bytes of every packet but the last
    h: int  # header bytes per packet in the trace (0 in header-less mode)
    hdr: int  # header bytes per pcap record: max(h, IPv4 + UDP)
    spread: np.ndarray  # bool: B payload bytes over K packets, B // K each, one more in the first B % K

    def layout(self, m: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(payload bytes of packet k of message m, wire bytes of its packets before k)."""
        K = np.maximum(self.n_packets[m], 1)
        B = self.sent[m] - self.n_packets[m] * self.h
        q, r = B // K, B % K
        even = self.spread[m]
        payload = np.where(even, q + (k < r), np.where(k < self.n_packets[m] - 1, self.mss, self.last_payload[m]))
        before = np.where(even, k * (q + self.h) + np.minimum(k, r), k * (self.mss + self.h))
        return payload, before


def _sizes(df: pl.DataFrame, network) -> Sizes:
    """Packetise every message with the run's `NetworkParams` and check the trace agrees. A run of the ns3
    backend may also have messages whose segments ns-3 cut otherwise (a retransmission that carried new bytes
    along; a 0-byte message, which sends no segment): their K packets and S = B + K h bytes sent once (B payload
    bytes) must be consistent, none larger than the MSS."""
    def pkt(bits: int):
        return packetize(bits, network.mtu, network.ip_header_bytes, network.link_header_bytes, network.headers)

    sizes, inv = np.unique(df["payload_bits"].to_numpy().astype(np.int64), return_inverse=True)
    pks = [pkt(b) for b in sizes.tolist()]
    mss, h = pkt(0).mss, pkt(0).header_bytes
    hdr = max(h, IP_UDP_HEADER)
    if mss + hdr > 65535:
        raise SimflError(f"an MTU of {network.mtu} bytes gives packets of {mss + hdr} bytes, more than an IPv4 "
                         "packet can hold (65,535); pcap cannot represent them")

    def per_message(field: str) -> np.ndarray:
        return np.asarray([getattr(p, field) for p in pks], np.int64)[inv]

    k_want, wire_want = per_message("n_packets"), per_message("wire_bytes")
    K = df["n_packets"].to_numpy().astype(np.int64)
    sent = df["wire_bytes"].to_numpy().astype(np.int64) - df["retransmitted_bytes"].to_numpy().astype(np.int64)
    spread = (K != k_want) | (sent != wire_want)
    if getattr(network, "model", "fluid") == "ns3":
        B = per_message("payload_bytes")
        ok = (sent == B + K * h) & (K * mss >= B) & ((K > 0) | (B == 0))
    else:
        ok = ~spread
    bad = np.flatnonzero(~ok)
    if len(bad):
        r = df.row(int(bad[0]), named=True)
        raise SimflError(f"message {r['msg_id']}: {r['payload_bits']} payload bits as {r['n_packets']} packet(s) "
                         f"and {r['wire_bytes']} wire bytes ({r['retransmitted_bytes']} retransmitted) do not follow "
                         f"the run's scenario.toml (mtu {network.mtu}, {h} header bytes per packet: "
                         f"{int(k_want[bad[0]])} packets, {int(wire_want[bad[0]])} bytes)")
    first = np.where(spread, -(-(sent - K * h) // np.maximum(K, 1)) + h, per_message("first_packet_bytes"))
    return Sizes(K, sent, 8.0 * first, per_message("last_packet_bytes") - h, mss, h, hdr, spread)


def _expand_rows(routes: Routes, first_bits: np.ndarray, per_link: bool):
    """Rows to expand into packets: one per message on the wire (sender side), or one per (message, hop).
    Returns (message row, hop index j, file group or None, time offset O_j of the hop)."""
    H = routes.hop_count
    m_idx = np.flatnonzero(H > 0)
    if not per_link:
        return m_idx, np.zeros(len(m_idx), np.int64), None, np.zeros(len(m_idx), np.float64)
    m_rows = np.repeat(m_idx, H[m_idx])
    first_hop = np.cumsum(H[m_idx]) - H[m_idx]
    j = np.arange(len(m_rows), dtype=np.int64) - np.repeat(first_hop, H[m_idx])
    flat = routes.hop_start[m_rows] + j
    offset = routes.hop_lat_before[flat] + first_bits[m_rows] * routes.hop_sf[flat]
    return m_rows, j, routes.hop_res[flat], offset


def _message_fields(df: pl.DataFrame, topology) -> dict[str, np.ndarray]:
    """Per message: source and destination addresses, port of its kind, msg_id, round."""
    addr = node_addresses(topology.nodes)
    amap = pl.DataFrame({"name": list(addr), "ip": np.fromiter(addr.values(), np.int64, len(addr))})
    ports = kind_ports(df["kind"].unique().sort().to_list())
    pmap = pl.DataFrame({"kind": list(ports), "port": list(ports.values())})

    def mapped(col: str, table: pl.DataFrame) -> np.ndarray:
        key, value = table.columns
        return df.select(pl.col(col).replace_strict(table[key], table[value], return_dtype=pl.Int64)).to_series() \
            .to_numpy()

    return {"src_ip": mapped("src", amap), "dst_ip": mapped("dst", amap), "port": mapped("kind", pmap),
            "msg_id": df["msg_id"].to_numpy().astype(np.int64), "round": df["round"].to_numpy().astype(np.int32)}


def message_packets(df: pl.DataFrame, topology, network, *, per_link: bool) -> tuple[PacketTable, list]:
    """Expand the message trace into packet records (see the module doc for every rule).

    `network` is the scenario's `NetworkParams`. Returns the packets (sorted by file, then time, msg_id, k) and the
    topology's resources (the per-link files, in links.parquet order)."""
    resources = list(topology.resources)
    df = df.sort("msg_id")
    routes = _routes(df, topology, {r.id: i for i, r in enumerate(resources)})
    _check_hops(df, routes)
    sz = _sizes(df, network)
    m_rows, j, group, offset = _expand_rows(routes, sz.first_bits, per_link)

    # one row per packet: packet k of message m, on hop j
    K = sz.n_packets
    Kr = K[m_rows]
    p_rows = np.repeat(np.arange(len(m_rows), dtype=np.int64), Kr)
    k = np.arange(len(p_rows), dtype=np.int64) - np.repeat(np.cumsum(Kr) - Kr, Kr)
    m = m_rows[p_rows]
    payload, before = sz.layout(m, k)
    t0 = df["t_start"].to_numpy().astype(np.float64)
    T = np.maximum(df["t_tx"].to_numpy().astype(np.float64) - t0, 0.0)  # the sender's transmission interval
    W = np.maximum(sz.sent, 1)
    t = t0[m] + offset[p_rows] + np.minimum(before / W[m], 1.0) * T[m]
    ts_ns = np.rint(t * 1e9).astype(np.int64)
    g = group[p_rows] if group is not None else None
    f = _message_fields(df, topology)
    msg_id = f["msg_id"][m]
    order = np.lexsort((k, msg_id, ts_ns, g) if g is not None else (k, msg_id, ts_ns))  # file order
    pk = PacketTable(
        ts_ns=ts_ns[order], orig_len=(payload + sz.hdr)[order], src_ip=f["src_ip"][m][order],
        dst_ip=f["dst_ip"][m][order], port=f["port"][m][order], ttl=np.maximum(TTL0 - j[p_rows], 1)[order],
        msg_id=msg_id[order], k=k[order], n_packets=K[m][order], round=f["round"][m][order],
        group=g[order] if g is not None else None,
    )
    return pk, resources


# ------------------------------------------------------------------------------------------------ pcap bytes
def _record_dtype(width: int) -> np.dtype:
    """A pcap record (16-byte header + `width` captured bytes, width >= 52) as a numpy structured dtype."""
    fields = [
        ("ts_sec", "<u4"), ("ts_ns", "<u4"), ("incl_len", "<u4"), ("orig_len", "<u4"),
        ("ver_ihl", "u1"), ("tos", "u1"), ("tot_len", ">u2"), ("ident", ">u2"), ("frag", ">u2"), ("ttl", "u1"),
        ("proto", "u1"), ("csum", ">u2"), ("src", ">u4"), ("dst", ">u4"),
        ("sport", ">u2"), ("dport", ">u2"), ("ulen", ">u2"), ("ucsum", ">u2"),
        ("magic", "S4"), ("msg_id", ">u8"), ("k", ">u4"), ("n_packets", ">u4"), ("round", ">i4"),
    ]
    dt = np.dtype(fields)
    assert dt.itemsize == _HDR + IP_UDP_HEADER + MARKER_BYTES
    if width > IP_UDP_HEADER + MARKER_BYTES:
        fields.append(("pad", f"V{width - IP_UDP_HEADER - MARKER_BYTES}"))
    return np.dtype(fields)


def pcap_records(pk: PacketTable, snaplen: int) -> tuple[np.ndarray, np.ndarray]:
    """The records of `pk` as one uint8 array, and each record's start offset (len(pk) + 1 entries)."""
    n = len(pk)
    width = max(snaplen, IP_UDP_HEADER + MARKER_BYTES)
    rec = np.zeros(n, dtype=_record_dtype(width))
    if (pk.ts_ns < 0).any() or (pk.ts_ns >= (1 << 32) * 1_000_000_000).any():
        raise SimflError("simulated times outside 0 .. 2^32 s cannot be written as pcap timestamps")
    orig = pk.orig_len.astype(np.int64)
    incl = np.minimum(orig, snaplen)
    rec["ts_sec"] = pk.ts_ns // 1_000_000_000
    rec["ts_ns"] = pk.ts_ns % 1_000_000_000
    rec["incl_len"] = incl
    rec["orig_len"] = orig
    rec["ver_ihl"] = 0x45
    rec["tot_len"] = orig
    ident = pk.k & 0xFFFF
    rec["ident"] = ident
    rec["frag"] = 0x4000  # DF
    rec["ttl"] = pk.ttl
    rec["proto"] = 17
    src = pk.src_ip.astype(np.int64)
    dst = pk.dst_ip.astype(np.int64)
    rec["src"] = src
    rec["dst"] = dst
    ttl = pk.ttl.astype(np.int64)
    s = (0x4500 + orig + ident + 0x4000 + (ttl << 8) + 17 + (src >> 16) + (src & 0xFFFF) + (dst >> 16)
         + (dst & 0xFFFF))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    rec["csum"] = ~s & 0xFFFF
    rec["sport"] = pk.port
    rec["dport"] = pk.port
    rec["ulen"] = orig - 20
    rec["magic"] = MARKER
    rec["msg_id"] = pk.msg_id
    rec["k"] = pk.k
    rec["n_packets"] = pk.n_packets
    rec["round"] = pk.round
    size = _HDR + incl
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(size, out=offsets[1:])
    raw = rec.view(np.uint8).reshape(n, rec.dtype.itemsize)
    full = _HDR + width
    if n and (size == full).all():
        flat = raw.reshape(-1)
    else:
        keep = np.arange(rec.dtype.itemsize, dtype=np.int64)[None, :] < size[:, None]
        flat = raw[keep]
    return flat, offsets


def _global_header(snaplen: int) -> bytes:
    return _GLOBAL_HEADER.pack(PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen, LINKTYPE_RAW)


_WRITE_ERRORS = {errno.ENOSPC: "no space left on the device; free some or choose another --out",
                 errno.EDQUOT: "disk quota exceeded; free some space or choose another --out",
                 errno.EROFS: "read-only file system; choose another --out",
                 errno.EACCES: "permission denied; choose another --out",
                 errno.EPERM: "permission denied; choose another --out"}


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` if it is not a directory (then nothing can be written there)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _unwritable(path: Path, e: OSError) -> SimflError:
    """The one-line error for an output path that cannot be written."""
    above = _file_above(path)
    if above is not None:
        return SimflError(f"{path}: cannot be written: {above} is a file, not a directory; choose another --out")
    why = _WRITE_ERRORS.get(e.errno) or f"{e.strerror or type(e).__name__}; choose another --out"
    return SimflError(f"{path}: cannot be written ({why})")


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(path, e) from None


def _write_atomic(path: Path, chunks: Sequence[bytes | memoryview | np.ndarray]) -> None:
    """Write `chunks` to a temporary file beside `path`, then rename it; SimflError naming `path` if that fails."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write(c)
        os.replace(tmp, path)
    except OSError as e:
        raise _unwritable(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_pcap(path: str | Path, pk: PacketTable, snaplen: int = DEFAULT_SNAPLEN) -> int:
    """Write all of `pk` to one pcap file; returns the file size in bytes."""
    path = Path(path)
    flat, _ = pcap_records(pk, snaplen)
    _write_atomic(path, [_global_header(snaplen), flat])
    return 24 + len(flat)


# ------------------------------------------------------------------------------------------------ exports
def _check_snaplen(snaplen: int) -> int:
    if isinstance(snaplen, bool) or not isinstance(snaplen, int) or not MIN_SNAPLEN <= snaplen <= MAX_SNAPLEN:
        raise SimflError(f"--snaplen {snaplen}: must be an integer from {MIN_SNAPLEN} (IPv4 + UDP headers) to "
                         f"{MAX_SNAPLEN}")
    return snaplen


def _check_out(out: Path, force: bool, *, directory: bool, sources: Sequence[Path]) -> None:
    """Refuse, before any work, an --out that is a source, lies under a file, or exists without --force."""
    for s in sources:
        if out.resolve() == s.resolve():
            raise SimflError(f"{out}: is the run's own {s.name}; choose another --out")
    above = _file_above(out)
    if above is not None:
        raise SimflError(f"{out}: cannot be written: {above} is a file, not a directory; choose another --out")
    if out.exists():
        if directory and not out.is_dir():
            raise SimflError(f"{out}: exists and is not a directory (per-link export writes a directory)")
        if not directory and out.is_dir():
            raise SimflError(f"{out}: is a directory; give a file path for --out")
        if not directory and (out.is_symlink() or not out.is_file()):  # the rename would replace the link, device
            raise SimflError(f"{out}: is not a regular file (a link, device, pipe or socket), and an export replaces "
                             "what is there with a new file; give the path of a regular file for --out")
        try:
            if directory and not any(out.iterdir()):
                return
        except OSError as e:
            raise SimflError(f"{out}: cannot be read ({e.strerror}); choose another --out") from None
        if not force:
            raise SimflError(f"{out}: already exists; use --force to overwrite it")


def _load_topology(run: Run):
    from simfl.config import load_scenario
    from simfl.topology import Topology

    try:
        sc = load_scenario(run.scenario)
    except SimflError as e:
        raise SimflError(f"{run.path}: its scenario.toml does not load: {e}") from None
    return sc, Topology.from_scenario(sc)


def _hosts_text(topology) -> str:
    addr = node_addresses(topology.nodes)
    return "".join(f"{ip_str(a)}\t{n}\n" for n, a in addr.items())


def export_pcap(run_dir: str | Path, out: str | Path | None = None, *, per_link: bool = False,
                snaplen: int = DEFAULT_SNAPLEN, force: bool = False) -> dict:
    """Write the run's traffic as pcap (one file, or one per link direction / cell). Returns a summary dict."""
    snaplen = _check_snaplen(snaplen)
    run = open_run(run_dir, need_scenario=True)
    if out is None:
        out = run.path / "export" / ("pcap" if per_link else "network.pcap")
    out = Path(out)
    _check_out(out, force, directory=per_link, sources=[run.messages, run.scenario, run.links])
    hosts = out / "hosts" if per_link else out.with_suffix(".hosts")
    if not per_link and hosts.exists() and not force:
        raise SimflError(f"{hosts}: already exists; use --force to overwrite it")
    df = read_messages(run, MESSAGE_COLUMNS)
    if "status" in df.columns:  # a lost message never arrived: it has no packet times to write
        df = df.filter(pl.col("status").ne_missing("lost"))
    sc, topo = _load_topology(run)
    pk, resources = message_packets(df, topo, sc.network, per_link=per_link)
    net = sc.network
    trace_h = net.ip_header_bytes + net.link_header_bytes if net.headers else 0
    header = _global_header(snaplen)
    files: list[Path] = []
    if not per_link:
        write_pcap(out, pk, snaplen)
        files.append(out)
    else:
        names = [_link_file(r) for r in resources]
        clash = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if clash is not None:
            raise SimflError(f"two link directions or cells would both be written to {out / clash} (names with "
                             "'.' can meet so); rename one of the links or cells")
        _mkdir(out)
        flat, offsets = pcap_records(pk, snaplen)
        bounds = np.searchsorted(pk.group, np.arange(len(resources) + 1))
        orig = pk.orig_len.astype(np.int64)
        cum = np.concatenate([[0], np.cumsum(orig)])
        rows = []
        for i, (r, name) in enumerate(zip(resources, names, strict=True)):
            a, b = int(bounds[i]), int(bounds[i + 1])
            path = out / name
            _write_atomic(path, [header, flat[offsets[a]:offsets[b]]])
            files.append(path)
            rows.append({"file": name, "link": r.link, "medium": r.medium, "src": r.src, "dst": r.dst,
                         "packets": b - a, "bytes": int(cum[b] - cum[a])})
        index = pl.DataFrame(rows, schema={"file": pl.String, "link": pl.String, "medium": pl.String,
                                           "src": pl.String, "dst": pl.String, "packets": pl.Int64,
                                           "bytes": pl.Int64})
        _write_atomic(out / "index.csv", [index.write_csv().encode()])
    _write_atomic(hosts, [_hosts_text(topo).encode()])
    return {"out": out, "files": files, "packets": len(pk), "bytes": int(pk.orig_len.sum()),
            "extra_header_bytes": max(trace_h, IP_UDP_HEADER) - trace_h, "hosts": hosts}


def _link_file(r) -> str:
    """The per-link file of a resource: <link>.<sender>.pcap for a link direction, <cell>.pcap for a shared cell,
    <cell>.up.pcap / <cell>.down.pcap for a cell with a channel per direction."""
    if r.medium != "cell":
        return f"{r.link}.{r.src}.pcap"
    way = r.id.rsplit(":", 1)[-1]
    return f"{r.link}.{way}.pcap" if way in ("up", "down") else f"{r.link}.pcap"


def export_table(run_dir: str | Path, fmt: str, out: str | Path | None = None, *, force: bool = False) -> Path:
    """Write the message trace as CSV (re-written) or parquet (copied)."""
    if fmt not in ("csv", "parquet"):
        raise SimflError(f"unknown table format {fmt!r} (choose csv or parquet)")
    run = open_run(run_dir, need_scenario=False)
    if out is None:
        out = run.path / "export" / f"messages.{fmt}"
    out = Path(out)
    _check_out(out, force, directory=False, sources=[run.messages, run.path / "messages.csv"])
    df = read_messages(run)  # also for parquet: the copy is checked to be a readable trace
    data = df.write_csv().encode() if fmt == "csv" else run.messages.read_bytes()
    _write_atomic(out, [data])
    return out


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, *, per_link: bool = False,
               snaplen: int | None = None, force: bool = False) -> dict:
    """Library entry point of `simfl export` (snaplen None: the default, 64)."""
    if fmt not in FORMATS:
        raise SimflError(f"unknown export format {fmt!r} (choose one of: {', '.join(FORMATS)})")
    if fmt == "pcap":
        return export_pcap(run_dir, out, per_link=per_link, snaplen=DEFAULT_SNAPLEN if snaplen is None else snaplen,
                           force=force)
    if per_link:
        raise SimflError("--per-link applies to --format pcap only")
    if snaplen is not None:
        raise SimflError("--snaplen applies to --format pcap only")
    path = export_table(run_dir, fmt, out, force=force)
    return {"out": path, "files": [path]}


def export_cli(args: argparse.Namespace) -> int:
    """`simfl export RUN --format pcap|csv|parquet [--per-link] [--out PATH] [--snaplen N] [--force]`."""
    t = time.perf_counter()
    res = export_run(args.run, args.format, args.out, per_link=args.per_link, snaplen=args.snaplen,
                     force=args.force)
    dt = time.perf_counter() - t
    if args.format == "pcap":
        where = f"{len(res['files'])} files in {res['out']}" if args.per_link else str(res["out"])
        print(f"wrote {res['packets']:,} packet records ({res['bytes']:,} wire bytes) to {where} in {dt:.2f} s; "
              f"hosts: {res['hosts']}")
        extra = res["extra_header_bytes"]
        if extra:
            print(f"note: the run counts fewer than 28 header bytes per packet (header-less mode?): each pcap "
                  f"record adds {extra} bytes of synthetic IPv4/UDP header that the trace does not count "
                  f"(pcap totals = wire_bytes + {extra} x n_packets)")
    else:
        print(f"wrote {res['out']} in {dt:.2f} s")
    return 0
