"""The pixel networks on OpenVINO: the same encoder and decoder, about three times faster on a CPU.

Why: on a 2-core Intel Xeon with AMX, `benchmarks/engines.py` timed `vqc-gan2`'s encoder at 0.14 s
and decoder at 0.16 s for a 768x512 photo in OpenVINO (bf16), against 0.41 s and 0.47 s in PyTorch
eager with bf16 autocast, 0.30 s / 0.34 s with ``torch.compile`` and 0.66 s / 0.91 s in ONNX Runtime
(fp32: its CPU provider has no bf16 convolutions). The pictures are the same within the precision
(47.2 dB PSNR against PyTorch's bf16 picture, where PyTorch's own fp32 picture is 47.9 dB from it;
1 % of the K=64 indices differ, as they do between PyTorch's bf16 and fp32), and OpenVINO's output
does not depend on the thread count either. Only the pixel networks move: the index map of a file is
decoded by the integer-exact context model, which never runs here.

How: the first time a model is used on a machine its two networks are converted from PyTorch
(``openvino.convert_model``, about 7 s each) and saved as OpenVINO IR (fp16 weights) under
``$VQC_CACHE`` (default ``~/.cache/vqcodec``), in a folder named by a digest of the weights; every
later process reads the IR and compiles it in about 0.2 s. Compiled for the CPU with bf16 inference
where the CPU has native bf16 (``native_bf16``), fp32 elsewhere, with torch's thread count.
``VQC_ENGINE=torch`` keeps PyTorch eager, and so do ``VQC_FP32=1`` (the switch that makes CPUs
agree within +-1 is measured on PyTorch's fp32 path), an instruction set limited through
``DNNL_MAX_CPU_ISA`` or ``ATEN_CPU_CAPABILITY``, and any failure to convert, save or compile
(a read-only cache is converted in memory once per process). Only the taef2 backbone runs here: the
vqgan backbone's shipped outputs stay bit-for-bit what they were.

Big photos (run in tiles by ``nets/streamed``) take their full-resolution layers from here too, one
tile at a time (``TILE_PARTS``: TAEF2's encoder before its first pool block, its decoder after its
last; converted the same way, with free height and width); the layers between them, whose
GroupNorms need the whole map's statistics, stay in PyTorch.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

Runner = Callable[[torch.Tensor], torch.Tensor]
PARTS = ("encoder", "decoder")
"""The whole networks (photos up to ``codec.STREAM_PIXELS``)."""
TILE_PARTS = ("head", "tail")
"""Big photos' full-resolution layers, run tile by tile (``streamed.head_modules`` / ``tail_modules``):
the encoder before its first pool block, the decoder after its last; the rest stays in PyTorch."""
LIMITS = ("DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
"""Variables that hold PyTorch's kernels to a smaller instruction set (portability checks, old CPUs)."""
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""model -> the digest of its weights (computed once per model object)."""
_COMPILED: dict[tuple[str, str, int, bool, bool], Runner | None] = {}
"""(digest, part, threads, bf16, int8) -> runner or None: compiled once per process (two loads of one
bundle share it)."""
FAILURES: list[str] = []
"""Why OpenVINO could not take a network in this process (PyTorch ran it instead)."""
_ALIVE: list = []
"""Every compiled network and its request, held until the process ends: freeing them mid-run (as
their models were collected) crashed the process in a test session that then trained a network."""
_LOCK = threading.RLock()


def wanted(model) -> bool:
    """Whether ``model``'s pixel networks run on OpenVINO here (installed, taef2, not switched off)."""
    if os.environ.get("VQC_ENGINE", "").lower() == "torch" or model.config.backbone != "taef2":
        return False
    if os.environ.get("VQC_FP32") == "1":  # the reproducibility switch keeps the path it was measured on
        return False
    if any(os.environ.get(v) for v in LIMITS):  # an instruction set limited on purpose: PyTorch honours
        return False  # it (OpenVINO's own oneDNN crashed under DNNL_MAX_CPU_ISA=SSE41)
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cache_root() -> Path:
    env = os.environ.get("VQC_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "vqcodec"


def digest(model) -> str:
    """Names the converted networks: the weights and configuration, not the bundle's name."""
    with _LOCK:
        if model not in _DIGESTS:
            _DIGESTS[model] = _digest(model)
        return _DIGESTS[model]


def _digest(model) -> str:
    h = hashlib.sha256(repr(sorted(model.config.__dict__.items())).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Part(torch.nn.Module):
    """One of a model's pixel networks as a module of its own (what engines convert or compile):
    "encoder" (image in [-1, 1] -> the latent before the quantizer) or "decoder" (quantized latent
    -> image in about [-1, 1])."""

    def __init__(self, model, part: str) -> None:
        super().__init__()
        if part not in PARTS + TILE_PARTS:
            raise ValueError(part)
        self.model, self.part = model, part
        if part in TILE_PARTS:
            from vqcodec.nets import streamed

            layers = streamed.head_modules(model) if part == "head" else streamed.tail_modules(model)
            self.layers = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.part in TILE_PARTS:
            return self.layers(x)
        return self.model.encode_latent(x) if self.part == "encoder" else self.model.decode_latent(x)

    def example(self) -> torch.Tensor:
        """An input of the right channels (height and width are free in the converted model)."""
        if self.part == "encoder":
            return torch.zeros(1, 3, 4 * self.model.stride, 4 * self.model.stride)
        if self.part == "decoder":
            return torch.zeros(1, self.model.config.embed_dim, 4, 4)
        first = next(m for m in self.layers.modules() if isinstance(m, torch.nn.Conv2d))
        return torch.zeros(1, first.in_channels, 32 if self.part == "head" else 8, 32 if self.part == "head" else 8)


def _convert(model, part: str):
    """The network as an OpenVINO model with free height and width."""
    import openvino as ov

    net = Part(model, part)
    example = net.example()
    # traced in float32 even when the first photo asks for it inside the codec's bf16 autocast
    # (traced under autocast, the graph holds autocast ops that OpenVINO cannot convert)
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        return ov.convert_model(net.eval(), example_input=example,
                                input=[ov.PartialShape([1, example.shape[1], -1, -1])])  # fmt: skip


def _ir(model, part: str):
    """The network's IR from the cache, converted and saved there first if absent."""
    import openvino as ov

    folder = cache_root() / "openvino" / digest(model)
    xml = folder / f"{part}.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return ov.Core().read_model(str(xml))
    converted = _convert(model, part)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            staged = Path(tmp) / f"{part}.xml"
            ov.save_model(converted, str(staged), compress_to_fp16=True)
            os.replace(staged.with_suffix(".bin"), xml.with_suffix(".bin"))  # weights first, then the
            os.replace(staged, xml)  # graph that names them: a reader never sees half of a pair
        return ov.Core().read_model(str(xml))
    except OSError:  # a read-only or full cache: this process keeps the converted model in memory
        return converted


float_ir = _ir
"""The float network's OpenVINO model (what ``int8_pixels`` and its calibration start from)."""

INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""CPU flags with native int8 dot products: elsewhere (AVX2 without VNNI) int8 convolutions
multiply in saturating 16-bit pairs, and the decoder stays in bf16 or fp32."""


def int8_wanted(model, part: str) -> bool:
    """Whether ``part`` runs with the bundle's int8 spec (``nets/int8_pixels``): the whole decoder
    only, a spec calibrated for these weights, a CPU with int8 dot products, and not
    ``VQC_INT8=0``."""
    spec = getattr(model, "pixels_int8", None)
    if part != "decoder" or not spec or os.environ.get("VQC_INT8") == "0":
        return False
    return spec.get("digest") == digest(model) and _cpu_has(INT8_FLAGS)


def _cpu_has(flags: tuple[str, ...]) -> bool:
    return any(f in _cpu_flags() for f in flags)


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags (Linux), read once per process: ``runner`` asks at every photo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return next((frozenset(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")),
                frozenset())  # fmt: skip


def runner(model, part: str) -> Runner | None:
    """A function running ``model``'s ``part`` ("encoder": image -> latent, "decoder": latent ->
    image; "head" / "tail": a big photo's full-resolution layers on one tile, ``TILE_PARTS``) on
    OpenVINO, or None where PyTorch should (``wanted``, or any failure)."""
    if not wanted(model):
        return None
    from vqcodec.nets.autoencoder import native_bf16

    threads = torch.get_num_threads()
    bf16 = native_bf16()
    int8 = int8_wanted(model, part)
    key = (digest(model), part, threads, bf16, int8)
    with _LOCK:
        if key not in _COMPILED:
            _COMPILED[key] = _compile(model, part, threads, bf16, int8)
        return _COMPILED[key]


def _compile(model, part: str, threads: int, bf16: bool, int8: bool = False) -> Runner | None:
    try:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "INFERENCE_NUM_THREADS": threads,
                  "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
        core = ov.Core()
        blobs = cache_root() / "openvino" / digest(model) / "compiled"
        if _writable(blobs):  # OpenVINO keeps the compiled network too: half the start-up next time
            core.set_property({"CACHE_DIR": str(blobs)})
        network = _ir(model, part)
        if int8:
            from vqcodec.nets import int8_pixels

            try:
                network = int8_pixels.apply(network, model.pixels_int8)
            except Exception as e:  # noqa: BLE001 - a spec that does not fit this graph: bf16/fp32
                FAILURES.append(f"{part} int8: {type(e).__name__}: {str(e)[:300]}")
                network = _ir(model, part)
        compiled = core.compile_model(network, "CPU", config)
    except Exception as e:  # noqa: BLE001 - any engine trouble: PyTorch runs the network, as before
        FAILURES.append(f"{part}: {type(e).__name__}: {' | '.join(str(e).split(chr(10)))[:1500]}")
        return None
    request, busy = compiled.create_infer_request(), threading.Lock()
    _ALIVE.append((compiled, request))  # never freed before the process ends (see _ALIVE)

    def run(x: torch.Tensor) -> torch.Tensor:
        with busy:  # one request, one caller at a time
            out = request.infer([np.ascontiguousarray(x.detach().float().contiguous().numpy())])
            return torch.from_numpy(np.array(next(iter(out.values())), dtype=np.float32))

    return run


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def prepare(model) -> bool:
    """Convert (once per machine) and compile both networks now rather than at the first photo;
    True when OpenVINO will run them."""
    return all(runner(model, part) is not None for part in PARTS)
