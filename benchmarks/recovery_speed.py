"""Decode time of damaged packetized files per recovery method (the issue's "<= 2 s at 30 % loss").

Each image is encoded once (``--packets``), damaged once per image with ``vqc corrupt``'s
independent loss model (fixed seeds), and decoded with every method after one warm-up decode;
the table gives the median whole-decode seconds (parse + recovery + synthesis) and the loss-free
decode for reference. Run it on an otherwise idle machine: it measures wall time.

    python benchmarks/recovery_speed.py --images 4 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vqcodec import channel, codec, recovery  # noqa: E402
from vqcodec.imageio import load_image  # noqa: E402
from vqcodec.zoo import load_model  # noqa: E402

KODAK = REPO.parent / "shared" / "datasets" / "kodak"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=KODAK)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--loss", type=float, default=0.3)
    ap.add_argument("--packets", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_model(args.model)
    methods = recovery.available(bundle)
    files = []
    for i, p in enumerate(sorted(args.data.glob("*.png"))[: args.images]):
        img = load_image(p).pixels
        data = codec.pack(codec.analyze(img, bundle, args.k), bundle, packets=args.packets)
        files.append((p.name, img.shape, data, channel.corrupt(data, loss=args.loss, seed=i)[0]))
    if not files:
        raise SystemExit(f"no .png images in {args.data}")
    codec.decode(files[0][3], bundle)  # warm-up: lazy loads of every transformer, allocator caches
    times: dict[str, list[float]] = {"(loss-free)": []}
    for _, _, data, lossy in files:
        t = time.perf_counter()
        codec.decode(data, bundle)
        times["(loss-free)"].append(time.perf_counter() - t)
        for m in methods:
            t = time.perf_counter()
            codec.decode_with_report(lossy, bundle, method=m)
            times.setdefault(m, []).append(time.perf_counter() - t)
    shape = files[0][1]
    print(f"{len(files)} images (first {shape[1]}x{shape[0]}), K={args.k}, {args.packets} packets, "
          f"loss {args.loss}, {torch.get_num_threads()} threads")  # fmt: skip
    print("\n| method | decode s (median) | max |\n|---|---|---|")
    for m, v in times.items():
        print(f"| {m} | {statistics.median(v):.2f} | {max(v):.2f} |")


if __name__ == "__main__":
    main()
