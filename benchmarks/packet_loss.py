"""Packet-loss benchmark: decode quality of damaged packetized files for every recovery method.

For each Kodak image, K, parity count, loss model, loss rate and seed: encode with ``--packets``
(and ``--parity R`` for each of ``--parities``), drop packets with ``vqc corrupt``'s loss models
(``--bursts 1``: independent; B > 1: Gilbert-Elliott bursts of mean length B; parity packets are
dropped like any other), decode with each method, score against the original
(PSNR, MS-SSIM, LPIPS-Alex, DISTS; docs/metrics.md); a file whose index map comes back whole
(rebuilt from parity) is checked to be the loss-free map and given the loss-free picture's scores
instead of being decoded again. ``bytes`` is the whole file's size, parity
included, so settings can be compared at equal bytes. A file whose every packet was lost is
refused by the decoder; such runs are counted (``refused``) and left out of the means. Writes ``packet_loss.csv`` (every run),
``packet_loss_summary.csv`` (means), ``packet_loss_lpips.png`` and ``packet_loss_dists.png`` (LPIPS-Alex and
DISTS against loss rate) and prints
a markdown table.

    python benchmarks/packet_loss.py                                  # K 16/64/256, 5 rates, 3 seeds
    python benchmarks/packet_loss.py --ks 64 --losses 0 0.3 --seeds 1 --limit 4
    python benchmarks/packet_loss.py --ks 64 --parities 0 2 4 --bursts 1 4 --losses 0 0.1 0.3 0.6
    python benchmarks/packet_loss.py --ks 8 64 256 1024 --parities 0 2 4 --parity-ks 8 64 1024 ...

Besides the full table it prints, per loss model, the best method's LPIPS for every (K, parity)
setting ordered by the file's bytes: "K=64 + 4 parity" against "K=256, no parity" at a glance.

Every measurement is appended to ``cache.jsonl`` in ``--out`` as it is made, keyed by image, K,
loss, seed and method: an interrupted run resumes, and runs over disjoint ``--ks`` can go in
parallel and be summarised by one final run with all of them. Loss 0 is decoded once (every
method gives the same picture) and reported for each method.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vqcodec import channel, codec, metrics, recovery  # noqa: E402
from vqcodec.errors import VqcFormatError  # noqa: E402
from vqcodec.imageio import load_image  # noqa: E402
from vqcodec.zoo import load_model  # noqa: E402

KODAK = REPO.parent / "shared" / "datasets" / "kodak"
FIELDS = ["psnr", "ms_ssim", "lpips", "dists"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=KODAK)
    ap.add_argument("--ks", type=int, nargs="*", default=[16, 64, 256])
    ap.add_argument("--losses", type=float, nargs="*", default=[0.0, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--packets", type=int, default=16)
    ap.add_argument("--parities", type=int, nargs="*", default=[0], help="parity packets R to try")
    ap.add_argument("--parity-ks", type=int, nargs="*", default=None, metavar="K",
                    help="try parities above 0 only at these K (default: every K); e.g. K=256 without parity "
                         "as the equal-bytes rival of K=64 with parity")
    ap.add_argument("--bursts", type=float, nargs="*", default=[1.0], help="mean burst lengths (1: independent)")
    ap.add_argument("--methods", nargs="*", default=None, help="default: every method the bundle supports")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument(
        "--shard",
        default="0/1",
        help="i/n or i,j/n: the images whose position mod n is i (or i or j): parallel runs, subsets",
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "packet_loss")
    args = ap.parse_args(argv)
    bundle = load_model(args.model)
    methods = args.methods or recovery.available(bundle)
    images = sorted(args.data.glob("*.png"))[: args.limit or None]
    picks, n_shards = args.shard.split("/")
    images = [im for i, im in enumerate(images) if i % int(n_shards) in {int(v) for v in picks.split(",")}]
    args.out.mkdir(parents=True, exist_ok=True)
    cache_path = args.out / "cache.jsonl"
    tag = f"{bundle.name}:{bundle.manifest['model_id']}:p{args.packets}:v4"  # v4: plain (not unit) expected vectors
    files = bundle.manifest["files"]
    ar_hash = files.get("recovery-ar.safetensors", "")[:8]
    masked_hash = files.get("recovery-fill.safetensors", files.get("recovery.safetensors", ""))[:8]
    # what each method's result depends on besides the autoencoder: a retrained transformer only
    # invalidates the methods that use it, and the revision of the method's own algorithm
    # (o: masked predicts on overlapping tiles, without ar's prior)
    depends = {"ar": ar_hash, "masked": f"{masked_hash}o", "masked-index": f"{masked_hash}o"}
    cache: dict[str, dict] = {}
    if cache_path.exists():
        for line in cache_path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted run
            cache[r["key"]] = r
    rows = []
    clean: dict[tuple[str, int], dict] = {}  # (image, K) -> scores of the loss-free picture
    t0 = time.time()
    settings = [(r, b) for r in args.parities for b in args.bursts]

    def settings_at(k: int) -> list[tuple[int, float]]:
        return [(r, b) for r, b in settings if r == 0 or args.parity_ks is None or k in args.parity_ks]

    with open(cache_path, "a") as cf:
        for p in images:
            img = None
            for k in args.ks:
                enc = None
                for parity, burst in settings_at(k):
                    data = None
                    # parity 0 + independent loss keep the keys (and loss patterns) of earlier runs
                    extra = (f"|r{parity}" if parity else "") + (f"|b{burst:g}" if burst != 1 else "")
                    for loss in args.losses:
                        for seed in range(args.seeds if loss > 0 else 1):
                            for method in methods:
                                dep = depends.get(method, "") if loss > 0 else ""  # nothing lost: no network used
                                # nothing lost: burst does not matter, parity only for the bytes
                                suffix = extra if loss else (f"|r{parity}" if parity else "")
                                key = f"{tag}:{dep}|{p.name}|{k}|{loss}|{seed}|{method}" + suffix
                                if key not in cache:
                                    if img is None:
                                        img = load_image(p).pixels
                                        ref = metrics.Reference(img)  # its LPIPS/DISTS features once
                                    if enc is None:
                                        enc = codec.analyze(img, bundle, k)
                                    if data is None:
                                        data = codec.pack(enc, bundle, packets=args.packets, parity=parity)
                                    # nothing lost: every method gives the same picture, measured once
                                    same = (cache.get(f"{tag}:|{p.name}|{k}|{loss}|{seed}|{m2}") for m2 in methods)
                                    done = next((r for r in same if r), None) if loss == 0 else None
                                    if done:
                                        cache[key] = {**done, "key": key, "method": method, "bytes": len(data)}
                                    else:
                                        # a loss pattern of its own per image, rate and seed (one seed for
                                        # all would drop the same packets everywhere, and nest the rates)
                                        ch = zlib.crc32(f"{p.name}|{loss}|{seed}{extra}".encode())
                                        lossy, rep = channel.corrupt(data, loss=loss, burst=burst, seed=ch)
                                        t = time.perf_counter()
                                        try:
                                            got, _, report = codec.unpack_packets(lossy, bundle, method=method)
                                        except VqcFormatError:  # every packet lost: refused, no picture
                                            scores, lost = dict.fromkeys(FIELDS, None), len(rep.dropped)
                                        else:
                                            lost = len(report.lost_packets)
                                            if got.hole_latents is None and np.array_equal(got.indices, enc.indices):
                                                # rebuilt from parity (or nothing lost): the loss-free map, so
                                                # the loss-free picture; checked on the map, not decoded again
                                                if (p.name, k) not in clean:
                                                    clean[(p.name, k)] = ref.score(codec.synthesize(enc, bundle),
                                                                                   tuple(FIELDS))  # fmt: skip
                                                scores = clean[(p.name, k)]
                                            else:
                                                scores = ref.score(codec.synthesize(got, bundle), tuple(FIELDS))
                                        dt = time.perf_counter() - t
                                        cache[key] = {"key": key, "image": p.name, "K": k, "loss": loss, "seed": seed,
                                                      "method": method, "lost_packets": lost,
                                                      "bytes": len(data), "decode_s": dt, **scores}  # fmt: skip
                                    cf.write(json.dumps(cache[key]) + "\n")
                                    cf.flush()
                                row = {k2: v for k2, v in cache[key].items() if k2 != "key"}
                                row.update(parity=parity, burst=burst)
                                rows.append(row)
            print(f"{p.name} done ({time.time() - t0:.0f}s)", flush=True)
    with open(args.out / "packet_loss.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), extrasaction="ignore")  # rows cached with block_de too
        w.writeheader()
        w.writerows(rows)
    summary = []
    for k in args.ks:
        for parity, burst in settings_at(k):
            for loss in args.losses:
                for method in methods:
                    sel = [r for r in rows if r["K"] == k and r["loss"] == loss and r["method"] == method
                           and r["parity"] == parity and r["burst"] == burst]  # fmt: skip
                    ok = [r for r in sel if r["lpips"] is not None]
                    summary.append({"K": k, "parity": parity, "burst": burst, "loss": loss, "method": method,
                                    "n": len(ok), "refused": len(sel) - len(ok),
                                    "bytes": float(np.mean([r["bytes"] for r in sel])),
                                    **{f: float(np.mean([r[f] for r in ok])) if ok else float("nan")
                                       for f in FIELDS + ["decode_s"]}})  # fmt: skip
    with open(args.out / "packet_loss_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    print(
        "\n| K | parity | burst | loss | method | bytes | PSNR | MS-SSIM | LPIPS | DISTS | refused | decode s |"
        "\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for s in summary:
        print(f"| {s['K']} | {s['parity']} | {s['burst']:g} | {s['loss']:.1f} | {s['method']} | {s['bytes']:.0f} | "
              f"{s['psnr']:.2f} | {s['ms_ssim']:.4f} | {s['lpips']:.4f} | {s['dists']:.4f} | {s['refused']} | "
              f"{s['decode_s']:.2f} |")  # fmt: skip
    equal_bytes_table(summary, args.losses)
    for metric in ("lpips", "dists"):
        plot(summary, args.ks, args.bursts, args.parities, methods, args.out / f"packet_loss_{metric}.png", metric)


def equal_bytes_table(summary: list[dict], losses: list[float]) -> None:
    """Every (K, parity) setting of the best method at each loss rate, ordered by bytes, so that
    redundancy and a larger K can be weighed at equal cost (e.g. K=64 + 4 parity against K=256)."""
    lossy = [x for x in losses if x > 0]
    if not lossy:
        return
    for burst in sorted({s["burst"] for s in summary}):
        print(f"\nLPIPS-Alex of the best method, {'independent' if burst == 1 else f'burst (mean {burst:g})'} loss, "
              "by bytes:")  # fmt: skip
        print("| K | parity | bytes | " + " | ".join(f"{x:.0%}" for x in [0.0, *lossy]) + " |")
        print("|---|---|---|" + "---|" * (1 + len(lossy)))
        for k, parity in sorted({(s["K"], s["parity"]) for s in summary if s["burst"] == burst},
                                key=lambda kp: min(s["bytes"] for s in summary if (s["K"], s["parity"]) == kp)):  # fmt: skip
            sel = [s for s in summary if (s["K"], s["parity"], s["burst"]) == (k, parity, burst)]
            best = [min((s["lpips"] for s in sel if s["loss"] == x and s["n"]), default=float("nan"))
                    for x in [0.0, *lossy]]  # fmt: skip
            print(f"| {k} | {parity} | {np.mean([s['bytes'] for s in sel]):.0f} | "
                  + " | ".join(f"{v:.4f}" for v in best) + " |")


def plot(summary: list[dict], ks: list[int], bursts: list[float], parities: list[int], methods: list[str],
         path: Path, metric: str = "lpips") -> None:  # fmt: skip
    """``metric`` (LPIPS-Alex or DISTS) against loss rate: one panel per K (rows) and loss model
    (columns); colour = method, line style = parity count, the legend gives each setting's bytes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    styles = ["-", "--", ":", "-."]
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(len(ks), len(bursts), figsize=(6.5 * len(bursts), 4.2 * len(ks)), squeeze=False)
    for row, k in zip(axes, ks, strict=True):
        for ax, burst in zip(row, bursts, strict=True):
            for j, parity in enumerate(parities):
                for method in methods:
                    pts = [s for s in summary if s["K"] == k and s["method"] == method and s["parity"] == parity
                           and s["burst"] == burst]  # fmt: skip
                    if pts:
                        ax.plot([s["loss"] for s in pts], [s[metric] for s in pts], styles[j % len(styles)],
                                marker="o", ms=3, color=colours[method],
                                label=f"{method}, R={parity} ({pts[0]['bytes']:.0f} B)")  # fmt: skip
            kind = "independent loss" if burst == 1 else f"burst loss, mean length {burst:g}"
            ax.set_title(f"K={k}, {kind}")
            ax.set_xlabel("packet loss rate")
            ax.set_ylabel(f"{'LPIPS-Alex' if metric == 'lpips' else 'DISTS'} (lower is better)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)

if __name__ == "__main__":
    main()
