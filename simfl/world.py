"""The simulated world: a SimPy environment, the topology, the network and node compute.

Simulated time never depends on this machine: a computation of F FLOPs on a node takes F / (the node's FLOP/s)
simulated seconds. The measured wall time a caller passes (`wall_s`) is only logged beside it.

Node faults ([[faults]] with `node`) of a fedad run's clients and server are crashes (`World.crashes`: the
workload stops the node's processes and the network fails its messages), not outages of its links; every other
fault is the network's (`simfl.faults`).
"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path
from typing import Any

import simpy

from simfl import config
from simfl.config import Scenario
from simfl.errors import SimflError
from simfl.faults import Fault
from simfl.network import Network
from simfl.topology import Topology
from simfl.trace import TraceRecorder

__all__ = ["World", "CountingEnvironment", "crash_faults"]

def crash_faults(scenario: Scenario) -> tuple[Fault, ...]:
    """The scenario's faults that are node crashes: in a fedad run, those of its clients and servers."""
    return tuple(config.crash_faults(scenario.workload, scenario.nodes, scenario.faults))


class CountingEnvironment(simpy.Environment):
    """A simpy.Environment that counts the events it processes (`events_processed`)."""

    def __init__(self, initial_time: float = 0) -> None:
        super().__init__(initial_time)
        self.events_processed = 0

    def step(self) -> None:
        super().step()
        self.events_processed += 1

    def run(self, until: Any = None) -> Any:
        """As simpy's run, with Python's cyclic garbage collector paused: a simulation allocates millions of
        short-lived objects (freed by reference counting) and the collector's scans of them doubled the run time."""
        was = gc.isenabled()
        gc.disable()
        try:
            return super().run(until)
        finally:
            if was:
                gc.enable()


class World:
    """`run_dir`: the run folder, where a backend writes files of its own (the ns3 backend's pcap files)."""

    def __init__(self, scenario: Scenario, run_dir: str | Path | None = None) -> None:
        self.scenario = scenario
        self.env = CountingEnvironment()
        self.crashes = crash_faults(scenario)
        outages = tuple(f for f in scenario.faults if f not in self.crashes)
        self.topology = Topology.from_scenario(dataclasses.replace(scenario, faults=outages) if self.crashes
                                               else scenario)
        self.recorder = TraceRecorder()
        self.background: Any = None  # the scenario's [[traffic]] flows once started (`simfl.traffic.Background`)
        self._running: dict[simpy.Event, tuple[Any, ...]] = {}  # computations under way (`cancel`)
        if scenario.network.model == "ns3":
            from simfl.ns3 import PCAP_DIR, Ns3Network  # loads ns-3 (10-20 s the first time in a process)

            self.network: Network = Ns3Network.for_scenario(
                self.env, self.topology, scenario, self.recorder,
                pcap_dir=None if run_dir is None else Path(run_dir) / PCAP_DIR)
        else:
            self.network = Network(self.env, self.topology, scenario.network, self.recorder, seed=scenario.seed)

    def close(self) -> None:
        """Release the network backend (the ns3 backend: ns-3, which completes the pcap files it writes)."""
        close = getattr(self.network, "close", None)
        if close is not None:
            close()

    @property
    def events_processed(self) -> int:
        return self.env.events_processed

    def compute(self, node: str, flops: float, *, kind: str, phase: str, round: int,
                wall_s: float = 0.0) -> simpy.Event:
        """An event that fires after flops / (node FLOP/s) simulated seconds and then records a compute row.
        Calls on the same node overlap; a node process that computes in sequence yields each event in turn."""
        speed = self.topology.flops(node)
        if speed <= 0:
            raise SimflError(f"node {node!r} ({self.topology.kind(node)}) has no compute profile; "
                             "give it a profile or flops in the scenario")
        if flops < 0:
            raise ValueError(f"compute on {node}: flops must be >= 0, got {flops}")
        env = self.env
        t0 = env.now
        duration = flops / speed
        ev = env.timeout(duration)
        rec = self.recorder
        running = self._running

        def _record(_ev: simpy.Event) -> None:
            running.pop(ev, None)
            rec.record_compute(node, phase, round, kind, t0, env.now, flops, wall_s)

        ev.callbacks.append(_record)
        running[ev] = (_record, node, phase, round, kind, t0, duration, flops, wall_s)
        return ev

    def running(self, node: str | None = None) -> list[simpy.Event]:
        """The computations of `compute` under way on `node` (None: on every node)."""
        return [ev for ev, entry in self._running.items() if node is None or entry[1] == node]

    def cancel(self, ev: simpy.Event) -> bool:
        """Stop the computation `ev` of `compute` now (its node crashed): its row is recorded up to now, with the
        FLOPs done so far, and `ev` never records another. False if it had already ended."""
        entry = self._running.pop(ev, None)
        if entry is None:
            return False
        record, node, phase, rnd, kind, t0, duration, flops, wall_s = entry
        ev.callbacks.remove(record)
        now = self.env.now
        done = flops * (now - t0) / duration if duration > 0 else flops
        self.recorder.record_compute(node, phase, rnd, kind, t0, now, done, wall_s)
        return True
