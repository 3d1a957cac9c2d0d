"""Loading ns-3 (only the modules simfl needs) and the C++ hub that keeps Python out of per-packet work.

`load()` imports cppyy, includes the headers of the ns-3 modules the hub uses, loads their libraries and compiles
`HUB_SOURCE` once per process (10-20 s the first time; later calls return at once). The "Failed to materialize
symbols ... g_timeInitHelper" lines that cling prints while loading ns-3 (harmless) are filtered from stderr.

The hub (`simfl_ns3::Hub`) builds the network (nodes, point-to-point links, WiFi cells, static host routes, queue
disciplines), opens one TCP connection per sender-receiver pair, writes messages into it back to back, and counts on
the receiver's side when a message's last byte has arrived: it then records the message as done and calls
`Simulator::Stop()`, so that `RunUntil` returns at that instant. A connection that gives up (`OnGiveUp`) is closed
and its messages not yet done are listed as lost (`gaveUp`), also with a stop; the pair's next message gets a new
connection. With a non-default give-up, a per-connection watchdog (`Watch`) aborts a connection that had data
outstanding without progress for that long (`TcpAbort` releases its socket without a packet); `Flush` and `Crash`
handle a node crash; `SetRoute` replaces host routes at fault edges; `Jitter` delays the packets of a hop in order.
Per-segment accounting (the `Tx` trace of every
sending socket) attributes transmitted bytes, retransmissions included, to the messages whose stream bytes they
carry; per-device traces count the bytes sent and the packets dropped on each link direction.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from simfl.errors import SimflError

__all__ = ["available", "load", "HUB_SOURCE"]

_WIRED = ("core", "network", "internet", "point-to-point", "traffic-control")
_WIFI = ("mobility", "propagation", "antenna", "spectrum", "energy", "wifi")
_NOISE = "Failed to materialize symbols"
_state: dict[str, Any] = {}


_MISSING = "network.model = \"ns3\" needs the ns3 package (ns-3 with its cppyy bindings): pip install ns3 (or pip " \
    "install -e .[ns3])"


def _spec(name: str) -> Any:
    """The module's import spec, or None where it cannot be imported."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def available() -> bool:
    """True when the `ns3` package (ns-3 with cppyy bindings) is installed."""
    return _spec("ns3") is not None and _spec("cppyy") is not None


def _prefix() -> tuple[Path, str]:
    spec = _spec("ns3")
    if spec is None or not spec.submodule_search_locations or _spec("cppyy") is None:
        raise SimflError(_MISSING)
    root = Path(next(iter(spec.submodule_search_locations)))
    libs = sorted((root / "lib64").glob("libns3*-core.so")) or sorted((root / "lib").glob("libns3*-core.so"))
    if not libs:
        raise SimflError(f"the ns3 package at {root} has no libns3*-core.so; reinstall it: "
                         "pip install --force-reinstall ns3")
    version = libs[0].name[len("libns"):-len("-core.so")]
    return root, version


class _QuietStderr:
    """Sends fd 2 to a temporary file; on exit writes back every line but cling's harmless loading noise."""

    def __enter__(self) -> None:
        sys.stderr.flush()
        self._tmp = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._tmp.fileno(), 2)

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        for line in self._tmp.read().decode(errors="replace").splitlines():
            if _NOISE not in line and line.strip():
                print(line, file=sys.stderr)
        self._tmp.close()


def load(wifi: bool = False) -> Any:
    """The compiled hub's namespace (`cppyy.gbl.simfl_ns3`); loads ns-3 and compiles the hub on first use."""
    if "gbl" in _state and (not wifi or _state.get("wifi")):
        return _state["gbl"].simfl_ns3
    root, version = _prefix()
    with _QuietStderr():
        try:
            import cppyy
            import libcppyy
        except ImportError as e:
            raise SimflError(f"{_MISSING} ({e})") from None

        if not _state.get("setup"):
            if "ns3.ns" not in sys.modules:  # the ns package registers Ptr itself
                libcppyy.AddSmartPtrType("Ptr")
            cppyy.add_include_path(str(root / "include"))
            for d in ("lib64", "lib"):
                if (root / d).is_dir():
                    cppyy.add_library_path(str(root / d))
            _state["setup"] = True
        mods = _WIRED + (_WIFI if wifi else ())
        if wifi:
            cppyy.cppdef("#ifndef HAVE_GSL\n#define HAVE_GSL 1\n#endif\n")
        for m in mods:
            cppyy.include(f"ns3/{m}-module.h")
        for m in mods:
            cppyy.load_library(f"libns{version}-{m}.so")
        if "gbl" not in _state:
            cppyy.cppdef(HUB_SOURCE)
            _state["gbl"] = cppyy.gbl
        if wifi and not _state.get("wifi"):
            cppyy.cppdef(WIFI_SOURCE)
            _state["wifi"] = True
    return _state["gbl"].simfl_ns3


HUB_SOURCE = r"""
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

namespace simfl_ns3 {
using namespace ns3;

const uint32_t PCAP_SNAPLEN = 192;  // bytes of each packet in ns-3's pcap files: every header, a little payload

// The background frame (message id) a UDP datagram belongs to: a byte tag, kept across forwarding and aggregation.
class FrameTag : public Tag
{
  public:
    int64_t id = -1;

    static TypeId GetTypeId()
    {
        static TypeId tid = TypeId("simfl_ns3::FrameTag").SetParent<Tag>().AddConstructor<FrameTag>();
        return tid;
    }

    TypeId GetInstanceTypeId() const override { return GetTypeId(); }
    uint32_t GetSerializedSize() const override { return 8; }
    void Serialize(TagBuffer b) const override { b.WriteU64(uint64_t(id)); }
    void Deserialize(TagBuffer b) override { id = int64_t(b.ReadU64()); }
    void Print(std::ostream& os) const override { os << "frame=" << id; }
};

// Packet loss of one receiving device: independent (burst == 0: each packet lost with probability `good`) or a
// Gilbert-Elliott chain (loss probability `good` / `bad` in the good / bad state; the bad state is left with
// probability 1 / burst per packet, the good one with 1 / gap; the first state is drawn from the stationary
// distribution); `down`: every packet is lost (an outage). Its random stream is set explicitly (SetStream), so the
// draws depend only on the scenario's seed and the device.
class LinkLoss : public ErrorModel
{
  public:
    double good = 0, bad = 0, burst = 0, gap = 0;
    bool down = false;
    bool bursty = false, inBad = false, started = false;
    uint64_t seen = 0, lost = 0, outage = 0;  // packets seen, lost to the loss model, lost to an outage
    uint64_t runs = 0;                        // runs of consecutive losses (outages aside)
    bool lastLost = false;
    Ptr<UniformRandomVariable> rv = CreateObject<UniformRandomVariable>();
    std::function<void(Ptr<const Packet>)> onDrop;  // told of every packet lost here (the hub's FrameDropped)

    void Set(double g, double b, double bu, double ga)
    {
        good = g; bad = b; burst = bu; gap = ga;
        bursty = bu > 0;
    }

  private:
    bool DoCorrupt(Ptr<Packet> p) override
    {
        ++seen;
        bool l = false;
        if (down) {
            ++outage;
            l = true;
        } else {
            l = Draw();
            if (l) { ++lost; runs += !lastLost; }
            lastLost = l;
        }
        if (l && onDrop) { onDrop(p); }
        return l;
    }

    bool Draw()
    {
        if (!bursty) { return good > 0 && rv->GetValue() < good; }
        if (!started) {
            inBad = rv->GetValue() < burst / (burst + gap);
            started = true;
        } else if (rv->GetValue() < 1.0 / (inBad ? burst : gap)) {
            inBad = !inBad;
        }
        double p = inBad ? bad : good;
        return p > 0 && rv->GetValue() < p;
    }

    void DoReset() override {}
};

// Jitter of one hop (a link direction, or what a cell member receives): each packet gets a seeded extra delay of
// mean `mean` ns, uniform on [0, 2 mean) or exponential (`expo`), but never arrives before the packet before it
// (FIFO: arrival = max(previous arrival, arrival without jitter + draw)). Its random stream is set explicitly.
struct Jitter : public SimpleRefCount<Jitter> {
    double mean = 0;
    bool expo = false;
    Time last;  // the previous packet's arrival
    Ptr<UniformRandomVariable> rv = CreateObject<UniformRandomVariable>();

    // The delay from now of a packet that would arrive `at` from now without jitter.
    Time Delay(Time at)
    {
        double u = rv->GetValue();
        double x = expo ? -mean * std::log(1.0 - u) : 2.0 * mean * u;
        Time arrive = Simulator::Now() + at + NanoSeconds(std::llround(x));
        if (arrive < last) { arrive = last; }
        last = arrive;
        return arrive - Simulator::Now();
    }
};

// A point-to-point channel whose two directions have their own propagation delay (ns-3's has one): delay[0] for
// what device 0 (the link's a end) sends, delay[1] for device 1's; and their own jitter (none: null).
class AsymChannel : public PointToPointChannel
{
  public:
    Time delay[2];
    Ptr<Jitter> jitter[2];

    bool TransmitStart(Ptr<const Packet> p, Ptr<PointToPointNetDevice> src, Time txTime) override
    {
        uint32_t k = src == GetPointToPointDevice(0) ? 0 : 1;
        Ptr<PointToPointNetDevice> dst = GetPointToPointDevice(1 - k);
        Time at = jitter[k] ? jitter[k]->Delay(txTime + delay[k]) : txTime + delay[k];
        Simulator::ScheduleWithContext(dst->GetNode()->GetId(), at, &PointToPointNetDevice::Receive, dst, p->Copy());
        return true;
    }
};

// Releases a TCP socket at once, as ns-3 does when its retransmissions are exhausted (its timers cancelled, its
// endpoint freed, no packet sent): DeallocateEndPoint is protected, reached through a derived class.
struct TcpAbort : public TcpSocketBase {
    static void Release(Ptr<Socket> s)
    {
        Ptr<TcpSocketBase> t = DynamicCast<TcpSocketBase>(s);
        void (TcpSocketBase::*release)() = &TcpAbort::DeallocateEndPoint;
        if (t) { (PeekPointer(t)->*release)(); }
    }
};

struct MsgAcct {
    uint64_t start = 0, end = 0;  // the message's bytes in its connection's stream: [start, end)
    int64_t tFirst = -1;          // ns: first transmission of one of its bytes (-1: none yet)
    int64_t tLast = -1;           // ns: last transmission (retransmissions too) of one of its bytes
    uint64_t wire = 0;            // payload bytes transmitted for it (retransmissions too) + headers of its segments
    uint64_t retx = 0;            // the part of `wire` that was retransmitted
    uint32_t segs = 0;            // first transmissions: segments whose first new byte is its
};

struct Conn {
    Ptr<Socket> sock;
    uint64_t written = 0, pushed = 0, received = 0, highest = 0;
    uint32_t isn = 0;
    std::vector<int64_t> msgs;  // message ids in stream order
    size_t nextDone = 0;
    size_t nextPush = 0;       // the message being written into the socket
    bool pushPending = false;  // a Push is scheduled
    bool failed = false;       // it gave up (OnGiveUp): closed, nothing more is written, received or done
    int64_t progress = 0;      // ns: last progress (network.give_up's watchdog): data became outstanding, or the
                               // receiver's byte count advanced
    bool watched = false;      // its watchdog (Watch) is scheduled
    int64_t watchNs = -1;      // its watchdog's time without progress (-1: the hub's giveUpNs)
    uint64_t wire = UINT64_MAX;  // its sender crashed: every byte below this had reached the wire (Flush)
};

struct Dev {
    Ptr<NetDevice> dev;
    uint32_t address = 0;  // IPv4 address of its interface
    uint32_t linkHdr = 0;  // bytes of framing counted per packet on top of the IP packet
    uint32_t l2Hdr = 0;    // bytes of the device's own header that the trace's packet carries
    uint64_t bytes = 0, packets = 0, drops = 0;
    uint64_t received = 0;  // WiFi: packets received from the cell (its losses: sent into it - received from it)
    Ptr<LinkLoss> loss;     // what it receives is lost by this (point-to-point: its receive error model; WiFi: at
                            // the IP layer, see InstallRxHooks)
    Ptr<Jitter> jitter;     // WiFi: what it receives is delayed by this (OnCellRx)
    uint32_t stations = 0;  // WiFi access point: its stations, the devices that follow it (AddCell)
};

class Hub {
  public:
    std::vector<Ptr<Node>> nodes;
    std::vector<Dev> devs;
    std::vector<Conn> conns;
    std::vector<MsgAcct> acct;
    std::vector<int64_t> done;
    std::vector<uint32_t> failed;  // connections that gave up (SYN or data retransmissions exhausted)
    std::vector<int64_t> gaveUp;   // their messages not yet done, in stream order: lost
    std::vector<Ptr<Socket>> udps;  // UDP streams' sending sockets
    std::unordered_map<int64_t, uint64_t> udpLeft;  // background frames over UDP in flight: bytes still to arrive
    std::vector<int64_t> lostFrames;  // UDP frames one of whose datagrams was dropped
    std::unordered_map<uint64_t, uint32_t> byPeer;
    std::vector<char> listening;
    std::vector<std::vector<int32_t>> ifDev;  // node -> IPv4 interface -> device index (-1: none)
    uint64_t inflight = 0;
    bool prio = false;  // control priority: every point-to-point port has a strict-priority queue disc (SetupQueue)
    uint32_t hdr = 0;
    uint32_t mss = 0;
    uint16_t port = 5000;
    int64_t giveUpNs = -1;  // network.give_up (ns) when not the default: a connection's watchdog (Watch); -1: none

    Hub(uint32_t headerBytes, uint32_t segmentSize) : hdr(headerBytes), mss(segmentSize) {}

    static void Configure(uint32_t mss, int64_t minRtoNs, int64_t delAckNs, int64_t connTimeoutNs,
                          uint32_t initialWindow, uint32_t seed, uint32_t run)
    {
        Simulator::Destroy();
        RngSeedManager::SetSeed(seed);
        RngSeedManager::SetRun(run);
        RngSeedManager::ResetNextStreamIndex();  // random streams numbered as in a fresh process
        Config::SetDefault("ns3::TcpSocket::SegmentSize", UintegerValue(mss));
        Config::SetDefault("ns3::TcpSocket::DelAckTimeout", TimeValue(NanoSeconds(delAckNs)));
        Config::SetDefault("ns3::TcpSocket::ConnTimeout", TimeValue(NanoSeconds(connTimeoutNs)));
        Config::SetDefault("ns3::TcpSocketBase::MinRto", TimeValue(NanoSeconds(minRtoNs)));
        Config::SetDefault("ns3::TcpSocketBase::Timestamp", BooleanValue(false));
        Config::SetDefault("ns3::TcpSocket::InitialCwnd", UintegerValue(initialWindow));
        Config::SetDefault("ns3::TcpSocket::DataRetries", UintegerValue(15));  // Linux's tcp_retries2
        Config::SetDefault("ns3::TcpSocket::ConnCount", UintegerValue(7));  // the SYN + Linux's tcp_syn_retries (6)
        // packets waiting for an ARP reply (WiFi only: point-to-point needs no ARP): ns-3 keeps 3 and drops the
        // rest without a trace; Linux keeps 208 kB per neighbour, about 100 full packets
        Config::SetDefault("ns3::ArpCache::PendingQueueSize", UintegerValue(100));
        Config::SetDefaultFailSafe("ns3::PcapFileWrapper::NanosecMode", BooleanValue(true));
        Config::SetDefaultFailSafe("ns3::PcapFileWrapper::CaptureSize", UintegerValue(PCAP_SNAPLEN));
    }

    // Write every packet that device `di` (a point-to-point link direction) starts to transmit to a pcap file
    // (link type PPP: the 2-byte PPP header, then the IP packet; nanosecond timestamps of ns-3's clock).
    void PcapDevice(uint32_t di, const std::string& path)
    {
        PcapHelper ph;
        Ptr<PcapFileWrapper> f = ph.CreateFile(path, std::ios::out, PcapHelper::DLT_PPP);
        devs[di].dev->TraceConnectWithoutContext("PhyTxBegin", MakeBoundCallback(&Hub::OnPcapTx, f));
    }

    void Clear()
    {
        for (auto& c : conns) { c.sock = nullptr; }
        conns.clear();
        udps.clear();
        devs.clear();
        nodes.clear();
        Simulator::Destroy();
    }

    void AddNodes(uint32_t n)
    {
        NodeContainer c;
        c.Create(n);
        for (uint32_t i = 0; i < n; ++i) { nodes.push_back(c.Get(i)); }
        listening.resize(nodes.size(), 0);
        ifDev.resize(nodes.size());
        InternetStackHelper st;
        Ipv4StaticRoutingHelper sr;
        st.SetRoutingHelper(sr);
        st.SetIpv6StackInstall(false);
        st.Install(c);
    }

    // queue: 0 = forwarding node (drop-tail device queue of `buffer` packets, no queue disc; on WiFi, see below);
    // hosts keep a 1-packet device queue under a queue disc: 1 = FIFO of 1000 packets, 2 = fq_codel's fair
    // queueing with its drop law off (target 1000 s), 3 = fq_codel as configured by default; 4 = a duplex cell's
    // channel (its base station's scheduler): fair queueing between flows as 2, `buffer` packets in all, a full
    // queue dropping one packet of the longest flow queue (not fq_codel's batch of up to 64). With
    // `prio`, every point-to-point port has a 1-packet device queue under a strict-priority queue disc (SetupPrio).
    void SetupQueue(uint32_t di, uint32_t queue, uint32_t buffer)
    {
        Ptr<NetDevice> d = devs[di].dev;
        Ptr<PointToPointNetDevice> p2p = DynamicCast<PointToPointNetDevice>(d);
        if (p2p) {
            p2p->GetQueue()->SetMaxSize(QueueSize(QueueSizeUnit::PACKETS, queue == 0 && !prio ? buffer : 1));
            p2p->GetQueue()->TraceConnectWithoutContext("Drop", MakeBoundCallback(&Hub::OnDevDrop, this, di));
        }
        if (prio) {
            if (p2p) { SetupPrio(di, queue, buffer); } else { SetupAccessCategories(di, queue, buffer); }
            return;
        }
        if (queue == 0 && p2p) { return; }
        TrafficControlHelper tch;
        if (queue == 0) {  // a forwarding node's WiFi device: the MAC queue holds `buffer` packets (see AddCell),
                           // a 1-packet queue disc above it drops (with a trace) when the MAC queue is full
            tch.SetRootQueueDisc("ns3::FifoQueueDisc", "MaxSize", QueueSizeValue(QueueSize("1p")));
        } else if (queue == 1) {
            tch.SetRootQueueDisc("ns3::FifoQueueDisc", "MaxSize", QueueSizeValue(QueueSize("1000p")));
        } else if (queue == 2) {
            tch.SetRootQueueDisc("ns3::FqCoDelQueueDisc", "Target", StringValue("1000s"));
        } else if (queue == 4) {
            tch.SetRootQueueDisc("ns3::FqCoDelQueueDisc", "Target", StringValue("1000s"), "MaxSize",
                                 QueueSizeValue(QueueSize(QueueSizeUnit::PACKETS, buffer)), "DropBatchSize",
                                 UintegerValue(1));
        } else {
            tch.SetRootQueueDisc("ns3::FqCoDelQueueDisc");
        }
        QueueDiscContainer qd = tch.Install(d);
        qd.Get(0)->TraceConnectWithoutContext("Drop", MakeBoundCallback(&Hub::OnQdiscDrop, this, di));
    }

    // A strict-priority queue disc on device `di`: band 0 for socket priority 4 (IP ToS 0xb8, DSCP EF: control
    // flows; ns-3 sets the priority from the ToS when it forwards, Linux's table: 0xb8 -> 4; 802.11 marks what it
    // sent with its user priority 5), a FIFO of `buffer` packets (hosts: 1000); band 1 for the
    // rest, the port's own queue (a forwarding port: a FIFO of `buffer`; a host: its queue disc, see SetupQueue).
    void SetupPrio(uint32_t di, uint32_t queue, uint32_t buffer)
    {
        TrafficControlHelper tch;
        uint16_t h = tch.SetRootQueueDisc("ns3::PrioQueueDisc", "Priomap",
                                          StringValue("1 1 1 1 0 0 1 1 1 1 1 1 1 1 1 1"));
        TrafficControlHelper::ClassIdList cls = tch.AddQueueDiscClasses(h, 2, "ns3::QueueDiscClass");
        QueueSize own(QueueSizeUnit::PACKETS, queue == 0 || queue == 4 ? buffer : 1000);
        tch.AddChildQueueDisc(h, cls[0], "ns3::FifoQueueDisc", "MaxSize", QueueSizeValue(own));
        if (queue == 2) {
            tch.AddChildQueueDisc(h, cls[1], "ns3::FqCoDelQueueDisc", "Target", StringValue("1000s"));
        } else if (queue == 4) {
            tch.AddChildQueueDisc(h, cls[1], "ns3::FqCoDelQueueDisc", "Target", StringValue("1000s"), "MaxSize",
                                  QueueSizeValue(own), "DropBatchSize", UintegerValue(1));
        } else if (queue == 3) {
            tch.AddChildQueueDisc(h, cls[1], "ns3::FqCoDelQueueDisc");
        } else {
            tch.AddChildQueueDisc(h, cls[1], "ns3::FifoQueueDisc", "MaxSize", QueueSizeValue(own));
        }
        QueueDiscContainer qd = tch.Install(devs[di].dev);
        qd.Get(0)->TraceConnectWithoutContext("Drop", MakeBoundCallback(&Hub::OnQdiscDrop, this, di));
        Ptr<FqCoDelQueueDisc> fq = DynamicCast<FqCoDelQueueDisc>(qd.Get(0)->GetQueueDiscClass(1)->GetQueueDisc());
        if (fq) { fq->SetQuantum(mss + 40); }  // the MTU, which a child queue disc cannot look up on its device
    }

    // A control flow's socket (TCP connection, or UDP stream with `udp`): IP ToS 0xb8 (DSCP EF), socket priority 4;
    // in a WiFi cell 802.11 user priority 5 (ns-3's mapping: the DS field's three top bits), access category video.
    void MarkControl(bool udp, uint32_t i)
    {
        Ptr<Socket> s = udp ? udps[i] : conns[i].sock;
        s->SetIpTos(0xb8);
    }

    // With control priority, a WiFi device's queue disc: one per access category (its MAC queue), so that EDCA
    // serves the video category's control packets first and none waits behind best effort in a queue disc
    // (MqQueueDisc; each child as the device's queue disc without priority, see SetupQueue).
    void SetupAccessCategories(uint32_t di, uint32_t queue, uint32_t buffer)
    {
        TrafficControlHelper tch;
        uint16_t h = tch.SetRootQueueDisc("ns3::MqQueueDisc");
        TrafficControlHelper::ClassIdList cls = tch.AddQueueDiscClasses(h, 4, "ns3::QueueDiscClass");
        for (uint16_t c : cls) {
            if (queue == 0) {
                tch.AddChildQueueDisc(h, c, "ns3::FifoQueueDisc", "MaxSize", QueueSizeValue(QueueSize("1p")));
            } else if (queue == 1) {
                tch.AddChildQueueDisc(h, c, "ns3::FifoQueueDisc", "MaxSize", QueueSizeValue(QueueSize("1000p")));
            } else if (queue == 2) {
                tch.AddChildQueueDisc(h, c, "ns3::FqCoDelQueueDisc", "Target", StringValue("1000s"));
            } else {
                tch.AddChildQueueDisc(h, c, "ns3::FqCoDelQueueDisc");
            }
        }
        QueueDiscContainer qd = tch.Install(devs[di].dev);
        for (size_t i = 0; i < qd.Get(0)->GetNQueueDiscClasses(); ++i) {  // an mq's children queue on their own
            qd.Get(0)->GetQueueDiscClass(i)->GetQueueDisc()->TraceConnectWithoutContext(
                "Drop", MakeBoundCallback(&Hub::OnQdiscDrop, this, di));
        }
    }

    uint32_t AddInterface(uint32_t node, Ptr<NetDevice> d, uint32_t address, uint32_t prefixLen, uint32_t linkHdr,
                          uint32_t l2Hdr)
    {
        Ptr<Ipv4> ip = nodes[node]->GetObject<Ipv4>();
        int32_t ifi = ip->AddInterface(d);
        ip->AddAddress(ifi, Ipv4InterfaceAddress(Ipv4Address(address), Ipv4Mask(prefixLen == 0 ? 0u
                                                  : ~((1u << (32 - prefixLen)) - 1u))));
        ip->SetMetric(ifi, 1);
        ip->SetUp(ifi);
        uint32_t di = devs.size();
        ifDev[node].resize(ifi + 1, -1);
        ifDev[node][ifi] = di;
        Dev dv;
        dv.dev = d;
        dv.address = address;
        dv.linkHdr = linkHdr;
        dv.l2Hdr = l2Hdr;
        devs.push_back(dv);
        if (DynamicCast<PointToPointNetDevice>(d)) {
            d->TraceConnectWithoutContext("PhyTxBegin", MakeBoundCallback(&Hub::OnPhyTx, this, di));
        }
        return di;
    }

    // A full-duplex link; returns the device index of a's end (b's is the next one). Addresses: the /30 `subnet`.
    // qa, qb: each end's queue (see SetupQueue); a host's end gets flow control so that its queue disc works.
    // Each direction has its own rate (bps: a -> b, bpsB: b -> a), delay and inter-frame gap.
    uint32_t AddLink(uint32_t a, uint32_t b, uint64_t bps, int64_t delayNs, int64_t gapNs, uint64_t bpsB,
                     int64_t delayBNs, int64_t gapBNs, uint32_t mtu, uint32_t linkHdr, uint32_t subnet, uint32_t qa,
                     uint32_t qb, uint32_t buffer)
    {
        Ptr<AsymChannel> ch = CreateObject<AsymChannel>();
        ch->delay[0] = NanoSeconds(delayNs);
        ch->delay[1] = NanoSeconds(delayBNs);
        uint32_t first = devs.size();
        uint32_t ends[2] = {a, b}, queues[2] = {qa, qb};
        uint64_t rates[2] = {bps, bpsB};
        int64_t gaps[2] = {gapNs, gapBNs};
        for (int k = 0; k < 2; ++k) {
            Ptr<PointToPointNetDevice> d = CreateObject<PointToPointNetDevice>();
            d->SetAddress(Mac48Address::Allocate());
            d->SetDataRate(DataRate(rates[k]));
            d->SetInterframeGap(NanoSeconds(gaps[k]));
            d->SetMtu(mtu);
            Ptr<Queue<Packet>> q = CreateObject<DropTailQueue<Packet>>();
            d->SetQueue(q);
            nodes[ends[k]]->AddDevice(d);
            if (queues[k] != 0 || prio) {
                Ptr<NetDeviceQueueInterface> ndqi = CreateObject<NetDeviceQueueInterface>();
                ndqi->GetTxQueue(0)->ConnectQueueTraces(q);
                d->AggregateObject(ndqi);
            }
            d->Attach(ch);
            uint32_t di = AddInterface(ends[k], d, subnet + 1 + k, 30, linkHdr, 2);
            SetupQueue(di, queues[k], buffer);
        }
        return first;
    }

    // The loss model of what device `di` receives (created on first use, its random stream `stream`).
    LinkLoss& Loss(uint32_t di, int64_t stream)
    {
        Dev& d = devs[di];
        if (!d.loss) {
            d.loss = CreateObject<LinkLoss>();
            d.loss->rv->SetStream(stream);
            d.loss->onDrop = [this](Ptr<const Packet> p) { FrameDropped(p); };
            Ptr<PointToPointNetDevice> p2p = DynamicCast<PointToPointNetDevice>(d.dev);
            if (p2p) { p2p->SetReceiveErrorModel(d.loss); }
        }
        return *d.loss;
    }

    // Packets device `di`'s loss model dropped (lost or during an outage).
    uint64_t Lost(uint32_t di) const
    {
        const Dev& d = devs[di];
        return d.loss ? d.loss->lost + d.loss->outage : 0;
    }

    // At ns-3 time tNs: device `di` loses everything it receives (down) or works again.
    void ScheduleDown(uint32_t di, int64_t tNs, bool down)
    {
        Simulator::Schedule(NanoSeconds(std::max<int64_t>(0, tNs - NowNs())), &Hub::DoDown, this, di, down);
    }

    // At ns-3 time tNs: device `di` (point-to-point) transmits at bps, with the inter-frame gap gapNs.
    void ScheduleRate(uint32_t di, int64_t tNs, uint64_t bps, int64_t gapNs)
    {
        Simulator::Schedule(NanoSeconds(std::max<int64_t>(0, tNs - NowNs())), &Hub::DoRate, this, di, bps, gapNs);
    }

    void AddRoute(uint32_t node, uint32_t dst, uint32_t dev, uint32_t gateway)
    {
        Ptr<Ipv4> ip = nodes[node]->GetObject<Ipv4>();
        Ipv4StaticRoutingHelper sr;
        sr.GetStaticRouting(ip)->AddHostRouteTo(Ipv4Address(dst), Ipv4Address(gateway),
                                                ip->GetInterfaceForDevice(devs[dev].dev));
    }

    // Jitter of mean meanNs (see Jitter) on what device `di` sends (point-to-point) or receives (a cell member),
    // its random stream `stream`.
    void SetJitter(uint32_t di, double meanNs, bool expo, int64_t stream)
    {
        Ptr<Jitter> j = Create<Jitter>();
        j->mean = meanNs;
        j->expo = expo;
        j->rv->SetStream(stream);
        Ptr<PointToPointNetDevice> p2p = DynamicCast<PointToPointNetDevice>(devs[di].dev);
        if (p2p) {
            Ptr<AsymChannel> ch = DynamicCast<AsymChannel>(p2p->GetChannel());
            ch->jitter[ch->GetPointToPointDevice(0) == p2p ? 0 : 1] = j;
        } else {
            devs[di].jitter = j;
        }
    }

    // Replace node's host route to dst (rerouting at a fault edge): through device `dev` to `gateway`; dev < 0: none.
    void SetRoute(uint32_t node, uint32_t dst, int32_t dev, uint32_t gateway)
    {
        Ptr<Ipv4StaticRouting> sr = Ipv4StaticRoutingHelper().GetStaticRouting(nodes[node]->GetObject<Ipv4>());
        for (uint32_t i = sr->GetNRoutes(); i-- > 0;) {
            Ipv4RoutingTableEntry e = sr->GetRoute(i);
            if (e.IsHost() && e.GetDest() == Ipv4Address(dst)) { sr->RemoveRoute(i); }
        }
        if (dev >= 0) { AddRoute(node, dst, uint32_t(dev), gateway); }
    }

    uint32_t Open(uint32_t src, uint32_t srcAddr, uint16_t srcPort, uint32_t dst, uint32_t dstAddr)
    {
        if (!listening[dst]) {
            Ptr<Socket> l = Socket::CreateSocket(nodes[dst], TcpSocketFactory::GetTypeId());
            l->Bind(InetSocketAddress(Ipv4Address::GetAny(), port));
            l->Listen();
            l->SetAcceptCallback(MakeNullCallback<bool, Ptr<Socket>, const Address&>(),
                                 MakeCallback(&Hub::OnAccept, this));
            listening[dst] = 1;
        }
        uint32_t ci = conns.size();
        conns.emplace_back();
        Ptr<Socket> s = Socket::CreateSocket(nodes[src], TcpSocketFactory::GetTypeId());
        s->Bind(InetSocketAddress(Ipv4Address(srcAddr), srcPort));
        byPeer[(uint64_t(srcAddr) << 16) | srcPort] = ci;
        s->TraceConnectWithoutContext("Tx", MakeBoundCallback(&Hub::OnSegment, this, ci));
        s->SetSendCallback(MakeBoundCallback(&Hub::OnSendSpace, this, ci));
        s->SetCloseCallbacks(MakeNullCallback<void, Ptr<Socket>>(), MakeBoundCallback(&Hub::OnGiveUp, this, ci));
        s->SetConnectCallback(MakeNullCallback<void, Ptr<Socket>>(), MakeBoundCallback(&Hub::OnGiveUp, this, ci));
        s->Connect(InetSocketAddress(Ipv4Address(dstAddr), port));
        conns[ci].sock = s;
        return ci;
    }

    // A UDP stream from src to dst (the receiver's socket on dstPort); returns its index.
    uint32_t OpenUdp(uint32_t src, uint32_t srcAddr, uint16_t srcPort, uint32_t dst, uint32_t dstAddr,
                     uint16_t dstPort)
    {
        Ptr<Socket> r = Socket::CreateSocket(nodes[dst], UdpSocketFactory::GetTypeId());
        r->Bind(InetSocketAddress(Ipv4Address::GetAny(), dstPort));
        r->SetRecvCallback(MakeBoundCallback(&Hub::OnUdpRecv, this));
        Ptr<Socket> s = Socket::CreateSocket(nodes[src], UdpSocketFactory::GetTypeId());
        s->Bind(InetSocketAddress(Ipv4Address(srcAddr), srcPort));
        s->Connect(InetSocketAddress(Ipv4Address(dstAddr), dstPort));
        udps.push_back(s);
        return udps.size() - 1;
    }

    // Send `bytes` on UDP stream `ui` as frame `id`: datagrams of at most `payload` bytes (one empty datagram for
    // 0 bytes), each tagged with the frame; the frame is done when all its bytes have arrived, lost when one of
    // its datagrams is dropped (FrameDropped). acct: wire = bytes + datagrams x `hdrBytes`, segs = datagrams.
    void SendFrame(uint32_t ui, uint64_t bytes, int64_t id, uint32_t payload, uint32_t hdrBytes)
    {
        if (acct.size() <= size_t(id)) { acct.resize(id + 1); }
        MsgAcct& m = acct[id];
        m.end = bytes;
        m.tFirst = m.tLast = Simulator::Now().GetNanoSeconds();
        udpLeft[id] = bytes;
        ++inflight;
        uint64_t left = bytes;
        do {
            uint32_t n = uint32_t(std::min<uint64_t>(left, payload));
            Ptr<Packet> p = Create<Packet>(n);
            FrameTag t;
            t.id = id;
            p->AddByteTag(t);
            m.wire += n + hdrBytes;
            m.segs += 1;
            left -= n;
            udps[ui]->Send(p);
        } while (left > 0);
    }

    // A packet was dropped (a queue, a queue disc, a loss model): the UDP frame it belongs to is lost.
    void FrameDropped(Ptr<const Packet> p)
    {
        FrameTag t;
        if (!p->FindFirstMatchingByteTag(t)) { return; }
        auto it = udpLeft.find(t.id);
        if (it == udpLeft.end()) { return; }
        udpLeft.erase(it);
        lostFrames.push_back(t.id);
        --inflight;
        Simulator::Stop();
    }

    // Frames still in flight on UDP, now lost (nothing more will arrive): ns-3 lost them without a trace.
    void LoseUdpFrames()
    {
        for (auto& kv : udpLeft) { lostFrames.push_back(kv.first); }
        inflight -= udpLeft.size();
        udpLeft.clear();
        std::sort(lostFrames.begin(), lostFrames.end());
    }

    // network.give_up set (not the default): TCP's own retransmission limits are raised out of its way (data: every
    // RTO up to ns-3's 60 s maximum for days; SYN: 30 retransmissions, the SYN timeout doubling each time) so that
    // only the connections' watchdogs give up.
    static void LongRetries()
    {
        Config::SetDefault("ns3::TcpSocket::DataRetries", UintegerValue(100000));
        Config::SetDefault("ns3::TcpSocket::ConnCount", UintegerValue(31));
    }

    // How long connection `c` may go without progress before its watchdog aborts it (ns; < 0: never).
    int64_t WatchNs(const Conn& c) const { return c.watchNs >= 0 ? c.watchNs : giveUpNs; }

    // Connection `ci` made progress now: its watchdog fires WatchNs after the last progress (if >= 0).
    void Progress(uint32_t ci)
    {
        Conn& c = conns[ci];
        int64_t wait = WatchNs(c);
        if (wait < 0) { return; }
        c.progress = Simulator::Now().GetNanoSeconds();
        if (!c.watched) {
            c.watched = true;
            Simulator::Schedule(NanoSeconds(wait), &Hub::Watch, this, ci);
        }
    }

    // The sender of connection `ci` crashed (after Flush of its node): its socket is released without a packet; its
    // messages not done that had not wholly reached the wire fail now (gaveUp), the others may still complete with
    // what is on its way, and fail if nothing of them arrives for drainNs. The connection is listed in `failed`
    // (the pair's next message opens a new one).
    void Crash(uint32_t ci, int64_t drainNs)
    {
        Conn& c = conns[ci];
        if (c.failed) { return; }
        size_t k = c.nextDone;
        while (k < c.msgs.size() && acct[c.msgs[k]].end <= std::min(c.highest, c.wire)) { ++k; }
        gaveUp.insert(gaveUp.end(), c.msgs.begin() + k, c.msgs.end());
        inflight -= c.msgs.size() - k;
        c.msgs.resize(k);
        c.nextPush = k;
        failed.push_back(ci);
        TcpAbort::Release(c.sock);
        if (c.nextDone == k) {
            c.failed = true;
            return;
        }
        c.watchNs = drainNs;
        c.watched = false;
        Progress(ci);
    }

    // Queue `bytes` on connection `ci` as message `id` (ids are 0, 1, 2, ... in call order).
    void Send(uint32_t ci, uint64_t bytes, int64_t id)
    {
        Conn& c = conns[ci];
        if (acct.size() <= size_t(id)) { acct.resize(id + 1); }
        acct[id].start = c.written;
        acct[id].end = c.written + bytes;
        c.written += bytes;
        if (c.nextDone == c.msgs.size()) { Progress(ci); }  // it was idle: the give-up clock starts now
        c.msgs.push_back(id);
        ++inflight;
        Push(ci);
        CheckDone(ci);  // a 0-byte message behind delivered ones is done at once
    }

    // Run until the simulated time stopNs (ns; < 0: no limit), a message completion, or no events are left.
    int64_t RunUntil(int64_t stopNs)
    {
        EventId e;
        if (stopNs >= 0) {
            int64_t d = stopNs - Simulator::Now().GetNanoSeconds();
            e = Simulator::Schedule(NanoSeconds(d < 0 ? 0 : d), &Hub::DoStop);
        }
        Simulator::Run();
        if (stopNs >= 0) { Simulator::Cancel(e); }
        return Simulator::Now().GetNanoSeconds();
    }

    static int64_t NowNs() { return Simulator::Now().GetNanoSeconds(); }

  private:
    static void DoStop() { Simulator::Stop(); }

    // The give-up watchdog of connection `ci`: with data outstanding and no progress for giveUpNs, it is aborted
    // (as when TCP gives up: its messages not done are lost, its socket is released without a packet); else it
    // looks again giveUpNs after the last progress (an idle connection is looked at again by its next Send).
    static void Watch(Hub* h, uint32_t ci)
    {
        Conn& c = h->conns[ci];
        c.watched = false;
        if (c.failed || c.nextDone == c.msgs.size()) { return; }
        int64_t due = c.progress + h->WatchNs(c);
        int64_t now = Simulator::Now().GetNanoSeconds();
        if (now < due) {
            c.watched = true;
            Simulator::Schedule(NanoSeconds(due - now), &Hub::Watch, h, ci);
            return;
        }
        h->Abort(ci);
        Simulator::Stop();
    }

    static void DoDown(Hub* h, uint32_t di, bool down) { h->devs[di].loss->down = down; }

    static void DoRate(Hub* h, uint32_t di, uint64_t bps, int64_t gapNs)
    {
        Ptr<PointToPointNetDevice> d = DynamicCast<PointToPointNetDevice>(h->devs[di].dev);
        d->SetDataRate(DataRate(bps));
        d->SetInterframeGap(NanoSeconds(gapNs));
    }
    static void OnPcapTx(Ptr<PcapFileWrapper> f, Ptr<const Packet> p) { f->Write(Simulator::Now(), p); }

    // Write the connection's messages into its socket, one message at a time: the next message is written once
    // every byte of the previous one has been transmitted, so that each message starts a segment of its own (its
    // segments are simfl's packetization), and a message is written in whole segments (MSS multiples from its
    // start) so that the socket's buffer never ends mid-segment.
    void Push(uint32_t ci)
    {
        Conn& c = conns[ci];
        if (c.failed) { return; }
        while (c.nextPush < c.msgs.size()) {
            const MsgAcct& m = acct[c.msgs[c.nextPush]];
            if (c.pushed >= m.end) {
                if (c.highest < m.end) { return; }  // OnSegment calls again when its last byte is sent
                ++c.nextPush;
                continue;
            }
            uint64_t left = m.end - c.pushed, n = std::min<uint64_t>(c.sock->GetTxAvailable(), left);
            if (n < left) {
                uint64_t off = c.pushed - m.start;
                n = (off + n) / mss * mss - off;
            }
            if (n == 0 || c.sock->Send(Create<Packet>(uint32_t(n)), 0) < 0) { return; }
            c.pushed += n;
        }
    }

    static void DoPush(Hub* h, uint32_t ci)
    {
        h->conns[ci].pushPending = false;
        h->Push(ci);
    }

    bool CheckDone(uint32_t ci)
    {
        Conn& c = conns[ci];
        bool any = false;
        while (!c.failed && c.nextDone < c.msgs.size() && acct[c.msgs[c.nextDone]].end <= c.received) {
            int64_t id = c.msgs[c.nextDone++];
            if (acct[id].tFirst < 0) { acct[id].tFirst = Simulator::Now().GetNanoSeconds(); }
            done.push_back(id);
            --inflight;
            any = true;
        }
        return any;
    }

    void OnAccept(Ptr<Socket> s, const Address& from)
    {
        InetSocketAddress a = InetSocketAddress::ConvertFrom(from);
        auto it = byPeer.find((uint64_t(a.GetIpv4().Get()) << 16) | a.GetPort());
        NS_ABORT_MSG_IF(it == byPeer.end(), "simfl: connection from an unknown peer");
        s->SetRecvCallback(MakeBoundCallback(&Hub::OnRecv, this, it->second));
    }

    static void OnRecv(Hub* h, uint32_t ci, Ptr<Socket> s)
    {
        Conn& c = h->conns[ci];
        Ptr<Packet> p;
        uint64_t before = c.received;
        while ((p = s->Recv())) {
            if (p->GetSize() == 0) { break; }
            c.received += p->GetSize();
        }
        if (c.received > before) { c.progress = Simulator::Now().GetNanoSeconds(); }
        if (h->CheckDone(ci)) { Simulator::Stop(); }
    }

    static void OnUdpRecv(Hub* h, Ptr<Socket> s)
    {
        Ptr<Packet> p;
        bool any = false;
        while ((p = s->Recv())) {
            FrameTag t;
            if (!p->FindFirstMatchingByteTag(t)) { continue; }
            auto it = h->udpLeft.find(t.id);
            if (it == h->udpLeft.end()) { continue; }  // a frame already lost
            uint64_t n = p->GetSize();
            it->second -= std::min(it->second, n);
            if (it->second == 0 && (n > 0 || h->acct[t.id].end == 0)) {
                h->udpLeft.erase(it);
                h->done.push_back(t.id);
                --h->inflight;
                any = true;
            }
        }
        if (any) { Simulator::Stop(); }
    }

    static void OnSendSpace(Hub* h, uint32_t ci, Ptr<Socket>, uint32_t) { h->Push(ci); }

    // The connection gave up (its SYN or a segment retransmitted too often): it is closed, and every message
    // written into it that is not done is lost (gaveUp); a segment that still arrives completes none.
    static void OnGiveUp(Hub* h, uint32_t ci, Ptr<Socket>)
    {
        if (h->Fail(ci)) { Simulator::Stop(); }
    }

    // Connection `ci` fails (unless it had): closed, its messages not done listed as lost; true if it had not.
    bool Fail(uint32_t ci)
    {
        Conn& c = conns[ci];
        if (c.failed) { return false; }
        c.failed = true;
        gaveUp.insert(gaveUp.end(), c.msgs.begin() + c.nextDone, c.msgs.end());
        inflight -= c.msgs.size() - c.nextDone;
        c.nextDone = c.nextPush = c.msgs.size();
        failed.push_back(ci);
        return true;
    }

  public:
    // Abort connection `ci` now (its sender crashed, or its give-up watchdog fired): it fails (Fail) and its socket
    // is released without a packet (TcpAbort).
    void Abort(uint32_t ci)
    {
        if (Fail(ci)) { TcpAbort::Release(conns[ci].sock); }
    }

  private:

    // The stream offset of sequence number `seq` on connection `c` (modulo 2^32, unwrapped near the highest offset
    // sent).
    static uint64_t Offset(const Conn& c, uint32_t seq)
    {
        uint32_t rel = seq - c.isn - 1;
        uint64_t s = (c.highest & ~uint64_t(0xffffffff)) | rel;
        if (s > c.highest + (uint64_t(1) << 31)) { s -= uint64_t(1) << 32; }
        else if (s + (uint64_t(1) << 31) < c.highest) { s += uint64_t(1) << 32; }
        return s;
    }

    // A TCP segment (IPv4 header `ip`, `p` from its TCP header on) of one of the hub's connections was thrown away
    // before it reached the wire: the connection's bytes from its first one were not all transmitted (Conn::wire).
    void Unsent(const Ipv4Header& ip, Ptr<Packet> p)
    {
        TcpHeader th;
        if (ip.GetProtocol() != 6 || p->RemoveHeader(th) == 0 || p->GetSize() == 0) { return; }
        auto it = byPeer.find((uint64_t(ip.GetSource().Get()) << 16) | th.GetSourcePort());
        if (it == byPeer.end()) { return; }
        Conn& c = conns[it->second];
        c.wire = std::min(c.wire, Offset(c, th.GetSequenceNumber().GetValue()));
    }

  public:
    // Node `node` crashed: the packets waiting in its queue discs and point-to-point device queues are dropped
    // (not counted: they never reached a link), which sets Conn::wire of the connections they were from (a WiFi
    // device's MAC queue is left: what it holds is still sent).
    void Flush(uint32_t node)
    {
        Ptr<TrafficControlLayer> tc = nodes[node]->GetObject<TrafficControlLayer>();
        for (int32_t di : ifDev[node]) {
            if (di < 0) { continue; }
            Ptr<NetDevice> d = devs[di].dev;
            Ptr<QueueDisc> qd = tc->GetRootQueueDiscOnDevice(d);
            while (Ptr<QueueDiscItem> item = qd ? qd->Dequeue() : nullptr) {
                Ptr<Ipv4QueueDiscItem> ip = DynamicCast<Ipv4QueueDiscItem>(item);
                if (ip) { Unsent(ip->GetHeader(), item->GetPacket()->Copy()); }
            }
            Ptr<PointToPointNetDevice> p2p = DynamicCast<PointToPointNetDevice>(d);
            while (Ptr<Packet> p = p2p ? p2p->GetQueue()->Dequeue() : nullptr) {
                PppHeader ppp;
                Ipv4Header ip;
                p->RemoveHeader(ppp);
                if (ppp.GetProtocol() == 0x0021 && p->RemoveHeader(ip)) { Unsent(ip, p); }  // 0x21: IPv4
            }
        }
    }

  private:
    static void OnSegment(Hub* h, uint32_t ci, Ptr<const Packet> p, const TcpHeader& th, Ptr<const TcpSocketBase>)
    {
        Conn& c = h->conns[ci];
        uint32_t seq = th.GetSequenceNumber().GetValue();
        if (th.GetFlags() & TcpHeader::SYN) {
            c.isn = seq;
            return;
        }
        uint32_t len = p->GetSize();
        if (len == 0) { return; }
        uint64_t s = Offset(c, seq);
        uint64_t e = s + len, hi = c.highest;
        // the segment's header goes to the message of its first new byte (a first transmission: one of that
        // message's packets) or, when it carries none, to the message of its first byte (a retransmission)
        uint64_t head = e > hi ? std::max(s, hi) : s;
        auto& A = h->acct;
        auto it = std::upper_bound(c.msgs.begin(), c.msgs.end(), s,
                                   [&A](uint64_t v, int64_t id) { return v < A[id].end; });
        int64_t now = Simulator::Now().GetNanoSeconds();
        for (; it != c.msgs.end() && A[*it].start < e; ++it) {
            MsgAcct& m = A[*it];
            if (m.end == m.start) { continue; }
            uint64_t lo = std::max(s, m.start), up = std::min(e, m.end);
            m.wire += up - lo;
            if (lo < hi) { m.retx += std::min(up, hi) - lo; }
            if (m.tFirst < 0) { m.tFirst = now; }
            m.tLast = now;
            if (m.start <= head && head < m.end) {
                m.wire += h->hdr;
                if (head < hi) { m.retx += h->hdr; }
                else { m.segs += 1; }
            }
        }
        c.highest = std::max(c.highest, e);
        if (!c.pushPending && c.pushed < c.written && c.highest >= c.pushed) {
            c.pushPending = true;  // the message written last is all sent: write the next one (not from inside
            Simulator::ScheduleNow(&Hub::DoPush, h, ci);  // TCP's transmission, whose trace this is)
        }
    }

  public:
    static void OnPhyTx(Hub* h, uint32_t di, Ptr<const Packet> p)
    {
        Dev& d = h->devs[di];
        d.bytes += p->GetSize() - d.l2Hdr + d.linkHdr;
        d.packets += 1;
    }

    static void OnDevDrop(Hub* h, uint32_t di, Ptr<const Packet> p)
    {
        h->devs[di].drops += 1;
        h->FrameDropped(p);
    }

    static void OnQdiscDrop(Hub* h, uint32_t di, Ptr<const QueueDiscItem> item)
    {
        h->devs[di].drops += 1;
        h->FrameDropped(item->GetPacket());
    }
};

}  // namespace simfl_ns3
"""

WIFI_SOURCE = r"""
#include <cmath>
#include <string>

namespace simfl_ns3 {
using namespace ns3;

// A cell's traffic is counted at the IP layer: what its members sent into it, and what they received from it
static void OnIpTx(Hub* h, uint32_t node, Ptr<const Packet>, Ptr<Ipv4>, uint32_t ifi)
{
    int32_t di = h->ifDev[node][ifi];
    if (di >= 0 && h->devs[di].l2Hdr == 8) { h->devs[di].packets += 1; }
}

static void OnIpRx(Hub* h, uint32_t node, Ptr<const Packet> p, Ptr<Ipv4>, uint32_t ifi)
{
    int32_t di = h->ifDev[node][ifi];
    if (di >= 0 && h->devs[di].l2Hdr == 8) {
        Dev& d = h->devs[di];
        d.received += 1;
        d.bytes += p->GetSize() + d.linkHdr;
    }
}

// A WiFi cell (802.11ac, VHT mode `mcs` with `nss` spatial streams on a `width` MHz channel of its own, so cells do
// not interfere): members[0] is the access point, the others its stations, within 5 m of it. Addresses: the /16
// `subnet`. `pcap`: none, or a pcap file per member (radiotap, every frame its PHY sends or receives). Returns the
// device index of the access point's device (the stations' follow in order).
uint32_t AddCell(Hub& h, const std::vector<uint32_t>& members, const std::vector<uint32_t>& queues, uint32_t buffer,
                 uint32_t subnet, uint32_t width, uint32_t nss, uint32_t mcs, uint32_t mtu, uint32_t linkHdr,
                 const std::string& name, const std::vector<std::string>& pcap)
{
    YansWifiPhyHelper phy;
    phy.SetPcapDataLinkType(WifiPhyHelper::DLT_IEEE802_11_RADIO);
    phy.SetChannel(YansWifiChannelHelper::Default().Create());
    phy.Set("ChannelSettings", StringValue("{0, " + std::to_string(width) + ", BAND_5GHZ, 0}"));
    phy.Set("Antennas", UintegerValue(nss));
    phy.Set("MaxSupportedTxSpatialStreams", UintegerValue(nss));
    phy.Set("MaxSupportedRxSpatialStreams", UintegerValue(nss));
    WifiHelper wifi;
    wifi.SetStandard(WIFI_STANDARD_80211ac);
    wifi.SetRemoteStationManager("ns3::ConstantRateWifiManager", "DataMode",
                                 StringValue("VhtMcs" + std::to_string(mcs)));
    WifiMacHelper mac;
    Ssid ssid(name);
    uint32_t first = h.devs.size();
    for (size_t i = 0; i < members.size(); ++i) {
        Ptr<Node> node = h.nodes[members[i]];
        if (i == 0) {
            mac.SetType("ns3::ApWifiMac", "Ssid", SsidValue(ssid));
        } else {
            mac.SetType("ns3::StaWifiMac", "Ssid", SsidValue(ssid));
        }
        Ptr<NetDevice> d = wifi.Install(phy, mac, node).Get(0);
        d->SetMtu(mtu);
        if (!pcap.empty()) { phy.EnablePcap(pcap[i], d, false, true); }
        // the best-effort MAC queue (where TCP goes): a forwarding node's port queue holds `buffer` packets; a
        // host's holds 64 (enough for an aggregate), its backlog waits in its queue disc (as a driver's small
        // queue under Linux's qdisc; ns-3's default of 500 packets would expire them after 500 ms)
        // it drops only when full: no lifetime (ns-3 drops MPDUs queued for 500 ms, a driver does not)
        for (AcIndex ac : {AC_BE, AC_VI}) {  // best effort, and control flows (user priority 5: video)
            Ptr<WifiMacQueue> q = DynamicCast<WifiNetDevice>(d)->GetMac()->GetTxopQueue(ac);
            q->SetMaxSize(QueueSize(QueueSizeUnit::PACKETS, queues[i] == 0 ? buffer : 64));
            q->SetAttribute("MaxDelay", TimeValue(Seconds(3600)));
        }
        if (!node->GetObject<MobilityModel>()) {
            Ptr<ConstantPositionMobilityModel> m = CreateObject<ConstantPositionMobilityModel>();
            double a = 6.283185307179586 * i / members.size();
            m->SetPosition(i == 0 ? Vector(0, 0, 0) : Vector(5 * std::cos(a), 5 * std::sin(a), 0));
            node->AggregateObject(m);
        }
        uint32_t di = h.AddInterface(members[i], d, subnet + 1 + i, 16, linkHdr, 8);
        h.SetupQueue(di, queues[i], buffer);
        Ptr<Ipv4> ip = node->GetObject<Ipv4>();
        ip->TraceConnectWithoutContext("Tx", MakeBoundCallback(&OnIpTx, &h, members[i]));
        ip->TraceConnectWithoutContext("Rx", MakeBoundCallback(&OnIpRx, &h, members[i]));
    }
    h.devs[first].stations = members.size() - 1;
    return first;
}

static void SetMcs(Hub* h, uint32_t d0, uint32_t n, uint32_t mcs)
{
    for (uint32_t i = d0; i <= d0 + n; ++i) {  // ConstantRateWifiManager reads its DataMode per transmission
        DynamicCast<WifiNetDevice>(h->devs[i].dev)->GetRemoteStationManager()->SetAttribute(
            "DataMode", StringValue("VhtMcs" + std::to_string(mcs)));
    }
}

// At ns-3 time tNs: the members of the cell whose access point is device d0 (stations: the next n devices) send
// their data frames with VHT MCS `mcs` (a capacity trace's change; channel width and streams stay).
void ScheduleMcs(Hub& h, uint32_t d0, uint32_t n, int64_t tNs, uint32_t mcs)
{
    int64_t dt = std::max<int64_t>(0, tNs - Simulator::Now().GetNanoSeconds());
    Simulator::Schedule(NanoSeconds(dt), &SetMcs, &h, d0, n, mcs);
}

// Packets now in the queue discs and MAC queues of devices d0 .. d0 + n (MPDUs stay queued until acknowledged).
uint64_t Queued(Hub& h, uint32_t d0, uint32_t n)
{
    uint64_t q = 0;
    for (uint32_t i = d0; i <= d0 + n; ++i) {
        Ptr<NetDevice> d = h.devs[i].dev;
        Ptr<QueueDisc> qd = d->GetNode()->GetObject<TrafficControlLayer>()->GetRootQueueDiscOnDevice(d);
        if (qd && DynamicCast<MqQueueDisc>(qd)) {
            for (size_t k = 0; k < qd->GetNQueueDiscClasses(); ++k) {
                q += qd->GetQueueDiscClass(k)->GetQueueDisc()->GetNPackets();
            }
        } else if (qd) {
            q += qd->GetNPackets();
        }
        Ptr<WifiMac> m = DynamicCast<WifiNetDevice>(d)->GetMac();
        for (AcIndex ac : {AC_BE, AC_BK, AC_VI, AC_VO}) { q += m->GetTxopQueue(ac)->GetNPackets(); }
    }
    return q;
}

static void OnCellRx(Hub* h, uint32_t di, Ptr<TrafficControlLayer> tc, Ptr<NetDevice> d, Ptr<const Packet> p,
                     uint16_t proto, const Address& from, const Address& to, NetDevice::PacketType type)
{
    for (uint32_t k = di + 1; k <= di + h->devs[di].stations; ++k) {  // the access point: a station that is down
        Ptr<LinkLoss> s = h->devs[k].loss;                              // (its device's outage) is not heard
        if (s && s->down && h->devs[k].dev->GetAddress() == from) {
            ++s->outage;
            if (s->onDrop) { s->onDrop(p); }
            return;
        }
    }
    Ptr<LinkLoss> em = h->devs[di].loss;
    if (em && em->IsCorrupt(p->Copy())) { return; }
    Ptr<Jitter> j = h->devs[di].jitter;
    if (j) {
        Simulator::Schedule(j->Delay(Time(0)), &TrafficControlLayer::Receive, tc, d, p, proto, Address(from),
                            Address(to), type);
        return;
    }
    tc->Receive(d, p, proto, from, to, type);
}

// The IPv4 packets a node's WiFi devices receive go through their loss model (Dev::loss) and jitter (Dev::jitter)
// before the node's traffic control layer: the node's IPv4 and ARP handlers are registered again per device, the
// WiFi ones through OnCellRx (a lost packet is one 802.11 delivered but IP never sees, as a loss that TCP notices).
void InstallRxHooks(Hub& h, uint32_t node)
{
    Ptr<Node> n = h.nodes[node];
    Ptr<TrafficControlLayer> tc = n->GetObject<TrafficControlLayer>();
    Ptr<Ipv4> ip = n->GetObject<Ipv4>();
    for (uint32_t k = 0; k < 2 * ip->GetNInterfaces(); ++k) {  // IPv4 and ARP per interface; each call removes one
        n->UnregisterProtocolHandler(MakeCallback(&TrafficControlLayer::Receive, tc));
    }
    for (uint32_t ifi = 0; ifi < ip->GetNInterfaces(); ++ifi) {
        Ptr<NetDevice> d = ip->GetNetDevice(ifi);
        int32_t di = ifi < h.ifDev[node].size() ? h.ifDev[node][ifi] : -1;
        if (di >= 0 && h.devs[di].l2Hdr == 8) {
            n->RegisterProtocolHandler(MakeBoundCallback(&OnCellRx, &h, uint32_t(di), tc), 0x0800, d);
        } else {
            n->RegisterProtocolHandler(MakeCallback(&TrafficControlLayer::Receive, tc), 0x0800, d);
        }
        n->RegisterProtocolHandler(MakeCallback(&TrafficControlLayer::Receive, tc), 0x0806, d);
    }
}

// Static ARP entries everywhere (no ARP traffic, which a cell would broadcast).
void FillArp() { NeighborCacheHelper().PopulateNeighborCache(); }

// Whether the stations of the cell whose access point is device `ap` (stations: the next n devices) are associated.
bool Associated(Hub& h, uint32_t ap, uint32_t n)
{
    for (uint32_t i = ap + 1; i <= ap + n; ++i) {
        Ptr<StaWifiMac> m = DynamicCast<StaWifiMac>(DynamicCast<WifiNetDevice>(h.devs[i].dev)->GetMac());
        if (!m || !m->IsAssociated()) { return false; }
    }
    return true;
}

}  // namespace simfl_ns3
"""
