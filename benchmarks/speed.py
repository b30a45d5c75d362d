"""Encode/decode wall time and peak memory of vqcodec on Kodak, per codebook size.

Each K runs in a fresh process so that its peak RSS (``ru_maxrss``) is its own.

    python benchmarks/speed.py                   # K = 8, 64, 1024, 4 Kodak images, all cores
    python benchmarks/speed.py --ks 64 --images 24 --threads 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "datasets" / "kodak"


def _worker(k: int, paths: list[str], threads: int, model: str | None, q) -> None:
    sys.path.insert(0, str(REPO))
    import torch

    from vqcodec import codec
    from vqcodec.imageio import load_image
    from vqcodec.zoo import load_model

    if threads:
        torch.set_num_threads(threads)
    t = time.perf_counter()
    bundle = load_model(model)
    load_s = time.perf_counter() - t
    imgs = [load_image(p).pixels for p in paths]
    codec.decode(codec.encode(imgs[0], k, bundle), bundle)  # warm-up
    enc_s, dec_s, nbytes = [], [], 0
    for img in imgs:
        t = time.perf_counter()
        data = codec.encode(img, k, bundle)
        enc_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        codec.decode(data, bundle)
        dec_s.append(time.perf_counter() - t)
        nbytes += len(data)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put({"K": k, "load_s": load_s, "enc_s": sum(enc_s) / len(enc_s), "dec_s": sum(dec_s) / len(dec_s),
           "bytes": nbytes / len(imgs), "rss_mb": rss, "threads": torch.get_num_threads()})  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", type=int, nargs="*", default=[8, 64, 1024])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=KODAK)
    args = ap.parse_args(argv)
    paths = [str(p) for p in sorted(args.data.glob("*.png"))[: args.images]]
    ctx = mp.get_context("spawn")
    print("| K | threads | model load s | encode s/image | decode s/image | bytes/image | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for k in args.ks:
        q = ctx.Queue()
        p = ctx.Process(target=_worker, args=(k, paths, args.threads, args.model, q))
        p.start()
        r = q.get()
        p.join()
        print(f"| {r['K']} | {r['threads']} | {r['load_s']:.2f} | {r['enc_s']:.3f} | {r['dec_s']:.3f} | "
              f"{r['bytes']:.0f} | {r['rss_mb']:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
