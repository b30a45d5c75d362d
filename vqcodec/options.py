"""The encode options every door shares (``vqcodec.encode``, ``vqc encode``, ``vqc bulk encode``):
parsed and checked here, once, so that each door gives the same one-line error for the same
bad value and the same bytes for the same good one.

Torch-free (the container constants only): ``vqc bulk`` checks its options on the client, which
never runs a network.
"""

from __future__ import annotations

import operator

from vqcodec import container
from vqcodec.container import CodingMode
from vqcodec.errors import VqcUsageError

ENTROPY_CODERS = {"static": CodingMode.STATIC, "exact": CodingMode.EXACT, "int8": CodingMode.INT8,
                  "int8-paired": CodingMode.INT8_PAIRED, "context": CodingMode.CONTEXT,
                  "raw": CodingMode.RAW}  # fmt: skip
"""``entropy=`` / ``--entropy`` names; "auto" (None) lets the codec pick per K."""
MIN_PACKET_BYTES = 16


def coding_mode(entropy: str) -> CodingMode | None:
    """ "auto" -> None (the codec picks the best available), else the named mode."""
    if entropy == "auto":
        return None
    if entropy not in ENTROPY_CODERS:
        raise VqcUsageError(f"unknown entropy coder {entropy!r}; choose auto, static, int8-paired, int8, exact, context "
                             "or raw")
    return ENTROPY_CODERS[entropy]


def parse_packets(spec: int | str | None) -> tuple[int, int]:
    """``packets`` / ``--packets`` -> (packet count, target bytes per packet), one of them 0.

    None -> (0, 0), not packetized; 16 or "16" -> (16, 0), a count in 1..255; "200B" / "200b"
    -> (0, 200), a size (at least 16 bytes): the count follows from the payload.
    """
    if spec is None:
        return 0, 0
    bad = VqcUsageError(f"--packets takes a count in 1..{container.MAX_PACKETS} or a size like 200B "
                        f"(>= {MIN_PACKET_BYTES}), not {spec!r}")  # fmt: skip
    if isinstance(spec, bool):
        raise bad
    if not isinstance(spec, str):
        try:
            spec = str(operator.index(spec))  # ints and numpy integers, not floats
        except TypeError:
            raise bad from None
    s = spec.strip().lower()
    try:
        if s.endswith("b"):
            n = int(s[:-1])
            if n < MIN_PACKET_BYTES:
                raise ValueError
            return 0, n
        n = int(s)
        if not 1 <= n <= container.MAX_PACKETS:
            raise ValueError
        return n, 0
    except ValueError:
        raise bad from None


def packet_layout(packets: int | str | None, parity: int = 0) -> tuple[int, int]:
    """Parse ``packets`` and check ``parity`` against it: (packet count, bytes per packet).

    Parity packets protect the data packets, so they need ``packets``; R is 0..63 and a file
    has at most 255 packets in all (``container.check_parity``).
    """
    n_packets, packet_bytes = parse_packets(packets)
    try:
        if isinstance(parity, bool):
            raise TypeError
        parity = operator.index(parity)  # ints and numpy integers, not floats or bools
    except TypeError:
        raise VqcUsageError(f"--parity takes a whole number of parity packets, not {parity!r}") from None
    if parity and not (n_packets or packet_bytes):
        raise VqcUsageError("--parity adds parity packets to a packetized file: give --packets N too")
    container.check_parity(n_packets, parity)
    return n_packets, packet_bytes


def check_layers(sizes: object) -> tuple[int, ...]:
    """``layers=`` / ``--layers``: "8,64,1024" or a sequence of ints -> the chain of codebook sizes
    of a layered file (2 .. 8 increasing sizes), checked before any work."""
    bad = VqcUsageError(f"--layers takes 2 to 8 increasing codebook sizes such as 8,64,1024, not {sizes!r}")
    if isinstance(sizes, str):
        try:
            sizes = [int(s) for s in sizes.replace(" ", "").split(",")]
        except ValueError:
            raise bad from None
    try:
        out = tuple(operator.index(s) for s in sizes)  # type: ignore[union-attr]
    except TypeError:
        raise bad from None
    if not 2 <= len(out) <= 8 or list(out) != sorted(set(out)) or out[0] < 2 or out[-1] > container.MAX_K:
        raise bad
    return out


def layer_parity(parity: object, layers: int) -> tuple[int, ...]:
    """``parity`` / ``--parity`` of a layered file: one count per layer ("4,2,0", [4, 2, 0]: unequal
    protection, the base layer first) or one count for every layer (2, "2")."""
    bad = VqcUsageError(f"--parity takes a parity packet count, or one per layer such as 4,2,0, not {parity!r}")
    if isinstance(parity, bool):
        raise bad
    if isinstance(parity, str):
        try:
            parity = [int(s) for s in parity.replace(" ", "").split(",")]
        except ValueError:
            raise bad from None
    try:
        out = (operator.index(parity),) * layers if not hasattr(parity, "__iter__") else tuple(map(operator.index, parity))  # type: ignore[call-overload]
    except TypeError:
        raise bad from None
    if len(out) == 1:
        out = out * layers
    if len(out) != layers:
        raise VqcUsageError(f"--parity takes one count per layer ({layers} here) or one for every layer, not {len(out)}")
    if any(not 0 <= r <= container.MAX_PARITY for r in out):
        raise VqcUsageError(f"--parity: each layer's parity packet count must be in 0..{container.MAX_PARITY}")
    return out


MAX_EFFORT = 5
"""Encoder effort levels are 1 .. MAX_EFFORT (``vqcodec.effort``)."""


def check_effort(effort: object) -> int:
    """An effort level, checked before any work: a whole number 1 .. MAX_EFFORT."""
    if isinstance(effort, bool) or not isinstance(effort, int) or not 1 <= effort <= MAX_EFFORT:
        raise VqcUsageError(f"effort must be a whole number from 1 to {MAX_EFFORT}, not {effort!r}")
    return effort
