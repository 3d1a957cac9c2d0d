"""Write the example capacity traces in this folder (lte-5mhz-down.csv, lte-5mhz-up.csv): deterministic, no input.

    python traces/synthesise.py

What they are: the capacity over one minute of a 5 MHz FDD LTE cell whose stations see one common, slowly varying
shadowing (a machine or vehicle moving through the hall), sampled every 0.5 s, for the downlink and the uplink.
They are synthetic: made from two published models with the parameters below, not measured.

1. Shadowing: log-normal, with Gudmundson's exponential autocorrelation (M. Gudmundson, "Correlation model for
   shadow fading in mobile radio systems", Electronics Letters 27(23), 1991): the shadowing in dB is a first-order
   Gauss-Markov process, S[k+1] = rho S[k] + sqrt(1 - rho^2) sigma N(0, 1), rho = exp(-v dt / d_corr), with
   sigma = 6 dB, decorrelation distance d_corr = 10 m (a cluttered hall), speed v = 1.5 m/s, dt = 0.5 s. The
   SINR is the mean SINR plus S: 12 dB on the downlink, 8 dB on the uplink (cell-average figures).
2. SINR to throughput: the attenuated and truncated Shannon bound of 3GPP TR 36.942 (Annex A.2):
   0 below SINR_min, alpha log2(1 + SINR) up to the maximum, then the maximum; with alpha = 0.6, SINR_min = -10 dB,
   maximum 4.4 bit/s/Hz on the downlink and alpha = 0.4, SINR_min = -10 dB, maximum 2.0 bit/s/Hz on the uplink.
   Times the 5 MHz bandwidth; rounded to whole kbit/s; a sample below SINR_min (none here) would be 1 kbit/s.

One standard-normal sequence (numpy's PCG64, seed 20240611) drives both directions, so the two traces fade together.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED, STEP_S, DURATION_S = 20240611, 0.5, 60.0
SIGMA_DB, D_CORR_M, SPEED_MPS, BANDWIDTH_HZ = 6.0, 10.0, 1.5, 5e6
LINKS = {  # name: (mean SINR dB, alpha, SINR_min dB, maximum bit/s/Hz)
    "down": (12.0, 0.6, -10.0, 4.4),
    "up": (8.0, 0.4, -10.0, 2.0),
}


def shadowing(n: int) -> np.ndarray:
    rho = math.exp(-SPEED_MPS * STEP_S / D_CORR_M)
    z = np.random.Generator(np.random.PCG64(SEED)).standard_normal(n)
    s = np.empty(n)
    s[0] = SIGMA_DB * z[0]
    for k in range(1, n):
        s[k] = rho * s[k - 1] + math.sqrt(1 - rho * rho) * SIGMA_DB * z[k]
    return s


def capacity_bps(sinr_db: float, alpha: float, sinr_min_db: float, max_bps_hz: float) -> float:
    if sinr_db < sinr_min_db:
        return 1e3
    eff = min(alpha * math.log2(1 + 10 ** (sinr_db / 10)), max_bps_hz)
    return round(eff * BANDWIDTH_HZ / 1e3) * 1e3


def main() -> None:
    n = int(DURATION_S / STEP_S)
    s = shadowing(n)
    for name, (mean_db, alpha, sinr_min, top) in LINKS.items():
        rows = [(k * STEP_S, capacity_bps(mean_db + s[k], alpha, sinr_min, top)) for k in range(n)]
        mean = sum(r for _, r in rows) / n
        head = (f"# lte-5mhz-{name}: 5 MHz LTE cell, {name}link capacity, {STEP_S:g} s steps over {DURATION_S:g} s "
                f"(repeat with bandwidth_trace_period = \"{DURATION_S:g} s\"); mean {mean / 1e6:.2f} Mbps, "
                f"min {min(r for _, r in rows) / 1e6:.2f}, max {max(r for _, r in rows) / 1e6:.2f}.\n"
                "# Synthetic, made by traces/synthesise.py (Gudmundson shadowing + 3GPP TR 36.942 A.2 mapping; "
                "see traces/README.md).\n")
        body = "".join(f"{t:g},{r:.0f}\n" for t, r in rows)
        (HERE / f"lte-5mhz-{name}.csv").write_text(head + "time_s,bandwidth_bps\n" + body)


if __name__ == "__main__":
    main()
