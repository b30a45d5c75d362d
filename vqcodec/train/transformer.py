"""Train the index-map transformer (lost-index recovery; later the entropy context model).

Data: the index maps of training photos (never Kodak) at every K of a bundle, computed once and
cached (``<out>/maps.npz``). Each step draws a K, a batch of random crops of the maps, and a mask
ratio r ~ U(0, 1) mapped through MaskGIT's cosine schedule (half the batch uses a random
interleaved-packet pattern instead, like the losses the codec sees); the loss is cross-entropy on
the masked positions. Resumable (``last.ckpt``), logged (``log.csv``).

    vqc train-recovery --bundle vqc-small --out runs/recovery --minutes 60
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vqcodec.interleave import assignment
from vqcodec.nets.autoencoder import native_bf16
from vqcodec.nets.transformer import IndexTransformer, TransformerConfig
from vqcodec.train.data import list_images, load_rgb, split_holdout


@torch.inference_mode()
def index_maps(bundle, files: list[Path], max_side: int = 768, flips: bool = True) -> dict[int, list[np.ndarray]]:
    """Index maps (h, w) of every photo at every K of the bundle (m = 1 models).

    One encoder pass per photo serves all K (only the nearest-code search differs). With ``flips``
    the mirrored photo is encoded too: a real map of a real image, so the prior learns no left/right
    bias, and twice the data for the cost of one more encoder pass.
    """
    from vqcodec.codec import _to_tensor
    from vqcodec.imageio import pad_to_multiple

    maps: dict[int, list[np.ndarray]] = {k: [] for k in bundle.codebook_sizes}
    books = {k: bundle.codebook(k) for k in bundle.codebook_sizes}
    for p in files:
        img = load_rgb(p, max_side)
        for pix in [img, img[:, ::-1]] if flips else [img]:
            x = _to_tensor(pad_to_multiple(np.ascontiguousarray(pix), bundle.stride))
            with torch.inference_mode(), bundle.model.autocast():  # the codec's own precision (codec.analyze)
                z = bundle.model.encode_latent(x.contiguous(memory_format=bundle.model.memory_format)).float()
            for k, book in books.items():
                maps[k].append(bundle.model.quantize.quantize(z, book)[0, 0].numpy().astype(np.int16))
    return maps


def random_mask(h: int, w: int, rng: random.Random) -> torch.Tensor:
    """Training mask: cosine-schedule ratio (40 %), the holes of randomly lost interleaved packets
    (40 %), or the context coder's lattice groups: groups from a random point of its order on (20 %)."""
    u = rng.random()
    if u < 0.2:
        from vqcodec.context import groups

        start = rng.randrange(7)  # the 2-level order; its last four states are the 1-level ones
        m = torch.from_numpy(groups(h, w, 2) >= start)
    elif u < 0.6:
        ratio = math.cos(math.pi / 2 * rng.random())
        m = torch.rand(h, w, generator=torch.Generator().manual_seed(rng.randrange(1 << 30))) < ratio
    else:
        packets = rng.choice([4, 8, 16, 32])
        lost = [p for p in range(packets) if rng.random() < rng.uniform(0.05, 0.9)]
        m = torch.from_numpy(np.isin(assignment(h, w, packets), lost))
    if not m.any():
        m[rng.randrange(h), rng.randrange(w)] = True
    return m


def fill_mask(h: int, w: int, rng: random.Random) -> torch.Tensor:
    """Training mask of the recovery-only model (``--task fill``): only the losses a decoder meets.

    Holes of randomly lost interleaved packets (70 %: 16 packets, the encoder's default, half the
    time; a loss rate drawn from 0.05 ... 0.6; a third of them in bursts, `vqc corrupt --burst`'s
    Gilbert-Elliott chain of mean length 2 ... 8 packets, which the interleave turns into runs of
    adjacent holes along a row; never every packet, a file the decoder refuses), else i.i.d. holes
    at a ratio up to 0.6. No context-coder groups and no empty maps: the shared model spends
    capacity on those, which recovery never sees."""
    if rng.random() < 0.3:
        g = torch.Generator().manual_seed(rng.randrange(1 << 30))
        m = torch.rand(h, w, generator=g) < rng.uniform(0.05, 0.6)
    else:
        packets = 16 if rng.random() < 0.5 else rng.choice([4, 8, 32, 64])
        rate = rng.uniform(0.05, 0.6)
        if rng.random() < 1 / 3:
            from vqcodec.channel import loss_pattern

            burst = rng.choice([2, 3, 4, 6, 8])
            lost = np.flatnonzero(loss_pattern(packets, rate, burst, np.random.default_rng(rng.randrange(1 << 30))))
        else:
            lost = [p for p in range(packets) if rng.random() < rate]
        if len(lost) == packets:  # every packet lost: the decoder refuses such a file, nothing to learn
            kept = rng.randrange(packets)
            lost = [p for p in lost if p != kept]
        m = torch.from_numpy(np.isin(assignment(h, w, packets), lost))
    if not m.any():
        m[rng.randrange(h), rng.randrange(w)] = True
    return m


def causal_mask(h: int, w: int, rng: random.Random) -> torch.Tensor:
    """Inputs marked lost for the autoregressive model: i.i.d. at a ratio up to 0.9, or the holes
    of randomly lost interleaved packets (the paper's masking with a mask ratio)."""
    if rng.random() < 0.5:
        g = torch.Generator().manual_seed(rng.randrange(1 << 30))
        return torch.rand(h, w, generator=g) < rng.uniform(0.0, 0.9)
    packets = rng.choice([4, 8, 16, 32])
    lost = [p for p in range(packets) if rng.random() < rng.uniform(0.0, 0.9)]
    return torch.from_numpy(np.isin(assignment(h, w, packets), lost))


def batch(maps: list[np.ndarray], size: int, n: int, rng: random.Random, causal: bool = False, task: str = "all"):
    """``n`` random ``size`` x ``size`` crops (maps smaller than that are skipped) and their masks
    (``task`` "fill": the recovery-only masks of ``fill_mask``)."""
    xs, ms = [], []
    fits = [a for a in maps if a.shape[0] >= size and a.shape[1] >= size]
    if not fits:
        raise ValueError(f"no index map is at least {size}x{size}: lower --crop")
    while len(xs) < n:
        a = fits[rng.randrange(len(fits))]
        y, x = rng.randint(0, a.shape[0] - size), rng.randint(0, a.shape[1] - size)
        xs.append(torch.from_numpy(a[y : y + size, x : x + size].astype(np.int64)))
        if causal:
            ms.append(causal_mask(size, size, rng))
        else:
            ms.append(fill_mask(size, size, rng) if task == "fill" else random_mask(size, size, rng))
    return torch.stack(xs), torch.stack(ms)


def _load_maps(bundle, files: list[Path], cache: Path) -> dict[int, list[np.ndarray]]:
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        maps: dict[int, list[np.ndarray]] = {}
        for key in z.files:
            k, _ = key.split("_")
            maps.setdefault(int(k), []).append(z[key])
        return maps
    maps = index_maps(bundle, files)
    np.savez_compressed(cache, **{f"{k}_{i}": a for k, v in maps.items() for i, a in enumerate(v)})
    return maps


@torch.inference_mode()
def evaluate(model, maps: dict[int, list[np.ndarray]], size: int, seed: int = 1, task: str = "all",
             device: torch.device | str = "cpu") -> dict[int, float]:
    """Held-out cross-entropy (bits per predicted index) per K on fixed crops and masks of ``task``."""
    model.eval()
    out = {}
    for k, v in maps.items():
        try:
            x, m = batch(v, size, 32, random.Random(seed), model.config.causal, task)
        except ValueError:  # no held-out map this large
            continue
        x, m = x.to(device), m.to(device)
        logits = model(x, m, k)
        sel = torch.ones_like(m) if model.config.causal else m
        out[k] = float(F.cross_entropy(logits[sel], x[sel])) / math.log(2)
    model.train()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="vqc train-recovery", description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/recovery"))
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared/datasets/train")
    ap.add_argument("--images", type=int, default=0, help="limit the photos used (0: all)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--from-bundle", action="store_true",
                    help="start from the transformer the bundle ships (a new machine continues training it)")  # fmt: skip
    ap.add_argument("--causal", action="store_true", help="the paper's autoregressive model (--recover ar)")
    ap.add_argument("--task", choices=["all", "fill"], default="all",
                    help="masked model: all = recovery and the context coder's groups (the bundle's 'masked'); "
                         "fill = packet-loss holes only (the bundle's 'fill', used by --recover masked)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=10**9)
    ap.add_argument("--minutes", type=float, default=1e9)
    ap.add_argument("--crop", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--anneal", action="store_true",
                    help="cosine-decay the learning rate to 1/20 over this run's --minutes/--steps (a final polish "
                         "of a model that has plateaued at a constant rate)")  # fmt: skip
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--local", type=int, default=2, help="3x3 convolution blocks before attention")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: train on a GPU (bf16 autocast there)")
    ap.add_argument("--workers", type=int, default=0,
                    help="processes drawing crops and masks (an accelerator outruns one Python loop); 0 = in this "
                         "process, the only mode whose --resume replays the same batches")  # fmt: skip
    ap.add_argument("--save-minutes", type=float, default=5.0, help="how often last.ckpt and model.pt are written")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from the weights of a model.pt or last.ckpt (another machine's run; fresh optimizer)")
    ap.add_argument("--bf16", dest="bf16", action="store_true", default=None,
                    help="bf16 autocast (default where the CPU has native bf16; losses in fp32, weights and "
                         "inference stay fp32)")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", action="store_true", help="store the trained transformer in the bundle")
    ap.add_argument("--context-levels", type=int, default=2, choices=[1, 2],
                    help="lattice levels of the context coder's group order (masked model): 2 = 7 groups")  # fmt: skip
    args = ap.parse_args(argv)
    if args.bf16 is None:  # bf16 only where it is native: emulated bf16 is several times slower than fp32
        args.bf16 = native_bf16() if args.device == "cpu" else True
    if args.causal and args.task != "all":
        ap.error("--task fill trains the bidirectional model: drop --causal")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    from vqcodec.zoo import TRANSFORMERS, load_model

    bundle = load_model(args.bundle)
    args.out.mkdir(parents=True, exist_ok=True)
    files, held_out = split_holdout(list_images(args.data), 8)
    maps = _load_maps(bundle, files[: args.images or None], args.out / "maps.npz")
    val_maps = _load_maps(bundle, held_out, args.out / "val_maps.npz")
    cfg = TransformerConfig(sizes=tuple(bundle.codebook_sizes), dim=args.dim, depth=args.depth, heads=args.heads,
                            causal=args.causal, local=args.local)  # fmt: skip
    model = IndexTransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    step, rng = 0, random.Random(args.seed)
    ckpt = args.out / "last.ckpt"
    if args.resume:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        cfg, model, opt = _restore(state["config"], state["model"], args.lr)
        opt.load_state_dict(state["opt"])
        step = state["step"]
        rng.setstate(state["rng"])
    elif ckpt.exists():
        raise SystemExit(f"{ckpt} exists: pass --resume to continue it")
    elif args.init is not None:
        state = torch.load(args.init, map_location="cpu", weights_only=True)
        cfg, model, opt = _restore(state["config"], state["model"], args.lr)
        step = state["step"]
        print(f"starting from {args.init} (step {step})", flush=True)
    elif args.from_bundle:
        kind = _kind(args)
        if kind == "fill" and not bundle.has_transformer("fill"):
            kind = "masked"  # a first fill model starts from the shared masked one
        shipped = bundle.transformer(kind)
        if shipped is None:
            raise SystemExit(f"{bundle.path} ships no {kind} transformer to start from")
        cfg, model, opt = _restore(shipped.config.to_dict(), shipped.state_dict(), args.lr)
        step = int(bundle.manifest[TRANSFORMERS[kind][0]].get("steps", 0))
        print(f"starting from {bundle.path}'s {kind} transformer (step {step})", flush=True)
    device = torch.device(args.device)
    model.to(device)
    if device.type != "cpu":
        opt.load_state_dict(opt.state_dict())  # moves any loaded moment buffers to the model's device
    logf = open(args.out / "log.csv", "a", newline="")
    log = csv.writer(logf)
    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    draws = _worker_batches(maps, cfg, args, step) if args.workers else None
    t0 = last_save = time.time()
    fresh_opt = (args.from_bundle or args.init is not None) and not args.resume
    warm0 = step if fresh_opt else 0  # fresh optimizer state: warm up again
    step0 = step
    losses: list[float] = []
    while step < args.steps and (time.time() - t0) / 60 < args.minutes:
        if draws is None:
            k = rng.choice(cfg.sizes)
            x, m = batch(maps[k], args.crop, args.batch, rng, cfg.causal, args.task)
        else:
            k, x, m = next(draws)
            k = int(k)
        x, m = x.to(device, non_blocking=True), m.to(device, non_blocking=True)
        scale = min(1.0, (step - warm0 + 1) / 300)  # warm-up, then constant (or annealed)
        if args.anneal:
            done = max((time.time() - t0) / 60 / args.minutes, (step - step0) / max(1, args.steps - step0))
            scale *= anneal_factor(min(1.0, done))
        for g in opt.param_groups:
            g["lr"] = args.lr * scale
        with amp():  # bf16 on AMX CPUs; the shipped weights are fp32 and the coder runs them in fp32
            logits = model(x, m, k, offset=(rng.randrange(48), rng.randrange(48)))
        sel = torch.ones_like(m) if cfg.causal else m  # causal: every next index; masked: the holes
        loss = F.cross_entropy(logits[sel].float(), x[sel])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 100 == 0:
            val = evaluate(model, val_maps, args.crop, task=args.task, device=device) if step % 500 == 0 else {}
            log.writerow([step, round(float(np.mean(losses)), 4), round(time.time() - t0),
                          *[round(val.get(kk, float("nan")), 4) for kk in cfg.sizes]])  # fmt: skip
            logf.flush()
            extra = " held-out bits/index " + " ".join(f"K{kk}={v:.3f}" for kk, v in val.items()) if val else ""
            print(f"step {step}: train cross-entropy {np.mean(losses):.4f} nats{extra}", flush=True)
            losses = []
        if time.time() - last_save > 60 * args.save_minutes:
            _save(ckpt, model, opt, step, rng, cfg)
            last_save = time.time()
    _save(ckpt, model, opt, step, rng, cfg)
    logf.close()
    val = evaluate(model, val_maps, args.crop, task=args.task, device=device)
    model.cpu()
    print("held-out bits/index " + " ".join(f"K{k}={v:.3f}" for k, v in val.items()), flush=True)
    if args.export:
        from vqcodec.zoo import save_recovery

        save_recovery(bundle.path, model.eval(), {"steps": step, "crop": args.crop, "batch": args.batch,
                                                  "held_out_bits_per_index": {str(k): round(v, 4) for k, v in val.items()},
                                                  "data": "index maps of training photos and their mirror images (never Kodak)",
                                                  **({"context_levels": args.context_levels} if _kind(args) == "masked" else {})},
                      kind=_kind(args))  # fmt: skip
        print(f"{_kind(args)} transformer stored in {bundle.path}")


def anneal_factor(done: float, floor: float = 0.05) -> float:
    """Cosine decay from 1 to `floor` as the run's budget is spent (done in [0, 1]): the last stretch of a
    run at a small rate settles the weights into the minimum a constant rate keeps jumping around."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))


def _restore(config: dict, weights: dict, lr: float):
    """A network of the stored ``config`` holding ``weights``, and a fresh optimizer for it."""
    cfg = TransformerConfig.from_dict(config)
    model = IndexTransformer(cfg)
    model.load_state_dict(weights)
    return cfg, model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def _kind(args) -> str:
    """The bundle transformer a run trains: ar, masked (recovery + context coder) or fill."""
    return "ar" if args.causal else "masked" if args.task == "all" else "fill"


class _Draws(torch.utils.data.IterableDataset):
    """Endless (K, crops, masks) batches drawn in a worker process, each worker from its own seed."""

    def __init__(self, maps: dict[int, list[np.ndarray]], cfg: TransformerConfig, args, start: int) -> None:
        self.maps, self.cfg, self.crop, self.n, self.task = maps, cfg, args.crop, args.batch, args.task
        self.seed = (args.seed, start)  # a resumed run draws new batches, not the first ones again

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(f"{self.seed}/{info.id if info else 0}")
        while True:
            k = rng.choice(self.cfg.sizes)
            x, m = batch(self.maps[k], self.crop, self.n, rng, self.cfg.causal, self.task)
            yield torch.tensor(k), x, m


def _worker_batches(maps, cfg, args, start: int):
    loader = torch.utils.data.DataLoader(_Draws(maps, cfg, args, start), batch_size=None, num_workers=args.workers,
                                         pin_memory=args.device != "cpu", prefetch_factor=8)  # fmt: skip
    return iter(loader)


def _save(path: Path, model, opt, step, rng, cfg) -> None:
    """``last.ckpt`` (resumable: optimizer and sampler state too) and ``model.pt`` beside it (the weights
    alone, a few MB: what travels between machines, e.g. back from a GPU machine, for ``--init``)."""
    tmp = path.with_suffix(".tmp")
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": weights, "opt": opt.state_dict(), "step": step, "rng": rng.getstate(),
                "config": cfg.to_dict()}, tmp)  # fmt: skip
    os.replace(tmp, path)
    torch.save({"model": weights, "step": step, "config": cfg.to_dict()}, tmp)
    os.replace(tmp, path.with_name("model.pt"))


if __name__ == "__main__":
    main()
