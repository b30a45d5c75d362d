"""Bulk encode and decode on a Dask cluster: ``vqc bulk encode|decode SRC DST``.

Why Dask distributed: archives encode ~100k photos a day; users who run that already run a
cluster engine, and the codec should plug into one instead of growing a scheduler of its own.
Dask is pure Python, light (a ``LocalCluster`` on a 2-core machine, a ``dask scheduler`` /
``dask worker`` pair on real hosts, the same code for both), and already handles what a real job
needs: workers that die are restarted and their tasks re-run elsewhere. Ray would do too, but is a
heavy install for 2-core machines and CI (``docs/architecture.md``, "Bulk jobs").

How a job runs::

    client: list SRC -> skip keys whose output exists and verifies -> read inputs, chunks of N
            -> submit a few chunks per worker thread at a time (bounded memory)
    worker: chunk of (key, bytes) -> the model loaded once per worker process (``_bundle``)
            -> the same ``codec.compress`` as ``vqc encode`` -> (key, .vqc bytes) or (key, error)
    client: each finished chunk written atomically (a file per image, or a parquet part per
            chunk) -> progress, failures, summary

The client does all file I/O and the workers only compute: there is one writer (atomic writes
and resume stay simple), and workers need vqcodec and its model but no shared file system.
Input bytes travel inside the task (a photo is ~0.1-5 MB against ~1 s of CPU to encode it), so
the scheduler can re-run a chunk on another worker when its worker dies.

Dask is imported only here and only when a job starts: ``vqc --help`` stays fast, and without
the ``cluster`` extra ``vqc bulk`` ends in one line naming it.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vqcodec.errors import VqcError, VqcModelError, VqcUsageError
from vqcodec.imageio import IMAGE_SUFFIXES, MAX_PIXELS

EXTRA_HINT = "vqc bulk needs the cluster extra: pip install 'vqcodec[cluster]'"
ENGINES = ("dask",)
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
PART_GLOB = "part-*.parquet"
# glibc settings for the workers. Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to
# hand freed memory back to the OS), and setting any malloc threshold turns off glibc's adaptive mmap
# threshold: every activation above 128 KB is then a fresh mmap, zeroed page by page, and freed with
# munmap. The codec allocates tens of MB per layer, so an encode ran 30 % slower in such a worker
# (5.3 s against 4.1 s per Kodak photo, one thread, AMD EPYC AVX2; 3.8 s with these values). Blocks
# up to 32 MB come from the heap and are reused; above 64 MB of free heap top, memory is returned.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "67108864"}
GLOB_CHARS = set("*?[")


def _dask():
    """``dask.distributed``, or the one-line error that names the extra."""
    try:
        import dask.distributed as dd
    except ImportError:
        raise VqcError(EXTRA_HINT) from None
    return dd


def _arrow():
    """(pyarrow, pyarrow.parquet, pyarrow.dataset), or the one-line error that names the extra."""
    try:
        import pyarrow as pa
        import pyarrow.dataset as pads
        import pyarrow.parquet as pq
    except ImportError:
        raise VqcError(EXTRA_HINT + " (parquet input and output need pyarrow)") from None
    return pa, pq, pads


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


# ---------------------------------------------------------------------------------------------
# What a job is asked to do: plain data, pickled to the workers.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeSettings:
    """The options of ``vqc encode`` that decide the bytes (and the device and size guard)."""

    codebook: int = 64
    max_bytes: int | None = None
    entropy: str = "auto"
    packets: int = 0  # a count, or
    packet_bytes: int = 0  # a target packet size (--packets 200B)
    parity: int = 0
    model: str | None = None
    device: str = "auto"
    max_pixels: int = MAX_PIXELS

    def check(self) -> None:
        """What can be checked without the model (the rest: ``preflight_encode`` on a worker)."""
        from vqcodec import options

        if self.max_bytes is not None and self.max_bytes < 1:
            raise VqcUsageError(f"--max-bytes takes a positive number of bytes, not {self.max_bytes}")
        options.coding_mode(self.entropy)
        packets = f"{self.packet_bytes}B" if self.packet_bytes else self.packets or None
        options.packet_layout(packets, self.parity)

    def identity(self, model_id: int) -> dict:
        """What makes two runs' files comparable: stored in parquet parts, checked on resume."""
        d = asdict(self)
        del d["device"], d["max_pixels"]  # where it ran and the size guard do not change the bytes
        d["model"] = f"{model_id:08x}"
        return d


@dataclass(frozen=True)
class DecodeSettings:
    """The options of ``vqc decode``: output format, recovery method, model, device."""

    fmt: str = "png"
    recover: str = "auto"
    model: str | None = None
    device: str = "auto"
    max_pixels: int = MAX_PIXELS

    @property
    def suffix(self) -> str:
        return "." + self.fmt.lower().lstrip(".")

    @property
    def pil_format(self) -> str:
        from PIL import Image

        fmt = Image.registered_extensions().get(self.suffix)
        if fmt is None:
            raise VqcUsageError(f"unknown image format {self.fmt!r}")
        return fmt

    def check(self) -> None:
        self.pil_format  # noqa: B018 - raises for an unknown format

    def identity(self) -> dict:
        return {"format": self.pil_format, "recover": self.recover, "model": self.model}


@dataclass
class Outcome:
    """One image's result from a worker: the output bytes, or a one-line error."""

    key: str
    ok: bool
    data: bytes = b""
    error: str = ""
    in_bytes: int = 0
    width: int = 0
    height: int = 0
    codebook: int = 0
    model_id: int = 0
    seconds: float = 0.0  # the codec's own time for this image on the worker


@dataclass(frozen=True)
class Failure:
    key: str
    error: str


@dataclass(frozen=True)
class Snapshot:
    """What a progress display needs, sent while a job runs (from the caller's thread)."""

    total: int  # images to do in this run (already done ones excluded)
    skipped: int  # complete outputs of earlier runs, left alone
    done: int  # finished, ok or failed, including images finished inside running chunks
    failed: int
    bytes_out: int
    elapsed: float  # since the first chunk was submitted
    chunks_done: int

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class Report:
    """What a job did. ``done`` counts this run's outputs; ``skipped`` the complete, verified
    outputs of earlier runs that were left alone."""

    command: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    bpp_sum: float = 0.0
    work_seconds: float = 0.0  # the codec's own time summed over images (workers, all of them)
    elapsed: float = 0.0  # the whole job, cluster start included
    run_seconds: float = 0.0  # first submit to last result
    workers: int = 0
    written: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures_file: Path | None = None

    @property
    def mean_bpp(self) -> float:
        return self.bpp_sum / self.done if self.done else 0.0

    @property
    def rate(self) -> float:
        n = self.done + len(self.failures)
        return n / self.run_seconds if self.run_seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Worker side. Everything here runs in the worker processes; the state is per process.
# ---------------------------------------------------------------------------------------------

_LOCK = threading.Lock()
_BUNDLES: dict[str, Any] = {}
_STATS = {"model_loads": 0, "encoded": 0, "decoded": 0, "busy": 0, "chunks": 0}
_READY = False


def _setup() -> None:
    """Once per worker process: ``VQC_THREADS`` torch threads (without it torch keeps what the
    worker was started with: Dask's nanny sets ``OMP_NUM_THREADS=1``, one thread per task)."""
    global _READY
    if _READY:
        return
    threads = os.environ.get("VQC_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))
    _READY = True


def _bundle(model: str | None = None, model_id: int | None = None):
    """The bundle, loaded once per worker process (by name or folder, or by a file's model id):
    loading checks the sha256 of ~25 MB of weights and builds the networks, about 1.5 s, which a
    per-image load would pay 100k times a day."""
    from vqcodec import zoo

    key = model or (f"id:{model_id:08x}" if model_id is not None else zoo.DEFAULT_MODEL)
    with _LOCK:
        if key not in _BUNDLES:
            _BUNDLES[key] = zoo.load_model(model or (zoo.find_by_id(model_id) if model_id is not None else None))
            _STATS["model_loads"] += 1
        return _BUNDLES[key]


def worker_stats() -> dict:
    """This process's counters (``client.run(worker_stats)``: one dict per worker): model loads,
    images encoded and decoded, chunks, and how many chunks are running now."""
    return dict(_STATS, pid=os.getpid())


def _tell(topic: str | None, chunk_id: int, done: int) -> None:
    """Per-image progress to the client (a Dask event: scheduler -> subscribed client)."""
    if topic is None:
        return
    try:
        from distributed import get_worker

        get_worker().log_event(topic, {"chunk": chunk_id, "done": done})
    except (ImportError, ValueError):  # not running on a Dask worker (direct calls, tests)
        pass


def _failed(key: str, e: BaseException) -> Outcome:
    msg = str(e) if isinstance(e, VqcError) else f"{type(e).__name__}: {e}"
    msg = _one_line(msg)
    return Outcome(key, False, error=msg if msg.startswith(f"{key}:") else f"{key}: {msg}")


def _answer(check: Callable[[], Any]) -> tuple[Any, str, bool]:
    """(result, "", False), or (None, error, is a usage error): a preflight returns its error
    rather than raising it, so the worker logs no traceback beside the client's one line."""
    try:
        return check(), "", False
    except VqcError as e:
        return None, _one_line(str(e)), isinstance(e, VqcUsageError)


def preflight_encode(settings: EncodeSettings) -> tuple[Any, str, bool]:
    """On one worker before the job: load the model and check the options against it (an
    unavailable K is one usage error, not one failure per image). Answers (name, model id)."""
    from vqcodec import codec
    from vqcodec import device as devices
    from vqcodec.options import coding_mode

    def check() -> tuple[str, int]:
        _setup()
        bundle = _bundle(settings.model)
        devices.resolve(settings.device)
        forced = coding_mode(settings.entropy)
        if settings.max_bytes is None:
            bundle.codebook(settings.codebook)
        else:
            codec.budget_sizes(bundle, forced)
        return bundle.name, bundle.model_id

    return _answer(check)


def encode_chunk(items: list[tuple[str, bytes | None]], settings: EncodeSettings, model_id: int | None,
                 topic: str | None = None, chunk_id: int = 0) -> list[Outcome]:  # fmt: skip
    """Encode (key, image file bytes) pairs: exactly what ``vqc encode`` writes for each. A bad
    image is an ``Outcome`` with its error; the others go on."""
    from vqcodec import codec, imageio
    from vqcodec import device as devices
    from vqcodec.errors import VqcBudgetError
    from vqcodec.options import coding_mode

    _setup()
    with _LOCK:
        _STATS["busy"] += 1
        _STATS["chunks"] += 1
    try:
        try:
            bundle = _bundle(settings.model)
            if model_id is not None and bundle.model_id != model_id:
                raise VqcModelError(f"this worker's model {bundle.name!r} has id {bundle.model_id:08x}, the job's "
                                    f"has {model_id:08x}: install the same bundle on every worker")  # fmt: skip
            dev = devices.resolve(settings.device)
            opts = codec.PackOptions(coding_mode(settings.entropy), settings.packets, settings.packet_bytes,
                                     settings.parity)  # fmt: skip
            sizes = codec.budget_sizes(bundle, opts.mode) if settings.max_bytes is not None else None
        except VqcError as e:
            return [_failed(key, e) for key, _ in items]
        out = []
        for i, (key, data) in enumerate(items):
            t0 = time.perf_counter()
            try:
                if data is None:
                    raise VqcError("no image bytes (null)")
                with devices.using(dev):
                    img = imageio.load_image(io.BytesIO(data), settings.max_pixels, label=key)
                    try:
                        blob, enc = codec.compress(img.pixels, bundle, settings.codebook, settings.max_bytes, opts,
                                                   sizes)  # fmt: skip
                    except VqcBudgetError as e:
                        raise VqcError(str(e)) from None
                h, w = img.pixels.shape[:2]
                out.append(Outcome(key, True, blob, in_bytes=len(data), width=w, height=h,
                                   codebook=enc.codebook_size, model_id=bundle.model_id,
                                   seconds=time.perf_counter() - t0))  # fmt: skip
                with _LOCK:
                    _STATS["encoded"] += 1
            except Exception as e:  # noqa: BLE001 - one bad image must not end the chunk
                out.append(_failed(key, e))
            _tell(topic, chunk_id, i + 1)
        return out
    finally:
        with _LOCK:
            _STATS["busy"] -= 1


def preflight_decode(settings: DecodeSettings) -> tuple[Any, str, bool]:
    """On one worker before the job: the recovery method, device and (when named) the model."""
    from vqcodec import device as devices
    from vqcodec import recovery

    def check() -> str:
        _setup()
        if settings.recover != "auto" and settings.recover not in recovery.METHODS:
            raise VqcUsageError(f"unknown recovery method {settings.recover!r}; choose one of auto, "
                                f"{', '.join(recovery.METHODS)}")  # fmt: skip
        devices.resolve(settings.device)
        return _bundle(settings.model).name if settings.model else ""

    return _answer(check)


def _file_model_id(data: bytes) -> int:
    from vqcodec import container

    if container.is_packetized(bytes(data[:4])):
        return container.scan_packets(data).header.model_id
    return container.read_header(data).model_id


def decode_chunk(items: list[tuple[str, bytes | None]], settings: DecodeSettings, topic: str | None = None,
                 chunk_id: int = 0) -> list[Outcome]:  # fmt: skip
    """Decode (key, .vqc bytes) pairs to image file bytes: what ``vqc decode`` writes for each."""
    from vqcodec import codec, imageio
    from vqcodec import device as devices

    _setup()
    with _LOCK:
        _STATS["busy"] += 1
        _STATS["chunks"] += 1
    try:
        try:
            dev = devices.resolve(settings.device)
            fmt = settings.pil_format
        except VqcError as e:
            return [_failed(key, e) for key, _ in items]
        out = []
        for i, (key, data) in enumerate(items):
            t0 = time.perf_counter()
            try:
                if data is None:
                    raise VqcError("no .vqc bytes (null)")
                bundle = _bundle(settings.model) if settings.model else _bundle(model_id=_file_model_id(data))
                pixels, _ = codec.decode_with_report(data, bundle, settings.max_pixels, settings.recover, dev)
                blob = imageio.encode_image(pixels, fmt)
                h, w = pixels.shape[:2]
                out.append(Outcome(key, True, blob, in_bytes=len(data), width=w, height=h,
                                   seconds=time.perf_counter() - t0))  # fmt: skip
                with _LOCK:
                    _STATS["decoded"] += 1
            except Exception as e:  # noqa: BLE001 - one bad file must not end the chunk
                out.append(_failed(key, e))
            _tell(topic, chunk_id, i + 1)
        return out
    finally:
        with _LOCK:
            _STATS["busy"] -= 1


# ---------------------------------------------------------------------------------------------
# Client side: sources, sinks (with the resume check), the cluster, the job loop.
# ---------------------------------------------------------------------------------------------


def is_parquet(path: str | os.PathLike) -> bool:
    return str(path).rstrip("/").lower().endswith(".parquet")


@dataclass
class Source:
    """The inputs of a job: files under a folder or glob (key = path relative to its base), or
    the rows of a parquet file or dataset folder (key = its ``key`` column)."""

    label: str
    keys: list[str]
    paths: dict[str, Path] = field(default_factory=dict)  # file inputs
    table: Path | None = None  # parquet input
    column: str = ""

    def read(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes | None, str]]:
        """(key, bytes, "") for each wanted key, or (key, None, error) when it cannot be read."""
        wanted = list(keys)
        if self.table is None:
            for key in wanted:
                try:
                    yield key, self.paths[key].read_bytes(), ""
                except OSError as e:
                    yield key, None, f"{self.paths[key]}: cannot read ({e.strerror or e})"
            return
        _, _, pads = _arrow()
        todo = set(wanted)
        ds = pads.dataset(self.table, format="parquet")
        scan = ds.to_batches(columns=["key", self.column], batch_size=16, batch_readahead=1, fragment_readahead=1)
        for batch in scan:
            for key, value in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
                if key in todo:
                    todo.discard(key)
                    yield key, value, ""


def _static_base(pattern: str) -> Path:
    """The folder a glob's keys are relative to: its leading parts without glob characters."""
    parts = Path(pattern).parts
    base = []
    for p in parts[:-1]:
        if GLOB_CHARS & set(p):
            break
        base.append(p)
    return Path(*base) if base else Path(".")


def open_source(src: str, suffixes: Iterable[str], column: str) -> Source:
    """SRC -> a ``Source``: a parquet file or dataset folder (``*.parquet``), a folder (walked
    recursively; hidden files and folders skipped), a glob (``**`` recursive) or one file."""
    suffixes = {s.lower() for s in suffixes}
    path = Path(src)
    if is_parquet(src) and path.exists():
        return _parquet_source(path, column)
    if path.is_dir():
        files = {}
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for n in sorted(names):
                f = Path(root) / n
                if not n.startswith(".") and f.suffix.lower() in suffixes and f.is_file():
                    files[f.relative_to(path).as_posix()] = f
        return _file_source(src, files)
    if GLOB_CHARS & set(src):
        base = _static_base(src)
        files = {}
        for p in sorted(glob.glob(src, recursive=True)):
            f = Path(p)
            if f.is_file():
                files[os.path.relpath(f, base).replace(os.sep, "/")] = f
        return _file_source(src, files)
    if path.is_file():
        return _file_source(src, {path.name: path})
    raise VqcUsageError(f"{src}: no such file, folder or parquet table")


def _file_source(src: str, files: dict[str, Path]) -> Source:
    if not files:
        raise VqcUsageError(f"no input files matched {src}")
    return Source(src, sorted(files), paths=files)


def _parquet_source(path: Path, column: str) -> Source:
    pa, _, pads = _arrow()
    try:
        ds = pads.dataset(path, format="parquet")
        names = ds.schema.names
        if "key" not in names or column not in names:
            raise VqcUsageError(f"{path}: a bulk input table needs the columns 'key' and '{column}' "
                                f"(it has {', '.join(names)})")  # fmt: skip
        keys = ds.to_table(columns=["key"]).column(0)
    except VqcError:
        raise
    except (OSError, pa.ArrowException) as e:
        raise VqcError(f"{path}: cannot read the parquet table ({_one_line(str(e))})") from None
    if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
        raise VqcUsageError(f"{path}: column 'key' must hold strings, not {keys.type}")
    if keys.null_count:
        raise VqcUsageError(f"{path}: column 'key' has {keys.null_count} empty (null) values")
    values = keys.to_pylist()
    seen: set[str] = set()
    for k in values:
        if k in seen:
            raise VqcUsageError(f"{path}: key {k!r} appears more than once")
        seen.add(k)
    if not values:
        raise VqcUsageError(f"{path}: the table has no rows")
    return Source(str(path), values, table=path, column=column)


def _safe_relpath(key: str) -> PurePosixPath:
    """A key as a relative path inside DST; keys that would escape it are refused."""
    p = PurePosixPath(key)
    if not key or "\0" in key or "\\" in key or p.is_absolute() or ".." in p.parts or not p.name:
        raise VqcError(f"{key!r} is not a safe relative path for a folder output")
    return p


class FolderSink:
    """DST as a folder that mirrors SRC's tree: one file per image, written atomically.

    An output counts as done (and is skipped by a re-run) when it exists, is not older than its
    source file, and passes ``verify`` (for .vqc: the container's checksums and a header that
    matches the job's options; for images: Pillow's ``verify`` and the size the .vqc declares)."""

    def __init__(self, root: Path, suffix: str) -> None:
        if root.exists() and not root.is_dir():
            raise VqcUsageError(f"{root} is a file; bulk output needs a folder or a .parquet path")
        self.root, self.suffix = root, suffix
        self._swept: set[Path] = set()

    def target(self, key: str) -> Path:
        rel = _safe_relpath(key)
        return self.root / rel.with_suffix(self.suffix) if rel.suffix else self.root / (str(rel) + self.suffix)

    def plan(self, source: Source) -> None:
        """Refuse two keys that would write the same file (a.png and a.jpg -> a.vqc)."""
        seen: dict[Path, str] = {}
        for key in source.keys:
            try:
                t = self.target(key)
            except VqcError:
                continue  # reported as that image's failure
            if t in seen:
                raise VqcUsageError(f"{seen[t]} and {key} would both be written to {t}")
            seen[t] = key

    def done(self, source: Source, verify: Callable[[Path, Path | None], bool]) -> set[str]:
        out = set()
        for key in source.keys:
            try:
                t = self.target(key)
            except VqcError:
                continue
            src = source.paths.get(key)
            try:
                if not t.is_file() or (src is not None and t.stat().st_mtime_ns < src.stat().st_mtime_ns):
                    continue
                if verify(t, src):
                    out.add(key)
            except OSError:
                continue
        return out

    def write(self, outcomes: list[Outcome], meta: dict) -> list[str]:
        from vqcodec import imageio

        written = []
        for o in outcomes:
            t = self.target(o.key)
            t.parent.mkdir(parents=True, exist_ok=True)
            sweep = t.parent not in self._swept  # once per folder and run, not once per file
            self._swept.add(t.parent)
            imageio.atomic_write_bytes(t, o.data, sweep=sweep)
            written.append(o.key)
        return written


class ParquetSink:
    """DST as a parquet dataset folder (``out.parquet/part-*.parquet``: pandas, pyarrow, dask,
    duckdb and spark read it as one table), one part per finished chunk, written atomically.

    A re-run reads the ``key`` column of every existing part (page checksums verified) and skips
    those keys; parts carry the job's options in their schema metadata, and parts made with other
    options are refused (mixing them in one table would be silent damage). A part that does not
    read is renamed ``_damaged-*`` (out of the dataset) and its images are done again."""

    def __init__(self, root: Path, columns: dict[str, str]) -> None:
        if root.exists() and not root.is_dir():
            raise VqcUsageError(f"{root} is a file: bulk writes a parquet dataset folder there (part files); "
                                "give a new .parquet path")  # fmt: skip
        self.root, self.columns = root, columns
        self.stamp = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.seq = 0

    def target(self, key: str) -> None:
        return None

    def plan(self, source: Source) -> None:
        pass

    def done(self, source: Source, identity: dict, notes: list[str]) -> set[str]:
        pa, pq, _ = _arrow()
        keys: set[str] = set()
        if not self.root.is_dir():
            return keys
        want = json.dumps(identity, sort_keys=True)
        for part in sorted(self.root.glob(PART_GLOB)):
            try:
                f = pq.ParquetFile(part, page_checksum_verification=True)
                meta = (f.schema_arrow.metadata or {}).get(b"vqcodec", b"{}").decode()
                got = f.read(columns=["key"]).column(0).to_pylist()
            except (OSError, pa.ArrowException) as e:
                aside = part.with_name("_damaged-" + part.name)
                os.replace(part, aside)
                notes.append(f"{part}: unreadable ({_one_line(str(e))}); moved to {aside.name}, its images redone")
                continue
            if json.dumps(json.loads(meta).get("settings"), sort_keys=True) != want:
                raise VqcUsageError(f"{part} was written with other options ({meta}); write to a new .parquet path "
                                    "or remove the old one")  # fmt: skip
            keys.update(got)
        return keys

    def write(self, outcomes: list[Outcome], meta: dict) -> list[str]:
        if not outcomes:
            return []
        pa, pq, _ = _arrow()
        from vqcodec import imageio

        cols: dict[str, list] = {name: [] for name in self.columns}
        for o in outcomes:
            row = _row(o)
            for name in self.columns:
                cols[name].append(row[name])
        schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in self.columns.items()],
                           metadata={"vqcodec": json.dumps(meta)})  # fmt: skip
        table = pa.table(cols, schema=schema)
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, write_page_checksum=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.seq += 1
        imageio.atomic_write_bytes(self.root / f"part-{self.stamp}-{self.seq:05d}.parquet",
                                   buf.getvalue().to_pybytes(), sweep=self.seq == 1)  # fmt: skip
        return [o.key for o in outcomes]


ENCODED_COLUMNS = {"key": "string", "vqc": "binary", "K": "int32", "bytes": "int64", "bpp": "float64",
                   "model_id": "string", "width": "int32", "height": "int32"}  # fmt: skip
DECODED_COLUMNS = {"key": "string", "image": "binary", "width": "int32", "height": "int32"}


def _row(o: Outcome) -> dict:
    return {"key": o.key, "vqc": o.data, "image": o.data, "K": o.codebook, "bytes": len(o.data),
            "bpp": len(o.data) * 8 / max(o.width * o.height, 1), "model_id": f"{o.model_id:08x}",
            "width": o.width, "height": o.height}  # fmt: skip


def _vqc_verifier(settings: EncodeSettings, model_id: int, sizes: list[int] | None):
    """A .vqc output counts as done when its checksums pass and its header says what this job
    would write: the model id, K (or, with --max-bytes, a K of the model and a size within the
    budget), the forced coding mode, and the packet and parity counts."""
    from vqcodec import container
    from vqcodec.container import CodingMode

    forced = {"exact": CodingMode.EXACT, "static": CodingMode.STATIC, "context": CodingMode.CONTEXT,
              "raw": CodingMode.RAW}.get(settings.entropy)  # fmt: skip

    def verify(path: Path, src: Path | None) -> bool:
        data = path.read_bytes()
        try:
            if container.is_packetized(data[:4]):
                scan = container.scan_packets(data)
                intact = scan.header_copies_ok == container.HEADER_COPIES and scan.data_arrived == scan.packets
                if not intact or scan.damaged or scan.duplicates or scan.parity != settings.parity:
                    return False
                if scan.parity_arrived != scan.parity or scan.parity_mismatch:
                    return False
                if settings.packets and scan.packets != settings.packets:
                    return False
                header = scan.header
                if not (settings.packets or settings.packet_bytes):
                    return False
            else:
                header, _ = container.unpack(data)
                if settings.packets or settings.packet_bytes:
                    return False
        except VqcError:
            return False
        if header.model_id != model_id or (forced is not None and header.mode != forced):
            return False
        if settings.max_bytes is None:
            return header.codebook_size == settings.codebook
        return len(data) <= settings.max_bytes and (sizes is None or header.codebook_size in sizes)

    return verify


def _image_verifier(fmt: str):
    """A decoded image counts as done when Pillow reads it as ``fmt`` and ``verify()`` passes
    (PNG: every chunk's CRC), at the size its .vqc source declares."""
    from PIL import Image

    from vqcodec import fileinfo

    def verify(path: Path, src: Path | None) -> bool:
        try:
            with Image.open(path) as im:
                size, got = im.size, im.format
                im.verify()
            if got != fmt:
                return False
            if src is not None:
                h = fileinfo.info(src.read_bytes()).header
                return size == (h.width, h.height)
            return True
        except Exception:  # noqa: BLE001 - anything unreadable is simply not done
            return False

    return verify


def _local_manifest(model: str | None) -> dict | None:
    """The manifest of the job's bundle on this machine (no torch), or None when only the workers
    have it (then the first worker's answer is used)."""
    from vqcodec import zoo

    try:
        return zoo._read_manifest(zoo.find_bundle(model or zoo.DEFAULT_MODEL))
    except VqcError:
        return None


class Cluster:
    """The Dask client of a job, started on first use: ``address`` connects to a running
    scheduler; without it a ``LocalCluster`` of ``workers`` processes with one thread each (the
    codec is CPU-bound Python + torch: processes, not threads, and torch's own threads set by
    ``VQC_THREADS``, one by default)."""

    def __init__(self, client=None, address: str | None = None, workers: int = 2) -> None:
        if workers < 1:
            raise VqcUsageError("--workers must be at least 1")
        self.client, self.address, self.workers = client, address, workers
        self._own: list = []

    def get(self):
        if self.client is not None:
            return self.client
        dd = _dask()
        if self.address:
            try:
                self.client = dd.Client(self.address, timeout="20s")
            except (OSError, TimeoutError) as e:
                raise VqcError(f"cannot reach the Dask scheduler at {self.address} ({_one_line(str(e))})") from None
            self._own = [self.client]
        else:
            import dask

            env = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC}
            # the nanny lets this process's environment override its config (and an earlier nanny in
            # this process left Dask's 65536 there), so both are set while the workers start
            saved = {k: os.environ.get(k) for k in WORKER_MALLOC}
            try:
                os.environ.update(WORKER_MALLOC)
                with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
                    cluster = dd.LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                              dashboard_address=None, silence_logs=logging.CRITICAL)  # fmt: skip
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            self.client = dd.Client(cluster)
            self._own = [self.client, cluster]
        return self.client

    def close(self) -> None:
        for thing in self._own:
            try:
                thing.close()
            except Exception:  # noqa: BLE001 - shutting down: nothing left to save
                pass
        self._own = []

    def threads(self) -> int:
        try:
            return max(1, sum(self.get().nthreads().values()))
        except Exception:  # noqa: BLE001 - workers coming and going: assume one
            return 1


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


def _is_killed_worker(e: BaseException) -> bool:
    return type(e).__name__ == "KilledWorker"


def _drive(cluster: Cluster, chunks: Iterator[list], fn, args: tuple, total: int, sink, meta: dict,
           report: Report, read_failed: list[Failure], progress: Callable[[Snapshot], None] | None,
           on_failure: Callable[[Failure], None] | None) -> None:  # fmt: skip
    """Submit chunks (a few per worker thread at a time), write each finished one, report.

    A chunk that Dask gives up on because its workers kept dying (``KilledWorker``: a corrupt
    image can crash a decoder library, a huge one can run a worker out of memory) is split into
    suspects, and suspects run one at a time with nothing else in flight: a suspect that kills
    its worker even alone is the culprit and fails; the others, killed beside it, are redone."""
    dd = _dask()
    client = cluster.get()
    encoding = fn is encode_chunk
    topic = f"vqc-bulk-{uuid.uuid4().hex[:10]}"
    seen: dict[int, int] = {}
    lock = threading.Lock()

    def on_event(event) -> None:  # the client's event-loop thread
        msg = event[1]
        with lock:
            seen[msg["chunk"]] = max(seen.get(msg["chunk"], 0), msg["done"])

    client.subscribe_topic(topic, on_event)
    futures: dict[Any, tuple[int, list, bool]] = {}  # future -> (chunk id, items, ran alone)
    suspects: deque[tuple[str, bytes | None]] = deque()
    next_id = chunks_done = finished = 0  # finished: images of completed chunks, ok or failed
    t0 = time.perf_counter()
    threads, threads_at = cluster.threads(), time.perf_counter()
    last_emit = 0.0

    def fail(f: Failure) -> None:
        report.failures.append(f)
        if on_failure:
            on_failure(f)

    def submit(items: list, alone: bool = False) -> None:
        nonlocal next_id
        fut = client.submit(fn, items, *args, topic, next_id, key=f"vqc-bulk-{topic[9:]}-{next_id}", pure=False)
        futures[fut] = (next_id, items, alone)
        next_id += 1

    def emit(force: bool = False) -> None:
        nonlocal last_emit
        now = time.perf_counter()
        if progress is None or (not force and now - last_emit < 0.1):
            return
        last_emit = now
        with lock:
            running = sum(min(seen.get(cid, 0), len(items)) for cid, items, _ in futures.values())
        progress(Snapshot(total, report.skipped, finished + running, len(report.failures), report.bytes_out,
                          now - t0, chunks_done))  # fmt: skip

    exhausted = False
    try:
        while True:
            if time.perf_counter() - threads_at > 5:
                threads, threads_at = cluster.threads(), time.perf_counter()
            if suspects:
                if not futures:
                    submit([suspects.popleft()], alone=True)
            else:
                while not exhausted and len(futures) < 2 * threads + 1:
                    items = next(chunks, None)
                    while read_failed:
                        fail(read_failed.pop(0))
                        finished += 1
                    if items is None:
                        exhausted = True
                    else:
                        submit(items)
            if not futures:
                break
            try:  # back as soon as one chunk is done; every 0.2 s anyway, for the progress display
                dd.wait(list(futures), timeout=0.2, return_when="FIRST_COMPLETED")
            except TimeoutError:
                emit()
                continue
            for fut in [f for f in futures if f.done()]:
                cid, items, alone = futures.pop(fut)
                try:
                    outcomes = fut.result()
                except Exception as e:  # noqa: BLE001 - the chunk as a whole failed on the cluster
                    if _is_killed_worker(e) and not alone:
                        suspects.extend(items)
                        continue
                    why = "its worker died each time it ran, even alone" if _is_killed_worker(e) else _one_line(
                        f"{type(e).__name__}: {e}")  # fmt: skip
                    outcomes = [Outcome(key, False, error=f"{key}: {why}") for key, _ in items]
                fut.release()
                ok = [o for o in outcomes if o.ok]
                report.written += sink.write(ok, meta)
                for o in ok:
                    report.done += 1
                    report.bytes_in += o.in_bytes
                    report.bytes_out += len(o.data)
                    report.bpp_sum += (len(o.data) if encoding else o.in_bytes) * 8 / max(o.width * o.height, 1)
                    report.work_seconds += o.seconds
                for o in outcomes:
                    if not o.ok:
                        fail(Failure(o.key, o.error))
                finished += len(outcomes)
                chunks_done += 1
            emit()
        emit(force=True)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    finally:
        report.run_seconds = time.perf_counter() - t0
        report.workers = threads
        try:
            client.unsubscribe_topic(topic)
        except Exception:  # noqa: BLE001 - the client may already be gone
            pass


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


def _preflight(cluster: Cluster, fn, settings):
    """Run a preflight on one worker; a worker that cannot run vqcodec at all is one clear error."""
    try:
        result, error, usage = cluster.get().submit(fn, settings, pure=False).result()
    except VqcError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. ModuleNotFoundError on a worker without vqcodec
        raise VqcError(f"the Dask workers cannot run vqcodec ({_one_line(f'{type(e).__name__}: {e}')}); "
                       "install vqcodec and its models on every worker") from None
    if error:
        raise (VqcUsageError if usage else VqcError)(error)
    return result


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """Dask's own log lines (worker restarts, tasks given up) would break the progress display; what
    matters reaches the user as our own one-line failures."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
