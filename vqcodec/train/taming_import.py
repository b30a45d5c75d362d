"""Import a taming-transformers f=16 ``VQModel`` checkpoint as a vqcodec bundle.

A Lightning ``.ckpt`` holds ``state_dict`` with ``encoder.*``, ``decoder.*``, ``quant_conv.*``,
``post_quant_conv.*``, ``quantize.embedding.weight`` and the training loss's ``loss.*`` (LPIPS and
discriminator, dropped here). It is read with ``torch.load(weights_only=True)``: a checkpoint
that needs arbitrary unpickling is refused with a clear message instead of executing its code.
The reduced codebooks and static entropy tables are computed from the images given.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import pickle
from pathlib import Path

import torch

from vqcodec.errors import VqcModelError
from vqcodec.nets.autoencoder import ARCHS, VQAutoencoder
from vqcodec.train.codebooks import SIZES, build_books, collect_latents
from vqcodec.train.data import list_images, load_rgb
from vqcodec.zoo import save_bundle

REQUIRED = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.embedding.weight")


def read_taming_state(path: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a taming checkpoint (``loss.*`` dropped), safely unpickled."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VqcModelError(f"{path}: no such file") from None
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VqcModelError(
            f"{path}: not loadable with weights_only=True ({first}); re-save its state_dict with plain tensors"
        ) from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise VqcModelError(f"{path}: no state_dict in the checkpoint")
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and not k.startswith("loss.")}
    for prefix in REQUIRED:
        if not any(k.startswith(prefix) for k in sd):
            raise VqcModelError(f"{path}: not a taming VQModel checkpoint (no {prefix}* tensors)")
    return sd


def build_taming_model(sd: dict[str, torch.Tensor]) -> VQAutoencoder:
    n_embed, embed_dim = sd["quantize.embedding.weight"].shape
    cfg = dataclasses.replace(ARCHS["taming-f16"], n_embed=int(n_embed), embed_dim=int(embed_dim))
    model = VQAutoencoder(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("usage")]
    if missing or unexpected:
        raise VqcModelError(
            f"checkpoint does not match the taming-f16 layout (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()


def import_taming(
    ckpt: Path, name: str, images_dir: Path, out: Path, sizes=SIZES, n_images: int = 64, max_side: int = 768
) -> dict:
    sd = read_taming_state(ckpt)
    try:
        model = build_taming_model(sd)
    except RuntimeError as e:  # shape mismatch inside load_state_dict
        raise VqcModelError(f"{ckpt}: {str(e).strip().splitlines()[0]}") from None
    files = list_images(images_dir)[:n_images]
    if not files:
        raise VqcModelError(f"{images_dir}: no images to compute codebooks from")
    latents = collect_latents(model, [load_rgb(p, max_side) for p in files])
    n_embed = model.config.n_embed
    wanted = sorted({k for k in sizes if k < n_embed} | {n_embed})
    books, tables, stats = build_books(model, latents, sizes=wanted)
    h = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    training = {"imported_from": ckpt.name, "checkpoint_sha256": h, "steps": 0, "statistics_images": len(files),
                "codebook_stats": {str(k): v for k, v in stats.items()}, "finetuned": False}  # fmt: skip
    return save_bundle(out, name, model, "taming-f16", books, tables, training)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="vqc import-taming", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--images", type=Path, required=True, help="photos for codebook statistics (not Kodak)")
    ap.add_argument("--out", type=Path, default=None, help="bundle folder (default: models/NAME)")
    ap.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    ap.add_argument("--n-images", type=int, default=64)
    args = ap.parse_args(argv)
    out = args.out or Path(__file__).resolve().parents[2] / "models" / args.name
    man = import_taming(args.checkpoint, args.name, args.images, out, args.sizes, args.n_images)
    print(f"imported {args.checkpoint} as {man['name']} ({man['model_id']}), K = {man['codebook_sizes']}, in {out}")
