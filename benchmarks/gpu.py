"""CPU against GPU: the same files, decodable on the other device, and how fast each is.

    python benchmarks/gpu.py                    # 24 Kodak photos at K = 8, 64, 1024 (needs CUDA)
    python benchmarks/gpu.py --limit 4 --ks 64

For each photo and K: encode on the CPU and on the GPU (``device=``), compare the files byte for
byte, decode each file's index map on the other device (it must be the encoder's map: the integer
context model gives the same frequencies on both), and decode the pictures on both to bound the
float image decoder's difference (max |CPU - GPU| in 8-bit levels). The encoder network is float:
where two codes are nearly tied a GPU encode may pick the other one, so files can differ in a
few indices; the table says how many files and indices. Timings are per photo, the first call
on each device excluded (warm-up).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KODAK = REPO.parent / "shared" / "datasets" / "kodak"
LABEL = {"cpu": "cpu", "cuda": "gpu"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=KODAK)
    ap.add_argument("--ks", type=int, nargs="*", default=[8, 64, 1024])
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--model", default=None)
    args = ap.parse_args(argv)
    import torch

    from vqcodec import codec
    from vqcodec.device import using
    from vqcodec.imageio import load_image
    from vqcodec.zoo import load_model

    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA device here")
    bundle = load_model(args.model)
    images = [load_image(p).pixels for p in sorted(args.data.glob("*.png"))[: args.limit or None]]
    print(f"GPU: {torch.cuda.get_device_name()}; {len(images)} photos; model {bundle.name}")
    print("| K | files identical | indices differing (of all) | GPU file -> CPU map ok | CPU file -> GPU map ok "
          "| max pixel diff | CPU enc s | GPU enc s | CPU dec s | GPU dec s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = False
    for k in args.ks:
        same = diff_idx = total = ok_cpu = ok_gpu = 0
        max_px = 0
        t = {"cpu_enc": 0.0, "gpu_enc": 0.0, "cpu_dec": 0.0, "gpu_dec": 0.0}
        for n, img in enumerate(images):
            files, maps = {}, {}
            for dev in ("cpu", "cuda"):
                with using(dev):
                    t0 = time.perf_counter()
                    enc = codec.analyze(img, bundle, k)
                    files[dev] = codec.pack(enc, bundle, codec.best_mode(bundle, k))
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    if n:
                        t[LABEL[dev] + "_enc"] += time.perf_counter() - t0
                maps[dev] = enc.indices
            same += files["cpu"] == files["cuda"]
            diff_idx += int((maps["cpu"] != maps["cuda"]).sum())
            total += maps["cpu"].size
            pixels = {}
            for dev, other in (("cpu", "cuda"), ("cuda", "cpu")):
                with using(dev):
                    t0 = time.perf_counter()
                    back, _ = codec.unpack(files[other], bundle)
                    pixels[dev] = codec.synthesize(back, bundle)
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    if n:
                        t[LABEL[dev] + "_dec"] += time.perf_counter() - t0
                good = np.array_equal(back.indices, maps[other])
                ok_cpu += good and dev == "cpu"
                ok_gpu += good and dev == "cuda"
                failed |= not good
            with using("cuda"):
                gpu_pixels = codec.synthesize(codec.unpack(files["cpu"], bundle)[0], bundle)
            with using("cpu"):
                cpu_pixels = codec.synthesize(codec.unpack(files["cpu"], bundle)[0], bundle)
            max_px = max(max_px, int(np.abs(gpu_pixels.astype(int) - cpu_pixels.astype(int)).max()))
        m = max(1, len(images) - 1)
        print(f"| {k} | {same} / {len(images)} | {diff_idx} / {total} | {ok_cpu} / {len(images)} | "
              f"{ok_gpu} / {len(images)} | {max_px} | {t['cpu_enc'] / m:.3f} | {t['gpu_enc'] / m:.3f} | "
              f"{t['cpu_dec'] / m:.3f} | {t['gpu_dec'] / m:.3f} |", flush=True)  # fmt: skip
    print("cross-device decodes: " + ("MISMATCHES" if failed else "every file decodes to its encoder's index map"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
