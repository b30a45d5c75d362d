"""Encode/decode wall time and peak memory of every codec, in one run, on the same images.

vqcodec runs at each ``--ks`` codebook size; every other codec of ``rd_codecs`` (BPG, VVC, HEIF,
AVIF, JPEG XL, WebP, JPEG; a missing one is skipped with a warning) at the lowest-rate setting of
its rate-distortion sweep, the one closest to our rates. Each (codec, setting) runs in a fresh
process, so its peak RSS (``ru_maxrss``) is its own: for command-line codecs the peak of the tool
processes (``RUSAGE_CHILDREN``), for in-process ones (vqcodec, Pillow, imagecodecs) that of the
whole Python process, interpreter and libraries included. Times are per image, after one warm-up
image; vqcodec's model load is reported on its own.

    python benchmarks/speed.py                          # 4 Kodak images, vqcodec K 8/64/1024 + all codecs
    python benchmarks/speed.py --codecs vqcodec BPG --ks 64 --images 24 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "datasets" / "kodak"
FIELDS = ["codec", "setting", "threads", "load_s", "enc_s", "dec_s", "bytes", "bpp", "rss_mb"]


def _worker(name: str, setting, paths: list[str], threads: int, model: str | None, q) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    sys.path.insert(0, str(REPO))
    try:
        from rd_codecs import all_codecs

        from vqcodec.imageio import load_image

        if threads and name.startswith("vqcodec"):
            import torch

            torch.set_num_threads(threads)
        codec = next(c for c in all_codecs(model) if c.name == name)
        t = time.perf_counter()
        if name.startswith("vqcodec"):
            from vqcodec.zoo import load_model

            codec.bundle = load_model(model)
        load_s = time.perf_counter() - t
        imgs = [load_image(p).pixels for p in paths]
        enc_s, dec_s, nbytes, pixels = [], [], 0, 0
        with tempfile.TemporaryDirectory() as tmp:
            codec.run(imgs[0], setting, Path(tmp))  # warm-up (caches, lazy imports)
            for img in imgs:
                n, _, e, d = codec.run(img, setting, Path(tmp))
                enc_s.append(e)
                dec_s.append(d)
                nbytes += n
                pixels += img.shape[0] * img.shape[1]
        rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        if hasattr(codec, "tools"):  # command-line codec: the tools' own peak, not this interpreter's
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        used_threads = threads
        if name.startswith("vqcodec"):
            import torch

            used_threads = torch.get_num_threads()
        q.put({"codec": name, "setting": setting, "threads": used_threads or "tool default", "load_s": load_s,
               "enc_s": sum(enc_s) / len(enc_s), "dec_s": sum(dec_s) / len(dec_s), "bytes": nbytes / len(imgs),
               "bpp": nbytes * 8 / pixels, "rss_mb": rss / 1024})  # fmt: skip
    except Exception as e:  # noqa: BLE001 - one failing codec must not stop the comparison
        q.put({"codec": name, "error": f"{type(e).__name__}: {e}"})


def plan(codecs: list, ks: list[int]) -> list[tuple[str, object]]:
    """(codec name, setting) pairs to time: vqcodec at every K asked for, the others at their lowest rate."""
    out = []
    for c in codecs:
        if c.name.startswith("vqcodec"):
            out += [(c.name, k) for k in ks if k in c.settings]
        elif c.settings:
            out.append((c.name, c.settings[0]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", type=int, nargs="*", default=[8, 64, 1024])
    ap.add_argument("--codecs", nargs="*", default=None, help="names to run (default: all available)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for vqcodec (0: all cores)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=KODAK)
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "speed")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from rd_codecs import usable

    codecs = usable(args.model, args.codecs)
    paths = [str(p) for p in sorted(args.data.glob("*.png"))[: args.images]]
    ctx = mp.get_context("spawn")
    rows = []
    print(f"{len(paths)} images from {args.data}")
    print(
        "| codec | setting | threads | model load s | encode s/image | decode s/image | bytes/image | bpp | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, setting in plan(codecs, args.ks):
        q = ctx.Queue()
        p = ctx.Process(target=_worker, args=(name, setting, paths, args.threads, args.model, q))
        p.start()
        r = q.get()
        p.join()
        if "error" in r:
            print(f"warning: {name} {setting}: {r['error']}", file=sys.stderr)
            continue
        rows.append(r)
        print(f"| {r['codec']} | {r['setting']} | {r['threads']} | {r['load_s']:.2f} | {r['enc_s']:.3f} | "
              f"{r['dec_s']:.3f} | {r['bytes']:.0f} | {r['bpp']:.4f} | {r['rss_mb']:.0f} |", flush=True)  # fmt: skip
    if rows:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "speed.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
