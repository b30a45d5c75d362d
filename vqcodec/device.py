"""Where the networks run: ``--device auto|cpu|cuda`` (API ``device=``).

``auto`` is CUDA when torch sees a GPU, else the CPU. The choice holds for a block of code
(``using``, a context variable: per thread and task, like ``codec.progress``), so the pipeline's
functions need not pass it along. What runs there: the encoder and decoder networks and the
integer context model (whose exact arithmetic gives the same frequencies, hence the same bytes, on
the GPU as on any CPU). The float context model of older files and everything numpy stays on the
CPU. Index maps: the encoder's nearest-code search runs on its float latent, so a GPU encode can
choose a different code where two are nearly tied: a file is always decodable everywhere, but a GPU
and a CPU encode of one photo may differ (``benchmarks/gpu.py`` counts how often).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from vqcodec.errors import VqcUsageError

CHOICES = ("auto", "cpu", "cuda")
_device: ContextVar[torch.device | None] = ContextVar("vqc_device", default=None)
_CPU = torch.device("cpu")


def resolve(name: str | torch.device | None) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a device torch can use; a usage error otherwise."""
    if isinstance(name, torch.device):
        name = str(name)
    name = "auto" if name is None else name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise VqcUsageError(f"--device {name}: no CUDA device is available to torch here (use cpu or auto)")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VqcUsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    raise VqcUsageError(f"unknown device {name!r}; choose one of {', '.join(CHOICES)} (or cuda:N)")


def current() -> torch.device:
    """The device of the enclosing ``using`` block (the CPU outside any)."""
    return _device.get() or _CPU


@contextmanager
def using(name: str | torch.device | None) -> Iterator[torch.device]:
    """Run the networks of this block on ``name`` (resolved: ``auto`` picks CUDA when present)."""
    token = _device.set(resolve(name))
    try:
        yield current()
    finally:
        _device.reset(token)
