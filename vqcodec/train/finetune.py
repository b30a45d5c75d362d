"""Fine-tune each K-means-reduced codebook (the paper's second stage), encoder and decoder frozen.

For a reduced book of K codes, the encoder's latents are quantized to their nearest code (no
gradient through the choice) and the decoder's reconstruction loss (L1 + LPIPS-VGG, never
LPIPS-Alex) is back-propagated into the K code vectors only. This keeps one shared decoder for all
rates, so a bundle stays a few MB; fine-tuning the decoder per K is a larger-bundle option left
for later measurement. Data: training photos only (never Kodak).

    vqc finetune models/vqc-small --out models/vqc-small-ft --steps 200

``--decoder-from <run>/last.ckpt`` first takes the decoder of a ``vqc train --decoder-only`` run
(the encoder and base codebook must be the bundle's, which is checked), so "decoder fine-tuned on
every K" and "books fine-tuned per K" combine; ``--steps 0`` takes the decoder alone. The bundle's
index-map transformers are carried over: neither step changes what an index means.

A ``vqc train --joint`` checkpoint (encoder, books and decoder trained together) is taken whole:
its index maps are new, so the frequency tables are re-measured, and the carried-over context and
recovery transformers still decode every file exactly (they only predict) but cost bits until
``vqc train-recovery`` retrains them on the new maps; the manifest says so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vqcodec.entropy import FrequencyTable
from vqcodec.nets.autoencoder import AutoencoderConfig, build_autoencoder
from vqcodec.perceptual import LPIPS
from vqcodec.train.checkpoint import load_checkpoint, save_discriminator
from vqcodec.train.codebooks import build_books, collect_latents, is_joint
from vqcodec.train.data import CropStream, list_images, load_rgb, split_holdout
from vqcodec.zoo import copy_transformers, load_model, save_bundle

FROZEN = ("encoder.", "quant_conv.", "quantize.embedding")
"""Weights a --decoder-from checkpoint must share with the bundle (they make the index maps)."""


def take_decoder(model, ckpt: Path, state: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """The bundle's ``model`` with the decoder of a --decoder-only training checkpoint, and its record;
    refuses one whose encoder or base codebook differ from the bundle's (its index maps would mean
    other things). A run that grew the decoder (``vqc train --dec-blocks``) gives a model of its
    own, larger configuration: loading it into the bundle's would silently drop the new blocks."""
    state = load_checkpoint(ckpt) if state is None else state
    sd = state["model"]
    cfg = AutoencoderConfig.from_dict(state["config"]) if "config" in state else model.config
    if cfg != model.config:
        if dataclasses.replace(cfg, dec_res_blocks=model.config.dec_res_blocks) != model.config:
            raise SystemExit(f"{ckpt}: its model differs from the bundle's beyond the decoder's blocks")
        grown = build_autoencoder(cfg).eval()
        grown.load_state_dict(model.state_dict(), strict=False)
        model = grown
    if not is_joint(state):  # a --joint run brings its own encoder and base book
        for name, t in model.state_dict().items():
            if name.startswith(FROZEN) and not torch.equal(sd[name].float(), t.float()):
                raise SystemExit(f"{ckpt}: {name} differs from the bundle's: not a --decoder-only run of this bundle")
    model.load_state_dict({k: v for k, v in sd.items() if not k.endswith("usage")}, strict=False)
    return model, {"checkpoint": str(ckpt), "steps": int(state["step"]), "seconds": round(float(state["elapsed"])),
            "args": state.get("args", {})}  # fmt: skip


def tuned_books(ckpt: Path, bundle, state: dict) -> dict[int, torch.Tensor]:
    """The reduced books a ``vqc train --decoder-only --book-lr`` run trained beside its decoder
    (only those that differ from the bundle's): they ship with that decoder, which learnt on them."""
    saved = state.get("books", {})
    out = {}
    for k, book in saved.items():
        k = int(k)
        if k not in bundle.codebooks or book.shape != bundle.codebook(k).shape:
            raise SystemExit(f"{ckpt}: its K={k} book does not fit the bundle's books (K = {bundle.codebook_sizes})")
        if not torch.equal(book.float(), bundle.codebook(k).float()):
            out[k] = book.float()
    return out


def new_tables(model, books: dict, files: list[Path], images: int, base_k: int) -> dict:
    """Frequency tables of every book from the index maps of ``images`` training photos."""
    stats_imgs = [load_rgb(files[i], 768) for i in range(0, len(files), max(1, len(files) // images))]
    latents = collect_latents(model, stats_imgs[:images])
    _, tables, _ = build_books(model, latents, sizes=[base_k])  # it re-derives K-means books: keep ours
    for k, book in books.items():
        tables[k] = FrequencyTable.from_indices(model.quantize._nearest(latents, book).numpy(), k)
    return tables


def finetune_book(model, book: torch.Tensor, crops: CropStream, steps: int, batch: int, lr: float,
                  lpips=None, lpips_weight: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """Optimise the (K, d) code vectors of ``book`` for reconstruction; returns (book, log)."""
    rng = random.Random(seed)
    q = model.quantize
    param = torch.nn.Parameter(book.clone())
    opt = torch.optim.Adam([param], lr=lr)
    model.eval().requires_grad_(False)

    fmt = getattr(model, "memory_format", torch.contiguous_format)
    autocast = getattr(model, "autocast", contextlib.nullcontext)

    def loss_of(x: torch.Tensor) -> torch.Tensor:  # the codec's precision (bf16 for taef2 on AMX), losses in fp32
        x = x.contiguous(memory_format=fmt)
        with torch.no_grad(), autocast():
            z = model.encode_latent(x).float()
        idx = q.quantize(z, param.detach())
        with autocast():
            y = model.decode_latent(F.embedding(idx[:, 0], q.codes(param)).permute(0, 3, 1, 2)).float()
        loss = F.l1_loss(y, x)
        if lpips is not None and lpips_weight:
            loss = loss + lpips_weight * lpips(y, x).mean()
        return loss

    held = torch.stack([crops.crop(random.Random(seed + 1)) for _ in range(batch)])  # fixed probe batch
    with torch.no_grad():
        before = loss_of(held).item()
    for _ in range(steps):
        loss = loss_of(torch.stack([crops.crop(rng) for _ in range(batch)]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_of(held).item()
    log = {"steps": steps, "probe_loss_before": round(before, 5), "probe_loss_after": round(after, 5)}
    if after >= before:  # fine-tuning did not pay on the probe batch: keep the K-means book
        return book.clone(), {**log, "kept": "k-means"}
    return param.detach(), log


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="vqc finetune", description=__doc__.split("\n")[0])
    ap.add_argument("bundle", help="bundle name or folder to start from")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default=None)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared/datasets/train")
    ap.add_argument("--ks", type=int, nargs="*", default=None, help="K values to fine-tune (default: all but the base)")
    ap.add_argument("--decoder-from", type=Path, default=None, help="a vqc train --decoder-only (or --joint) checkpoint")
    ap.add_argument("--save-disc", type=Path, default=None, metavar="FILE",
                    help="with --decoder-from: also write the run's discriminator (fp16 safetensors) for a "
                         "later vqc train --disc-from: a committed between-ships checkpoint is then complete")
    ap.add_argument("--steps", type=int, default=200, help="codebook fine-tuning steps per K (0: none)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lpips-weight", type=float, default=1.0)
    ap.add_argument("--images", type=int, default=200, help="training photos for the new frequency tables")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.save_disc and not args.decoder_from:
        raise SystemExit("vqc finetune: --save-disc needs --decoder-from (the run whose discriminator it saves)")
    bundle = load_model(args.bundle)
    if bundle.manifest.get("quantizer", {}).get("type", "vq") != "vq":
        raise SystemExit(f"vqc finetune: {bundle.name} has a {bundle.manifest['quantizer']['type']} quantizer; "
                         "codebook fine-tuning is implemented for plain VQ bundles only")  # fmt: skip
    model = bundle.model
    decoder, trained, joint = None, {}, False
    if args.decoder_from:
        state = load_checkpoint(args.decoder_from)
        model, decoder = take_decoder(model, args.decoder_from, state)
        trained = tuned_books(args.decoder_from, bundle, state)
        joint = is_joint(state)
        if joint:
            print(f"{args.decoder_from}: a --joint run: encoder and base book taken too (new index maps)", flush=True)
        disc, state = state["disc"], None  # the rest (optimizer states) is not needed any more
    files, _ = split_holdout(list_images(args.data), 8)
    photos = [load_rgb(p, 1024) for p in files]
    crops = CropStream(photos, args.crop)
    lpips = None
    if args.lpips_weight:
        lpips = LPIPS("vgg", layers=3)
    base_k = model.config.n_embed
    ks = args.ks or [k for k in bundle.codebook_sizes if k != base_k]
    books = dict(bundle.codebooks)
    if trained:  # only a --decoder-from run has them
        books.update(trained)
        decoder["books_trained"] = sorted(trained)
    logs = {}
    for k in ks if args.steps else []:
        t = time.time()
        books[k], logs[str(k)] = finetune_book(model, books[k], crops, args.steps, args.batch, args.lr,
                                               lpips, args.lpips_weight)  # fmt: skip
        print(f"K={k}: probe loss {logs[str(k)]['probe_loss_before']} -> {logs[str(k)]['probe_loss_after']} "
              f"({time.time() - t:.0f}s)",
              flush=True)  # fmt: skip
    if args.steps or decoder is None or trained:
        tables = new_tables(model, books, files, args.images, base_k)
    else:  # only the decoder changed: the index maps, hence the frequency tables, are the bundle's
        tables = dict(bundle.tables)
    training = dict(bundle.manifest.get("training", {}))
    if decoder and joint:
        training["joint_trained"] = {"what": "encoder, every book (base included) and decoder together, a random "
                                     "book per step (vqc train --joint)", **decoder,
                                     "transformers": f"carried over from {bundle.name} (trained on its index maps): "
                                     "files decode exactly, but retrain them (vqc train-recovery) before shipping"}  # fmt: skip
    elif decoder:
        training["decoder_finetuned"] = {"what": "post_quant_conv + decoder on a random K-means book per step "
                                         "(encoder and base codebook frozen)", **decoder}  # fmt: skip
    if args.steps:
        training["finetuned"] = {"what": "codebook only (encoder and decoder frozen)", "loss": "L1 + LPIPS-VGG(relu3_3)",
                                 "lr": args.lr, "batch": args.batch, "crop": args.crop, "per_k": logs}  # fmt: skip
    man = save_bundle(args.out, args.name or bundle.name, model, bundle.manifest["arch"], books, tables, training)
    man = copy_transformers(bundle, args.out)
    print(f"wrote {args.out} ({man['model_id']})")
    if args.save_disc:
        save_discriminator(disc, args.save_disc)
        print(f"wrote {args.save_disc}")


if __name__ == "__main__":
    main()
