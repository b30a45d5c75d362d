"""Build a bundle's nested codebooks for layered files (``vqc train-layers``).

The top layer keeps the bundle's own K_L book (its single-layer files and pictures are those of
the top layer), and each coarser layer gets a book and a parent table fit to it, by alternating on
training latents (a tree-structured K-means with weighted layers):

1. choose, at every position, the top code whose chain of ancestors scores best
   (``layers.select``: the sum over layers of weight x cosine similarity);
2. move every coarse code to the normalised mean of the latents that chose it;
3. give every fine code the parent whose chain scores best over the latents that chose it.

It starts from the bundle's flat books, each fine code under its nearest coarse code, so code
identities (what the context models were trained on) keep their meaning: the refit books move
codes, they do not renumber them. No network is trained; a few minutes on a CPU.

The refit books choose the maps; the pictures of the coarse layers are drawn, by default, with the
flat books' vectors of the same codes (``--draw flat``, from 0.3.0): the decoder was trained on
those, and on 32 training photos the fit never saw the K=8 prefix's LPIPS-Alex fell by 0.009 and
the K=64 prefix's DISTS by 0.008 against drawing with the refit vectors, at the same bits.
Tuning the drawn vectors against the decoder (L1 + LPIPS-VGG, 150-400 steps) did not pay there.

The weights trade the layers' pictures against each other: with the top layer alone the top map
is the single-layer one and the coarse layers lose most; with the coarse layers alone the reverse.
The shipped 8, 64, 1024 set uses 2, 1, 6, chosen on the held-out photos (docs/history.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vqcodec import layers, options, zoo
from vqcodec.train.data import list_images, load_rgb, split_holdout


def training_latents(bundle, root: Path, photos: int, max_side: int = 768, seed: int = 0) -> torch.Tensor:
    """(N, d) latent vectors of ``photos`` training photos (never the held-out ones), seeded."""
    from vqcodec import codec

    train, _ = split_holdout(list_images(root), 8)
    pick = np.random.default_rng(seed).choice(len(train), min(photos, len(train)), replace=False)
    parts = []
    for n, j in enumerate(sorted(pick)):
        z = codec.encode_latent(load_rgb(train[j], max_side), bundle).z
        parts.append(bundle.model.quantize.parts(z)[0].float())
        if n % 50 == 0:
            print(f"latents: {n}/{len(pick)} photos", flush=True)
    return torch.cat(parts)


def _nearest(quantizer, vectors: torch.Tensor, book: torch.Tensor) -> np.ndarray:
    return quantizer.nearest(vectors, book).numpy().astype(np.int64)


def fit(bundle, latents: torch.Tensor, sizes: tuple[int, ...], weights: tuple[float, ...],
        iters: int = 15) -> tuple[layers.LayerSet, list[dict]]:  # fmt: skip
    """Alternate selection, book refit and parent refit ``iters`` times -> (layer set, history)."""
    q = bundle.model.quantize
    if bundle.m != 1 or not q.plane_cosine:
        raise ValueError("nested books are built for single-plane cosine codebooks")
    x = torch.nn.functional.normalize(latents.float(), dim=1)
    books = [q.codes(bundle.codebook(k)).float().clone() for k in sizes]
    parents = [_nearest(q, books[i + 1], books[i]) for i in range(len(sizes) - 1)]
    history = []
    for it in range(iters + 1):
        ls = layers.LayerSet(sizes, tuple(parents), tuple(books), weights)
        maps = layers.select(x.t()[None, :, None, :], q, ls)  # (1, d, 1, N): positions in a row
        sel = [torch.from_numpy(m.reshape(-1)) for m in maps]
        score = [float((x * books[i][sel[i]]).sum(1).mean()) for i in range(len(sizes))]
        history.append({"iteration": it, "mean_cosine": dict(zip(map(str, sizes), score, strict=True))})
        print(f"iteration {it}: mean cosine " + ", ".join(f"K={k} {s:.4f}" for k, s in zip(sizes, score, strict=True)), flush=True)
        if it == iters:
            return ls, history
        for i in range(len(sizes) - 1):  # coarse books to the mean of their latents
            total = torch.zeros_like(books[i]).index_add_(0, sel[i], x)
            used = total.norm(dim=1) > 0
            books[i][used] = torch.nn.functional.normalize(total[used], dim=1)
        for i in reversed(range(len(sizes) - 1)):  # parents: the best chain over each fine code's latents
            fine = sizes[i + 1]
            total = torch.zeros(fine, x.shape[1]).index_add_(0, sel[i + 1], x)
            chain = [np.arange(sizes[i])]
            for p in reversed(parents[:i]):
                chain.insert(0, p[chain[0]])
            gain = sum(weights[j] * (total @ books[j][torch.from_numpy(chain[j])].t()) for j in range(i + 1))
            used = (torch.bincount(sel[i + 1], minlength=fine) > 0).numpy()
            parents[i] = np.where(used, gain.argmax(1).numpy(), parents[i])
    raise AssertionError("unreachable")


def save(folder: Path, ls: layers.LayerSet, record: dict) -> dict:
    """Add the set to the bundle's ``layers.safetensors`` (other sets kept) and its manifest."""
    from safetensors.torch import load_file, save_file

    folder = zoo.find_bundle(folder)
    manifest = zoo._read_manifest(folder)
    path = folder / zoo.LAYERS
    tensors = load_file(str(path)) if path.exists() else {}
    key = "-".join(map(str, ls.sizes))
    tensors = {k: v for k, v in tensors.items() if not k.startswith(key + ".")}
    for i, k in enumerate(ls.sizes[:-1]):  # the top layer's book is the bundle's own
        tensors[f"{key}.book.{k}"] = ls.books[i].float().contiguous()
    for i, k in enumerate(ls.sizes[1:]):
        tensors[f"{key}.parent.{k}"] = torch.from_numpy(ls.parents[i].astype(np.int32))
    save_file(tensors, str(path))
    manifest["files"][zoo.LAYERS] = zoo.sha256_file(path)
    sets = manifest.setdefault("layers", {})
    sets[ls.name] = {"weights": list(ls.weights), **record}
    zoo.write_manifest(folder, manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="vqc train-layers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="bundle to add the nested books to (default: the shipped default)")
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/train"), help="training photos")
    ap.add_argument("--sizes", default="8,64,1024", help="the chain of codebook sizes")
    ap.add_argument("--weights", default="2,1,6", help="each layer's weight in the encoder's choice")
    ap.add_argument("--photos", type=int, default=300, help="training photos whose latents are used")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--draw", choices=("flat", "books"), default="flat",
                    help="draw the coarse layers with the flat books' vectors of their codes (default) or with the "
                         "refit nested books")
    ap.add_argument("--draw-only", action="store_true",
                    help="keep the bundle's nested books and tree (the same maps, bits and tag); only set --draw")
    args = ap.parse_args(argv)
    sizes = options.check_layers(args.sizes)
    weights = tuple(float(w) for w in args.weights.split(","))
    if len(weights) != len(sizes) and not args.draw_only:
        ap.error("--weights needs one weight per size")
    bundle = zoo.load_model(args.model)
    for k in sizes:
        bundle.codebook(k)
    if args.draw_only:
        if sizes not in bundle.layer_sets():
            ap.error(f"--draw-only: {bundle.name} has no nested books for {args.sizes}")
        manifest = zoo._read_manifest(bundle.path)
        entry = manifest["layers"][",".join(map(str, sizes))]
        entry["draw"] = args.draw
        zoo.write_manifest(bundle.path, manifest)
        print(json.dumps(entry, indent=1))
        return
    t0 = time.time()
    torch.manual_seed(0)
    x = training_latents(bundle, args.data, args.photos)
    ls, history = fit(bundle, x, sizes, weights, args.iters)
    record = {"photos": args.photos, "positions": int(x.shape[0]), "iterations": args.iters,
              "data": f"{args.data} ({args.photos} photos, 8 held out; never Kodak)",
              "seconds": round(time.time() - t0, 1), "mean_cosine": history[-1]["mean_cosine"], "draw": args.draw}  # fmt: skip
    manifest = save(bundle.path, ls, record)
    print(json.dumps(manifest["layers"][ls.name], indent=1))
