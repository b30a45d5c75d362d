"""A bulk job from start to end (``encode``, ``decode``): list SRC, skip what an earlier run
completed and verified, cut the rest into chunks, run them on the engine, write each finished chunk
to DST, and list the failures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from vqcodec.bulk.engine import Cluster, _dask, _drive, _preflight, _quiet_logs
from vqcodec.bulk.settings import DecodeSettings, EncodeSettings, Failure, Report, Snapshot
from vqcodec.bulk.sinks import (
    DECODED_COLUMNS,
    ENCODED_COLUMNS,
    FolderSink,
    ParquetSink,
    _image_verifier,
    _vqc_verifier,
)
from vqcodec.bulk.sources import _arrow, is_parquet, open_source
from vqcodec.bulk.worker import decode_chunk, encode_chunk, preflight_decode, preflight_encode
from vqcodec.errors import VqcError, VqcModelError, VqcUsageError
from vqcodec.imageio import IMAGE_SUFFIXES

DEFAULT_CHUNK = 16
"""Images per task: enough that Dask's per-task cost (a few ms) vanishes against the ~1 s an image
takes, few enough that work spreads over the workers and a lost worker loses little."""
CHUNK_BYTES = 8 << 20
"""A chunk also ends before its input bytes pass this (they travel inside the task; Dask warns
about task graphs above 10 MB)."""
FAILURES_JSON = "_failures.json"
FAILURES_TXT = "_failures.txt"
"""Written inside DST; the underscore makes parquet readers (pyarrow, pandas, dask, spark) skip
them in a dataset folder."""

def _chunks(reader: Iterator[tuple[str, bytes | None, str]], size: int, max_bytes: int,
            failed: list[Failure]) -> Iterator[list[tuple[str, bytes | None]]]:  # fmt: skip
    """Group inputs into chunks of ``size`` images (and at most ``max_bytes``); unreadable inputs
    go straight to ``failed``."""
    chunk: list[tuple[str, bytes | None]] = []
    n = 0
    for key, data, error in reader:
        if error:
            failed.append(Failure(key, error))
            continue
        nbytes = len(data or b"")
        if chunk and (len(chunk) >= size or n + nbytes > max_bytes):
            yield chunk
            chunk, n = [], 0
        chunk.append((key, data))
        n += nbytes
    if chunk:
        yield chunk


def chunk_size(images: int, chunk: int, threads: int) -> int:
    """``chunk``, but smaller for small jobs: at least two chunks per worker thread, so that every
    worker gets work (8 images in one chunk of 16 would leave the second worker idle)."""
    return max(1, min(chunk, -(-images // (2 * max(1, threads)))))


def _write_failures(root: Path, failures: list[Failure]) -> Path | None:
    """``_failures.json`` and ``_failures.txt`` (one ``key: error`` a line) inside DST; a run
    without failures removes those of an earlier run (its images were retried and passed)."""
    from vqcodec import imageio

    js, txt = root / FAILURES_JSON, root / FAILURES_TXT
    if not failures:
        js.unlink(missing_ok=True)
        txt.unlink(missing_ok=True)
        return None
    root.mkdir(parents=True, exist_ok=True)
    imageio.atomic_write_bytes(js, json.dumps([asdict(f) for f in failures], indent=1).encode())
    imageio.atomic_write_bytes(txt, "".join(f"{f.error}\n" for f in failures).encode())
    return txt


def _local_manifest(model: str | None) -> dict | None:
    """The manifest of the job's bundle on this machine (no torch), or None when only the workers
    have it (then the first worker's answer is used)."""
    from vqcodec import zoo

    try:
        return zoo._read_manifest(zoo.find_bundle(model or zoo.DEFAULT_MODEL))
    except VqcError:
        return None


def encode(src: str, dst: str, settings: EncodeSettings = EncodeSettings(), *, client=None,
           address: str | None = None, workers: int = 2, chunk: int = DEFAULT_CHUNK,
           progress: Callable[[Snapshot], None] | None = None,
           on_failure: Callable[[Failure], None] | None = None) -> Report:  # fmt: skip
    """Encode every image of ``src`` into ``dst`` on a Dask cluster (``client``, or ``address``,
    or a ``LocalCluster`` of ``workers``); the files are exactly what ``vqc encode`` writes with
    the same options. Outputs already complete are skipped, so a re-run finishes a stopped job."""
    settings.check()
    with _quiet_logs():
        return _job("encode", src, dst, settings, client, address, workers, chunk, progress, on_failure)


def decode(src: str, dst: str, settings: DecodeSettings = DecodeSettings(), *, client=None,
           address: str | None = None, workers: int = 2, chunk: int = DEFAULT_CHUNK,
           progress: Callable[[Snapshot], None] | None = None,
           on_failure: Callable[[Failure], None] | None = None) -> Report:  # fmt: skip
    """Decode every .vqc of ``src`` (a folder, glob or parquet table with a ``vqc`` column) into
    images in ``dst`` (a folder, or a parquet table with an ``image`` column): what ``vqc
    decode`` writes for each."""
    settings.check()
    with _quiet_logs():
        return _job("decode", src, dst, settings, client, address, workers, chunk, progress, on_failure)


def _job(command: str, src: str, dst: str, settings, client, address, workers, chunk, progress,
         on_failure) -> Report:  # fmt: skip
    if chunk < 1:
        raise VqcUsageError("--chunk must be at least 1")
    if client is None:
        _dask()  # a missing extra is the first thing said, before any work
    start = time.perf_counter()
    report = Report(command)
    encoding = command == "encode"
    source = open_source(src, IMAGE_SUFFIXES if encoding else {".vqc"}, "image" if encoding else "vqc")
    report.total = len(source.keys)
    out = Path(dst)
    if is_parquet(dst):
        _arrow()
        sink: FolderSink | ParquetSink = ParquetSink(out, ENCODED_COLUMNS if encoding else DECODED_COLUMNS)
    else:
        sink = FolderSink(out, ".vqc" if encoding else settings.suffix)
    sink.plan(source)
    cluster = Cluster(client, address, workers)
    ran = False
    try:
        if encoding:
            man = _local_manifest(settings.model)
            if man is not None:
                model_id = int(man["model_id"], 16)
            else:  # the bundle is only on the workers: ask one
                model_id = _preflight(cluster, preflight_encode, settings)[1]
            sizes = man["codebook_sizes"] if man is not None else None
            identity = settings.identity(model_id)
            verify = _vqc_verifier(settings, model_id, sizes)
        else:
            identity = settings.identity()
            verify = _image_verifier(settings.pil_format)
        if isinstance(sink, ParquetSink):
            done = sink.done(source, identity, report.notes)
        else:
            done = sink.done(source, verify)
        done &= set(source.keys)
        report.skipped = len(done)
        pending = [k for k in source.keys if k not in done]
        ran = not pending  # all done before: that run's failures (if any) were retried and passed
        if pending:
            if encoding:
                name, worker_id = _preflight(cluster, preflight_encode, settings)
                if worker_id != model_id:
                    raise VqcModelError(f"the workers' model {name!r} has id {worker_id:08x}, this machine's has "
                                        f"{model_id:08x}: install the same bundle everywhere")  # fmt: skip
                fn, args = encode_chunk, (settings, model_id)
            else:
                _preflight(cluster, preflight_decode, settings)
                fn, args = decode_chunk, (settings,)
            if progress is not None:  # the display shows the work before the first chunk is back
                progress(Snapshot(len(pending), report.skipped, 0, 0, 0, 0.0, 0))
            meta = {"settings": identity, "command": command}
            read_failed: list[Failure] = []
            unsafe = []
            for key in pending:
                try:
                    sink.target(key)
                except VqcError as e:
                    unsafe.append(Failure(key, f"{key}: {e}"))
            bad = {f.key for f in unsafe}
            read_failed += unsafe
            size = chunk_size(len(pending), chunk, cluster.threads())
            chunks = _chunks(source.read(k for k in pending if k not in bad), size, CHUNK_BYTES, read_failed)
            ran = True
            _drive(cluster, chunks, fn, args, len(pending), sink, meta, report, read_failed, progress, on_failure)
    finally:
        cluster.close()
        report.elapsed = time.perf_counter() - start
        if ran:  # not after a usage error: the failures of the last real run stay listed
            report.failures_file = _write_failures(out, report.failures)
    return report
