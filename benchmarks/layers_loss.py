"""Layered files under packet loss: what a receiver draws when packets are lost, with and without
per-layer parity, against the base layer alone and against a single-layer K=1024 file.

    python benchmarks/layers_loss.py --holdout --images 4   # a look first
    python benchmarks/layers_loss.py                         # Kodak

Per photo: a packetized layered file (chain 8,64,1024, 16 packets per layer) with each ``--parity``
setting, and a single-layer packetized K=1024 file (16 packets, no parity and ``--single-parity``).
Two channels, each at every ``--losses`` rate and ``--seeds`` loss patterns (``vqc corrupt``'s
independent loss): ``all`` drops any packet; ``refinement`` drops only packets of the layers above
the base (the base layer and its parity arrive: the case unequal protection is for). For each:
bytes sent, bytes received, LPIPS-Alex and DISTS of the decoded picture; and the base layer alone
(the K=8 prefix of the unpacketized layered file) as the floor a receiver must never fall below.
Writes ``<out>/layers_loss_<set>_images.csv`` and ``<out>/layers_loss_<set>.csv``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from effort import KODAK, cpu_name, kodak_images, write  # noqa: E402
from evaluate import holdout_images  # noqa: E402

from vqcodec import channel, codec, layerfile, layerpackets, metrics, options, progressive  # noqa: E402
from vqcodec.container import CodingMode  # noqa: E402
from vqcodec.zoo import load_model  # noqa: E402

CHAIN = (8, 64, 1024)
PACKETS = 16


def drop_refinements(data: bytes, loss: float, seed: int) -> bytes:
    """Drop each packet of the layers above the base with probability ``loss`` (seeded)."""
    scan = layerpackets.scan(data)
    first = scan.packets + scan.layers[0].parity  # the base layer's data and parity packets
    spans = layerpackets.spans(data)
    rng = np.random.default_rng(seed)
    keep = [(a, b) for a, b in spans if data[a] < first or rng.random() >= loss]
    return data[: spans[0][0]] + b"".join(data[a:b] for a, b in keep)


def _scores(reference, pixels) -> dict:
    return {"lpips": metrics.lpips_alex(reference, pixels), "dists": metrics.dists(reference, pixels)}


def run(photos, parities: list[tuple[int, ...]], single_parity: int, losses: list[float], seeds: int,
        model: str | None, channels: tuple[str, ...] = ("all", "refinement")) -> list[dict]:  # fmt: skip
    bundle = load_model(model)
    rows = []
    for ph in photos:
        plain, _ = progressive.compress(ph.pixels, bundle, CHAIN)
        base = plain[: layerfile.scan_layers(plain).ends[0]]
        floor = _scores(ph.pixels, codec.decode(base, bundle))
        rows.append({"image": ph.name, "file": "base layer alone", "channel": "-", "loss": 0.0, "seed": -1,
                     "sent": len(base), "received": len(base), **floor})  # fmt: skip
        files = {f"layers {','.join(map(str, p))}": progressive.compress(ph.pixels, bundle, CHAIN, packets=PACKETS,
                                                                          parity=p)[0] for p in parities}  # fmt: skip
        if "all" in channels:  # the single-layer file meets the same channel
            enc = codec.analyze(ph.pixels, bundle, CHAIN[-1])
            for r in sorted({0, single_parity}):
                files[f"single K=1024 parity {r}"] = codec.pack(enc, bundle, CodingMode.STATIC, PACKETS, r)
        for name, data in files.items():
            for ch in channels if name.startswith("layers") else ("all",):
                for loss in losses:
                    for seed in range(seeds):
                        if ch == "all":
                            lossy = channel.corrupt(data, loss=loss, seed=seed)[0]
                        else:
                            lossy = drop_refinements(data, loss, seed)
                        try:
                            scores = _scores(ph.pixels, codec.decode(lossy, bundle))
                        except Exception as e:  # noqa: BLE001 - every base packet lost: nothing drawn
                            scores = {"lpips": float("nan"), "dists": float("nan")}
                            print(f"{ph.name} {name} {ch} {loss} {seed}: {e}")
                        rows.append({"image": ph.name, "file": name, "channel": ch, "loss": loss, "seed": seed,
                                     "sent": len(data), "received": len(lossy), **scores})  # fmt: skip
        worst = max(r["lpips"] for r in rows if r["image"] == ph.name and r["channel"] != "-")
        print(f"{ph.name}: base alone LPIPS {floor['lpips']:.4f}; worst under loss {worst:.4f}", flush=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    floor = {r["image"]: r for r in rows if r["file"] == "base layer alone"}
    out = []
    keys = sorted({(r["file"], r["channel"], r["loss"]) for r in rows if r["file"] != "base layer alone"})
    for f, ch, loss in keys:
        sel = [r for r in rows if (r["file"], r["channel"], r["loss"]) == (f, ch, loss)]
        ok = [r for r in sel if not np.isnan(r["lpips"])]
        out.append({"file": f, "channel": ch, "loss": loss, "cases": len(sel), "undecodable": len(sel) - len(ok),
                    "sent": statistics.fmean(r["sent"] for r in sel),
                    "received": statistics.fmean(r["received"] for r in sel),
                    "lpips": statistics.fmean(r["lpips"] for r in ok) if ok else float("nan"),
                    "dists": statistics.fmean(r["dists"] for r in ok) if ok else float("nan"),
                    "worse_than_base": sum(r["lpips"] > floor[r["image"]]["lpips"] for r in ok)})  # fmt: skip
    base = list(floor.values())
    out.insert(0, {"file": "base layer alone", "channel": "-", "loss": 0.0, "cases": len(base), "undecodable": 0,
                   "sent": statistics.fmean(r["sent"] for r in base), "received": statistics.fmean(r["sent"] for r in base),
                   "lpips": statistics.fmean(r["lpips"] for r in base), "dists": statistics.fmean(r["dists"] for r in base),
                   "worse_than_base": 0})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--holdout", action="store_true", help="the 8 held-out training photos instead of Kodak")
    ap.add_argument("--data", type=Path, default=KODAK)
    ap.add_argument("--parity", nargs="+", default=["0,0,0", "4,2,0"], help="per-layer parity settings to compare")
    ap.add_argument("--single-parity", type=int, default=6, help="parity packets of the single-layer file compared")
    ap.add_argument("--losses", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    ap.add_argument("--seeds", type=int, default=3, help="loss patterns per rate")
    ap.add_argument("--channels", nargs="+", default=["all", "refinement"], choices=["all", "refinement"],
                    help="which packets the channel may drop (all: recovery runs, slow; refinement: fast)")
    ap.add_argument("--tag", default="", help="a suffix of the output files (several runs on one photo set)")
    ap.add_argument("--images", type=int, default=0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench_out/layers"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parities = [options.layer_parity(p, len(CHAIN)) for p in args.parity]
    photos = holdout_images() if args.holdout else kodak_images(args.data)
    photos = photos[: args.images] if args.images else photos
    name = "holdout" if args.holdout else args.data.name
    print(f"{len(photos)} photos ({name}), {cpu_name()}, {args.threads} threads")
    rows = run(photos, parities, args.single_parity, args.losses, args.seeds, args.model, tuple(args.channels))
    name += args.tag
    write(args.out / f"layers_loss_{name}_images.csv", rows)
    summary = summarize(rows)
    write(args.out / f"layers_loss_{name}.csv", summary)
    print("\n| file | packets lost from | loss | bytes sent | bytes received | LPIPS-Alex | DISTS | worse than base alone |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['file']} | {s['channel']} | {s['loss']:.0%} | {s['sent']:.0f} | {s['received']:.0f} | "
              f"{s['lpips']:.4f} | {s['dists']:.4f} | {s['worse_than_base']}/{s['cases'] - s['undecodable']} |")  # fmt: skip


if __name__ == "__main__":
    main()
