"""Packet-level network backend: ns-3 (TCP/IP over point-to-point links and queues) co-simulated with SimPy.

Placeholder docstring, completed below.
"""

from simfl.ns3.cpp import available
from simfl.ns3.network import HOST_QDISCS, Ns3Network, Ns3Options

__all__ = ["Ns3Network", "Ns3Options", "HOST_QDISCS", "available"]
