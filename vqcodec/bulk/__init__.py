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
            -> the same ``vqcodec.encode`` as ``vqc encode`` -> (key, .vqc bytes) or (key, error)
    client: each finished chunk written atomically (a file per image, or a parquet part per
            chunk) -> progress, failures, summary

The client does all file I/O and the workers only compute: there is one writer (atomic writes
and resume stay simple), and workers need vqcodec and its model but no shared file system.
Input bytes travel inside the task (a photo is ~0.1-5 MB against ~1 s of CPU to encode it), so
the scheduler can re-run a chunk on another worker when its worker dies.

Dask is imported only here and only when a job starts: ``vqc --help`` stays fast, and without
the ``cluster`` extra ``vqc bulk`` ends in one line naming it.

The package, by seam: ``settings`` (what a job is asked and what it reports), ``sources`` (SRC:
folders, globs, parquet), ``sinks`` (DST and the resume check), ``worker`` (the tasks and the
per-worker model cache), ``engine`` (the Dask cluster and the submit loop), ``job`` (``encode``
and ``decode`` from start to end). Every name below is re-exported here, so ``from vqcodec.bulk
import X`` works as it did when this was one module (before 0.2.0).
"""

from __future__ import annotations

from vqcodec.bulk.engine import ENGINES, WORKER_MALLOC, Cluster
from vqcodec.bulk.engine import _dask as _dask  # the CLI: a missing extra is its first line
from vqcodec.bulk.engine import _drive as _drive  # benchmarks/bulk.py and the tests drive chunks directly
from vqcodec.bulk.job import CHUNK_BYTES, DEFAULT_CHUNK, FAILURES_JSON, FAILURES_TXT, chunk_size, decode, encode
from vqcodec.bulk.job import _chunks as _chunks
from vqcodec.bulk.settings import EXTRA_HINT, DecodeSettings, EncodeSettings, Failure, Outcome, Report, Snapshot
from vqcodec.bulk.sinks import DECODED_COLUMNS, ENCODED_COLUMNS, PART_GLOB, FolderSink, ParquetSink
from vqcodec.bulk.sources import GLOB_CHARS, Source, is_parquet, open_source
from vqcodec.bulk.worker import _bundle as _bundle
from vqcodec.bulk.worker import decode_chunk, encode_chunk, preflight_decode, preflight_encode, worker_stats

__all__ = [
    "CHUNK_BYTES",
    "DECODED_COLUMNS",
    "DEFAULT_CHUNK",
    "ENCODED_COLUMNS",
    "ENGINES",
    "EXTRA_HINT",
    "FAILURES_JSON",
    "FAILURES_TXT",
    "GLOB_CHARS",
    "PART_GLOB",
    "WORKER_MALLOC",
    "Cluster",
    "DecodeSettings",
    "EncodeSettings",
    "Failure",
    "FolderSink",
    "Outcome",
    "ParquetSink",
    "Report",
    "Snapshot",
    "Source",
    "chunk_size",
    "decode",
    "decode_chunk",
    "encode",
    "encode_chunk",
    "is_parquet",
    "open_source",
    "preflight_decode",
    "preflight_encode",
    "worker_stats",
]
"""The public names; the private ones imported above (``_dask``, ``_drive``, ``_chunks``,
``_bundle``) are what the CLI, the tests and ``benchmarks/bulk.py`` reach for."""
