"""Throughput of ``vqc bulk encode`` (Dask LocalCluster, 1 and 2 workers) against ``vqc encode
--jobs 1`` and ``--jobs 2`` on the same photos, and what the engine costs per image.

Every runner starts from nothing, as a user's command would: ``vqc encode`` runs in a fresh
process (interpreter, torch and model load included); the bulk runs call ``vqcodec.bulk.encode``,
which starts its own LocalCluster (worker processes, one thread each, each loading the model once)
and stops it. So "images/s" is whole-job throughput, start-up included; with few images the start-up
dominates. Two figures isolate the engine:

- *no-op job*: the same chunks (the photos' bytes inside the tasks) through the same driver and
  cluster, with a task that does nothing: the engine's own cost per image (submission, transfer,
  result handling), cluster start excluded;
- *outside the codec*: worker time that was not spent encoding (workers x run time - the codec's
  own time, per image): model loads, scheduling, transfers and idle workers at the end.

The bulk outputs are compared with ``vqc encode``'s byte for byte (column ``identical``).

    python benchmarks/bulk.py                     # 200 photos of ../shared/datasets/train, K=64
    python benchmarks/bulk.py --limit 4           # a smoke run
    python benchmarks/bulk.py --workers 1 2 4 --jobs 1 2 --csv bulk.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "datasets" / "train"
sys.path.insert(0, str(REPO))

from vqcodec import bulk  # noqa: E402
from vqcodec.imageio import IMAGE_SUFFIXES  # noqa: E402

FIELDS = ["runner", "parallel", "images", "wall_s", "images_per_s", "speedup", "identical"]


def photos(root: Path, limit: int) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        sys.exit(f"no images under {root}")
    return files[:limit]


def flat_copy(files: list[Path], folder: Path) -> Path:
    """The photos as symlinks in one flat folder: what both ``vqc encode DIR`` and ``vqc bulk
    encode DIR`` read (the former takes a folder's own files only)."""
    folder.mkdir(parents=True)
    for i, f in enumerate(files):
        (folder / f"{i:05d}_{f.parent.name}_{f.name}").symlink_to(f.resolve())
    return folder


def run_vqc_encode(src: Path, out: Path, jobs: int, k: int) -> float:
    cmd = [sys.executable, "-m", "vqcodec.cli", "encode", str(src), "-o", str(out), "-k", str(k), "--jobs",
           str(jobs), "-q"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode not in (0, 1):
        sys.exit(f"vqc encode failed: {proc.stderr.strip()}")
    return wall


def noop_chunk(items, topic=None, chunk_id=0):
    """A task that does nothing with its images (the engine's cost alone)."""
    return [bulk.Outcome(key, True, b"", in_bytes=len(data or b""), width=1, height=1) for key, data in items]


class NullSink:
    def write(self, outcomes, meta):
        return [o.key for o in outcomes]


def noop_rate(src: Path, workers: int, chunk: int) -> tuple[float, int]:
    """(seconds per image, images) of a no-op job on a fresh LocalCluster, its start excluded."""
    source = bulk.open_source(str(src), IMAGE_SUFFIXES, "image")
    cluster = bulk.Cluster(workers=workers)
    try:
        cluster.get().wait_for_workers(workers)
        failed: list = []
        report = bulk.Report("noop")
        size = bulk.chunk_size(len(source.keys), chunk, cluster.threads())  # as a real job would cut it
        chunks = bulk._chunks(source.read(source.keys), size, bulk.CHUNK_BYTES, failed)
        bulk._drive(cluster, chunks, noop_chunk, (), len(source.keys), NullSink(), {}, report, failed, None, None)
    finally:
        cluster.close()
    return report.run_seconds / max(report.done, 1), report.done


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=TRAIN, help="folder of photos (searched recursively)")
    ap.add_argument("--limit", type=int, default=200, help="first N photos (sorted paths)")
    ap.add_argument("--codebook", "-k", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="LocalCluster sizes to run")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="vqc encode --jobs values to run")
    ap.add_argument("--chunk", type=int, default=bulk.DEFAULT_CHUNK)
    ap.add_argument("--csv", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)

    files = photos(args.images, args.limit)
    rows, extra = [], []
    with tempfile.TemporaryDirectory() as tmp:
        src = flat_copy(files, Path(tmp) / "src")
        refs: dict[int, Path] = {}
        for j in args.jobs:
            out = Path(tmp) / f"encode-j{j}"
            wall = run_vqc_encode(src, out, j, args.codebook)
            refs[j] = out
            rows.append({"runner": "vqc encode --jobs", "parallel": j, "images": len(files), "wall_s": wall})
        ref = refs[args.jobs[0]] if refs else None
        for w in args.workers:
            out = Path(tmp) / f"bulk-w{w}"
            t = time.perf_counter()
            report = bulk.encode(str(src), str(out), bulk.EncodeSettings(codebook=args.codebook), workers=w,
                                 chunk=args.chunk)  # fmt: skip
            wall = time.perf_counter() - t
            same = "-"
            if ref is not None:
                names = sorted(p.name for p in ref.glob("*.vqc"))
                same = f"{sum((out / n).read_bytes() == (ref / n).read_bytes() for n in names)}/{len(names)}"
            rows.append({"runner": "vqc bulk encode --workers", "parallel": w, "images": report.done, "wall_s": wall,
                         "identical": same})  # fmt: skip
            outside = (report.run_seconds * report.workers - report.work_seconds) / max(report.done, 1)
            per_img, n = noop_rate(src, w, args.chunk)
            extra.append(f"- {w} worker(s): codec {report.work_seconds / max(report.done, 1) * 1000:.0f} ms/image; "
                         f"worker time outside the codec {outside * 1000:.0f} ms/image; no-op job {per_img * 1000:.1f} "
                         f"ms/image ({n} images, --chunk {args.chunk}); cluster start, listing and the first model "
                         f"load {wall - report.run_seconds:.1f} s before the first chunk was sent")  # fmt: skip
    base = next((r["wall_s"] / r["images"] for r in rows if r["runner"] == "vqc encode --jobs" and r["parallel"] == 1),
                None)  # fmt: skip
    for r in rows:
        r["images_per_s"] = r["images"] / r["wall_s"]
        r["speedup"] = f"{base * r['images_per_s']:.2f}x" if base else "-"
        r.setdefault("identical", "-")
    print(f"{len(files)} photos of {args.images}, K={args.codebook}, {os.cpu_count()} CPUs, wall time from start "
          "to finish (start-up included)\n")  # fmt: skip
    print("| runner | jobs / workers | images | wall s | images/s | vs --jobs 1 | identical to vqc encode |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runner']} | {r['parallel']} | {r['images']} | {r['wall_s']:.1f} | {r['images_per_s']:.3f} | "
              f"{r['speedup']} | {r['identical']} |")  # fmt: skip
    print("\nEngine overhead:\n" + "\n".join(extra))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            w.writerows({k: r[k] for k in FIELDS} for r in rows)


if __name__ == "__main__":
    main()
