"""Train the base VQ autoencoder: resumable, logged, validated, CPU or CUDA, optional DDP.

Recipe (DESIGN.md measured it on this CPU): a warm-up on pixel losses (L1 + MSE) with small crops
and big batches, then L1 + LPIPS-VGG (cut after relu3_3) on larger crops, then a PatchGAN hinge
loss with feature matching once the reconstructions are stable. LPIPS-Alex is never a loss: it is
the evaluation metric.

State lives in ``<out>/last.ckpt`` (written atomically every ``--ckpt-minutes`` and on SIGINT/SIGTERM), the log in
``<out>/log.csv``, validation pictures in ``<out>/val_*.png``. ``--resume`` continues a run;
``--init-from models/<bundle>`` starts a new run from a shipped bundle (a new machine has no
run folder, but it has the committed bundle).

``--decoder-only`` (with ``--init-from``) trains ``post_quant_conv`` + decoder alone, each step on
one of the bundle's K-means books picked at random: the encoder, the books and so every index map
stay as they are, so the bundle's context and recovery transformers stay valid, and one decoder
learns to serve every K. ``vqc finetune --decoder-from <run>/last.ckpt`` puts it into a bundle.

``--joint`` (with ``--init-from``) is the encoder's turn: the same per-step draw of one of the
bundle's books, but the encoder and ``quant_conv`` learn too, through the drawn book by the
straight-through estimator (VQ-VAE's commitment loss towards it), and with ``--book-lr`` every book,
the base one included, follows the decoder's losses and the codebook loss. The index maps change,
so everything downstream of them (frequency tables, context and recovery models) must be redone:
``vqc finetune --decoder-from`` takes such a run whole (``--encoder-too``).

``--quantizer vq|looc|dual`` (with ``--m``, ``--extrapolate``, ``--codebook-size``) picks the
quantizer; with ``--init-from`` a bundle's encoder and decoder are kept and a different quantizer
replaces its own, its books seeded by K-means of the encoder's outputs on training crops.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from vqcodec.nets.autoencoder import (
    ARCHS,
    QUANTIZERS,
    AutoencoderConfig,
    ResnetBlock,
    build_autoencoder,
    build_quantizer,
    native_bf16,
)
from vqcodec.nets.discriminator import PatchDiscriminator
from vqcodec.nets.quantizers import record_usage, reseed_dead_codes, straight_through
from vqcodec.nets.taef2 import squash
from vqcodec.train.data import CropStream, center_crops, list_images, load_rgb, split_holdout

VAL_KS = (8, 64)
"""Reduced books also scored by the validation pass of a ``--decoder-only`` run (its grid shows the last)."""


@dataclass
class Phase:
    """One stage of the schedule: crop size, batch size and which losses are on."""

    name: str
    until: int  # last step (exclusive) of this phase; -1 = forever
    crop: int
    batch: int
    lpips: float
    mse: float
    gan: bool


def schedule(args: argparse.Namespace) -> list[Phase]:
    """latent (taef2 backbone only: coder trained on latent MSE, no pixel pass) -> pixel -> perceptual -> gan."""
    return [
        Phase("latent", args.latent_steps, args.latent_crop, args.latent_batch, 0.0, 0.0, False),
        Phase("pixel", args.pixel_steps, args.pixel_crop, args.pixel_batch, 0.0, 1.0, False),
        Phase("perceptual", args.gan_start, args.crop, args.batch, args.lpips_weight, args.perceptual_mse, False),
        Phase("gan", -1, args.crop, args.batch, args.lpips_weight, args.perceptual_mse, True),
    ]


def phase_at(phases: list[Phase], step: int) -> Phase:
    for p in phases:
        if p.until < 0 or step < p.until:
            return p
    return phases[-1]


def load_disc(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """A discriminator's weights from a training checkpoint or a (fp16) ``--save-disc`` file."""
    if not path.is_file():
        raise SystemExit(f"--disc-from: {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {k: v.float() for k, v in load_file(str(path), device=str(device)).items()}
    return torch.load(path, map_location=device, weights_only=True)["disc"]


def atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of images in [-1,1] after 8-bit rounding, averaged over the batch."""
    a = ((x.clamp(-1, 1) + 1) * 127.5).round()
    b = ((y.clamp(-1, 1) + 1) * 127.5).round()
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return float((10 * torch.log10(255.0**2 / mse)).mean())


def save_grid(x: torch.Tensor, y: torch.Tensor, path: Path) -> None:
    rows = torch.cat([x, y], dim=3)
    img = torch.cat(list(rows), dim=1)
    arr = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(arr).save(path)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vqc train", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared/datasets/train")
    ap.add_argument("--out", type=Path, default=Path("runs/base"))
    ap.add_argument("--arch", default="vq-f16-small")
    ap.add_argument("--resume", action="store_true", help="continue <out>/last.ckpt")
    ap.add_argument("--init-from", type=Path, default=None, help="start from a model bundle folder")
    ap.add_argument("--steps", type=int, default=10**9, help="stop after this many steps in total")
    ap.add_argument("--minutes", type=float, default=1e9, help="stop after this wall time")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--latent-steps", type=int, default=0,
                    help="taef2 backbone: first steps train the coder on TAEF2-latent MSE alone (cheap: no decoder pass)")
    ap.add_argument("--latent-batch", type=int, default=32)
    ap.add_argument("--latent-crop", type=int, default=128)
    ap.add_argument("--pixel-lr", type=float, default=None,
                    help="learning rate once the latent phase is over (default --lr): a pretrained decoder wants less")
    ap.add_argument("--taef2-weights", type=Path, default=None,
                    help="folder of taef2_encoder.pth/taef2_decoder.pth for a fresh taef2 run (default ../shared/weights/taef2)")
    ap.add_argument("--train-taef2-encoder", action="store_true", help="also train TAEF2's encoder (default: frozen)")
    ap.add_argument("--bf16", dest="bf16", action="store_true", default=None,
                    help="bf16 autocast + channels_last on the CPU (default where the CPU has native bf16, "
                         "AMX / AVX-512 BF16: 2.9x faster there; emulated elsewhere, about 6x slower than fp32)")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32 training")
    ap.add_argument("--no-disc-aug", dest="disc_aug", action="store_false",
                    help="no DiffAugment on the discriminator's inputs")
    ap.add_argument("--pixel-steps", type=int, default=2000)
    ap.add_argument("--pixel-crop", type=int, default=64)
    ap.add_argument("--pixel-batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lpips-weight", type=float, default=1.0)
    ap.add_argument("--l1-weight", type=float, default=1.0,
                    help="weight of the L1 pixel loss (taming's 1.0); lower trades PSNR for texture the "
                         "perceptual and adversarial losses ask for")
    ap.add_argument("--perceptual-mse", type=float, default=0.0, help="MSE weight in the perceptual/GAN phases")
    ap.add_argument("--colour-weight", type=float, default=0.0, metavar="W",
                    help="L1 between the 16x16-block means of input and output (colour and layout, what an index "
                         "must carry; the GAN may repaint it otherwise): W x that term in every pixel phase")
    ap.add_argument("--decay-start", type=int, default=-1, help="step where the linear LR decay starts (-1: never)")
    ap.add_argument("--decay-steps", type=int, default=0, help="length of the decay to 10 %% of --lr")
    ap.add_argument("--lpips-layers", type=int, default=3)
    ap.add_argument("--lpips-subset", type=float, default=1.0, help="share of the batch that gets LPIPS-VGG")
    ap.add_argument("--gan-start", type=int, default=10**9, help="step where the GAN loss starts")
    ap.add_argument("--gan-weight", type=float, default=0.1)
    ap.add_argument("--disc-lr", type=float, default=None,
                    help="discriminator learning rate (default --lr); higher = two time-scale update rule, "
                         "for a discriminator whose hinge loss sits at chance")
    ap.add_argument("--fm-weight", type=float, default=1.0)
    ap.add_argument(
        "--decoder-only",
        action="store_true",
        help="train post_quant_conv + decoder only, on a random K-means book of --init-from per step",
    )
    ap.add_argument("--joint", action="store_true",
                    help="with --init-from: encoder, decoder and (with --book-lr) every book of the bundle, the "
                         "base one included, train together; each step draws a book as --decoder-only does and "
                         "the encoder learns through it (straight-through + commitment loss)")
    ap.add_argument("--commit-to", choices=["drawn", "base"], default="drawn",
                    help="with --joint (plain VQ): the commitment loss pulls the encoder towards the drawn book's "
                         "code (VQ-VAE's) or the base book's nearest code, so that the small books, drawn 40 %% "
                         "of the steps, do not drag the latents towards their few codes (a colour cast seen in training)")
    ap.add_argument("--encoder-lr-scale", type=float, default=None, metavar="S",
                    help="with --joint: the encoder and quant_conv train at S x the LR (default: --old-lr-scale)")
    ap.add_argument("--book-sizes", type=int, nargs="+", default=None, metavar="K",
                    help="with --decoder-only or --joint: draw each step's book from these K (repeat one to draw it more "
                         "often, e.g. 8 8 16 32 64 64 128 256) instead of uniformly from all the bundle's books")
    ap.add_argument("--dec-blocks", type=int, nargs=2, default=None, metavar=("AT_1_8", "AT_1_16"),
                    help="with --init-from: grow the taef2 decoder's coder mirror to this many residual blocks at "
                         "1/8 and 1/16 resolution; the new blocks start as the identity (zero last conv), so "
                         "the model begins exactly where the bundle is")
    ap.add_argument("--book-lr", type=float, default=0.0, metavar="LR",
                    help="with --decoder-only: also train the bundle's reduced books (every K but the base; with --joint every K) at "
                         "this LR, on the same schedule, through the decoder's losses (the paper's per-K "
                         "fine-tuning, with the GAN; encoder frozen); 0: books fixed")
    ap.add_argument("--old-lr-scale", type=float, default=1.0, metavar="S",
                    help="with --init-from: the bundle's own weights train at S x the LR, new ones (--dec-blocks) "
                         "at the full LR")
    ap.add_argument("--disc-from", type=Path, default=None,
                    help="with --init-from: start the discriminator from this training checkpoint's, or "
                         "from a .safetensors file written by vqc finetune --save-disc")
    ap.add_argument("--restart-every", type=int, default=200, help="dead-code restart period")
    ap.add_argument("--quantizer", choices=QUANTIZERS, default=None, help="quantizer (default: the arch's or bundle's)")
    ap.add_argument("--m", type=int, default=None, help="looc: sub-vectors per latent (dual: 2, vq: 1)")
    ap.add_argument("--extrapolate", action="store_true", help="looc: extrapolation-by-interpolation")
    ap.add_argument("--codebook-size", type=int, default=None, help="base K (of each book)")
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--val-minutes", type=float, default=15.0)
    ap.add_argument("--n-val", type=int, default=8)
    ap.add_argument("--max-side", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.ddp:
            dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1
        self.device = torch.device(args.device if args.device != "cuda" else f"cuda:{self.rank}")
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed + self.rank)
        random.seed(args.seed + self.rank)  # the book each --decoder-only step draws; crops have their own RNG
        self.out: Path = args.out
        self.main = self.rank == 0
        if args.arch not in ARCHS:
            raise SystemExit(f"unknown architecture {args.arch!r}; known: {', '.join(sorted(ARCHS))}")
        self.model = build_autoencoder(self._with_quantizer(ARCHS[args.arch])).to(self.device)
        self.seed_books = False  # a bundle's encoder with a new quantizer: K-means-seed its books
        self.disc = PatchDiscriminator().to(self.device)
        if args.bf16 is None:  # bf16 only where it is native: on AVX2-only CPUs it is emulated and slow
            args.bf16 = native_bf16()
        self.channels_last = self.device.type == "cuda" or args.bf16
        self.new_params: list[str] = []  # --init-from: tensors the bundle had no weights for
        self.books: dict[int, torch.Tensor] = {}  # --decoder-only: the bundle's K-means books
        self.opt = self._optimizer()
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=args.lr, betas=(0.5, 0.9), weight_decay=0.0)
        self.step = 0
        self.elapsed = 0.0
        self.lpips: torch.nn.Module | None = None
        self.phases = schedule(args)
        self._start()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.disc = self.disc.to(memory_format=torch.channels_last)
        if self.model.config.backbone == "taef2" and not args.train_taef2_encoder:
            self.model.encoder.taef2.requires_grad_(False)
        elif args.latent_steps > self.step:
            raise SystemExit("--latent-steps needs the taef2 backbone (with its encoder frozen)")
        if args.decoder_only and self.seed_books:
            raise SystemExit("--decoder-only keeps the bundle's quantizer and books: drop --quantizer/--m/--codebook-size")
        if args.decoder_only or args.joint:
            if not self.books and not self.seed_books:
                raise SystemExit("--decoder-only and --joint need --init-from <bundle> (or --resume of such a run)")
            base = self.model.quantize.codebook_size
            if self.seed_books:  # a new quantizer: its reduced books are made from the ladder (run())
                if bad := sorted(k for k in args.book_sizes or () if not 2 <= k <= base):
                    raise SystemExit(f"--book-sizes {bad}: the new quantizer's books hold 2 ... {base} codes")
            elif unknown := sorted(set(args.book_sizes or ()) - set(self.books) - {base}):
                raise SystemExit(f"--book-sizes {unknown}: the bundle's books are K = {sorted(set(self.books) | {base})}")
        if args.commit_to == "base" and self._native_base():
            raise SystemExit("--commit-to base: for --joint runs of a plain VQ bundle's own books only")
        if args.decoder_only:
            for part in (self.model.encoder, self.model.quant_conv, self.model.quantize):
                part.requires_grad_(False)

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the model; with ``--old-lr-scale`` the tensors a bundle already had train at
        that share of the LR and the new ones (``--dec-blocks``) at the full LR, so growing a
        converged decoder does not first undo its last LR decay (measured: restarting vqc-gan2
        at the full rate cost its val LPIPS 0.015 before the new decay won it back)."""
        new = set(self.new_params)
        params = dict(self.model.named_parameters())
        enc = set()  # --joint --encoder-lr-scale: the encoder's own group
        if self.args.joint and self.args.encoder_lr_scale is not None:
            enc = {n for n in params if n.startswith(("encoder.", "quant_conv.")) and n not in new}
        own = set()  # --joint with LooC/dual and --book-lr: the quantizer's own book(s) (dual: and its transformer)
        if self._native_base() and self.args.book_lr:
            own = {n for n in params if n.startswith("quantize.")}
        groups = [{"params": [p for n, p in params.items() if n not in new | enc | own], "lr_scale": self.args.old_lr_scale}]
        if enc:
            groups.append({"params": [params[n] for n in params if n in enc], "lr_scale": self.args.encoder_lr_scale})
        if new - own:
            groups.append({"params": [p for n, p in params.items() if n in new - own], "lr_scale": 1.0})
        if own:
            groups.append({"params": [params[n] for n in params if n in own], "lr_scale": self.args.book_lr / self.args.lr})
        if tuned := self._tuned_books():
            groups.append({"params": tuned, "lr_scale": self.args.book_lr / self.args.lr})
        return torch.optim.AdamW(groups, lr=self.args.lr, betas=(0.5, 0.9), weight_decay=0.0)

    def _native_base(self) -> bool:
        """``--joint`` after a quantizer swap (LooC, dual, or another plain book): the base book is the
        quantizer's own, trained by its own forward (LooC's usage counts, dual's book transformer),
        and only the reduced books are leaves in ``self.books``; a plain run from a plain bundle keeps
        every book, the base one included, in ``self.books`` (so this holds across ``--resume``)."""
        return bool(self.args.joint) and self.model.quantize.codebook_size not in self.books

    def _ladder(self) -> list[int]:
        """The K a ``--decoder-only`` / ``--joint`` step draws from (``--book-sizes``, else every book)."""
        return self.args.book_sizes or sorted(set(self.books) | {self.model.quantize.codebook_size})

    def _tuned_books(self) -> list[torch.Tensor]:
        """``--book-lr``: the reduced books as trainable leaves, in K order (the optimizer's group
        order must be the same on ``--resume``); with ``--decoder-only`` the base book is the model's
        own and stays frozen, so the encoder's base index map, hence ``vqc finetune --decoder-from``'s
        check, still holds; with ``--joint`` it trains too (the encoder moves anyway)."""
        if not (self.args.book_lr and self.books):
            return []
        base = None if self.args.joint else self.model.config.n_embed
        for k in self.books:
            self.books[k] = self.books[k].detach().float().requires_grad_(k != base)
        return [self.books[k] for k in sorted(self.books) if k != base]

    def _with_quantizer(self, cfg: AutoencoderConfig) -> AutoencoderConfig:
        """``cfg`` with the quantizer options given on the command line."""
        import dataclasses

        a = self.args
        kind = a.quantizer or cfg.quantizer
        m = a.m if a.m is not None else {"vq": 1, "dual": 2}.get(kind, cfg.m if cfg.quantizer == kind else 2)
        new = dataclasses.replace(cfg, quantizer=kind, m=m, extrapolate=bool(a.extrapolate) or
                                  (cfg.extrapolate and kind == cfg.quantizer),
                                  n_embed=a.codebook_size or (cfg.n_embed if kind == cfg.quantizer else 256))  # fmt: skip
        try:
            build_quantizer(new)
        except ValueError as e:
            raise SystemExit(f"vqc train: {e}") from None
        return new

    def _grown(self, new: AutoencoderConfig, cfg: AutoencoderConfig) -> AutoencoderConfig:
        """``new`` with ``--dec-blocks``: more decoder capacity at 1/8 and 1/16 resolution, where
        it costs almost nothing per pixel (the full-resolution TAEF2 layers dominate) and widens
        what the decoder sees around each index when it has to invent detail."""
        import dataclasses

        grow = tuple(self.args.dec_blocks)
        if cfg.backbone != "taef2" or any(g < o for g, o in zip(grow, cfg.dec_res_blocks, strict=True)):
            raise SystemExit(f"--dec-blocks {grow}: needs a taef2 bundle with at most that many blocks "
                             f"(it has {cfg.dec_res_blocks})")  # fmt: skip
        return dataclasses.replace(new, dec_res_blocks=grow)

    @torch.no_grad()
    def _identity_blocks(self, missing: list[str]) -> None:
        """Zero the last convolution of every residual block the bundle had no weights for: a
        residual block with a zero branch is the identity, so growing changes no output."""
        for name, m in self.model.named_modules():
            if isinstance(m, ResnetBlock) and f"{name}.conv2.weight" in missing:
                m.conv2.weight.zero_()
                m.conv2.bias.zero_()
        if missing:
            self.log(f"{len(missing)} new tensors, new residual blocks start as the identity")

    @torch.no_grad()
    def _seed_books(self) -> None:
        """K-means (a few Lloyd rounds) of the quantizer's parts on 32 training crops."""
        q = self.model.quantize
        ds = iter(CropStream(self.train_images, self.args.crop, seed=self.args.seed))
        x = torch.stack([next(ds) for _ in range(32)]).to(self.device)
        self.model.eval()
        parts = q.parts(torch.cat([self.model.encode_latent(x[i : i + 8]) for i in range(0, 32, 8)]))
        self.model.train()
        g = torch.Generator().manual_seed(self.args.seed)
        books = [kmeans(p.float(), q.codebook_size, generator=g) for p in parts]
        q.init_books(books)
        self.log(f"seeded the {type(q).__name__} books by K-means of {parts[0].shape[0]} encoder vectors")
        if self.args.joint:  # its reduced books, from the same vectors; the optimizer then takes them
            for k in sorted(set(self._ladder()) - {q.codebook_size}):
                self.books[k] = q.join_books([kmeans(p.float(), k, generator=g) for p in parts]).to(self.device)
            self.opt = self._optimizer()
            self.log(f"--joint: reduced books K = {sorted(self.books)} by K-means of the same vectors")

    # ---------------------------------------------------------------- state
    def _start(self) -> None:
        ckpt = self.out / "last.ckpt"
        if self.args.resume:
            if not ckpt.is_file():
                raise SystemExit(f"--resume: {ckpt} does not exist")
            state = torch.load(ckpt, map_location=self.device, weights_only=True)
            cfg = AutoencoderConfig.from_dict(state["config"])
            if cfg != self.model.config:  # e.g. a run started from a bundle with another quantizer
                self.model = build_autoencoder(cfg).to(self.device)
            self.new_params = list(state.get("new_params", []))
            self.books = {int(k): v.to(self.device) for k, v in state.get("books", {}).items()}
            self.opt = self._optimizer()  # the same parameter groups as the run that saved it
            self.model.load_state_dict(state["model"])
            self.disc.load_state_dict(state["disc"])
            self.opt.load_state_dict(state["opt"])
            self.opt_d.load_state_dict(state["opt_d"])
            self.step, self.elapsed = state["step"], state["elapsed"]
            random.setstate(state["py_rng"])
            torch.set_rng_state(state["torch_rng"])
            self.log(f"resumed {ckpt} at step {self.step}")
            return
        if ckpt.exists():
            raise SystemExit(f"{ckpt} exists: pass --resume to continue it, or choose another --out")
        if self.args.init_from is not None:
            from vqcodec.zoo import load_bundle_state

            cfg, sd, record = load_bundle_state(self.args.init_from)
            new = self._with_quantizer(cfg)
            if self.args.dec_blocks is not None:
                new = self._grown(new, cfg)
            if (new.quantizer, new.m, new.n_embed) != (cfg.quantizer, cfg.m, cfg.n_embed):
                sd = {k: v for k, v in sd.items() if not k.startswith("quantize.")}
                self.seed_books = True
            if new != self.model.config:
                self.model = build_autoencoder(new).to(self.device)
            missing = self.model.load_state_dict(sd, strict=False).missing_keys
            self._identity_blocks(missing)
            trainable = dict(self.model.named_parameters())  # missing_keys also lists buffers
            self.new_params = [n for n in missing if n in trainable]
            if (self.args.decoder_only or self.args.joint) and not self.seed_books:  # before the optimizer: with --book-lr the books join it
                from vqcodec.zoo import load_model

                books = load_model(self.args.init_from).codebooks
                self.books = {int(k): v.float().to(self.device) for k, v in books.items()}
            self.opt = self._optimizer()
            if self.args.disc_from is not None:
                self.disc.load_state_dict(load_disc(self.args.disc_from, self.device))
                self.log(f"discriminator from {self.args.disc_from}")
            self.step = int(record.get("steps", 0))
            self.elapsed = float(record.get("seconds", 0.0))
            self.log(f"initialised from bundle {self.args.init_from} (step {self.step})")
        elif self.model.config.backbone == "taef2":
            from vqcodec.nets.taef2 import load_pretrained

            folder = load_pretrained(self.model.encoder.taef2, self.model.decoder.taef2, self.args.taef2_weights)
            self.log(f"TAEF2 encoder and decoder initialised from {folder}")
        self.out.mkdir(parents=True, exist_ok=True)
        if self.ddp:  # every replica starts from rank 0's weights (fresh, resumed or bundle)
            for net in (self.model, self.disc):
                for t in list(net.parameters()) + list(net.buffers()):
                    dist.broadcast(t.data, 0)

    def _agree(self, local: bool) -> bool:
        """DDP: stop when any replica wants to (time limit, signal), so all stop at the same step."""
        if not self.ddp:
            return local
        flag = torch.tensor([float(local)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _replicas_in_sync(self) -> bool:
        tensors = [*self.model.parameters(), *self.books.values()]
        total = torch.stack([p.detach().double().sum() for p in tensors]).sum().reshape(1)
        lo, hi = total.clone(), total.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        return bool(torch.isclose(lo, hi, rtol=1e-9, atol=1e-9).item())

    def save(self) -> None:
        if not self.main:
            return
        self._sync_base_book()
        state = {
            "model": self.model.state_dict(),
            "disc": self.disc.state_dict(),
            "opt": self.opt.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "books": {str(k): v.detach().cpu() for k, v in self.books.items()},
            "config": self.model.config.to_dict(),
            "new_params": self.new_params,
            "args": {k: str(v) for k, v in vars(self.args).items()},
            "py_rng": random.getstate(),
            "torch_rng": torch.get_rng_state(),
        }
        atomic_save(state, self.out / "last.ckpt")

    def log(self, msg: str) -> None:
        if self.main:
            print(f"[{time.strftime('%H:%M:%S')}] step {self.step}: {msg}", flush=True)

    # ---------------------------------------------------------------- data
    def _load_images(self) -> None:
        files = list_images(self.args.data)
        train, val = split_holdout(files, self.args.n_val)
        t = time.time()
        self.train_images = [load_rgb(p, self.args.max_side) for p in train]
        self.val_batch = center_crops([load_rgb(p, self.args.max_side) for p in val], 256).to(self.device)
        self.log(f"cached {len(train)} training photos, {len(val)} held out ({time.time() - t:.0f}s)")

    def _loader(self, phase: Phase):
        ds = CropStream(self.train_images, phase.crop, seed=self.args.seed * 7919 + self.step + self.rank)
        dl = torch.utils.data.DataLoader(
            ds, batch_size=phase.batch, num_workers=self.args.workers, worker_init_fn=_ignore_stop_signals,
            persistent_workers=self.args.workers > 0, pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        return iter(dl)

    # ---------------------------------------------------------------- losses
    def _lpips(self) -> torch.nn.Module:
        if self.lpips is None:
            from vqcodec.perceptual import LPIPS

            self.lpips = LPIPS("vgg", layers=self.args.lpips_layers).to(self.device)
        return self.lpips

    def _adaptive_lr(self) -> float:
        """Warm-up over 200 steps, then constant, then (optionally) a linear decay to 10 %."""
        a = self.args
        base = a.pixel_lr if a.pixel_lr is not None and self.step >= a.latent_steps else a.lr
        lr = base * min(1.0, (self.step + 1) / 200)
        if a.decay_start >= 0 and a.decay_steps > 0:
            t = min(1.0, max(0.0, (self.step - a.decay_start) / a.decay_steps))
            lr *= 1.0 - 0.9 * t
        return lr

    def train_step(self, x: torch.Tensor, phase: Phase) -> dict[str, float]:
        model, args = self.model, self.args
        lr = self._adaptive_lr()
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        for g in self.opt_d.param_groups:  # same warm-up and decay, scaled by --disc-lr / --lr
            g["lr"] = lr * (args.disc_lr / args.lr if args.disc_lr is not None else 1.0)
        amp = self._amp()
        with amp:
            if phase.name == "latent":  # taef2: TAEF2 latent -> coder -> VQ -> coder mirror, MSE in latent space
                enc, dec = model.encoder, model.decoder
                with torch.no_grad():
                    lat = enc.latent(x).float()
                z_q, qloss, _ = model.quantize_fp32(model.quant_conv(enc.code(lat)))
                lat_hat = dec.latent(model.post_quant_conv(z_q)).float()
                rec = F.mse_loss(squash(lat_hat), squash(lat))  # compared as TAEF2's decoder sees them
                loss = rec + qloss
                logs = {"latent_mse": rec.item(), "q": qloss.item()}
                x_hat = None
            elif self.books and args.joint:  # --joint: a random book, the encoder learns through it
                k = random.choice(self._ladder())
                z_q, qloss = self._joint_quantize(model.encode_latent(x), k)
                x_hat = model.decode_latent(z_q)
            elif self.books:  # --decoder-only: frozen encoder, a random book, no codebook loss
                book = self.books[random.choice(self._ladder())]
                with torch.no_grad():
                    idx = model.quantize.quantize(model.encode_latent(x), book.detach())
                z_q = model.quantize.dequantize(idx, book)  # --book-lr: the loss reaches the book's codes
                x_hat, qloss = model.decode_latent(z_q), torch.zeros((), device=x.device)
            else:
                x_hat, qloss, _ = model(x)
            if x_hat is not None:
                x_hat = x_hat.float()
                rec = F.l1_loss(x_hat, x)
                loss = args.l1_weight * rec + qloss
                logs = {"l1": rec.item(), "q": qloss.item()}
            if args.colour_weight and x_hat is not None:
                colour = F.l1_loss(F.avg_pool2d(x_hat, 16), F.avg_pool2d(x, 16))
                loss = loss + args.colour_weight * colour
                logs["colour"] = colour.item()
            if phase.mse:
                mse = F.mse_loss(x_hat, x)
                loss = loss + phase.mse * mse
                logs["mse"] = mse.item()
            if phase.lpips:
                n = max(1, round(x.shape[0] * args.lpips_subset))  # VGG dominates the step: maybe a subset
                lp = self._lpips()(x_hat[:n], x[:n]).mean()
                loss = loss + phase.lpips * lp
                logs["lpips_vgg"] = lp.item()
            if phase.gan:
                x_real, x_fake = self._disc_views(x, x_hat)
                logits, f_fake = self.disc(x_fake)
                with torch.no_grad():
                    _, f_real = self.disc(x_real)
                g_loss = -logits.mean()
                fm = sum(F.l1_loss(a, b) for a, b in zip(f_fake, f_real, strict=True)) / len(f_real)
                loss = loss + args.gan_weight * g_loss + args.fm_weight * fm
                logs["g"] = g_loss.item()
                logs["fm"] = float(fm.item())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.ddp:
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
            self._reduce_book_grads()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        self.opt.step()
        if phase.gan:
            with amp:
                x_real, x_fake = self._disc_views(x, x_hat.detach())
                real, _ = self.disc(x_real)
                fake, _ = self.disc(x_fake)
                d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            if self.ddp:
                for p in self.disc.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= self.world
            self.opt_d.step()
            logs["d"] = d_loss.item()
        if self.step % args.restart_every == 0 and self.step > 0 and args.joint:
            logs["restarted"] = self._restart_base_book()
        elif self.step % args.restart_every == 0 and self.step > 0 and not self.books:
            logs["restarted"] = model.quantize.restart_dead_codes()
            if self.ddp:  # keep replicas identical after a restart
                for t in model.quantize.parameters():
                    dist.broadcast(t.data, 0)
        logs["loss"] = loss.item()
        return logs

    def _joint_quantize(self, z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``--joint``: ``z`` quantized by book ``k``. The decoder gets the code vectors with the
        encoder's gradient passed straight through (and, with ``--book-lr``, the book's own), plus
        VQ-VAE's codebook + commitment loss towards that book; the base book's usage is counted every
        step in the model's own quantizer (the encoder's vectors against it), for its dead-code restarts."""
        q = self.model.quantize
        if self._native_base():
            return self._joint_quantize_native(z, k)
        book = self.books[k]
        base_k = self.model.config.n_embed
        b, c, h, w = z.shape
        flat = q._prep(z.permute(0, 2, 3, 1).reshape(-1, c).float())
        with torch.no_grad():
            idx = q._nearest(flat, book.detach())
            idx_base = idx if k == base_k else q._nearest(flat, self.books[base_k].detach())
            record_usage(q, idx_base, flat)
        self.usage_steps = getattr(self, "usage_steps", 0) + 1
        codes = q.codes(book)[idx]
        if self.args.commit_to == "base" and k != base_k:  # the encoder is pulled to the base book only
            base_codes = q.codes(self.books[base_k].detach())[idx_base]
            loss = F.mse_loss(codes, flat.detach()) + q.beta * F.mse_loss(flat, base_codes)
        else:
            _, loss = straight_through(flat, codes, q.beta)
        z_q = codes + (flat - flat.detach())  # value: the code; gradient: to the code and to the encoder
        return z_q.view(b, h, w, c).permute(0, 3, 1, 2).contiguous().to(z.dtype), loss

    def _joint_quantize_native(self, z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``_joint_quantize`` for LooC and dual: the quantizer's own training pass on book ``k``
        (None: its own), with the decoder's gradient also reaching the codes, as for plain VQ;
        the own book's usage is counted every step (a no-grad pass when a reduced book is drawn)."""
        q = self.model.quantize
        book = None if k == q.codebook_size else self.books[k]
        if book is not None:
            with torch.no_grad():
                q(z.detach().float())
        z_q, loss, idx = q(z.float(), book)
        codes = q.dequantize(idx, book)
        self.usage_steps = getattr(self, "usage_steps", 0) + 1
        return (z_q + (codes - codes.detach())).to(z.dtype), loss

    @torch.no_grad()
    def _restart_base_book(self) -> int:
        """``--joint``: re-seed the base book's dead codes (usage EMA below 1e-3) from recent encoder
        vectors, as the plain trainer does for the model's own book."""
        q = self.model.quantize
        if getattr(self, "usage_steps", 0) < self.args.restart_every:  # e.g. just resumed: not yet counted
            return 0
        if self._native_base():
            return q.restart_dead_codes()
        return reseed_dead_codes(self.books[self.model.config.n_embed], q.usage, getattr(q, "_last_latents", None), 1e-3)

    def _reduce_book_grads(self) -> None:
        """DDP with ``--book-lr``: each replica drew its own book, so each reduces every trained
        book (zeros for the ones it did not draw, same order everywhere); a book no replica drew
        gets no gradient, as without DDP, so AdamW leaves it alone."""
        for book in (b for _, b in sorted(self.books.items()) if b.requires_grad):
            grad = book.grad if book.grad is not None else torch.zeros_like(book)
            dist.all_reduce(grad)
            book.grad = grad / self.world if grad.any() else None

    def _amp(self):
        """bf16 autocast on CUDA always, on the CPU with --bf16 (default: native bf16; losses in fp32)."""
        if self.device.type == "cuda" or self.args.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return _null()

    def _disc_views(self, x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the discriminator sees: DiffAugment-ed real and fake (independent draws) unless --no-disc-aug."""
        if not self.args.disc_aug:
            return x, x_hat
        from vqcodec.train.augment import diff_augment

        both = diff_augment(torch.cat([x, x_hat.to(x.dtype)]))
        return both[: x.shape[0]], both[x.shape[0] :]

    @torch.no_grad()
    def _sync_base_book(self) -> None:
        """``--joint``: the model's own codebook is the trained base book (validation, checkpoints)."""
        if self.args.joint and (base := self.books.get(self.model.config.n_embed)) is not None:
            self.model.quantize.embedding.weight.data.copy_(base.detach())

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self._sync_base_book()
        self.model.eval()
        xs, ys, idxs = self.val_batch, [], []
        for i in range(0, xs.shape[0], 4):
            idx = self.model.encode_indices(xs[i : i + 4])
            ys.append(self.model.decode_indices(idx))
            idxs.append(idx)
        y = torch.cat(ys)
        used = torch.unique(torch.cat(idxs)).numel() / self.model.quantize.codebook_size
        res = {"val_psnr": psnr(y, xs), "val_lpips_vgg": float(self._lpips()(y, xs).mean()),
               "val_usage": used, "train_usage": float((self.model.quantize.usage > 1e-3).float().mean())}  # fmt: skip
        for k in VAL_KS:  # --decoder-only: the reduced books it is trained for
            if k in self.books:
                q = self.model.quantize
                yk = torch.cat([self.model.decode_latent(q.dequantize(q.quantize(self.model.encode_latent(
                    xs[i : i + 4]), self.books[k]), self.books[k])) for i in range(0, xs.shape[0], 4)])  # fmt: skip
                res.update({f"val_psnr_k{k}": psnr(yk, xs), f"val_lpips_vgg_k{k}": float(self._lpips()(yk, xs).mean())})
                y = yk if k == VAL_KS[-1] else y
        save_grid(xs[:4], y[:4], self.out / f"val_{self.step:07d}.png")
        self.model.train()
        return res

    def run(self) -> None:
        args = self.args
        self._load_images()
        if self.seed_books:
            self._seed_books()
        self.model.train()
        log_path = self.out / "log.csv"
        fields = ["step", "phase", "seconds", "sec_per_step", "loss", "latent_mse", "l1", "colour", "mse", "lpips_vgg", "q", "g", "fm",
                  "d", "restarted", "val_psnr", "val_lpips_vgg", "val_usage", "train_usage"]  # fmt: skip
        fields += [f"val_{m}_k{k}" for k in VAL_KS for m in ("psnr", "lpips_vgg")] if self.books else []
        new = not log_path.exists()
        logf = open(log_path, "a", newline="") if self.main else None
        writer = csv.DictWriter(logf, fieldnames=fields, extrasaction="ignore") if logf else None
        if writer and new:
            writer.writeheader()
        t_start = time.time()
        last_ckpt = last_val = time.time()
        phase = phase_at(self.phases, self.step)
        it = self._loader(phase)
        acc: dict[str, list[float]] = {}
        t_log = time.time()
        steps_since = 0
        stop = {"now": False}

        def _graceful(signum, frame):  # SIGINT/SIGTERM: finish the step, validate, save, exit
            stop["now"] = True

        old = {sig: signal.signal(sig, _graceful) for sig in (signal.SIGINT, signal.SIGTERM)}
        while not self._agree(self.step >= args.steps or (time.time() - t_start) / 60 >= args.minutes or stop["now"]):
            p = phase_at(self.phases, self.step)
            if p.name != phase.name:
                self.log(f"phase {phase.name} -> {p.name}")
                phase, it = p, self._loader(p)
            x = next(it).to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logs = self.train_step(x, phase)
            self.step += 1
            steps_since += 1
            for k, v in logs.items():
                acc.setdefault(k, []).append(float(v))
            now = time.time()
            if steps_since >= 50 or now - last_ckpt > args.ckpt_minutes * 60:
                self.elapsed += now - t_log
                row = {k: round(float(np.mean(v)), 5) for k, v in acc.items()}
                row.update(step=self.step, phase=phase.name, seconds=round(self.elapsed),
                           sec_per_step=round((now - t_log) / steps_since, 3))  # fmt: skip
                if now - last_val > args.val_minutes * 60:
                    row.update(self.validate())
                    last_val = time.time()
                if writer:
                    writer.writerow(row)
                    logf.flush()
                self.log(" ".join(f"{k}={v}" for k, v in row.items() if k != "step"))
                acc, t_log, steps_since = {}, time.time(), 0
                if now - last_ckpt > args.ckpt_minutes * 60:
                    self.save()
                    last_ckpt = time.time()
        self.elapsed += time.time() - t_log
        row = {"step": self.step, "phase": phase.name, "seconds": round(self.elapsed)}
        row.update(self.validate())
        if writer:
            writer.writerow(row)
            logf.close()
        self.log(f"finished: {row}")
        if self.ddp:
            self.log(f"DDP: {self.world} replicas, weights in sync: {self._replicas_in_sync()}")
        self.save()
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _ignore_stop_signals(_worker_id: int) -> None:
    """Workers leave SIGINT/SIGTERM to the main process, which stops cleanly and saves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def kmeans(x: torch.Tensor, k: int, rounds: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, d) -> (k, d) centres by Lloyd's algorithm from a random pick; empty clusters keep their seed."""
    pick = torch.randperm(x.shape[0], generator=generator)[:k]
    if pick.numel() < k:  # fewer vectors than codes: repeat them
        pick = pick[torch.arange(k) % pick.numel()]
    c = x[pick].clone()
    for _ in range(rounds):
        a = torch.cdist(x, c).argmin(1)
        s = torch.zeros_like(c).index_add_(0, a, x)
        n = torch.bincount(a, minlength=k).float()[:, None]
        c = torch.where(n > 0, s / n.clamp_min(1), c)
    return c


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    books_mode = args.decoder_only or args.joint
    if args.decoder_only and args.joint:
        raise SystemExit("--decoder-only and --joint exclude each other (--joint trains the encoder too)")
    if args.book_sizes and not books_mode:  # before any bundle or photo is loaded
        raise SystemExit("--book-sizes needs --decoder-only or --joint")
    if args.book_lr and not books_mode:
        raise SystemExit("--book-lr needs --decoder-only or --joint (the bundle's reduced books are what it trains)")
    if args.encoder_lr_scale is not None and not args.joint:
        raise SystemExit("--encoder-lr-scale needs --joint")
    if args.commit_to != "drawn" and not args.joint:
        raise SystemExit("--commit-to needs --joint")
    if args.old_lr_scale != 1.0 and args.init_from is None:
        raise SystemExit("--old-lr-scale needs --init-from (the bundle whose weights it scales)")
    Trainer(args).run()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
