"""How recovery choices compare on held-out *training* photos: where recovery is tuned, never Kodak.

The 8 photos ``split_holdout`` keeps out of every training run are encoded at one K, packet-loss
holes are cut into their index maps (16 interleaved packets, each lost with probability
``--loss``, several seeds), and each variant fills them; the score is the rise in LPIPS-VGG (a
training loss, not the headline LPIPS-Alex) over the loss-free decode, averaged. The variants
are the design choices of ``--recover masked`` (docs/history.md says which won):

- ``neighbour``, ``ar``: the baselines, as decoded by the codec;
- ``shared-unit`` / ``shared-plain``: the shared masked model, each hole decoded as the expected
  code vector rescaled to unit length (an early variant) or as is;
- ``fill-plain``: the recovery-only ``fill`` model (when shipped), expected vector as is,
  predicted on half-overlapping tiles (the default ``masked``); ``fill-plain-disjoint``: on
  disjoint tiles;
- ``fill-plain-ar``: the same with ``ar``'s prediction multiplied in; ``fill-plain-ar-disjoint``:
  on disjoint tiles (an earlier default); ``fill-plain-ar-both-overlap``: ``ar``'s prediction
  from overlapping tiles too;
- ``masked-index``: the default's snapped codes;
- ``shared-exact`` / ``fill-exact``: ``shared-plain`` / ``fill-plain`` run by the integer-exact copy
  of the network (what ``--recover masked`` runs when the bundle ships it: the same filled map on
  every computer), the decoder's blend at temperature 1 (earlier 0.1.0 builds);
- ``fill-exact-t<T>``, ``fill-t<T>``: the blend given to the decoder taken at temperature T (the
  recovered map unchanged); ``recovery.BLEND_TEMPERATURE`` is the codec's choice;
- ``fill-int8-t1.5-s<S>``: the int8 copy of ``fill`` (what ``--recover masked`` runs from 0.3.0)
  at the codec's blend temperature, filling in S confident-first rounds (``recovery.FILL_STEPS``).

    python benchmarks/recovery_holdout.py --k 64 --loss 0.3 --seeds 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vqcodec import channel, codec, interleave, recovery  # noqa: E402
from vqcodec.perceptual import LPIPS  # noqa: E402
from vqcodec.train.data import list_images, load_rgb, split_holdout  # noqa: E402
from vqcodec.zoo import load_model  # noqa: E402

TRAIN = REPO.parent / "shared" / "datasets" / "train"


def holes(h: int, w: int, loss: float, seed: int, packets: int = 16, burst: float = 1.0) -> np.ndarray:
    """The positions of randomly lost interleaved packets (at least one packet lost); ``burst`` > 1:
    `vqc corrupt --burst`'s Gilbert-Elliott chain of that mean burst length."""
    rng = np.random.default_rng(seed)
    assign = interleave.assignment(h, w, packets)
    while True:
        drop = rng.random(packets) < loss if burst == 1 else channel.loss_pattern(packets, loss, burst, rng)
        lost = np.flatnonzero(drop)
        if len(lost):
            return np.isin(assign, lost)


def variants(bundle, k: int) -> dict:
    """name -> fn(indices (1, h, w), missing (h, w)) -> (indices, hole vectors or None)."""
    book = F.normalize(bundle.codebook(k).float(), dim=1)
    counts = bundle.table(k).counts
    shared, ar, fill = (bundle.transformer(kind) for kind in ("masked", "ar", "fill"))

    def baseline(method, net=None):
        return lambda idx, miss: recovery.recover_soft(idx, miss, book, counts, method, True, net, k)

    def masked(net, unit: bool = False, prior=None, snap: bool = False, overlap: bool = True, prior_overlap=False,
               **fill_kw):  # fmt: skip
        def fn(idx, miss):
            m = torch.from_numpy(miss)
            logp = None if prior is None else prior.raster_log_probs(torch.from_numpy(idx[0]), m, k, prior_overlap)
            filled, soft = net.fill_soft(torch.from_numpy(idx[0]), m, k, book, prior=logp, overlap=overlap, **fill_kw)
            if unit:
                soft = F.normalize(soft, dim=-1) * m[..., None]
            return filled.numpy()[None], None if snap else soft

        return fn

    def integer(net, temperature: float = 1.0, steps: int = 6):  # an integer copy (what the codec runs)
        def fn(idx, miss):
            filled, soft = net.fill_soft(torch.from_numpy(idx[0]), torch.from_numpy(miss), k, book, steps=steps,
                                         temperature=temperature)  # fmt: skip
            return filled.numpy()[None], soft

        return fn

    def exact(kind: str, temperature: float = 1.0):  # the int16 copy (what the codec ran until 0.2.0)
        return integer(bundle.exact_transformer(kind), temperature)

    out = {"neighbour": baseline("neighbour")}
    if bundle.has_int8("fill"):
        for steps in (6, 4, 3, 2, 1):
            out[f"fill-int8-t1.5-s{steps}"] = integer(bundle.int8_transformer("fill"), 1.5, steps)
    for kind in ("masked", "fill"):
        if bundle.has_exact(kind):
            out[("shared" if kind == "masked" else "fill") + "-exact"] = exact(kind)
    if bundle.has_exact("fill"):
        for t in (1.25, 1.5, 1.75, 2.0, 3.0):
            out[f"fill-exact-t{t}"] = exact("fill", t)
    if ar is not None:
        out["ar"] = baseline("ar", ar)
    if shared is not None:
        out["shared-unit"] = masked(shared, unit=True)
        out["shared-plain"] = masked(shared)
    if fill is not None:
        out["fill-plain"] = masked(fill)
        out["fill-plain-disjoint"] = masked(fill, overlap=False)
        out["masked-index"] = masked(fill, snap=True)
        for t in (1.5, 2.0, 3.0):
            out[f"fill-t{t}"] = masked(fill, temperature=t)
        out["fill-steps12"] = masked(fill, steps=12)
        if ar is not None:
            out["fill-plain-ar"] = masked(fill, prior=ar)
            out["fill-plain-ar-disjoint"] = masked(fill, prior=ar, overlap=False)
            out["fill-plain-ar-both-overlap"] = masked(fill, prior=ar, prior_overlap=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=TRAIN)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--loss", type=float, default=0.3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--burst", type=float, default=1.0, help="mean burst length in packets (1: independent loss)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=None, help="variants to run (default: all; neighbour always)")
    ap.add_argument(
        "--against",
        default="fill-exact-t1.5",
        help="variant every other is paired with (per photo and pattern: mean difference, 2 SE)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_model(args.model)
    _, held = split_holdout(list_images(args.data), 8)
    lpips = LPIPS("vgg")
    fns = variants(bundle, args.k)
    if args.only:
        unknown = set(args.only) - set(fns)
        if unknown:
            ap.error(f"unknown variants {sorted(unknown)}; choose from {sorted(fns)}")
        fns = {name: fn for name, fn in fns.items() if name == "neighbour" or name in args.only}
    rises: dict[str, list[float]] = {name: [] for name in fns}

    def score(enc, ref: torch.Tensor) -> float:
        x = torch.from_numpy(codec.synthesize(enc, bundle)).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.inference_mode():
            return float(lpips(x, ref))

    clean_scores = []
    for i, path in enumerate(held):
        img = load_rgb(path, 768)
        ref = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
        enc = codec.analyze(img, bundle, args.k)
        clean = score(enc, ref)
        clean_scores.append(clean)
        h, w = enc.indices.shape[1:]
        for seed in range(args.seeds):
            miss = holes(h, w, args.loss, 1000 * i + seed, burst=args.burst)
            for name, fn in fns.items():
                idx, soft = fn(enc.indices.copy(), miss)
                hole = None if soft is None else (miss, soft[torch.from_numpy(miss)].numpy())
                lossy = codec.Encoded(idx, enc.image_size, enc.padded_size, args.k, enc.model_id, hole)
                rises[name].append(score(lossy, ref) - clean)
        print(f"{path.name} done", flush=True)
    base = float(np.mean(rises["neighbour"]))
    kind = "" if args.burst == 1 else f" in bursts of mean length {args.burst:g}"
    print(f"\n{len(held)} held-out photos x {args.seeds} seeds, K={args.k}, loss {args.loss}{kind}: "
          f"loss-free LPIPS-VGG {np.mean(clean_scores):.4f}")  # fmt: skip
    ref_rise = np.array(rises[args.against]) if args.against in rises else None
    print(f"\n| variant | LPIPS-VGG rise | share of neighbour's | vs {args.against} (2 SE) |\n|---|---|---|---|")
    for name, v in rises.items():
        paired = ""
        if ref_rise is not None and name != args.against:
            d = np.array(v) - ref_rise
            paired = f"{d.mean():+.4f} ({2 * d.std(ddof=1) / np.sqrt(len(d)):.4f})"
        print(f"| {name} | {np.mean(v):.4f} | {np.mean(v) / base:.0%} | {paired} |")


if __name__ == "__main__":
    main()
