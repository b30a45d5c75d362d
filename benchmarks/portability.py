"""Portability: files made under one CPU configuration decode to the same index maps under every other.

    python benchmarks/portability.py                         # 24 Kodak photos, K = 8, 64, 1024
    python benchmarks/portability.py --limit 4 --ks 64       # a quick look

Each configuration runs in a fresh process, because the instruction set ATen, oneDNN and MKL pick is
fixed when torch loads: ATEN_CPU_CAPABILITY=default|avx2, DNNL_MAX_CPU_ISA=SSE41|AVX2,
MKL_ENABLE_INSTRUCTIONS=AVX2, VQC_FP32=1, one and two threads. Files are encoded once with the full
instruction set (exact and float context coding, and packetized static files at ``--lossy-ks``
decoded with 30 % of their 16 packets lost, so the recovered maps are compared too), then once under the most limited
configuration and decoded with the full one (the reverse direction). Every decode's index map is
hashed and compared with the encoder's map (for lossy files: with the full-set decode's map).
Prints one line per configuration and a summary; exits 1 on any mismatch. Then, for ``--pixels``
photos at K=64, how far the decoded pictures (float image decoder) move between configurations. The CPU it ran on
matters: an AVX2-only CPU has fewer instruction sets to limit than an AVX-512/AMX one, so write
down which (`lscpu`).

``--worker`` (internal, used by the test suite too): decode the given .vqc files and print one JSON
line {file: sha256 of the recovered index map or the error message}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KODAK = REPO.parent / "shared" / "datasets" / "kodak"

CONFIGS: dict[str, dict[str, str]] = {
    "full": {},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "dnnl-sse41": {"DNNL_MAX_CPU_ISA": "SSE41"},
    "dnnl-avx2": {"DNNL_MAX_CPU_ISA": "AVX2"},
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "fp32": {"VQC_FP32": "1"},
    "threads-1": {"VQC_THREADS": "1"},
    "threads-2": {"VQC_THREADS": "2"},
}
LIMITED = {"ATEN_CPU_CAPABILITY": "default", "DNNL_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
           "VQC_THREADS": "1"}  # fmt: skip
"""The most limited configuration: the encoder of the reverse direction."""


def map_hash(indices) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<u2").tobytes()).hexdigest()[:16]


def worker(files: list[str]) -> dict[str, str]:
    """Decode each file's index map (recovering lost packets) and hash it; errors as text."""
    threads = os.environ.get("VQC_THREADS")
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    from vqcodec import codec
    from vqcodec.errors import VqcError

    pixels_dir = os.environ.get("VQC_PIXELS_DIR")  # also decode the pictures, saved there as .npy
    out = {}
    for f in files:
        data = Path(f).read_bytes()
        try:
            enc, bundle, _ = codec.unpack_any(data)
            out[f] = map_hash(enc.indices)
            if pixels_dir:
                import numpy as np

                np.save(Path(pixels_dir) / (Path(f).stem + ".npy"), codec.synthesize(enc, bundle))
        except VqcError as e:
            out[f] = f"error: {e}"
    return out


def pixel_bound(files: list[str], folder: Path) -> None:
    """How far the float image decoder's pictures move between configurations (same index maps)."""
    import numpy as np

    pics = {}
    for name, env in CONFIGS.items():
        d = folder / f"pix-{name}"
        d.mkdir()
        run_in({**env, "VQC_PIXELS_DIR": str(d)}, "worker", files)
        pics[name] = [np.load(d / (Path(f).stem + ".npy")).astype(np.int16) for f in files]
    print("\n| decoded picture under | max abs difference from full (8-bit levels) | samples differing |")
    print("|---|---|---|")
    for name, arrays in pics.items():
        diff = [np.abs(a - b) for a, b in zip(arrays, pics["full"], strict=True)]
        n = sum(x.size for x in diff)
        print(f"| {name} | {max(int(x.max()) for x in diff)} | {100 * sum(int((x > 0).sum()) for x in diff) / n:.4f} % |")


def encoder_worker(jobs: list[list]) -> dict[str, str]:
    """Encode (image, K, mode, out file, packets, loss seed) jobs; return the encoder's map hashes."""
    threads = os.environ.get("VQC_THREADS")
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    from vqcodec import channel, codec
    from vqcodec.container import CodingMode
    from vqcodec.imageio import load_image
    from vqcodec.zoo import load_model

    bundle = load_model(None)
    out = {}
    latents: dict[str, codec.Latent] = {}  # one encoder pass per photo serves every K and mode
    for image, k, mode, dest, packets, seed in jobs:
        if image not in latents:
            latents = {image: codec.encode_latent(load_image(image).pixels, bundle)}
        enc = codec.quantize(latents[image], bundle, k)
        data = codec.pack(enc, bundle, CodingMode[mode], packets)
        if seed is not None:
            data = channel.corrupt(data, loss=0.3, seed=seed)[0]
        Path(dest).write_bytes(data)
        out[dest] = map_hash(enc.indices) if seed is None else "lossy"
    return out


def run_in(env: dict[str, str], role: str, payload) -> dict[str, str]:
    """Run ``worker``/``encoder_worker`` in a fresh interpreter under ``env``; its JSON result."""
    full_env = {**os.environ, **env}
    proc = subprocess.run([sys.executable, __file__, f"--{role}"], input=json.dumps(payload), env=full_env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"{role} under {env} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def jobs_for(images: list[Path], ks: list[int], folder: Path, tag: str, lossy_ks: list[int]) -> list[list]:
    jobs = []
    for img in images:
        for k in ks:
            base = folder / f"{tag}-{img.stem}-k{k}"
            jobs.append([str(img), k, "EXACT", f"{base}.exact.vqc", 0, None])
            jobs.append([str(img), k, "CONTEXT", f"{base}.float.vqc", 0, None])
            if k in lossy_ks:
                jobs.append([str(img), k, "STATIC", f"{base}.lossy.vqc", 16, 7])
    return jobs


def compare(reference: dict[str, str], got: dict[str, str]) -> dict[str, list[str]]:
    """Mismatched files, by coding (exact / float / lossy)."""
    bad: dict[str, list[str]] = {"exact": [], "float": [], "lossy": []}
    for f, want in reference.items():
        if got.get(f) != want:
            bad[f.rsplit(".", 2)[-2]].append(Path(f).name)
    return bad


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=KODAK)
    ap.add_argument("--ks", type=int, nargs="*", default=[8, 64, 1024])
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--lossy-ks", type=int, nargs="*", default=[64],
                    help="K of the packetized files with lost packets (recovery is the slow part)")  # fmt: skip
    ap.add_argument("--pixels", type=int, default=4, help="photos whose K=64 pictures are compared (0: none)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--encoder", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker or args.encoder:
        payload = json.loads(sys.stdin.read())
        print(json.dumps(worker(payload) if args.worker else encoder_worker(payload)))
        return
    images = sorted(args.data.glob("*.png"))[: args.limit or None]
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        encoded = run_in({}, "encoder", jobs_for(images, args.ks, folder, "full", args.lossy_ks))
        lossless = {f: h for f, h in encoded.items() if h != "lossy"}
        lossy_ref = run_in({}, "worker", [f for f, h in encoded.items() if h == "lossy"])
        reference = {**lossless, **lossy_ref}
        print(f"{len(images)} photos x K = {' '.join(map(str, args.ks))}: {len(lossless)} lossless files "
              f"(exact + float context coding), {len(lossy_ref)} packetized files with 30 % of 16 packets lost")  # fmt: skip
        print("| decode under | exact mismatches | float mismatches | recovered-map mismatches |")
        print("|---|---|---|---|")
        for name, env in CONFIGS.items():
            bad = compare(reference, run_in(env, "worker", list(reference)))
            failed |= bool(bad["exact"] or bad["lossy"])
            print(f"| {name} | {len(bad['exact'])} / {len(lossless) // 2} | {len(bad['float'])} / {len(lossless) // 2} "
                  f"| {len(bad['lossy'])} / {len(lossy_ref)} |", flush=True)  # fmt: skip
        # the reverse: encode under the most limited configuration, decode with the full one
        rev = run_in(LIMITED, "encoder", jobs_for(images, args.ks, folder, "limited", args.lossy_ks))
        rev_lossless = {f: h for f, h in rev.items() if h != "lossy"}
        rev_ref = {**rev_lossless, **run_in(LIMITED, "worker", [f for f, h in rev.items() if h == "lossy"])}
        bad = compare(rev_ref, run_in({}, "worker", list(rev_ref)))
        failed |= bool(bad["exact"] or bad["lossy"])
        print(f"| encoded limited ({', '.join(f'{k}={v}' for k, v in LIMITED.items())}), decoded full | "
              f"{len(bad['exact'])} / {len(rev_lossless) // 2} | {len(bad['float'])} / {len(rev_lossless) // 2} "
              f"| {len(bad['lossy'])} / {len(rev_ref) - len(rev_lossless)} |")  # fmt: skip
        if args.pixels:
            pixel_bound([f for f in lossless if f.endswith(".exact.vqc") and "-k64" in f][: args.pixels], folder)
    print("exact coding and recovery: " + ("MISMATCHES" if failed else "identical index maps everywhere"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
