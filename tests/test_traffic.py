"""Background traffic ([[traffic]]) against hand-computed values: frame times, strict priority (control frames keep
their own serialisation + propagation time while FL floods the link; a CBR leaves FL exactly the residual capacity,
up to one frame), best-effort sharing, datagram and TCP transport (loss, outages), the run with and without the
workload, the summary and report, determinism and event counts, and the keys' errors.

Numbers used throughout: a frame of 100 payload bytes is one packet of 178 wire bytes = 1,424 bits (40 + 38 header
bytes); a full frame of 1,460 payload bytes (one MSS) is 1,538 wire bytes = 12,304 bits. On 100 Mbps: 14.24 us and
123.04 us. Every expectation below is worked by hand from docs/network-model.md's rules (the tests never call the
model's formulas to get an expected value).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from simfl.config import Traffic, load_scenario, scenario_from_dict
from simfl.errors import SimflError
from simfl.runner import run_scenario
from simfl.summary import BackgroundFlow, LatencyStats, read_summary
from simfl.trace import BACKGROUND_SCHEMA
from simfl.traffic import frame_times, nearest_rank, verdict
from simfl.workloads import run_synthetic
from simfl.world import World

TOPO = Path(__file__).resolve().parent.parent / "topologies"
C = 100e6
SMALL = 1_424  # wire bits of a 100-byte frame
FULL = 12_304  # wire bits of a 1,460-byte frame
REL = 1e-9


def node(name, kind="client", **kw):
    return {"name": name, "kind": kind, **kw}


def scenario(nodes, links=(), traffic=(), faults=(), message_bytes=146_000, network=None, seed=0, **top):
    """A network-only scenario without handshakes: a gather of one message per client to the server."""
    return scenario_from_dict({"name": "t", "workload": "synthetic", "seed": seed,
                               "network": {"handshake": False, **(network or {})}, "nodes": list(nodes),
                               "links": list(links), "faults": list(faults), "traffic": list(traffic),
                               "synthetic": {"message_bytes": message_bytes, "pattern": ["gather"]}, **top})


def pair(traffic, lat="1 ms", bw="100 Mbps", **kw):
    """client a -(bw, lat)- server b."""
    return scenario([node("a"), node("b", "server")], [{"a": "a", "b": "b", "name": "ab", "bandwidth": bw,
                                                         "latency": lat}], traffic, **kw)


def flow(name, src="a", dst="b", **kw):
    return {"name": name, "src": src, "dst": dst, **kw}


def run(sc, tmp_path: Path, name="r"):
    s = run_scenario(sc, tmp_path / name, progress=False)
    return s, pl.read_parquet(tmp_path / name / "background.parquet"), pl.read_parquet(tmp_path / name /
                                                                                     "messages.parquet")


# ------------------------------------------------------------------------------------------------ frame times
def test_frame_times_of_each_kind():
    def t(**kw):
        return Traffic("f", "a", "b", **kw)

    def first(f, n=20):
        out = []
        for x in frame_times(f):
            out.append(x)
            if len(out) == n:
                break
        return out

    # periodic: start + k period
    assert first(t(kind="periodic", bytes=100, period=0.01, start=0.5), 3) == [0.5, 0.51, 0.52]
    # cbr: a frame of packet bytes every 8 packet / rate = 8 x 1,000 / 8 Mbps = 1 ms; stop excludes its instant
    assert first(t(kind="cbr", rate=8e6, packet=1000, stop=0.004)) == pytest.approx([0.0, 0.001, 0.002, 0.003])
    # onoff: frames 0.4 ms apart while i x 0.4 ms < on = 1 ms (i = 0, 1, 2), then off 2 ms: cycles of 3 ms
    on = first(t(kind="onoff", rate=8e6, packet=400, on=0.001, off=0.002, stop=0.0065))
    assert on == pytest.approx([0.0, 0.0004, 0.0008, 0.003, 0.0034, 0.0038, 0.006, 0.0064])
    # bulk: once at start, or every `every`
    assert first(t(kind="bulk", bytes=10, start=2.0)) == [2.0]
    assert first(t(kind="bulk", bytes=10, every=10.0, start=1.0, stop=31.0)) == [1.0, 11.0, 21.0]


# ------------------------------------------------------------------------------------------------ priority
def test_control_cbr_leaves_fl_exactly_the_residual_capacity(tmp_path):
    # A control CBR of 1,460-byte frames at 11.68 Mbps of payload: a frame every 8 x 1,460 / 11.68e6 = 1 ms, each
    # 12,304 wire bits (12.304 Mbps on the wire) that the link serialises in s = 123.04 us at full capacity (strict
    # priority). FL's 146,000-byte message (100 packets, 153,800 wire bytes = 1,230,400 bits) gets the link only
    # between frames: 1e8 x (1 ms - 123.04 us) = 87,696 bits per period. 14 periods carry 1,227,744 bits (by
    # 14 ms); then the frame of 14 ms (until 14.12304 ms) and the last 2,656 bits in 26.56 us:
    #   t_tx = 14 ms + 123.04 us + 26.56 us = 14.1496 ms, delivered 1 ms later.
    # The residual-capacity rate W / (C - R) = 1,230,400 / 87.696e6 = 14.0303 ms: within one frame's s.
    sc = pair([flow("cbr", kind="cbr", rate="11.68 Mbps", packet=1460, priority="control")])
    s, bg, msgs = run(sc, tmp_path)
    (m,) = msgs.iter_rows(named=True)
    assert m["t_tx"] == pytest.approx(0.0141496, rel=REL)
    assert m["t_deliver"] == pytest.approx(0.0151496, rel=REL)
    s_frame = FULL / C
    assert abs(m["t_tx"] - 1_230_400 / (C - FULL / 1e-3)) <= s_frame
    # every control frame: its own serialisation + the propagation, 123.04 us + 1 ms, as if FL were not there;
    # frames at 0, 1, ..., 15 ms (the workload ends at 15.1496 ms), and the same 16 alone
    assert bg["latency"].to_list() == pytest.approx([s_frame + 1e-3] * 32, rel=REL)
    ctl = s["background"]["cbr"]
    assert ctl["with_fl"]["frames"] == ctl["without_fl"]["frames"] == 16
    assert ctl["with_fl"]["p99_s"] == pytest.approx(1.12304e-3, rel=REL)
    assert ctl["verdict"] == "unaffected by FL"


def test_control_frames_keep_their_latency_while_fl_floods_the_link_and_best_effort_ones_share(tmp_path):
    # Four clients gather 1 MB each to the server through switch s (all links 100 Mbps, 50 us): s > srv carries
    # four FL flows for ~0.34 s. A controller p sends 100 bytes to srv every 1 ms. Its route p > s > srv: L = 0.1 ms,
    # two hops of 100 Mbps, so S = 2 / C - 1 / C and P = W = 1,424 bits (one packet).
    # control: alone in its class, rate C: 14.24 us + 100 us + 14.24 us = 128.48 us, every frame.
    # best effort: one of five flows on s > srv, 20 Mbps: 1,424 / 2e7 = 71.2 us + 100 us + 14.24 us = 185.44 us
    # while the four FL flows transmit (and 128.48 us alone): 1.44 times its p99 alone.
    def plant(priority):
        up = {"to": "s", "bandwidth": "100 Mbps", "latency": "50 us"}
        return scenario([node("s", "switch"), node("srv", "server", uplink=up), node("p", "gateway", uplink=up)],
                        traffic=[flow("cyc", "p", "srv", kind="periodic", bytes=100, period="1 ms",
                                      priority=priority)],
                        message_bytes=1_000_000, node_groups=[{"prefix": "c", "count": 4, "uplink": up}])

    s, bg, _ = run(plant("control"), tmp_path, "control")
    assert bg["latency"].to_list() == pytest.approx([128.48e-6] * bg.height, rel=REL)
    frames = s["background"]["cyc"]["with_fl"]["frames"]
    assert frames > 300 and bg.height == 2 * frames

    s, bg, _ = run(plant("best_effort"), tmp_path, "best_effort")
    with_fl = bg.filter(pl.col("with_fl"))
    assert with_fl["latency"][0] == pytest.approx(185.44e-6, rel=REL)
    cyc = s["background"]["cyc"]
    assert cyc["with_fl"]["p99_s"] == pytest.approx(185.44e-6, rel=REL)
    assert cyc["without_fl"]["max_s"] == pytest.approx(128.48e-6, rel=REL)
    assert cyc["verdict"] == "FL raises p99 x1.44"


def test_control_traffic_above_capacity_starves_fl_until_it_stops(tmp_path):
    # A control CBR of 1,460-byte frames every 100 us (116.8 Mbps of payload, 123.04 Mbps on the wire) until
    # 0.95 ms: 10 frames, each 123.04 us at full capacity, back to back (the next is queued in its flow before the
    # previous ends): frame k is sent at k x 100 us and ends at (k + 1) x 123.04 us, latency (k + 1) 123.04 us -
    # k 100 us + 1 ms. FL's message (1,230,400 bits) has rate 0 until 1.2304 ms, then the whole link: t_tx =
    # 1.2304 ms + 12.304 ms = 13.5344 ms.
    sc = pair([flow("hog", kind="cbr", rate="116.8 Mbps", packet=1460, priority="control", stop="0.95 ms")])
    _, bg, msgs = run(sc, tmp_path)
    assert msgs["t_tx"][0] == pytest.approx(13.5344e-3, rel=REL)
    with_fl = bg.filter(pl.col("with_fl"))
    assert with_fl["latency"].to_list() == pytest.approx(
        [(k + 1) * 123.04e-6 - k * 100e-6 + 1e-3 for k in range(10)], rel=REL)


def test_two_control_flows_share_among_themselves(tmp_path):
    # Two control flows' 100-byte frames at the same instants share the link max-min: 50 Mbps each, 28.48 us,
    # + 1 ms; FL's rate is 0 meanwhile.
    sc = pair([flow("x", kind="periodic", bytes=100, period="1 ms", priority="control"),
               flow("y", kind="periodic", bytes=100, period="1 ms", priority="control")])
    _, bg, _ = run(sc, tmp_path)
    assert bg["latency"].to_list() == pytest.approx([2 * SMALL / C + 1e-3] * bg.height, rel=REL)


# ------------------------------------------------------------------------------------------------ transport
def test_datagram_frames_are_lost_in_an_outage_and_a_tcp_upload_waits_for_it(tmp_path):
    # Link ab down from 10 to 20 ms. Control frames every 5 ms until 30 ms: 0, 5, 10, 15, 20, 25 ms; those of 10
    # and 15 ms find no route and are lost at once (datagrams); the others take 14.24 us + 1 ms. A TCP upload of
    # 50,000 bytes b > a at 8 ms (35 packets: 52,730 wire bytes = 421,840 bits) has sent 200,000 bits by 10 ms,
    # stalls, and sends the other 221,840 from 20 ms: t_tx = 22.2184 ms, delivered 23.2184 ms (latency 15.2184 ms).
    sc = pair([flow("ctl", kind="periodic", bytes=100, period="5 ms", priority="control", stop="30 ms"),
               flow("cam", "b", "a", kind="bulk", bytes=50_000, start="8 ms", stop="9 ms")],
              message_bytes=100, faults=[{"link": "ab", "down": "10 ms", "up": "20 ms"}])
    s, bg, _ = run(sc, tmp_path)
    for with_fl in (True, False):
        ctl = bg.filter(pl.col("with_fl") == with_fl, pl.col("flow") == "ctl")
        assert ctl["t_send"].to_list() == pytest.approx([0, 5e-3, 10e-3, 15e-3, 20e-3, 25e-3], abs=1e-15)
        assert ctl["lost"].to_list() == [False, False, True, True, False, False]
        assert ctl.filter(pl.col("lost"))["t_deliver"].is_nan().all()
        assert ctl.filter(~pl.col("lost"))["latency"].to_list() == pytest.approx([1.01424e-3] * 4, rel=REL)
        cam = bg.filter(pl.col("with_fl") == with_fl, pl.col("flow") == "cam").row(0, named=True)
        assert (cam["wire_bytes"], cam["lost"]) == (52_730, False)
        assert cam["latency"] == pytest.approx(15.2184e-3, rel=REL)
    assert s["background"]["ctl"]["with_fl"]["loss"] == pytest.approx(2 / 6)
    assert s["background"]["ctl"]["transport"] == "datagram" and s["background"]["cam"]["transport"] == "tcp"
    assert s["totals"]["messages"] == 1 and s["totals"]["messages_lost"] == 0  # the frames are counted apart


def test_datagram_loss_is_drawn_per_frame_and_tcp_frames_pay_retransmissions(tmp_path):
    # 10% loss on the link. Datagram frames: one packet lost with probability 0.1, two packets with 1 - 0.9^2 =
    # 0.19; no retransmission, no loss cap: a delivered 100-byte frame takes 14.24 us + 1 ms (alone on the link:
    # they start after FL's one message, which the cap holds to 22 Mbps, has gone). TCP frames (100 bytes,
    # 1 packet) are never lost; the flow is charged round(running sum of 1 x 0.1 / 0.9) retransmitted packets of
    # 178 bytes: 10,000 frames -> round(1,111.1) = 1,111. Its rate is capped (Mathis): RTT = (1 ms + 12,304 / 1e8)
    # + (1 ms + 624 / 1e8) = 2.12928 ms, cap = 12,304 / RTT x sqrt(1.5 / 0.1), so a frame without retransmission
    # takes 1,424 / cap + 1 ms.
    sc = scenario([node("a"), node("b", "server")],
                  [{"a": "a", "b": "b", "name": "ab", "bandwidth": "100 Mbps", "latency": "1 ms", "loss": 0.1}],
                  [flow("one", kind="periodic", bytes=100, period="1 ms", stop="10 s", start="0.25 ms"),
                   flow("two", kind="periodic", bytes=2000, period="1 ms", stop="10 s", start="0.5 ms"),
                   flow("tcp", "b", "a", kind="periodic", bytes=100, period="1 ms", stop="10 s", transport="tcp")],
                  message_bytes=100)
    s, bg, _ = run(sc, tmp_path)
    b = s["background"]
    assert b["one"]["with_fl"]["frames"] == 10_000
    assert abs(b["one"]["with_fl"]["loss"] - 0.1) < 0.0075  # 3.5 standard deviations of 10,000 draws
    assert abs(b["two"]["with_fl"]["loss"] - 0.19) < 0.0137
    one = bg.filter(pl.col("flow") == "one", ~pl.col("lost"))
    assert one["latency"].to_list() == pytest.approx([SMALL / C + 1e-3] * one.height, rel=REL)
    assert set(bg.filter(pl.col("flow") == "one")["wire_bytes"].to_list()) == {178}
    tcp = bg.filter(pl.col("flow") == "tcp", pl.col("with_fl"))
    assert not tcp["lost"].any() and tcp["wire_bytes"].sum() == 178 * (10_000 + 1_111)
    cap = 12_304 / 2.12928e-3 * math.sqrt(15)
    plain = tcp.filter(pl.col("wire_bytes") == 178)["latency"]
    assert plain.to_list() == pytest.approx([SMALL / cap + 1e-3] * plain.len(), rel=REL)


# ------------------------------------------------------------------------------------------------ the run
def test_background_runs_beside_the_workload_then_alone_and_is_traced_apart(tmp_path):
    sc = pair([flow("ctl", kind="periodic", bytes=100, period="1 ms", priority="control"),
               flow("be", kind="cbr", rate="1 Mbps", packet=500)])
    s, bg, msgs = run(sc, tmp_path)
    assert bg.schema == BACKGROUND_SCHEMA
    assert msgs.height == 1 and msgs["phase"].to_list() == ["synthetic"]  # FL's trace stays as it is
    assert s["totals"]["messages"] == 1 and s["totals"]["wire_bytes"] == 153_800
    # the alone run sends the very same frames: same count, same send times
    w, a = bg.filter(pl.col("with_fl")), bg.filter(~pl.col("with_fl"))
    assert w.select("flow", "seq", "t_send").equals(a.select("flow", "seq", "t_send"))
    # be: a 500-byte frame every 8 x 500 / 1e6 = 4 ms while the workload runs (it ends after 15 ms, as above)
    assert w.filter(pl.col("flow") == "be")["t_send"].to_list() == pytest.approx([0, 4e-3, 8e-3, 12e-3], abs=1e-15)
    # the links carried both: FL's 153,800 bytes and every frame (ctl 178 B, be 578 B each)
    links = pl.read_parquet(tmp_path / "r" / "links.parquet").filter(pl.col("src") == "a")
    n_ctl = w.filter(pl.col("flow") == "ctl").height
    assert links["bytes"][0] == 153_800 + 178 * n_ctl + 578 * 4
    assert (tmp_path / "r" / "background.csv").is_file()
    # the summary reads back typed
    back = read_summary(tmp_path / "r")
    assert isinstance(back.background["ctl"], BackgroundFlow)
    assert isinstance(back.background["ctl"].with_fl, LatencyStats)
    assert back.to_dict()["background"] == json.loads((tmp_path / "r" / "summary.json").read_text())["background"]


def test_flows_with_a_stop_outlive_the_workload(tmp_path):
    # the gather is over in ~1 ms; the flow runs to its stop (frames at 0, 10, ..., 90 ms) and the run ends when
    # the last frame (90 ms) has arrived: 90 ms + 14.24 us + 1 ms
    sc = pair([flow("ctl", kind="periodic", bytes=100, period="10 ms", stop="95 ms")], message_bytes=100)
    s, bg, _ = run(sc, tmp_path)
    assert s["background"]["ctl"]["with_fl"]["frames"] == 10
    assert s["totals"]["sim_time_s"] == pytest.approx(0.09101424, rel=REL)
    # a flow without a stop ends with the workload: nothing starting after it is sent
    sc = pair([flow("late", kind="periodic", bytes=100, period="1 ms", start="1 s")], message_bytes=100)
    s, bg, _ = run(sc, tmp_path, "late")
    assert s["background"]["late"]["with_fl"]["frames"] == 0 and bg.height == 0
    assert s["background"]["late"]["verdict"] == "no frames"


def test_same_scenario_and_seed_give_byte_identical_traces(tmp_path):
    over = ['workload="synthetic"', 'synthetic.pattern=["gather"]', 'traffic[*].start="0 s"',
            'traffic[*].stop="1.2 s"']
    sc = load_scenario(TOPO / "wifi-cells-traffic.toml", over)
    for name in ("one", "two"):
        run_scenario(sc, tmp_path / name, progress=False)
    for f in ("background.parquet", "background.csv", "messages.parquet", "links.csv"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    bg = pl.read_parquet(tmp_path / "one" / "background.parquet")
    lost = bg.filter(pl.col("flow").str.starts_with("ctl6"), pl.col("with_fl"), pl.col("lost"))
    # cell 6 is down from 1 s to 1.5 s: its control frames sent at 1.00 .. 1.19 s are lost (20 per direction)
    assert lost.height == 40


def test_a_minute_of_the_shipped_plant_network_only_costs_a_few_events_per_frame(tmp_path):
    # 12 control flows x 6,000 frames + 3 cameras x 6 uploads in 60 s; each frame costs about two SimPy events
    # (its generator's wake-up, its delivery) and the batches of its instant. BENCHMARKS.md: ~3 s of wall time.
    import time

    over = ['workload="synthetic"', 'synthetic.pattern=["gather"]', 'traffic[*].stop="60 s"']
    c0 = time.process_time()
    s = run_scenario(load_scenario(TOPO / "wifi-cells-traffic.toml", over), tmp_path / "r", progress=False)
    cpu = time.process_time() - c0
    frames = sum(f["with_fl"]["frames"] for f in s["background"].values())
    assert frames == 12 * 6_000 + 3 * 6
    assert s["totals"]["events_processed"] < 3 * frames
    assert cpu < 10.0


def test_events_grow_with_frames_not_with_bytes():
    def events(**kw):
        sc = pair([flow("f", kind="bulk", stop="1 s", **kw)], message_bytes=100)
        w = World(sc)
        from simfl.traffic import Background

        bg = Background(w)
        run_synthetic(w, sc)
        bg.finish()
        return w.events_processed

    once = events(bytes=100_000, every="100 ms")  # ~8.4 ms per upload: they never overlap
    assert events(bytes=800_000, every="100 ms") == once  # 8x the bytes: the same events
    assert events(bytes=100_000, every="50 ms") > once + 5  # twice the uploads: more events


# ------------------------------------------------------------------------------------------------ statistics
def test_nearest_rank_percentiles_and_verdicts():
    v = np.arange(1.0, 101.0)
    assert (nearest_rank(v, 50), nearest_rank(v, 99)) == (50.0, 99.0)
    assert (nearest_rank(np.array([1.0, 2.0, 3.0]), 50), nearest_rank(np.array([1.0, 2.0, 3.0]), 99)) == (2.0, 3.0)
    assert nearest_rank(np.array([7.0]), 99) == 7.0
    per = Traffic("f", "a", "b", kind="periodic", bytes=100, period=0.01)

    def st(p99, loss=0.0):
        return LatencyStats(frames=10, delivered=10, lost=0, loss=loss, p50_s=p99, p99_s=p99, max_s=p99,
                            mean_s=p99, wire_bytes=0)

    assert verdict(per, st(0.011), st(0.002)) == "p99 above the period"
    assert verdict(per, st(0.011), st(0.012)) == "p99 above the period (also without FL)"
    assert verdict(per, st(0.002, 0.1), st(0.002)) == "FL adds loss"
    assert verdict(per, st(0.004), st(0.002)) == "FL raises p99 x2"
    assert verdict(per, st(0.0021), st(0.002)) == "ok"


# ------------------------------------------------------------------------------------------------ federated run
def test_fedad_report_shows_each_flow_with_and_without_fl(tiny_cached, tmp_path):
    extra = """
[[traffic]]
name = "cycle"
src = "server"
dst = "c0"
kind = "periodic"
bytes = 100
period = "10 ms"
priority = "control"

[[traffic]]
name = "camera"
src = "c1"
dst = "server"
kind = "bulk"
bytes = "1 MB"
every = "1 s"
"""
    path = tiny_cached.with_name("tiny-traffic.toml")
    path.write_text(tiny_cached.read_text() + extra)
    s = run_scenario(load_scenario(path), tmp_path / "run", progress=False)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Background traffic" in report
    assert "| cycle | periodic, control |" in report and "| camera | bulk, best_effort |" in report
    assert (tmp_path / "run" / "background_latency.png").is_file()
    assert set(s["background"]) == {"cycle", "camera"}
    # control frames server > s1 > c0 (1 Gbps then 100 Mbps, 0.5 ms each) keep their own time whatever FL does:
    # 1,424 / 1e8 + 1 ms + 1,424 / 1e9 (the faster hop's serialisation) = 1.015664 ms
    cyc = s["background"]["cycle"]
    assert cyc["with_fl"]["max_s"] == pytest.approx(1.015664e-3, rel=REL)
    assert cyc["without_fl"]["max_s"] == pytest.approx(1.015664e-3, rel=REL)
    msgs = pl.read_parquet(tmp_path / "run" / "messages.parquet")
    assert "background" not in msgs["phase"].to_list()


# ------------------------------------------------------------------------------------------------ keys and errors
BAD = [
    ({"src": "zz"}, 'traffic[0].src = "zz": unknown node'),
    ({"dst": "a"}, 'traffic[0].dst = "a": a flow needs two different nodes'),
    ({"period": None}, "traffic[0].period: missing (required by kind \"periodic\": bytes, period)"),
    ({"rate": "1 Mbps"}, 'traffic[0].rate = "1 Mbps": is not used by kind "periodic" (its keys: bytes, period)'),
    ({"stop": "1 s", "start": "2 s"}, 'traffic[0].stop = "1 s": must be later than start (2 s)'),
    ({"priority": "urgent"}, 'traffic[0].priority = "urgent": must be one of control, best_effort'),
    ({"kind": "video"}, 'traffic[0].kind = "video": must be one of cbr, periodic, onoff, bulk'),
    ({"bytes": 0}, "traffic[0].bytes = 0: size must be positive"),
    ({"period": "0 s"}, 'traffic[0].period = "0 s": time must be positive'),
    ({"dst": "island"}, 'traffic[0].dst = "island": no chain of links or cells connects a to island'),
    ({"transport": "quic"}, 'traffic[0].transport = "quic": must be one of datagram, tcp'),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_traffic_keys_stop_with_one_line(change, message):
    base = flow("f", kind="periodic", bytes=100, period="10 ms")
    entry = {k: v for k, v in {**base, **change}.items() if v is not None}
    nodes = [node("a"), node("b", "server"), node("island", "switch")]
    with pytest.raises(SimflError) as e:
        scenario(nodes, [{"a": "a", "b": "b", "bandwidth": "100 Mbps"}], [entry])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_more_traffic_errors():
    links = [{"a": "a", "b": "b", "bandwidth": "100 Mbps"}]
    nodes = [node("a"), node("b", "server")]
    cases = [
        ([flow("f", kind="periodic", bytes=1, period="1 s"), flow("f", kind="periodic", bytes=1, period="1 s")],
         {}, 'traffic[1].name = "f": duplicate traffic flow (already declared at traffic[0])'),
        ([flow("f", kind="cbr", rate="100 Gbps", packet=100)], {},
         'traffic[0].rate = "100 Gbps": sends a frame of 100 bytes every 8e-09 s; frames must be at least 1 us apart'),
        ([flow("f", kind="onoff", rate="1 Mbps", on="1 s")], {}, "traffic[0].off: missing"),
        ([flow("f", kind="cbr", rate="1 Gbps", packet=1000, stop="100000 s")], {},  # a frame every 8 us
         'traffic[0].stop = "100000 s": the background flows send about 12,500,000,000 frames'),
    ]
    for entries, net, message in cases:
        with pytest.raises(SimflError) as e:
            scenario(nodes, links, entries, network=net)
        assert message in str(e.value), str(e.value)


def test_defaults_are_resolved_and_written_back(tmp_path):
    sc = pair([flow("c", kind="cbr", rate="1 Mbps"), flow("u", kind="bulk", bytes="2 MB")])
    c, u = sc.traffic
    assert (c.packet, c.transport, c.priority, c.start, c.stop) == (1460, "datagram", "best_effort", 0.0, None)
    assert (u.transport, u.every, u.gap) == ("tcp", None, None)
    assert c.gap == pytest.approx(8 * 1460 / 1e6)
    p = tmp_path / "s.toml"
    p.write_text(sc.to_toml())
    assert load_scenario(p).traffic == sc.traffic


def test_star_overrides_set_every_entry_and_a_loss_override_replaces_burst_loss():
    sc = load_scenario(TOPO / "constrained-plant.toml", ["cells[*].loss=0.03", 'cells[*].latency="5 ms"'])
    assert all(c.loss.rate == 0.03 and not c.loss.bursty and c.latency_s == 5e-3 for c in sc.cells)
    assert len(sc.cells) == 9
    sc = load_scenario(TOPO / "wifi-cells-traffic.toml", ['traffic[*].stop="60 s"'])
    assert {f.stop for f in sc.traffic} == {60.0}
    with pytest.raises(SimflError, match=r"--set links\[\*\].loss=0.1: links has no entries"):
        load_scenario(TOPO / "wifi-cells.toml", ["links[*].loss=0.1"])


def test_the_shipped_plant_with_background_traffic():
    sc = load_scenario(TOPO / "wifi-cells-traffic.toml")
    assert sc.workload == "fedad" and len(sc.clients) == 90
    ctl = [f for f in sc.traffic if f.priority == "control"]
    cams = [f for f in sc.traffic if f.kind == "bulk"]
    assert len(ctl) == 12 and {(f.kind, f.bytes, f.period, f.transport) for f in ctl} == {
        ("periodic", 100, 0.01, "datagram")}
    assert len(cams) == 3 and {(f.bytes, f.every, f.dst, f.transport) for f in cams} == {
        (2_000_000, 10.0, "server", "tcp")}
