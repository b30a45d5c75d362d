"""``vqc``: the command line. Thin typer commands over the public API.

Every failure a user can cause ends in one line on stderr and a non-zero exit: 2 for usage
errors (bad flags, unavailable K), 1 for bad data (unreadable image, corrupt .vqc, wrong model).
Outputs are written atomically, so a failed run leaves no partial file. An existing output is
replaced, as cjxl, cwebp and bpgenc do (the atomic rename means it is never half-replaced).
"""

from __future__ import annotations

import glob
import io
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from vqcodec import options
from vqcodec.errors import VqcError, VqcUsageError
from vqcodec.imageio import IMAGE_SUFFIXES, MAX_PIXELS

app = typer.Typer(
    name="vqc",
    help="Extreme-low-bitrate image codec (VQGAN index maps, 0.01-0.1 bpp).\n\n"
    "Examples:\n\n"
    "  vqc encode photo.png -o photo.vqc --codebook 64\n\n"
    "  vqc decode photo.vqc -o photo.out.png\n\n"
    "  vqc encode photos/ -o compressed/ --jobs 2\n\n"
    "  vqc info photo.vqc\n\n"
    "  vqc models\n\n"
    "  vqc bulk encode photos/ archive/ --workers 2",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
models_app = typer.Typer(help="List, show and verify model bundles.", no_args_is_help=False)
app.add_typer(models_app, name="models")
bulk_app = typer.Typer(
    help="Encode or decode many images on a Dask cluster (a local one by default); needs the cluster "
    "extra: pip install 'vqcodec[cluster]'.\n\n"
    "Examples:\n\n"
    "  vqc bulk encode photos/ archive/ --codebook 64 --workers 2\n\n"
    "  vqc bulk encode photos.parquet archive.parquet --address tcp://scheduler:8786\n\n"
    "  vqc bulk decode archive/ png/",
    no_args_is_help=True,
)
app.add_typer(bulk_app, name="bulk")
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
GLOB_CHARS = set("*?[")


@dataclass
class Job:
    src: Path | None  # None: stdin
    dst: Path | None  # None: stdout


@dataclass
class Result:
    job: Job
    ok: bool
    message: str
    in_bytes: int = 0
    out_bytes: int = 0
    pixels: int = 0
    codebook: int = 0  # K of an encoded file (what --max-bytes chose)


def _expand(inputs: list[str], suffixes: set[str] | frozenset[str]) -> tuple[list[Path | None], bool]:
    """Inputs -> files; batch is True for a folder, a glob or several inputs."""
    files: list[Path | None] = []
    batch = len(inputs) > 1
    for s in inputs:
        if s == "-":
            files.append(None)
        elif Path(s).is_dir():
            batch = True
            files += sorted(p for p in Path(s).iterdir() if p.suffix.lower() in suffixes and p.is_file())
        elif GLOB_CHARS & set(s):
            batch = True
            files += sorted(Path(p) for p in glob.glob(s) if Path(p).is_file())
        else:
            files.append(Path(s))
    if batch and None in files:
        raise VqcUsageError("'-' (stdin) cannot be combined with other inputs")
    if batch and not files:
        raise VqcUsageError(f"no input files matched {' '.join(inputs)}")
    return files, batch


def _plan(files: list[Path | None], batch: bool, output: str | None, suffix: str) -> list[Job]:
    if not batch:
        src = files[0]
        if output == "-":
            return [Job(src, None)]
        if output is None:
            if src is None:
                raise VqcUsageError("reading stdin needs -o FILE or -o -")
            return [Job(src, src.with_suffix(suffix))]
        return [Job(src, Path(output))]
    if output == "-":
        raise VqcUsageError("several inputs cannot be written to stdout")
    if output is not None:
        outdir = Path(output)
        if outdir.exists() and not outdir.is_dir():
            raise VqcUsageError(f"{outdir} is a file; several inputs need an output directory")
        outdir.mkdir(parents=True, exist_ok=True)
    jobs = [Job(f, (Path(output) if output else f.parent) / (f.stem + suffix)) for f in files]
    seen: dict[Path, Path] = {}
    for j in jobs:
        if j.dst in seen:
            raise VqcUsageError(f"{seen[j.dst]} and {j.src} would both be written to {j.dst}")
        seen[j.dst] = j.src
    return jobs


def _run(jobs: list[Job], work: Callable[[Job], Result], n_jobs: int, quiet: bool, what: str) -> list[Result]:
    if n_jobs < 1:
        raise VqcUsageError("--jobs must be at least 1")
    if len(jobs) == 1:
        with _tile_progress(quiet):
            r = work(jobs[0])
        if not r.ok:
            raise VqcError(r.message)
        return [r]
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_jobs))
    results: list[Result] = []
    progress = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                        disable=quiet)  # fmt: skip
    with progress, ThreadPoolExecutor(n_jobs) as pool:
        task = progress.add_task(what, total=len(jobs))
        for r in pool.map(work, jobs):
            results.append(r)
            progress.advance(task)
            if not r.ok:
                err.print(f"vqc: error: {r.message}", highlight=False)
    return results


@contextmanager
def _tile_progress(quiet: bool) -> Iterator[None]:
    """A progress bar on stderr while a single big image is encoded or decoded tile by tile (a
    24 MP photo takes minutes on 2 cores), when stderr is a terminal; small images finish
    before there is anything to show, and batch runs have their per-file bar."""
    if quiet or not err.is_terminal:
        yield
        return
    from vqcodec import codec

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TimeElapsedColumn(), console=err, transient=True)  # fmt: skip
    tasks: dict[str, TaskID] = {}

    def update(stage: str, share: float) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=1.0)
        bar.update(tasks[stage], completed=share)

    with bar, codec.progress(update):
        yield


def _summary(results: list[Result], quiet: bool, rate: bool) -> int:
    ok = [r for r in results if r.ok]
    failed = len(results) - len(ok)
    if not quiet and len(results) > 1:
        t = Table("files", "failed", "bytes in", "bytes out", "mean bpp" if rate else "pixels")
        pix = sum(r.pixels for r in ok)
        mean_bpp = sum((r.out_bytes if rate else r.in_bytes) * 8 / r.pixels for r in ok) / max(len(ok), 1)
        t.add_row(str(len(results)), str(failed), str(sum(r.in_bytes for r in ok)),
                  str(sum(r.out_bytes for r in ok)), f"{mean_bpp:.4f}" if rate else str(pix))  # fmt: skip
        err.print(t)
    return 1 if failed else 0


@app.command()
def encode(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(help="image files, folders, globs, or - for stdin")],
    output: Annotated[str | None, typer.Option("-o", "--output", help="output file, folder (batch) or -")] = None,
    codebook: Annotated[int, typer.Option("-k", "--codebook", help="codebook size K: the rate knob")] = 64,
    max_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-bytes",
            metavar="N",
            help="best quality within N bytes: the largest codebook size K whose whole .vqc file (packets "
            "included) is at most N bytes, chosen per file; not with --codebook; fails (exit 1, no output) "
            "when even the smallest K needs more",
        ),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="model bundle name or folder")] = None,
    entropy_coder: Annotated[
        str, typer.Option("--entropy", help="auto | int8-paired (int8 integer context model in 5 passes: decodes on every "
                     "computer; the default where the bundle has one) | int8 (the same model in 7 passes: the "
                     "default of 0.2.0, 0.3 % smaller files, a third slower) | exact (the int16 integer context model, the default "
                     "before 0.2.0; also decodes everywhere) | static | context (the float context model of older "
                     "files; may not decode on another CPU) | raw (fixed-width, uncoded)")
    ] = "auto",
    packets: Annotated[
        str | None, typer.Option("--packets", help="packetize for lossy channels: a count (16) or a size (200B)")
    ] = None,
    parity: Annotated[
        str,
        typer.Option("--parity", metavar="R|R1,R2,..",
                     help="with --packets: R erasure-coded parity packets (any N of the N + R packets rebuild the "
                     "file exactly); 0..63; with --layers one count per layer (4,2,0: the base layer protected "
                     "most) or one for every layer"),
    ] = "0",
    layers: Annotated[
        str | None,
        typer.Option("--layers", metavar="K1,K2,..",
                     help="a layered (progressive) file, e.g. 8,64,1024: the first bytes are a K1 picture and each "
                     "later layer refines it; a file cut anywhere decodes to its last complete layer; with "
                     "--max-bytes the file stops after the last layer that fits (vqc trim cuts one later); "
                     "not with --codebook, --packets or --effort"),
    ] = None,
    effort: Annotated[
        int,
        typer.Option("-e", "--effort", metavar="1..5",
                     help="encoder effort: 1 takes each position's nearest code (fast); 2..5 search the index map "
                     "against the decoder for a better picture in at most the same bytes (2: about 4 s, 5: about "
                     "25 s for a 768x512 photo on 2 cores); every decoder reads the files"),
    ] = 1,
    device: Annotated[
        str, typer.Option("--device", help="where the networks run: auto (CUDA when present) | cpu | cuda[:N]")
    ] = "auto",
    jobs: Annotated[int, typer.Option("-j", "--jobs", help="parallel files in batch mode")] = 1,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="refuse larger images")] = MAX_PIXELS,
    quiet: Annotated[bool, typer.Option("-q", "--quiet")] = False,
) -> None:
    """Compress images to .vqc files.

    Examples: vqc encode photo.png -o photo.vqc --codebook 64 ;
    vqc encode photos/ -o out/ --jobs 2 ; cat a.png | vqc encode - -o - > a.vqc ;
    vqc encode photo.png --max-bytes 500 ; vqc encode photo.png -o photo.vqc --effort 5 ;
    vqc encode photo.png -o photo.vqc --layers 8,64,1024
    """
    from vqcodec import api, codec, fileinfo, imageio, zoo
    from vqcodec import device as devices
    from vqcodec.errors import VqcBudgetError

    sizes = None if layers is None else options.check_layers(layers)
    if sizes is not None:
        if _given(ctx, "codebook"):
            raise VqcUsageError("--layers names every codebook size of the file: give --layers or --codebook, not both")
        if effort != 1:
            raise VqcUsageError("--layers is not combined with --effort above 1")
        parity_value: int | tuple[int, ...] = options.layer_parity(parity, len(sizes))
    else:
        parity_value = _whole(parity, "--parity takes a whole number of parity packets")
    if max_bytes is not None:
        if _given(ctx, "codebook"):
            raise VqcUsageError("--max-bytes chooses the codebook size: give --max-bytes or --codebook, not both")
        if max_bytes < 1:
            raise VqcUsageError(f"--max-bytes takes a positive number of bytes, not {max_bytes}")
    dev = str(devices.resolve(device))
    files, batch = _expand(inputs, IMAGE_SUFFIXES)
    plan = _plan(files, batch, output, ".vqc")
    bundle = zoo.load_model(model)
    # bad options are one usage error before any file, not one failure per file of a batch
    forced = options.coding_mode(entropy_coder)
    if sizes is None:
        options.packet_layout(packets, parity_value)
    if sizes is not None:
        from vqcodec import progressive

        n_packets, packet_bytes = options.parse_packets(packets)
        if packet_bytes:
            raise VqcUsageError("a layered file takes a packet count per layer (--packets 16), not a packet size")
        if any(parity_value) and not n_packets:  # type: ignore[arg-type]
            raise VqcUsageError("--parity adds parity packets to a packetized file: give --packets N too")
        # no nested books for the chain, or a coding mode packets cannot use: one error, before any file
        progressive.check(bundle, sizes, options.ENTROPY_CODERS["static"] if n_packets else forced)
    elif max_bytes is None:
        bundle.codebook(codebook)  # an unavailable K
    else:
        codec.budget_sizes(bundle, forced)  # forced context coding without a context model at any K
    if effort != 1:
        codec.check_effort_model(bundle, effort)
        from vqcodec import loss_weights

        loss_weights.lpips_vgg()  # the loss network is there, before any file

    def work(job: Job) -> Result:
        try:
            src = job.src if job.src is not None else io.BytesIO(sys.stdin.buffer.read())
            img = imageio.load_image(src, max_pixels)
            try:
                data = api.encode(img.pixels, codebook if max_bytes is None and sizes is None else None, bundle,
                                  entropy=entropy_coder, packets=packets, parity=parity_value, max_bytes=max_bytes,
                                  max_pixels=max_pixels, device=dev, effort=effort, layers=sizes)  # fmt: skip
            except VqcBudgetError as e:  # name the image: in a batch only some may not fit
                raise VqcError(f"{job.src or '<stdin>'}: {e}") from None
            if job.dst is None:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            else:
                imageio.atomic_write_bytes(job.dst, data)
        except VqcError as e:
            if not batch:
                raise
            return Result(job, False, _one_line(str(e)))
        h, w = img.pixels.shape[:2]
        note = f" (converted {img.source_mode} to RGB)" if img.converted else ""
        size = job.src.stat().st_size if job.src is not None else 0
        fi = fileinfo.info(data)
        k = fi.header.codebook_size if fi.layers is None else fi.layers.codebook_size  # what --max-bytes chose
        within = f" (largest K within {max_bytes} bytes)" if max_bytes is not None else ""
        if fi.layers is not None:
            got = fi.layers.complete
            within = f" ({got} of {len(sizes)} layers: {','.join(map(str, sizes[:got]))}"
            within += f", within {max_bytes} bytes)" if max_bytes is not None else ")"
        if fi.layer_packets is not None:
            within = f" (layers {','.join(map(str, sizes))}, {fi.layer_packets.packets} packets each)"
        searched = f", effort {effort}" if effort != 1 else ""
        msg = (f"{job.src or '<stdin>'} {w}x{h}{note} -> {job.dst or '<stdout>'}: {len(data)} bytes, "
               f"{len(data) * 8 / (w * h):.4f} bpp, K={k}{within}{searched}, model {bundle.name}")  # fmt: skip
        return Result(job, True, msg, size, len(data), w * h, k)

    t0 = time.time()
    what = f"encoding K={codebook}" if max_bytes is None else f"encoding <= {max_bytes} bytes"
    results = _run(plan, work, jobs, quiet, what)
    if not quiet and not batch:
        err.print(results[0].message, highlight=False)
    code = _summary(results, quiet, rate=True)
    if not quiet and batch:
        if max_bytes is not None:
            counts = Counter(r.codebook for r in results if r.ok)
            chosen = ", ".join(f"K={k}: {n} file{'s' if n > 1 else ''}" for k, n in sorted(counts.items()))
            err.print(f"largest K within {max_bytes} bytes: {chosen or 'none'}", highlight=False)
        err.print(f"{len(results)} files in {time.time() - t0:.1f}s", highlight=False)
    raise typer.Exit(code)


@app.command()
def decode(
    inputs: Annotated[list[str], typer.Argument(help=".vqc files, folders, globs, or - for stdin")],
    output: Annotated[str | None, typer.Option("-o", "--output", help="output image, folder (batch) or -")] = None,
    fmt: Annotated[str, typer.Option("--format", help="image format for batch output / stdout")] = "png",
    model: Annotated[str | None, typer.Option("--model", help="model bundle (default: from the file's id)")] = None,
    recover: Annotated[
        str,
        typer.Option("--recover", help="lost-index prediction: auto | none | neighbour | ar | masked | masked-index"),
    ] = "auto",
    device: Annotated[
        str, typer.Option("--device", help="where the networks run: auto (CUDA when present) | cpu | cuda[:N]")
    ] = "auto",
    jobs: Annotated[int, typer.Option("-j", "--jobs", help="parallel files in batch mode")] = 1,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="refuse larger images")] = MAX_PIXELS,
    quiet: Annotated[bool, typer.Option("-q", "--quiet")] = False,
) -> None:
    """Decompress .vqc files to images (PNG unless the suffix or --format says otherwise).

    Examples: vqc decode photo.vqc -o photo.out.png ; vqc decode out/ -o png/ ; vqc decode - -o - < a.vqc > a.png
    """
    import numpy as np
    from PIL import Image

    from vqcodec import api, imageio, recovery
    from vqcodec import device as devices

    if recover != "auto" and recover not in recovery.METHODS:
        raise VqcUsageError(f"unknown recovery method {recover!r}; choose one of auto, {', '.join(recovery.METHODS)}")
    suffix = "." + fmt.lower().lstrip(".")
    if Image.registered_extensions().get(suffix) is None:
        raise VqcUsageError(f"unknown image format {fmt!r}")
    dev = str(devices.resolve(device))
    files, batch = _expand(inputs, {".vqc"})
    plan = _plan(files, batch, output, suffix)

    def work(job: Job) -> Result:
        try:
            data = _read(job.src) if job.src is not None else sys.stdin.buffer.read()
            decoded = api.decode_report(data, model, recover=recover, max_pixels=max_pixels, device=dev)
            if job.dst is None:
                buf = io.BytesIO()
                decoded.image.save(buf, format=Image.registered_extensions()[suffix])
                sys.stdout.buffer.write(buf.getvalue())
                sys.stdout.buffer.flush()
            else:
                imageio.save_image(np.asarray(decoded.image), job.dst)
        except VqcError as e:
            if not batch:
                raise
            return Result(job, False, _one_line(str(e)))
        w, h = decoded.image.size
        msg = f"{job.src or '<stdin>'} -> {job.dst or '<stdout>'}: {w}x{h}"
        if decoded.report.packets or decoded.report.layers:
            msg += f"; {decoded.report.summary()}"
        return Result(job, True, msg, len(data), 0, w * h)

    results = _run(plan, work, jobs, quiet, "decoding")
    if not quiet and not batch:
        err.print(results[0].message, highlight=False)
    raise typer.Exit(_summary(results, quiet, rate=False))


ENGINE_HELP = "the engine that runs the job: dask (Dask distributed)"
ADDRESS_HELP = "a running Dask scheduler (tcp://host:8786); default: a local cluster on this machine"
WORKERS_HELP = "local cluster: worker processes, one thread each (not with --address)"
DEVICE_HELP = "where each worker runs the networks: auto | cpu | cuda"
CHUNK_HELP = "images per task (fewer: finer load balance; more: less scheduling per image)"


def _bulk_cluster(ctx: typer.Context, engine: str, address: str | None, workers: int) -> None:
    from vqcodec import bulk

    if engine not in bulk.ENGINES:
        raise VqcUsageError(f"unknown engine {engine!r}; choose {', '.join(bulk.ENGINES)}")
    if address and _given(ctx, "workers"):
        raise VqcUsageError("--workers sizes a local cluster; with --address the cluster's own workers run the job")
    if workers < 1:
        raise VqcUsageError("--workers must be at least 1")
    bulk._dask()  # a missing extra: one line, before anything else


def _bulk_run(run: Callable, what: str, quiet: bool, rate: bool) -> None:
    """Run a bulk job with a live progress bar (images/s, bytes out, failures), print failures as
    they come and a summary table at the end; exit 1 if any image failed."""
    from vqcodec import bulk

    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]:.2f} img/s"),
               TextColumn("{task.fields[out]} B out"), TextColumn("{task.fields[failed]} failed"),
               TimeElapsedColumn())  # fmt: skip
    bar = Progress(*columns, console=err, disable=quiet)
    tasks: list[TaskID] = []

    def progress(s: bulk.Snapshot) -> None:
        if not tasks:  # shown once the work is known (not at all when everything was done before)
            tasks.append(bar.add_task(what, total=s.total, rate=0.0, out=0, failed=0))
        bar.update(tasks[0], total=s.total, completed=s.done, rate=s.rate, out=s.bytes_out, failed=s.failed)

    def failure(f: bulk.Failure) -> None:
        err.print(f"vqc: error: {_one_line(f.error)}", highlight=False)

    with bar:
        report = run(progress=progress, on_failure=failure)
    if not quiet:
        for note in report.notes:
            err.print(f"vqc: note: {note}", highlight=False)
        t = Table(f"bulk {report.command}", "", show_header=False)  # one row per figure: fits any terminal
        rows = [("images", report.total), ("done now", report.done), ("skipped (done before)", report.skipped),
                ("failed", len(report.failures)), ("bytes in", report.bytes_in), ("bytes out", report.bytes_out),
                ("mean bpp" + ("" if rate else " (of the .vqc inputs)"), f"{report.mean_bpp:.4f}"),
                ("elapsed s", f"{report.elapsed:.1f}"), ("images/s", f"{report.rate:.2f}"),
                ("workers", report.workers)]  # fmt: skip
        for name, value in rows:
            t.add_row(name, str(value))
        err.print(t)
        if report.failures_file is not None:
            err.print(f"failures listed in {report.failures_file}", highlight=False)
    raise typer.Exit(1 if report.failures else 0)


@bulk_app.command("encode")
def bulk_encode(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(help="a folder (recursive), a glob, or a .parquet table (key, image)")],
    dst: Annotated[str, typer.Argument(help="a folder (.vqc files mirroring SRC) or a .parquet path (a table)")],
    engine: Annotated[str, typer.Option("--engine", help=ENGINE_HELP)] = "dask",
    address: Annotated[str | None, typer.Option("--address", help=ADDRESS_HELP)] = None,
    workers: Annotated[int, typer.Option("--workers", help=WORKERS_HELP)] = 2,
    chunk: Annotated[int, typer.Option("--chunk", help=CHUNK_HELP)] = 16,
    codebook: Annotated[int, typer.Option("-k", "--codebook", help="codebook size K: the rate knob")] = 64,
    max_bytes: Annotated[
        int | None, typer.Option("--max-bytes", metavar="N", help="per image, the largest K whose file fits in N "
                                 "bytes (as vqc encode); not with --codebook")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="model bundle name or folder (on every worker)")] = None,
    entropy_coder: Annotated[
        str, typer.Option("--entropy", help="auto | int8-paired | int8 | exact | static | context | raw")
    ] = "auto",
    packets: Annotated[
        str | None, typer.Option("--packets", help="packetize for lossy channels: a count (16) or a size (200B)")
    ] = None,
    parity: Annotated[int, typer.Option("--parity", help="with --packets: R parity packets (0..63)")] = 0,
    effort: Annotated[int, typer.Option("-e", "--effort", metavar="1..5", help="encoder effort (as vqc encode)")] = 1,
    device: Annotated[str, typer.Option("--device", help=DEVICE_HELP)] = "auto",
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="refuse larger images")] = MAX_PIXELS,
    quiet: Annotated[bool, typer.Option("-q", "--quiet")] = False,
) -> None:
    """Encode every image of SRC on a Dask cluster: the same bytes as vqc encode with the same options.

    A re-run skips the outputs that are complete and verified, so it finishes a stopped job. Bad
    images are listed (and in DST/_failures.txt); the others go on.

    Examples: vqc bulk encode photos/ archive/ -k 64 ; vqc bulk encode 'shots/**/*.jpg' shots.parquet ;
    vqc bulk encode photos/ archive/ --address tcp://10.0.0.5:8786
    """
    from functools import partial

    from vqcodec import bulk

    if max_bytes is not None and _given(ctx, "codebook"):
        raise VqcUsageError("--max-bytes chooses the codebook size: give --max-bytes or --codebook, not both")
    _bulk_cluster(ctx, engine, address, workers)
    n_packets, packet_bytes = options.parse_packets(packets)
    settings = bulk.EncodeSettings(codebook, max_bytes, entropy_coder, n_packets, packet_bytes, parity, model, device,
                                   max_pixels, effort)  # fmt: skip
    settings.check()
    what = f"encoding K={codebook}" if max_bytes is None else f"encoding <= {max_bytes} bytes"
    run = partial(bulk.encode, src, dst, settings, address=address, workers=workers, chunk=chunk)
    _bulk_run(run, what, quiet, rate=True)


@bulk_app.command("decode")
def bulk_decode(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(help="a folder of .vqc files (recursive), a glob, or a .parquet table")],
    dst: Annotated[str, typer.Argument(help="a folder (images mirroring SRC) or a .parquet path (key, image)")],
    engine: Annotated[str, typer.Option("--engine", help=ENGINE_HELP)] = "dask",
    address: Annotated[str | None, typer.Option("--address", help=ADDRESS_HELP)] = None,
    workers: Annotated[int, typer.Option("--workers", help=WORKERS_HELP)] = 2,
    chunk: Annotated[int, typer.Option("--chunk", help=CHUNK_HELP)] = 16,
    fmt: Annotated[str, typer.Option("--format", help="image format of the outputs (png, jpg, webp...)")] = "png",
    model: Annotated[str | None, typer.Option("--model", help="model bundle (default: from each file's id)")] = None,
    recover: Annotated[
        str, typer.Option("--recover", help="lost-index prediction: auto | none | neighbour | ar | masked | "
                          "masked-index")
    ] = "auto",
    device: Annotated[str, typer.Option("--device", help=DEVICE_HELP)] = "auto",
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="refuse larger images")] = MAX_PIXELS,
    quiet: Annotated[bool, typer.Option("-q", "--quiet")] = False,
) -> None:
    """Decode every .vqc of SRC on a Dask cluster: the same images as vqc decode.

    Examples: vqc bulk decode archive/ png/ ; vqc bulk decode archive.parquet png.parquet --format webp
    """
    from functools import partial

    from vqcodec import bulk

    _bulk_cluster(ctx, engine, address, workers)
    settings = bulk.DecodeSettings(fmt, recover, model, device, max_pixels)
    settings.check()
    run = partial(bulk.decode, src, dst, settings, address=address, workers=workers, chunk=chunk)
    _bulk_run(run, "decoding", quiet, rate=False)


CODING_LABELS = {
    "int8_paired": "int8-paired (int8 integer context model, paired groups: the same indices on every computer)",
    "int8": "int8 (int8 integer context model: the same indices on every computer)",
    "exact": "exact (integer context model: the same indices on every computer)",
    "context": "context (the float context model of older files: may fail to decode on another CPU)",
    "static": "static (range coding with the bundle's frequency table)",
    "raw": "raw (fixed-width indices)",
}


@app.command()
def info(file: Annotated[Path, typer.Argument(help="a .vqc file")]) -> None:
    """Show a .vqc file's header: version, model id, size, K, bytes, bpp."""
    from vqcodec import entropy, fileinfo

    fi = fileinfo.info(_read(file))
    h = fi.header
    hh, ww = fi.latent_shape
    n = h.m * hh * ww
    rows = [
        ("format version", str(h.version)),
        ("model id", f"{h.model_id:08x}"),
        ("image size", f"{h.width}x{h.height}"),
        ("codebook size K", str(h.codebook_size)),
        ("indices", f"{n} ({h.m} x {hh} x {ww})"),
        ("coding", CODING_LABELS.get(h.mode.name.lower(), h.mode.name.lower())),
        ("file bytes", str(fi.file_bytes)),
        ("payload bytes", str(fi.payload_bytes)),
        ("bits per index", f"{fi.payload_bytes * 8 / max(n, 1):.3f} (uniform {entropy.raw_bits(h.codebook_size)})"),
        ("bpp", f"{fi.bpp:.5f}"),
    ]
    if fi.layers is not None:
        s = fi.layers
        sizes = ",".join(map(str, s.sizes))
        rows[3] = ("codebook size K", f"{s.codebook_size} (the deepest complete layer)")
        rows.insert(4, ("layers", f"{s.complete} of {len(s.sizes)} complete (K = {sizes})"
                               + (f"; {s.problem}" if s.problem else "")))  # fmt: skip
        rows.insert(5, ("layer bytes", ", ".join(f"K={k}: {e}" for k, e in zip(s.sizes, s.ends, strict=False))
                        + " (the file up to the end of each layer)"))  # fmt: skip
    if fi.layer_packets is not None:
        lp = fi.layer_packets
        rows[3] = ("codebook size K", f"{lp.sizes[-1]} (top layer)")
        rows.insert(4, ("layers", f"K = {','.join(map(str, lp.sizes))}, {lp.packets} packets each"))
        for i, p in enumerate(lp.layers):
            rebuilt = f", {len(p.rebuilt)} rebuilt from parity" if p.rebuilt else ""
            rows.append((f"layer {i + 1} packets", f"{p.data_arrived}/{p.packets} present, parity {p.parity_arrived}/"
                                                   f"{p.parity}{rebuilt}"))  # fmt: skip
        rows.append(("damaged", f"{lp.damaged} regions failed their checksum, {lp.duplicates} duplicates"))
        rows.append(("header copies", f"{lp.header_copies_ok}/3 intact"))
    if fi.packets is not None:
        p = fi.packets
        rows += [
            ("packets", f"{p.packets} declared, {p.data_arrived} present, {p.packets - p.data_arrived} lost"),
            ("damaged", f"{p.damaged} regions failed their checksum, {p.duplicates} duplicates"),
            ("header copies", f"{p.header_copies_ok}/3 intact"),
        ]
        if p.parity:
            rebuilt = f", {len(p.rebuilt)} lost data packets rebuilt exactly" if p.rebuilt else ""
            bad = ", parity disagrees with the data" if p.parity_mismatch else ""
            left = f", {len(p.lost)} still lost (predicted on decode)" if p.lost else ""
            rows.append(("parity", f"{p.parity} declared, {p.parity_arrived} present{rebuilt}{left}{bad}"))
    for k, v in rows:
        out.print(f"{k:16s} {v}", highlight=False)


@app.command()
def trim(
    file: Annotated[Path, typer.Argument(help="a layered .vqc file (vqc encode --layers)")],
    output: Annotated[str, typer.Option("-o", "--output", help="the trimmed file, or - for stdout")],
    max_bytes: Annotated[int, typer.Option("--max-bytes", metavar="N", help="keep the whole layers that fit in N bytes")],
    quiet: Annotated[bool, typer.Option("-q", "--quiet")] = False,
) -> None:
    """Drop whole layers of a layered file to fit a byte budget, without re-encoding: the bytes
    the encoder writes for that budget. Fails (exit 1, no output) when even the base layer is larger.

    Example: vqc trim photo.vqc --max-bytes 600 -o small.vqc
    """
    from vqcodec import fileinfo, imageio, layerfile

    if max_bytes < 1:
        raise VqcUsageError(f"--max-bytes takes a positive number of bytes, not {max_bytes}")
    data = _read(file)
    small = layerfile.trim(data, max_bytes)
    if output == "-":
        sys.stdout.buffer.write(small)
        sys.stdout.buffer.flush()
    else:
        imageio.atomic_write_bytes(Path(output), small)
    if not quiet:
        s = fileinfo.info(small).layers
        err.print(f"{file} -> {output}: {len(small)} bytes (from {len(data)}), {s.complete} of {len(s.sizes)} layers "
                  f"(K={s.codebook_size})", highlight=False)  # fmt: skip


@app.command()
def corrupt(
    file: Annotated[Path, typer.Argument(help="a packetized .vqc file (vqc encode --packets N)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="damaged copy")],
    loss: Annotated[float, typer.Option("--loss", help="packet loss rate in [0, 1]")] = 0.0,
    burst: Annotated[float, typer.Option("--burst", help="mean burst length in packets (Gilbert-Elliott)")] = 1.0,
    ber: Annotated[float, typer.Option("--ber", help="bit error rate over the whole file")] = 0.0,
    shuffle: Annotated[bool, typer.Option("--shuffle", help="reorder the surviving packets")] = False,
    duplicate: Annotated[float, typer.Option("--duplicate", help="probability to repeat a packet")] = 0.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet")] = False,
) -> None:
    """Simulate a lossy channel on a packetized file (seeded, reproducible).

    Example: vqc corrupt photo.vqc --loss 0.3 -o lossy.vqc --seed 7
    """
    from vqcodec import channel, imageio

    damaged, report = channel.corrupt(_read(file), loss, burst, ber, shuffle, duplicate, seed)
    imageio.atomic_write_bytes(output, damaged)
    if not quiet:
        err.print(f"{file} -> {output}: {report.summary()}", highlight=False)


@models_app.callback(invoke_without_command=True)
def models_default(ctx: typer.Context) -> None:
    """List the installed model bundles (same as `vqc models list`)."""
    if ctx.invoked_subcommand is None:
        models_list()


@models_app.command("list")
def models_list() -> None:
    """List the installed model bundles and their codebook sizes."""
    from vqcodec import zoo

    found = zoo.manifests()
    if not found:
        raise VqcUsageError("no model bundles found (looked in: " + ", ".join(map(str, zoo.search_paths())) + ")")
    t = Table("name", "model id", "arch", "K", "Kodak LPIPS-Alex", "path")
    for folder, m in found:
        lp = zoo.kodak_lpips(m)  # at about plain K=64's bits a position
        default = " (default)" if m["name"] == zoo.DEFAULT_MODEL else ""
        t.add_row(m["name"] + default, m["model_id"], m["arch"], ",".join(map(str, m["codebook_sizes"])), lp,
                  str(folder))  # fmt: skip
    out.print(t)


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="bundle name or folder")] = "") -> None:
    """Show a bundle's manifest: config, K values, files, training record and scores."""
    import json

    from vqcodec import zoo

    folder = zoo.find_bundle(name or zoo.DEFAULT_MODEL)
    out.print_json(json.dumps(zoo._read_manifest(folder)))


@models_app.command("verify")
def models_verify(name: Annotated[str | None, typer.Argument(help="bundle (default: all installed)")] = None) -> None:
    """Check every file of a bundle (or of all bundles) against its sha256 and load it."""
    from vqcodec import zoo

    _torch_threads()
    names = [name] if name else zoo.available()
    bad = 0
    for n in names:
        try:
            b = zoo.load_model(n)
            out.print(f"{b.name} ({b.manifest['model_id']}): OK, {len(b.manifest['files'])} files verified",
                      highlight=False)  # fmt: skip
        except VqcError as e:
            bad += 1
            err.print(f"vqc: error: {_one_line(str(e))}", highlight=False)
    raise typer.Exit(1 if bad else 0)


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASSTHROUGH)
def train(ctx: typer.Context) -> None:
    """Train the base autoencoder (options: vqc train --help)."""
    from vqcodec.train import autoencoder

    autoencoder.main(list(ctx.args))


@app.command(context_settings=_PASSTHROUGH)
def export(ctx: typer.Context) -> None:
    """Turn a training checkpoint into a model bundle (options: vqc export --help)."""
    from vqcodec.train import codebooks

    codebooks.main(list(ctx.args))


@app.command(context_settings=_PASSTHROUGH)
def finetune(ctx: typer.Context) -> None:
    """Fine-tune the reduced codebooks of a bundle (options: vqc finetune --help)."""
    from vqcodec.train import finetune as ft

    ft.main(list(ctx.args))


@app.command("train-recovery", context_settings=_PASSTHROUGH)
def train_recovery(ctx: typer.Context) -> None:
    """Train the index-map transformer for lost-index recovery (options: vqc train-recovery --help)."""
    from vqcodec.train import transformer

    transformer.main(list(ctx.args))


@app.command("train-layers", context_settings=_PASSTHROUGH)
def train_layers(ctx: typer.Context) -> None:
    """Build a bundle's nested codebooks for layered files (options: vqc train-layers --help)."""
    from vqcodec.train import layers

    layers.main(list(ctx.args))


@app.command("pack-data", context_settings=_PASSTHROUGH)
def pack_data(ctx: typer.Context) -> None:
    """Pack training photos and loss weights into one folder for an accelerator (options: vqc pack-data --help)."""
    from vqcodec.train import pack

    pack.main(list(ctx.args))


@app.command("import-taming", context_settings=_PASSTHROUGH)
def import_taming(ctx: typer.Context) -> None:
    """Import a taming-transformers f=16 VQModel checkpoint as a bundle.

    Example: vqc import-taming vqgan.ckpt --name vqgan-f16 --images photos/
    """
    from vqcodec.train import taming_import

    taming_import.main(list(ctx.args))


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > 1 << 30:
            raise VqcError(f"{path}: {size} bytes is too large for a .vqc file")
        return path.read_bytes()
    except FileNotFoundError:
        raise VqcError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise VqcError(f"{path}: is a directory") from None
    except PermissionError:
        raise VqcError(f"{path}: permission denied") from None
    except OSError as e:
        raise VqcError(f"{path}: cannot read ({e.strerror})") from None


def _whole(text: str, message: str) -> int:
    """A whole-number option typed as text (so that another form can share it), or a usage error."""
    try:
        return int(text)
    except ValueError:
        raise VqcUsageError(f"{message}, not {text!r}") from None


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was typed on the command line (a default is not a choice)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


def _torch_threads() -> None:
    """Apply ``VQC_THREADS`` (torch's intra-op thread count), importing torch to do so: called
    only by commands that run networks, so that info, corrupt and models start without torch."""
    threads = os.environ.get("VQC_THREADS")
    if threads:
        try:
            n = int(threads)
        except ValueError:
            raise VqcUsageError(f"VQC_THREADS must be a whole number, not {threads!r}") from None
        import torch

        torch.set_num_threads(n)


TORCH_FREE = {"info", "corrupt", "models", "bulk"}
"""Commands that only read containers and manifests (``models verify`` loads networks: it asks
for the threads itself; ``bulk`` runs its networks on Dask workers, which read ``VQC_THREADS``)."""


def version_text() -> str:
    """What ``vqc --version`` prints: the package, the default model (name and id, from its
    manifest) and the container format versions, read from ``vqcodec.container``. No networks
    are loaded, so it answers at once."""
    from vqcodec import __version__, container, zoo

    try:
        model = f"{zoo.DEFAULT_MODEL} (model id {zoo._read_manifest(zoo.find_bundle(zoo.DEFAULT_MODEL))['model_id']})"
    except VqcError:
        model = f"{zoo.DEFAULT_MODEL} (not installed)"
    formats = {container.VERSION: "single stream", container.PACKET_VERSION: "packets",
               container.PARITY_VERSION: "packets with parity", container.LAYER_VERSION: "layers",
               container.LAYER_PACKET_VERSION: "layers in packets"}  # fmt: skip
    versions = ", ".join(f"{v} ({what})" for v, what in sorted(formats.items()))
    return f"vqcodec {__version__}\ndefault model: {model}\n.vqc format versions read and written: {versions}"


def _show_version(value: bool) -> None:
    if value:
        out.print(version_text(), highlight=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_show_version,
                     help="show the version, the default model and the .vqc format versions, and exit"),
    ] = False,
) -> None:
    # runs before every command (not for --help); no docstring: it would compete with the app's help
    if ctx.invoked_subcommand not in TORCH_FREE:
        _torch_threads()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn every expected failure into one line + exit code."""
    try:
        rv = app(args=argv, prog_name="vqc", standalone_mode=False)
        return int(rv) if isinstance(rv, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # typer's click usage errors: bad flags, missing arguments
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help(), err=True)
        else:
            typer.echo(f"vqc: error: {_one_line(e.format_message())}", err=True)
        return int(getattr(e, "exit_code", 2))
    except typer.Abort:
        typer.echo("vqc: aborted", err=True)
        return 130
    except VqcError as e:
        typer.echo(f"vqc: error: {_one_line(str(e))}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        typer.echo("vqc: interrupted", err=True)
        return 130
    except SystemExit as e:  # argparse in train/export
        return e.code if isinstance(e.code, int) else 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
