"""Entropy-coding benchmark: bits per index and bpp on Kodak for uniform, static and context coding.

    python benchmarks/entropy.py                 # every K of the default bundle, 24 images
    python benchmarks/entropy.py --ks 64 --limit 4

"uniform" is log2(K) bits per index (the paper's code, `--entropy raw` up to byte padding);
"static", "context" (the float context model) and "exact" (the integer-exact one, the default) are
the real file payloads (the context modes only when the bundle has those models). Encode/decode seconds cover entropy coding only (the index map is computed once).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vqcodec import codec  # noqa: E402
from vqcodec.container import CodingMode  # noqa: E402
from vqcodec.imageio import load_image  # noqa: E402
from vqcodec.zoo import load_model  # noqa: E402

KODAK = REPO.parent / "shared" / "datasets" / "kodak"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=KODAK)
    ap.add_argument("--ks", type=int, nargs="*", default=None)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--levels", type=int, default=0, help="context lattice levels to try (0: the bundle's own)")
    args = ap.parse_args(argv)
    bundle = load_model(args.model)
    if args.levels and "recovery" in bundle.manifest:
        bundle.manifest["recovery"]["context_levels"] = args.levels  # in memory only: what-if
    if "recovery" in bundle.manifest:
        print(f"context model: {bundle.context_levels}-level lattice order")
    modes = [CodingMode.STATIC] + ([CodingMode.CONTEXT] if bundle.recovery_model is not None else [])
    modes += [CodingMode.EXACT] if bundle.has_exact("masked") else []
    images = [load_image(p).pixels for p in sorted(args.data.glob("*.png"))[: args.limit or None]]
    print("| K | uniform bits/index | " + " | ".join(f"{m.name.lower()} bits/index | {m.name.lower()} bpp | "
          f"saving vs uniform | enc s | dec s" for m in modes) + " |")  # fmt: skip
    print("|---|---|" + "---|---|---|---|---|" * len(modes))
    for k in args.ks or bundle.codebook_sizes:
        encs = [codec.analyze(img, bundle, k) for img in images]
        n = sum(e.indices.size for e in encs)
        cells = [f"{math.log2(k):.3f}"]
        for mode in modes:
            t_enc = t_dec = 0.0
            payload = total = 0
            for img, e in zip(images, encs, strict=True):
                t = time.perf_counter()
                data = codec.pack(e, bundle, mode)
                t_enc += time.perf_counter() - t
                t = time.perf_counter()
                back, _ = codec.unpack(data, bundle)
                t_dec += time.perf_counter() - t
                assert np.array_equal(back.indices, e.indices)
                payload += codec.info(data).payload_bytes
                total += len(data) * 8 / (img.shape[0] * img.shape[1])
            bits = payload * 8 / n
            cells += [f"{bits:.3f}", f"{total / len(images):.4f}", f"{100 * (1 - bits / math.log2(k)):.1f}%",
                      f"{t_enc / len(images):.3f}", f"{t_dec / len(images):.3f}"]  # fmt: skip
        print(f"| {k} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
