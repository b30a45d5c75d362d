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
from vqcodec.nets.transformer import IndexTransformer, TransformerConfig
from vqcodec.train.data import list_images, load_rgb, split_holdout


def index_maps(bundle, files: list[Path], max_side: int = 768) -> dict[int, list[np.ndarray]]:
    """Index maps (h, w) of every photo at every K of the bundle (m = 1 models)."""
    from vqcodec import codec

    maps: dict[int, list[np.ndarray]] = {k: [] for k in bundle.codebook_sizes}
    for p in files:
        img = load_rgb(p, max_side)
        for k in bundle.codebook_sizes:
            maps[k].append(codec.analyze(img, bundle, k).indices[0].astype(np.int16))
    return maps


def random_mask(h: int, w: int, rng: random.Random) -> torch.Tensor:
    """Training mask: cosine-schedule ratio (40 %), the holes of randomly lost interleaved packets
    (40 %), or the context coder's lattice groups: groups from a random point of its order on (20 %)."""
    u = rng.random()
    if u < 0.2:
        from vqcodec.context import ORDER, groups

        start = rng.randrange(len(ORDER))
        m = torch.from_numpy(np.isin(groups(h, w), ORDER[start:]))
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


def batch(maps: dict[int, list[np.ndarray]], k: int, size: int, n: int, rng: random.Random):
    xs, ms = [], []
    for _ in range(n):
        a = maps[k][rng.randrange(len(maps[k]))]
        h, w = min(size, a.shape[0]), min(size, a.shape[1])
        y, x = rng.randint(0, a.shape[0] - h), rng.randint(0, a.shape[1] - w)
        crop = np.zeros((size, size), dtype=np.int64)
        crop[:h, :w] = a[y : y + h, x : x + w]
        xs.append(torch.from_numpy(crop))
        ms.append(random_mask(size, size, rng))
    return torch.stack(xs), torch.stack(ms)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="vqc train-recovery", description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/recovery"))
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared/datasets/train")
    ap.add_argument("--images", type=int, default=0, help="limit the photos used (0: all)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--steps", type=int, default=10**9)
    ap.add_argument("--minutes", type=float, default=1e9)
    ap.add_argument("--crop", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", action="store_true", help="store the trained transformer in the bundle")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from vqcodec.zoo import load_model

    bundle = load_model(args.bundle)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "maps.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        maps: dict[int, list[np.ndarray]] = {}
        for key in z.files:
            k, _ = key.split("_")
            maps.setdefault(int(k), []).append(z[key])
    else:
        files, _ = split_holdout(list_images(args.data), 8)
        files = files[: args.images or None]
        maps = index_maps(bundle, files)
        np.savez_compressed(cache, **{f"{k}_{i}": a for k, v in maps.items() for i, a in enumerate(v)})
    cfg = TransformerConfig(sizes=tuple(bundle.codebook_sizes), dim=args.dim, depth=args.depth)
    model = IndexTransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    step, rng = 0, random.Random(args.seed)
    ckpt = args.out / "last.ckpt"
    if args.resume:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        rng.setstate(state["rng"])
    elif ckpt.exists():
        raise SystemExit(f"{ckpt} exists: pass --resume to continue it")
    logf = open(args.out / "log.csv", "a", newline="")
    log = csv.writer(logf)
    t0 = last_save = time.time()
    losses: list[float] = []
    while step < args.steps and (time.time() - t0) / 60 < args.minutes:
        k = rng.choice(cfg.sizes)
        x, m = batch(maps, k, args.crop, args.batch, rng)
        logits = model(x, m, k)
        loss = F.cross_entropy(logits[m], x[m])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 50 == 0:
            log.writerow([step, round(float(np.mean(losses)), 4), round(time.time() - t0)])
            logf.flush()
            print(f"step {step}: masked cross-entropy {np.mean(losses):.4f} nats", flush=True)
            losses = []
        if time.time() - last_save > 300:
            _save(ckpt, model, opt, step, rng, cfg)
            last_save = time.time()
    _save(ckpt, model, opt, step, rng, cfg)
    logf.close()
    if args.export:
        from vqcodec.zoo import save_recovery

        rec = list(csv.reader(open(args.out / "log.csv")))
        last = float(rec[-1][1]) if rec else float("nan")
        save_recovery(bundle.path, model.eval(), {"steps": step, "crop": args.crop, "batch": args.batch,
                                                  "masked_cross_entropy_nats": last,
                                                  "data": "index maps of training photos (never Kodak)"})  # fmt: skip
        print(f"recovery transformer stored in {bundle.path}")


def _save(path: Path, model, opt, step, rng, cfg) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "rng": rng.getstate(),
                "config": cfg.to_dict()}, tmp)  # fmt: skip
    os.replace(tmp, path)
