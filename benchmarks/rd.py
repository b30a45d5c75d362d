"""Rate-distortion benchmark: every codec, every setting, every image; CSV, plots, BD-rates, crops.

    python benchmarks/rd.py                                   # Kodak, all codecs, 2 jobs
    python benchmarks/rd.py --codecs vqcodec BPG JPEG --limit 4 --jobs 2
    VQC_VVC_PRESET=fast python benchmarks/rd.py               # quicker VVC

Results are cached per (codec, setting, image) in ``<out>/cache.jsonl`` (default ``docs/rd/``,
committed with the plots and tables, so a stopped run resumes where it was, on any machine). A
worker runs one codec at all its settings on one image, so the original's LPIPS/DISTS features
are computed once (``metrics.Reference``). bpp = whole file bytes x 8 / pixels. Metrics: docs/metrics.md. Writes
``rd.csv`` (every measurement), ``rd_summary.csv`` (means per codec and setting), ``rd_<metric>.png``
(bpp vs metric, log-x), ``bdrate.md`` (BD-rate of every codec against BPG and VVC for each metric,
with the overlapping quality range) and ``crops.png`` (the same crop at ~0.02 bpp from each codec).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bdrate import bd_rate  # noqa: E402
from rd_codecs import all_codecs, usable  # noqa: E402

METRICS = {"psnr": False, "ms_ssim": False, "lpips": True, "dists": True}  # name -> lower is better
KODAK = HERE.parent.parent / "shared" / "datasets" / "kodak"
PUBLISHED = HERE / "published_kodak.csv"
"""Published Kodak points of the strongest extreme-rate codecs (not our runs), drawn dashed on the plots."""


def published(path: Path = PUBLISHED) -> dict[str, list[dict]]:
    """method -> its published points (bpp and whichever of lpips/dists it reports), sorted by bpp."""
    out: dict[str, list[dict]] = {}
    if not path.exists():
        return out
    for r in csv.DictReader(open(path)):
        out.setdefault(r["method"], []).append({k: float(v) for k, v in r.items() if k in ("bpp", *METRICS) and v})
    return {k: sorted(v, key=lambda r: r["bpp"]) for k, v in out.items()}


def _work(args):
    """Run one codec at several settings on one image; the image's metric features are computed once."""
    codec_name, settings, path, model = args
    import torch

    torch.set_num_threads(1)
    from vqcodec import metrics
    from vqcodec.imageio import load_image

    codec = next(c for c in all_codecs(model) if c.name == codec_name)
    img = load_image(path).pixels
    ref = metrics.Reference(img)
    rows = []
    for setting in settings:
        with tempfile.TemporaryDirectory() as tmp:
            nbytes, rec, enc_s, dec_s = codec.run(img, setting, Path(tmp))
        row = {"codec": codec_name, "setting": setting, "image": Path(path).name, "sig": codec.signature(), "bytes": nbytes,
               "bpp": nbytes * 8 / (img.shape[0] * img.shape[1]), "enc_s": enc_s, "dec_s": dec_s}  # fmt: skip
        row.update(ref.score(rec, tuple(METRICS)))
        rows.append(row)
    return rows


def load_cache(path: Path) -> dict[tuple, dict]:
    cache = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a stop
            cache[key(r)] = r
    return cache


def key(r: dict) -> tuple:
    """A cached result's identity: codec, setting, image and the codec's signature (its command)."""
    return r["codec"], str(r["setting"]), r["image"], r.get("sig", "")


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["codec"], str(r["setting"])), []).append(r)
    out = []
    for (c, s), rs in groups.items():
        out.append({"codec": c, "setting": s, "n": len(rs), "bpp": np.mean([r["bpp"] for r in rs]),
                    **{m: float(np.mean([r[m] for r in rs])) for m in METRICS},
                    "enc_s": np.mean([r["enc_s"] for r in rs]), "dec_s": np.mean([r["dec_s"] for r in rs])})  # fmt: skip
    return sorted(out, key=lambda r: (r["codec"], r["bpp"]))


def curves(summary: list[dict]) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for r in summary:
        by.setdefault(r["codec"], []).append(r)
    return by


def bd_table(summary: list[dict], anchors=("BPG", "VVC")) -> str:
    by = curves(summary)
    lines = []
    for anchor in anchors:
        if anchor not in by:
            continue
        a = by[anchor]
        lines += [f"\n### BD-rate against {anchor} (negative = fewer bits at equal quality)\n",
                  "| codec | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]  # fmt: skip
        for name, c in by.items():
            if name == anchor:
                continue
            cells = []
            for m, lower in METRICS.items():
                r = bd_rate([x["bpp"] for x in a], [x[m] for x in a], [x["bpp"] for x in c], [x[m] for x in c], lower)
                cells.append("n/a (no overlap)" if np.isnan(r.value) else f"{r.value:+.1f}% ({r.lo:.3g}..{r.hi:.3g})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plots(summary: list[dict], out: Path, reference: dict[str, list[dict]] | None = None) -> None:
    """One bpp-vs-metric plot per metric; ``reference`` curves (published numbers) dashed, grey tones."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots", file=sys.stderr)
        return
    for m in METRICS:
        fig, ax = plt.subplots(figsize=(7, 5))
        for name, c in curves(summary).items():
            ax.plot([x["bpp"] for x in c], [x[m] for x in c], marker="o", label=name)
        for name, pts in (reference or {}).items():
            pts = [p for p in pts if m in p]
            if pts:
                ax.plot([p["bpp"] for p in pts], [p[m] for p in pts], linestyle="--", marker="x", alpha=0.8,
                        label=f"{name} (published)")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("bpp (whole file)")
        ax.set_ylabel(m + (" (lower is better)" if METRICS[m] else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right", fontsize=7)  # our curves sit top left, the published ones bottom left
        fig.tight_layout()
        fig.savefig(out / f"rd_{m}.png", dpi=110)
        plt.close(fig)


def crops(rows: list[dict], images: list[Path], out: Path, model: list[str] | None, target: float = 0.02) -> None:
    """The same 256x256 crop from each codec at the setting whose bpp is nearest ``target``."""
    from vqcodec.imageio import load_image

    name = "kodim23.png" if any(p.name == "kodim23.png" for p in images) else images[0].name
    path = next(p for p in images if p.name == name)
    img = load_image(path).pixels
    n = min(256, *img.shape[:2])
    y0, x0 = (img.shape[0] - n) // 2, (img.shape[1] - n) // 2
    tiles = [("original", img[y0 : y0 + n, x0 : x0 + n])]
    for codec in all_codecs(model):
        cand = [r for r in rows if r["codec"] == codec.name and r["image"] == name]
        if not cand:
            continue
        best = min(cand, key=lambda r: abs(np.log(r["bpp"] / target)))
        with tempfile.TemporaryDirectory() as tmp:
            _, rec, _, _ = codec.run(img, type(codec.settings[0])(best["setting"]) if codec.settings else best["setting"],
                                     Path(tmp))  # fmt: skip
        tiles.append((f"{codec.name} {best['bpp']:.3f} bpp", rec[y0 : y0 + n, x0 : x0 + n]))
    canvas = Image.new("RGB", ((n + 4) * len(tiles), n + 30), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, t) in enumerate(tiles):
        canvas.paste(Image.fromarray(np.ascontiguousarray(t)), ((n + 4) * i + 2, 28))
        draw.text(((n + 4) * i + 4, 2), label.replace(" (", "\n("), fill="black", font_size=10)
    canvas.save(out / "crops.png")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=KODAK)
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "rd", help="results and the cache (committed)")
    ap.add_argument("--codecs", nargs="*", default=None, help="names to run (default: all available)")
    ap.add_argument("--model", "--models", dest="models", nargs="*", default=None,
                    help="vqcodec bundles to run (default: every installed bundle)")  # fmt: skip
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--vqc-ks", type=int, nargs="*", default=None,
                    help="only these codebook sizes of each vqcodec bundle (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--anchors", nargs="*", default=["BPG", "VVC"], help="codecs the BD-rates are taken against")
    args = ap.parse_args(argv)
    from rich.progress import Progress

    images = sorted(args.data.glob("*.png"))[: args.limit or None]
    args.out.mkdir(parents=True, exist_ok=True)
    from vqcodec import zoo

    args.models = args.models or zoo.available() or [None]
    codecs = usable(args.models, args.codecs)
    for c in codecs:
        if args.vqc_ks and c.name.startswith("vqcodec"):
            c.settings = [k for k in c.settings if k in args.vqc_ks]
    for c in codecs:
        print(f"{c.name}: {c.version()}; settings {c.settings}")
    cache_path = args.out / "cache.jsonl"
    cache = load_cache(cache_path)
    todo = [(c.name, [s for s in c.settings if (c.name, str(s), p.name, c.signature()) not in cache], str(p), args.models)
            for c in codecs for p in images]  # fmt: skip
    todo = [t for t in todo if t[1]]
    t0 = time.time()
    with Progress() as prog, ProcessPoolExecutor(args.jobs) as pool, open(cache_path, "a") as cf:
        task = prog.add_task("encode/decode/score", total=sum(len(t[1]) for t in todo))
        futures = {pool.submit(_work, t): t for t in todo}
        for f in as_completed(futures):
            try:
                done = f.result()
            except Exception as e:  # noqa: BLE001  one failing tool run must not stop the benchmark
                print(f"warning: {futures[f][0]} on {Path(futures[f][2]).name}: {e}", file=sys.stderr)
                prog.advance(task, len(futures[f][1]))
                continue
            for r in done:
                cache[key(r)] = r
                cf.write(json.dumps(r) + "\n")
            cf.flush()
            prog.advance(task, len(done))
    wanted = {(c.name, c.signature(), str(s)) for c in codecs for s in c.settings}  # this run's codecs and settings
    rows = [r for r in cache.values()
            if (r["codec"], r.get("sig", ""), str(r["setting"])) in wanted and r["image"] in {p.name for p in images}]
    with open(args.out / "rd.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        w.writeheader()
        w.writerows(rows)
    summary = summarize(rows)
    with open(args.out / "rd_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0].keys()))
        w.writeheader()
        w.writerows(summary)
    md = [f"# Rate-distortion on {args.data.name} ({len(images)} images)\n",
          "| codec | setting | bpp | PSNR | MS-SSIM | LPIPS | DISTS | enc s | dec s |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in summary:
        md.append(f"| {r['codec']} | {r['setting']} | {r['bpp']:.4f} | {r['psnr']:.2f} | {r['ms_ssim']:.4f} | "
                  f"{r['lpips']:.4f} | {r['dists']:.4f} | {r['enc_s']:.2f} | {r['dec_s']:.2f} |")  # fmt: skip
    md.append(bd_table(summary, tuple(args.anchors)))
    md.append("\nVersions: " + "; ".join(f"{c.name}: {c.version()}" for c in codecs) + "\n")
    (args.out / "bdrate.md").write_text("\n".join(md))
    plots(summary, args.out, published())
    crops(rows, images, args.out, args.models)
    print("\n".join(md))
    print(f"done in {time.time() - t0:.0f}s; outputs in {args.out}")


if __name__ == "__main__":
    main()
