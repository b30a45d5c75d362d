"""Which packet carries which latent position: a diagonal interleave that scatters losses.

Position (r, c) goes to packet ``(r * s + c) mod P`` with ``s ~ 0.38 P``: for P >= 5 the eight
neighbours of a position all sit in other packets, so one lost packet leaves isolated holes with
known neighbours (what recovery needs), never a block. P = 2 gives a checkerboard.
"""

from __future__ import annotations

import numpy as np


def stride_for(packets: int) -> int:
    return max(1, round(packets * 0.382))


def assignment(h: int, w: int, packets: int) -> np.ndarray:
    """(h, w) array of packet numbers in [0, packets)."""
    if packets < 1:
        raise ValueError("packets must be >= 1")
    r, c = np.mgrid[0:h, 0:w]
    return (r * stride_for(packets) + c) % packets


def packets_for_bytes(packet_bytes: int, estimate: int) -> int:
    """Packet count for a target packet size, from an estimate of the payload size."""
    return max(1, min(255, -(-estimate // max(1, packet_bytes))))
