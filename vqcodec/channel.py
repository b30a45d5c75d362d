"""Channel simulation for packetized .vqc files: packet loss (independent or bursty) and bit errors.

- independent loss: each packet is dropped with probability ``loss``;
- burst loss: a two-state Gilbert-Elliott chain (every packet lost in the bad state, none in the
  good one) with mean loss rate ``loss`` and mean burst length ``burst`` packets:
  P(bad->good) = 1/burst, P(good->bad) = loss / (burst (1 - loss));
- bit errors: every bit of the file flips with probability ``ber`` (header copies included); the
  packet checksums turn a hit packet into a lost one, never into wrong indices;
- ``shuffle`` and ``duplicate`` reorder and repeat packets (a reader must not care).

Seeded with numpy's PCG64 (``seed``), so a run is reproducible. ``vqc corrupt`` and
``vqcodec.corrupt`` (the public function, which returns the bytes alone) both run ``corrupt``.
The module was ``vqcodec.corrupt`` before 0.2.0; it was renamed so that the public function can
have that name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vqcodec import container, layerpackets
from vqcodec.errors import VqcUsageError


@dataclass(frozen=True)
class CorruptReport:
    packets: int
    dropped: tuple[int, ...]
    flipped_bits: int
    duplicated: int

    def summary(self) -> str:
        return (f"dropped {len(self.dropped)}/{self.packets} packets, flipped {self.flipped_bits} bits, "
                f"duplicated {self.duplicated}")  # fmt: skip


def loss_pattern(n: int, loss: float, burst: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean (n,) array of dropped packets."""
    if not 0 <= loss <= 1:
        raise VqcUsageError("--loss must be in [0, 1]")
    if burst < 1:
        raise VqcUsageError("--burst must be >= 1 (mean burst length in packets)")
    if burst == 1 or loss in (0, 1):
        return rng.random(n) < loss
    p_bg = 1.0 / burst
    p_gb = min(1.0, loss * p_bg / (1 - loss))
    bad = rng.random() < loss  # start in the stationary distribution
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        out[i] = bad
        bad = (rng.random() >= p_bg) if bad else (rng.random() < p_gb)
    return out


def corrupt(data: bytes, loss: float = 0.0, burst: float = 1.0, ber: float = 0.0, shuffle: bool = False,
            duplicate: float = 0.0, seed: int = 0) -> tuple[bytes, CorruptReport]:  # fmt: skip
    """Apply the channel to a packetized file; returns the damaged bytes and what was done."""
    layered = layerpackets.is_layer_packets(bytes(data[:4]))
    if not (container.is_packetized(bytes(data[:4])) or layered):
        raise VqcUsageError("file is not packetized: encode it with --packets N to simulate packet loss")
    if not 0 <= ber <= 1 or not 0 <= duplicate <= 1:
        raise VqcUsageError("--ber and --duplicate must be in [0, 1]")
    rng = np.random.default_rng(seed)
    spans = layerpackets.spans(data) if layered else container.packet_spans(data)
    head = data[: spans[0][0]] if spans else data
    drop = loss_pattern(len(spans), loss, burst, rng)
    kept = [data[a:b] for (a, b), d in zip(spans, drop, strict=True) if not d]
    dup = 0
    if duplicate:
        extra = [p for p in kept if rng.random() < duplicate]
        dup = len(extra)
        kept += extra
    if shuffle:
        kept = [kept[i] for i in rng.permutation(len(kept))]
    out = bytearray(head + b"".join(kept))
    flips = 0
    if ber:
        nbits = len(out) * 8
        k = rng.binomial(nbits, ber)
        for bit in rng.choice(nbits, size=k, replace=False):
            out[bit // 8] ^= 1 << (bit % 8)
        flips = int(k)
    return bytes(out), CorruptReport(len(spans), tuple(int(i) for i in np.nonzero(drop)[0]), flips, dup)
