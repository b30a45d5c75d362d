"""The pixel networks on each inference engine: PyTorch eager, torch.compile, ONNX Runtime, OpenVINO.

The encoder (photo -> latent, before the quantizer) and the decoder (quantized latent -> photo)
of a bundle are timed on one 768x512 photo in every engine and precision that is installed, in
one process, the engines taking turns in every round so that a change of load on a shared machine
hits them alike. For each: the median seconds of ``--rounds`` runs after a warm-up, the start-up
(export, conversion or compilation: what a user's first photo would pay once per process), and
how far its output is from the shipped path's (PyTorch eager, bf16 autocast on CPUs with native
bf16, fp32 elsewhere): for the encoder the share of K=64 indices that change (the index map is
what the file holds), for the decoder the PSNR against the shipped picture.

    python benchmarks/engines.py                       # every engine that imports
    python benchmarks/engines.py --engines eager compile --rounds 7

Engines missing from the environment are listed and skipped: ``pip install onnx onnxruntime
openvino`` adds the other two. Nothing here changes what the codec runs; docs/results.md ("Speed:
inference engines") holds the measured table and what was adopted.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from speed_profile import cpu_summary  # noqa: E402

from vqcodec import codec  # noqa: E402
from vqcodec.imageio import pad_to_multiple  # noqa: E402
from vqcodec.nets.autoencoder import native_bf16  # noqa: E402
from vqcodec.nets.openvino_engine import Part  # noqa: E402
from vqcodec.zoo import load_model  # noqa: E402

KODAK = REPO.parent / "shared" / "datasets" / "kodak"
ENGINES = ["eager", "compile", "onnxruntime", "openvino"]
Runner = Callable[[torch.Tensor], torch.Tensor]


def _precision(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def eager(net: torch.nn.Module, example: torch.Tensor, bf16: bool) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _precision(bf16):
            return net(x.contiguous(memory_format=torch.channels_last)).float()

    return run


def compiled(net: torch.nn.Module, example: torch.Tensor, bf16: bool) -> Runner:
    fast = torch.compile(net, dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _precision(bf16):
            return fast(x.contiguous(memory_format=torch.channels_last)).float()

    run(example)  # compiles: start-up, not the timed runs
    return run


def _onnx_file(net: torch.nn.Module, example: torch.Tensor, folder: Path) -> Path:
    path = folder / "net.onnx"
    with torch.no_grad():
        torch.onnx.export(net, (example,), str(path), input_names=["x"], output_names=["y"], opset_version=17,
                          dynamo=False)  # fmt: skip
    return path


def onnxruntime(net: torch.nn.Module, example: torch.Tensor, bf16: bool, threads: int, folder: Path) -> Runner:
    import onnxruntime as ort

    if bf16:
        raise RuntimeError("ONNX Runtime's CPU provider has no bf16 convolutions")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(_onnx_file(net, example, folder)), opts, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0])

    return run


def openvino(net: torch.nn.Module, example: torch.Tensor, bf16: bool, threads: int, folder: Path) -> Runner:
    import openvino as ov

    core = ov.Core()
    model = ov.convert_model(net, example_input=example)
    config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "INFERENCE_NUM_THREADS": threads,
              "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
    compiled_model = core.compile_model(model, "CPU", config)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(compiled_model(x.contiguous().numpy())[0]))

    return run


def build(engine: str, net: torch.nn.Module, example: torch.Tensor, bf16: bool, threads: int, folder: Path) -> Runner:
    if engine == "eager":
        return eager(net, example, bf16)
    if engine == "compile":
        return compiled(net, example, bf16)
    if engine == "onnxruntime":
        return onnxruntime(net, example, bf16, threads, folder)
    if engine == "openvino":
        return openvino(net, example, bf16, threads, folder)
    raise ValueError(engine)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two pictures in [-1, 1], as 8-bit pixels would show them."""
    pa, pb = (((t.float().clamp(-1, 1) + 1) * 127.5).round() for t in (a, b))
    mse = float(((pa - pb) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--image", type=Path, default=KODAK / "kodim05.png")
    ap.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from PIL import Image

    bundle = load_model(args.model)
    model = bundle.model.eval()
    pixels = pad_to_multiple(np.asarray(Image.open(args.image).convert("RGB")), bundle.stride)
    x = codec._to_tensor(pixels)
    book = bundle.codebook(args.k)
    with torch.inference_mode(), model.autocast():  # the shipped path
        z_ref = model.encode_latent(x.contiguous(memory_format=model.memory_format)).float()
    idx_ref = model.quantize.quantize(z_ref, book)
    zq = model.quantize.dequantize(idx_ref, book).float()
    with torch.inference_mode(), model.autocast():
        y_ref = model.decode_latent(zq.contiguous(memory_format=model.memory_format)).float()
    print(f"{args.image.name} {pixels.shape[1]}x{pixels.shape[0]}, {bundle.name}, {args.threads} threads, "
          f"torch {torch.__version__}; {cpu_summary()}; shipped path: eager {'bf16' if native_bf16() else 'fp32'}")  # fmt: skip

    nets = {"encoder": (Part(model, "encoder").eval(), x), "decoder": (Part(model, "decoder").eval(), zq)}
    runners: dict[tuple[str, str, str], Runner] = {}
    startup: dict[tuple[str, str, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines:
            for prec in ("fp32", "bf16"):
                for part, (net, example) in nets.items():
                    key = (part, engine, prec)
                    t = time.perf_counter()
                    try:
                        run = build(engine, net, example, prec == "bf16", args.threads, Path(tmp))
                        run(example)  # warm-up
                    except Exception as e:  # noqa: BLE001 - a missing or failing engine is a row, not a crash
                        print(f"{part} {engine} {prec}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
                        continue
                    startup[key], runners[key] = time.perf_counter() - t, run
        times: dict[tuple[str, str, str], list[float]] = {k: [] for k in runners}
        outputs: dict[tuple[str, str, str], torch.Tensor] = {}
        for _ in range(args.rounds):
            for key, run in runners.items():
                example = nets[key[0]][1]
                t = time.perf_counter()
                outputs[key] = run(example)
                times[key].append(time.perf_counter() - t)

    print("\n| network | engine | precision | median s | vs shipped | start-up s | output against the shipped path |")
    print("|---|---|---|---|---|---|---|")
    shipped = "bf16" if native_bf16() else "fp32"
    for key in runners:
        part, engine, prec = key
        med = statistics.median(times[key])
        base = statistics.median(times[(part, "eager", shipped)]) if (part, "eager", shipped) in times else med
        out = outputs[key]
        if part == "encoder":
            idx = model.quantize.quantize(out.float(), book)
            diff = f"{100 * float((idx != idx_ref).float().mean()):.2f} % of K={args.k} indices differ"
        else:
            diff = f"PSNR {psnr(out, y_ref):.1f} dB"
        print(f"| {part} | {engine} | {prec} | {med:.3f} | {base / med:.2f}x | {startup[key]:.1f} | {diff} |")


if __name__ == "__main__":
    main()
