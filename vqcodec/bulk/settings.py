"""What a bulk job is asked to do and what it reports: plain data, pickled between the client and
the workers (``EncodeSettings``, ``DecodeSettings``, ``Outcome``) or handed to the caller
(``Snapshot`` while it runs, ``Report`` and ``Failure`` at the end).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from vqcodec.errors import VqcUsageError
from vqcodec.imageio import MAX_PIXELS

EXTRA_HINT = "vqc bulk needs the cluster extra: pip install 'vqcodec[cluster]'"

def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


@dataclass(frozen=True)
class EncodeSettings:
    """The options of ``vqc encode`` that decide the bytes (and the device and size guard)."""

    codebook: int = 64
    max_bytes: int | None = None
    entropy: str = "auto"
    packets: int = 0  # a count, or
    packet_bytes: int = 0  # a target packet size (--packets 200B)
    parity: int = 0
    model: str | None = None
    device: str = "auto"
    max_pixels: int = MAX_PIXELS
    effort: int = 1

    def check(self) -> None:
        """What can be checked without the model (the rest: ``preflight_encode`` on a worker)."""
        from vqcodec import options

        if self.max_bytes is not None and self.max_bytes < 1:
            raise VqcUsageError(f"--max-bytes takes a positive number of bytes, not {self.max_bytes}")
        options.coding_mode(self.entropy)
        options.packet_layout(self.packets_spec, self.parity)
        options.check_effort(self.effort)

    @property
    def packets_spec(self) -> int | str | None:
        """``packets`` as ``vqcodec.encode`` and ``--packets`` take it: a count, a size ("200B") or None."""
        return f"{self.packet_bytes}B" if self.packet_bytes else self.packets or None

    def identity(self, model_id: int) -> dict:
        """What makes two runs' files comparable: stored in parquet parts, checked on resume."""
        d = asdict(self)
        del d["device"], d["max_pixels"]  # where it ran and the size guard do not change the bytes
        if d["effort"] == 1:
            del d["effort"]  # as jobs written before the option existed: their parts stay resumable
        d["model"] = f"{model_id:08x}"
        return d


@dataclass(frozen=True)
class DecodeSettings:
    """The options of ``vqc decode``: output format, recovery method, model, device."""

    fmt: str = "png"
    recover: str = "auto"
    model: str | None = None
    device: str = "auto"
    max_pixels: int = MAX_PIXELS

    @property
    def suffix(self) -> str:
        return "." + self.fmt.lower().lstrip(".")

    @property
    def pil_format(self) -> str:
        from PIL import Image

        fmt = Image.registered_extensions().get(self.suffix)
        if fmt is None:
            raise VqcUsageError(f"unknown image format {self.fmt!r}")
        return fmt

    def check(self) -> None:
        self.pil_format  # noqa: B018 - raises for an unknown format

    def identity(self) -> dict:
        return {"format": self.pil_format, "recover": self.recover, "model": self.model}


@dataclass
class Outcome:
    """One image's result from a worker: the output bytes, or a one-line error."""

    key: str
    ok: bool
    data: bytes = b""
    error: str = ""
    in_bytes: int = 0
    width: int = 0
    height: int = 0
    codebook: int = 0
    model_id: int = 0
    seconds: float = 0.0  # the codec's own time for this image on the worker


@dataclass(frozen=True)
class Failure:
    key: str
    error: str


@dataclass(frozen=True)
class Snapshot:
    """What a progress display needs, sent while a job runs (from the caller's thread)."""

    total: int  # images to do in this run (already done ones excluded)
    skipped: int  # complete outputs of earlier runs, left alone
    done: int  # finished, ok or failed, including images finished inside running chunks
    failed: int
    bytes_out: int
    elapsed: float  # since the first chunk was submitted
    chunks_done: int

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class Report:
    """What a job did. ``done`` counts this run's outputs; ``skipped`` the complete, verified
    outputs of earlier runs that were left alone."""

    command: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    bpp_sum: float = 0.0
    work_seconds: float = 0.0  # the codec's own time summed over images (workers, all of them)
    elapsed: float = 0.0  # the whole job, cluster start included
    run_seconds: float = 0.0  # first submit to last result
    workers: int = 0
    written: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures_file: Path | None = None

    @property
    def mean_bpp(self) -> float:
        return self.bpp_sum / self.done if self.done else 0.0

    @property
    def rate(self) -> float:
        n = self.done + len(self.failures)
        return n / self.run_seconds if self.run_seconds > 0 else 0.0
