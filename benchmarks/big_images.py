"""Camera-size photos: wall time and peak memory of ``vqc encode`` / ``vqc decode`` at 4-50 MP.

Each image is a training photo resized (Lanczos) to the size asked for, 3:2; each encode and each
decode runs as its own ``vqc`` process, and its peak RSS is that process's VmHWM at exit:
interpreter, torch, the model and the image all included. Images above
``codec.STREAM_PIXELS`` run tile by tile (``vqcodec/nets/streamed.py``).

``--border`` also checks the tiles on a Kodak-size photo and a 4 MP one: the streamed picture
against the whole-network one (max pixel difference, LPIPS-Alex of both against the original),
and writes a crop across a tile border beside the whole-network crop to docs/rd/tile_border.png.

    python benchmarks/big_images.py                       # 4 12 24 50 MP, K=64, 2 threads
    python benchmarks/big_images.py --mp 24 --border
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "datasets" / "train"
KODAK = REPO.parent / "shared" / "datasets" / "kodak"
FIELDS = ["megapixels", "width", "height", "k", "threads", "enc_s", "enc_rss_mb", "dec_s", "dec_rss_mb", "bytes"]


def make_photo(mp: float, path: Path, seed: int = 3) -> tuple[int, int]:
    """A 3:2 photo of about ``mp`` megapixels: the ``seed``-th largest training photo, resized."""
    from PIL import Image

    files = sorted(p for p in TRAIN.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    src = sorted(files, key=lambda p: -os.path.getsize(p))[seed]
    w = int(round((mp * 1e6 * 1.5) ** 0.5 / 16)) * 16
    h = int(round(w / 1.5 / 16)) * 16
    with Image.open(src) as im:
        im.convert("RGB").resize((w, h), Image.LANCZOS).save(path, compress_level=1)
    return w, h


_WRAPPED = """
import atexit, os, sys

def _peak():  # VmHWM: this process's own peak RSS (ru_maxrss would count the forked parent's pages too)
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM"))
    with open(os.environ["VQC_PEAK_FILE"], "w") as f:
        f.write(kb)

atexit.register(_peak)
sys.argv[0] = "vqc"
from vqcodec.cli import entry
entry()
"""


def timed(cmd: list[str], threads: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one ``vqc`` run (``cmd``: its arguments), measured by the
    process itself (VmHWM at exit): a forked child's ``ru_maxrss`` includes its parent's memory."""
    with tempfile.NamedTemporaryFile(suffix=".kb") as peak:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), VQC_PEAK_FILE=peak.name)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", _WRAPPED, *cmd], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(f"vqc {' '.join(cmd)} failed: {r.stderr.strip()}")
        return wall, int(Path(peak.name).read_text()) / 1024


def run_sizes(sizes: list[float], k: int, threads: int, model: str | None, out_csv: Path | None) -> list[dict]:
    vqc: list[str] = []
    extra = ["--model", model] if model else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in sizes:
            src, vqc_file, back = Path(tmp) / "in.png", Path(tmp) / "in.vqc", Path(tmp) / "out.png"
            w, h = make_photo(mp, src)
            enc_s, enc_rss = timed(vqc + ["encode", str(src), "-o", str(vqc_file), "-k", str(k), "-q", *extra], threads)
            dec_s, dec_rss = timed(vqc + ["decode", str(vqc_file), "-o", str(back), "-q"], threads)
            row = {"megapixels": round(w * h / 1e6, 1), "width": w, "height": h, "k": k, "threads": threads,
                   "enc_s": round(enc_s, 1), "enc_rss_mb": round(enc_rss), "dec_s": round(dec_s, 1),
                   "dec_rss_mb": round(dec_rss), "bytes": vqc_file.stat().st_size}  # fmt: skip
            rows.append(row)
            print(f"{row['megapixels']:5.1f} MP {w}x{h}: encode {enc_s:6.1f} s {enc_rss:6.0f} MB, "
                  f"decode {dec_s:6.1f} s {dec_rss:6.0f} MB, {row['bytes']} bytes", flush=True)  # fmt: skip
    if out_csv is not None:
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        with open(out_csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=FIELDS)
            wr.writeheader()
            wr.writerows(rows)
    return rows


def border_check(k: int, model: str | None, crop_png: Path) -> None:
    """Streamed vs whole network on kodim23 (0.4 MP) and a 4 MP photo, and a crop across a tile border."""
    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from vqcodec import codec
    from vqcodec.imageio import load_image
    from vqcodec.metrics import Reference
    from vqcodec.nets import streamed
    from vqcodec.zoo import load_model

    bundle = load_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "4mp.png"
        make_photo(4, big)
        cases = [("kodim23", load_image(KODAK / "kodim23.png").pixels), ("4 MP", load_image(big).pixels)]
    for name, pixels in cases:
        limit = codec.STREAM_PIXELS
        try:
            codec.STREAM_PIXELS = 1 << 60  # whole network
            whole_file = codec.encode(pixels, k, bundle)
            whole = codec.decode(whole_file, bundle)
            codec.STREAM_PIXELS = 0  # tile by tile
            tiled_file = codec.encode(pixels, k, bundle)
            tiled = codec.decode(tiled_file, bundle)
        finally:
            codec.STREAM_PIXELS = limit
        ref = Reference(pixels)

        def lp(rec: np.ndarray, ref: Reference = ref) -> float:
            return ref.score(rec, ("lpips",))["lpips"]

        diff = np.abs(whole.astype(int) - tiled.astype(int))
        print(f"{name}: same file: {whole_file == tiled_file}; max pixel difference {diff.max()}, "
              f"{(diff > 0).mean() * 100:.4f} % of samples differ; LPIPS-Alex whole {lp(whole):.4f}, "
              f"tiled {lp(tiled):.4f}", flush=True)  # fmt: skip
    # a crop across the first vertical and horizontal tile borders of the decoder's full-res stage
    b = streamed.FULL_TILE
    y0, x0 = b - 96, b - 96
    a = whole[y0 : y0 + 192, x0 : x0 + 192]
    t = tiled[y0 : y0 + 192, x0 : x0 + 192]
    d = np.clip(np.abs(a.astype(int) - t.astype(int)) * 32, 0, 255).astype(np.uint8)
    gap = np.full((192, 8, 3), 255, np.uint8)
    grid = np.concatenate([t, gap, a, gap, d], axis=1)
    grid = np.repeat(np.repeat(grid, 2, axis=0), 2, axis=1)
    crop_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(crop_png)
    print(f"wrote {crop_png}: tiled | whole | 32 x |difference|, 192 px around the tile corner ({b}, {b}) of the "
          f"4 MP photo, shown 2x", flush=True)  # fmt: skip
    del torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mp", type=float, nargs="+", default=[4, 12, 24, 50], help="sizes in megapixels")
    ap.add_argument("-k", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None)
    ap.add_argument("--csv", type=Path, default=REPO / "bench_out" / "big_images.csv")
    ap.add_argument("--border", action="store_true", help="also the tiled-vs-whole check and the border crop")
    ap.add_argument("--crop", type=Path, default=REPO / "docs" / "rd" / "tile_border.png")
    args = ap.parse_args()
    if args.border:
        import torch

        torch.set_num_threads(args.threads)
        border_check(args.k, args.model, args.crop)
    if args.mp:
        run_sizes(args.mp, args.k, args.threads, args.model, args.csv)


if __name__ == "__main__":
    main()
