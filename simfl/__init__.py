"""simfl: a discrete-event network simulator of two-phase unsupervised federated anomaly detection."""

__version__ = "0.1.0"
