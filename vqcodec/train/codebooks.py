"""Variable rate: K-means-reduced codebooks, their index statistics, and bundle export.

The paper reduces the big VQGAN codebook to K = 8 ... 1024 codes by K-means over the code
vectors, *weighted by how often each code is used*, so that frequently used regions of the
codebook keep more resolution. Here the usage is measured on training photos (never Kodak).
With a cosine codebook the clustering runs on unit vectors and the centres are re-normalised at
lookup (spherical K-means in effect).

The per-K frequency tables that the static entropy coder uses are measured the same way, after
quantizing the training latents with each reduced book.

``vqc export`` (``main``) turns a training checkpoint into a shipped bundle.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

from vqcodec.entropy import FrequencyTable
from vqcodec.imageio import pad_to_multiple
from vqcodec.nets.autoencoder import AutoencoderConfig, VQAutoencoder, build_autoencoder, quantizer_record
from vqcodec.nets.quantizers import l2norm
from vqcodec.train.checkpoint import load_checkpoint, save_discriminator
from vqcodec.train.data import list_images, load_rgb, split_holdout
from vqcodec.zoo import save_bundle

SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)
RECIPES = {
    "vqgan": "pixel warm-up (L1+MSE, 64px crops, batch 32), then L1 + LPIPS-VGG(relu1_2..relu3_3) "
    "on 128px crops, batch 8; cosine codebook with dead-code restarts",
    "taef2": "TAEF2 (pretrained, MIT) encoder frozen; latent phase: coder on MSE to the TAEF2 latent (soft-clamped), "
    "128px crops, batch 32; then coder + TAEF2 decoder on L1 + LPIPS-VGG(relu1_2..relu3_3), 192px crops, batch 6; "
    "bf16 autocast + channels_last on CPU; cosine codebook with dead-code restarts",
}
"""What the training record says of how a backbone's base model was trained (``vqc train``'s schedule)."""


@torch.inference_mode()
def collect_latents(model: VQAutoencoder, images: list[np.ndarray]) -> torch.Tensor:
    """Pre-quantization latents (N, d) of whole photos, as the codec sees them."""
    model.eval()
    out = []
    for img in images:
        x = torch.from_numpy(pad_to_multiple(img, model.stride)).permute(2, 0, 1)[None].float() / 127.5 - 1
        with model.autocast():
            z = model.encode_latent(x.contiguous(memory_format=model.memory_format)).float()
        out.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    return torch.cat(out)


def reduce_codebook(codes: torch.Tensor, usage: np.ndarray, k: int, cosine: bool, seed: int = 0) -> torch.Tensor:
    """Usage-weighted K-means of the (K0, d) base codebook down to (k, d)."""
    pts = (l2norm(codes) if cosine else codes).double().numpy()
    if k > pts.shape[0]:
        raise ValueError(f"cannot reduce {pts.shape[0]} codes to {k}")
    if k == pts.shape[0]:
        return codes.clone()
    km = KMeans(n_clusters=k, n_init=4, random_state=seed)
    km.fit(pts, sample_weight=usage.astype(np.float64) + 1e-3)
    return torch.from_numpy(km.cluster_centers_).float()


@torch.inference_mode()
def collect_maps(model: VQAutoencoder, images: list[np.ndarray]) -> list[torch.Tensor]:
    """Pre-quantization latent maps (1, d, h, w) of whole photos."""
    model.eval()
    out = []
    for img in images:
        x = torch.from_numpy(pad_to_multiple(img, model.stride)).permute(2, 0, 1)[None].float() / 127.5 - 1
        with model.autocast():
            out.append(model.encode_latent(x.contiguous(memory_format=model.memory_format)).float())
    return out


@torch.inference_mode()
def collect_parts(
    model: VQAutoencoder, images: list[np.ndarray], maps: list[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """What each of the quantizer's books quantizes on whole photos: one (N_j, d_j) tensor per
    book (plain VQ: the latents; LooC: all sub-vectors, after the 2x upsampling when
    extrapolating; dual: the global and the local halves). ``maps``: ``collect_maps``'s, if at hand."""
    per_image = [model.quantize.parts(z) for z in (maps if maps is not None else collect_maps(model, images))]
    return [torch.cat(p) for p in zip(*per_image, strict=True)]


@torch.inference_mode()
def plane_tables(
    model: VQAutoencoder, maps: list[torch.Tensor], books: dict[int, torch.Tensor]
) -> dict[int, list[FrequencyTable]]:
    """For m > 1: per K, one frequency table per index plane, from the real index maps of ``maps``
    (LooC's sub-vector groups and dual's two books have different statistics)."""
    q = model.quantize
    out = {}
    for k, book in books.items():
        idx = torch.cat([q.quantize(z, book).reshape(q.m, -1) for z in maps], dim=1).numpy()
        out[k] = [FrequencyTable.from_indices(idx[j], k) for j in range(q.m)]
    return out


def is_joint(state: dict) -> bool:
    """Whether a training checkpoint is a ``vqc train --joint`` run (its encoder trained too)."""
    return state.get("args", {}).get("joint") == "True"


def split_book(book: torch.Tensor) -> list[torch.Tensor]:
    """A joined book (``join_books``) back into its parts: a dual book is (2, K, d/2), one per
    half; every other quantizer's is one (K, d) matrix."""
    return list(book) if book.dim() == 3 else [book]


def build_books(
    model: VQAutoencoder, latents: torch.Tensor | list[torch.Tensor], sizes=SIZES, seed: int = 0,
    given: dict[int, torch.Tensor] | None = None,
) -> tuple[dict[int, torch.Tensor], dict[int, FrequencyTable], dict[int, dict]]:  # fmt: skip
    """Reduced codebooks, frequency tables and statistics for every K in ``sizes``.

    ``latents`` is ``collect_parts``'s list (any quantizer) or, for plain VQ, ``collect_latents``'s
    tensor. Each book of the quantizer is reduced on its own (LooC: the one shared sub-vector book;
    dual: the transformed global book and the local book), so a K-book has K codes per part and
    costs m * log2(K) bits per position before entropy coding. One frequency table per K counts
    the indices of every plane together. ``given`` books (a ``vqc train --joint`` run's, which its
    decoder learnt on) are kept as they are instead of re-derived; their K need not be in ``sizes``.
    """
    given = given or {}
    q = model.quantize
    parts = [latents] if isinstance(latents, torch.Tensor) else list(latents)
    bases = q.base_books()
    if len(parts) != len(bases):
        raise ValueError(f"{len(parts)} latent parts for {len(bases)} books: use collect_parts")
    k0 = bases[0].shape[0]
    sizes = sorted({k for k in sizes if k <= k0} | set(given))
    usages = [
        np.bincount(q.nearest(p, b, j).numpy(), minlength=k0) for j, (p, b) in enumerate(zip(parts, bases, strict=True))
    ]
    books, tables, stats = {}, {}, {}
    for k in sizes:
        per_part = split_book(given[k].float()) if k in given else [
            b if k == k0 else reduce_codebook(b, u, k, q.part_cosine, seed) for b, u in zip(bases, usages, strict=True)
        ]  # fmt: skip
        idx = np.concatenate([q.nearest(p, b, j).numpy() for j, (p, b) in enumerate(zip(parts, per_part, strict=True))])
        table = FrequencyTable.from_indices(idx, k)
        books[k], tables[k] = q.join_books(per_part), table
        used = int((np.bincount(idx, minlength=k) > 0).sum())
        stats[k] = {"used_codes": used, "usage": round(used / k, 4),
                    "bits_per_index": round(table.cost_bits(idx) / idx.size, 4),
                    "uniform_bits": float(np.log2(k))}  # fmt: skip
        if len(parts) > 1:  # usage of each book (dual: global, local)
            stats[k]["usage_per_book"] = [round(len(np.unique(q.nearest(p, b, j).numpy())) / k, 4)
                                          for j, (p, b) in enumerate(zip(parts, per_part, strict=True))]  # fmt: skip
    return books, tables, stats


def load_autoencoder(path: Path) -> tuple[VQAutoencoder, dict]:
    """The autoencoder of a training checkpoint (eval mode), and the checkpoint's whole state."""
    state = load_checkpoint(path)
    model = build_autoencoder(AutoencoderConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    return model.eval(), state


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="vqc export", description="checkpoint -> model bundle")
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, default=Path("models/vqc-small"))
    ap.add_argument("--name", default="vqc-small")
    ap.add_argument("--arch", default="vq-f16-small")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared/datasets/train")
    ap.add_argument("--images", type=int, default=200, help="training photos used for statistics")
    ap.add_argument("--max-side", type=int, default=768)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--note", default="", help="how this run was trained, stored in the training record")
    ap.add_argument("--save-disc", type=Path, default=None, metavar="FILE",
                    help="also write the run's discriminator (fp16 safetensors), so bundle + FILE continue the run")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    model, state = load_autoencoder(args.checkpoint)
    if args.save_disc and "disc" not in state:
        raise SystemExit(f"vqc export: --save-disc: {args.checkpoint} has no discriminator to save")
    files, _ = split_holdout(list_images(args.data), 8)
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(files), size=min(args.images, len(files)), replace=False))
    images = [load_rgb(files[i], args.max_side) for i in pick]
    maps = collect_maps(model, images)
    # a --joint run's decoder learnt on its own reduced books: ship those (and the base), no others
    given = {int(k): v for k, v in state.get("books", {}).items()} if is_joint(state) else {}
    sizes = [model.quantize.codebook_size] if given else SIZES
    books, tables, stats = build_books(model, collect_parts(model, images, maps), sizes, given=given)
    planes = plane_tables(model, maps, books) if model.quantize.m > 1 else None
    for k, ts in (planes or {}).items():
        n = sum(int(t.counts.sum()) for t in ts)  # bits per index with the per-plane tables, for the record
        stats[k]["plane_bits_per_index"] = round(sum(t.entropy_bits() * int(t.counts.sum()) for t in ts) / n, 4)
    training = {
        "steps": int(state["step"]),
        "seconds": round(float(state["elapsed"])),
        "data": "../shared/datasets/train (704 photos, 8 held out); never Kodak",
        "recipe": RECIPES.get(model.config.backbone, ""),
        "args": state.get("args", {}),
        "codebook_stats": {str(k): v for k, v in stats.items()},
        "statistics_images": len(images),
        "reduction": "the books vqc train --joint trained (its step-drawn ladder)" if given else
        "usage-weighted K-means (scikit-learn, n_init=4, seed 0) of each base codebook",
        "quantizer": quantizer_record(model.quantize),
        "finetuned": False,
        **({"note": args.note} if args.note else {}),
    }
    manifest = save_bundle(args.out, args.name, model, args.arch, books, tables, training, plane_tables=planes)
    print(json.dumps({k: manifest[k] for k in ("name", "model_id", "codebook_sizes")}))
    if args.save_disc:
        save_discriminator(state["disc"], args.save_disc)
        print(f"wrote {args.save_disc}")
    for k, s in stats.items():
        print(
            f"K={k:5d} used {s['used_codes']:5d} bits/index {s['bits_per_index']:.3f} (uniform {s['uniform_bits']:.0f})"
        )
    print(f"exported in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
