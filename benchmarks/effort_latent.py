"""A cheaper distortion for the effort search: TAEF2's latent instead of pixels and LPIPS-VGG (a probe).

The search of ``vqcodec.effort`` spends about 2.7 s a step on a 768x512 photo (the TAEF2 decoder
forward and backward at full resolution, then LPIPS-VGG), which is why no level reaches half the
gain in 5 s. Here the same search (the same straight-through latent, rate term, budget and
``fit_budget``) measures distortion where the pixel decoder starts: the squared error between the
coder's TAEF2 latent for the map and the TAEF2 encoder's latent of the photo (both squashed as the
decoder sees them; ``--colour`` adds the error of their 2x2 means, 16x16 pixel blocks). Held-out
training photos only; prints, per photo and on average, the change against effort 1 in bytes,
LPIPS-Alex, DISTS and block colour error, the seconds of both encodes and the share of indices
changed.

    python benchmarks/effort_latent.py --k 64 --steps 6 --lr 0.01 --photos 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vqcodec import codec, effort, metrics  # noqa: E402
from vqcodec.nets.taef2 import squash  # noqa: E402
from vqcodec.train.data import list_images, load_rgb, split_holdout  # noqa: E402
from vqcodec.zoo import load_model  # noqa: E402

TRAIN = REPO.parent / "shared" / "datasets" / "train"


class LatentDistortion(torch.nn.Module):
    """Squared error in TAEF2's latent, shown to the search at pixel scale (8x nearest), so that its
    crops in pixel coordinates still apply."""

    def __init__(self, target: torch.Tensor, colour: float) -> None:
        super().__init__()
        self.target, self.colour = target, colour

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.target[..., : x.shape[-2], : x.shape[-1]]
        d = ((x - t) ** 2).mean()
        return d + self.colour * ((F.avg_pool2d(x, 16) - F.avg_pool2d(t, 16)) ** 2).mean()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vqc-gan2")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--colour", type=float, default=0.0)
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_model(args.model)
    model = bundle.model
    _, held = split_holdout(list_images(TRAIN), 8)
    pixel_decode = model.decode_latent

    def latent_decode(zq: torch.Tensor) -> torch.Tensor:
        lat = squash(model.decoder.latent(model.post_quant_conv(zq))).float()
        return F.interpolate(lat, scale_factor=8, mode="nearest")

    rows = []
    for path in held[: args.photos]:
        px = load_rgb(path, 768)
        t = time.perf_counter()
        d1, e1 = codec.compress(px, bundle, args.k)
        t1 = time.perf_counter() - t
        x = codec._to_tensor(codec.pad_to_multiple(px, bundle.stride))
        with torch.no_grad(), model.autocast():
            lat = squash(model.encoder.latent(x.contiguous(memory_format=model.memory_format))).float()
        target = F.interpolate(lat, scale_factor=8, mode="nearest")
        effort.Distortion = lambda _t, _l1, _c, tg=target: LatentDistortion(tg, args.colour)  # noqa: E731
        effort.LEVELS[2] = effort.Settings(steps=args.steps, lr=args.lr)
        model.decode_latent = latent_decode
        try:
            t = time.perf_counter()
            d2, e2 = codec.compress(px, bundle, args.k, effort=2)
            t2 = time.perf_counter() - t
        finally:
            model.decode_latent = pixel_decode
        o1, o2 = codec.synthesize(e1, bundle), codec.synthesize(e2, bundle)
        r = [len(d2) / len(d1) - 1, metrics.lpips_alex(px, o2) - metrics.lpips_alex(px, o1),
             metrics.dists(px, o2) - metrics.dists(px, o1), metrics.block_de(px, o2) - metrics.block_de(px, o1),
             t1, t2, float((e1.indices != e2.indices).mean())]  # fmt: skip
        rows.append(r)
        print(f"{path.name:24s} bytes {r[0]:+.3f}  d LPIPS {r[1]:+.4f}  d DISTS {r[2]:+.4f}  d block dE {r[3]:+.2f}  "
              f"effort 1 {r[4]:.1f} s, search {r[5]:.1f} s, changed {r[6]:.2f}", flush=True)  # fmt: skip
    m = np.array(rows)
    se2 = 2 * m.std(0, ddof=1) / np.sqrt(len(m))
    print(f"\nK={args.k}, {args.steps} steps, lr {args.lr}, colour {args.colour}, {len(m)} held-out photos: "
          f"bytes {m[:, 0].mean():+.2%}, d LPIPS-Alex {m[:, 1].mean():+.4f} (2 SE {se2[1]:.4f}), d DISTS "
          f"{m[:, 2].mean():+.4f} ({se2[2]:.4f}), d block dE {m[:, 3].mean():+.2f} ({se2[3]:.2f}), "
          f"{m[:, 4].mean():.1f} s / {m[:, 5].mean():.1f} s, {m[:, 6].mean():.0%} of indices changed")  # fmt: skip


if __name__ == "__main__":
    main()
