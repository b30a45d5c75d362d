"""The inputs of a bulk job (SRC): files under a folder or a glob, or the rows of a parquet table.
The client reads them; their bytes travel to the workers inside the tasks.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vqcodec.bulk.settings import EXTRA_HINT, _one_line
from vqcodec.errors import VqcError, VqcUsageError

GLOB_CHARS = set("*?[")

def _arrow():
    """(pyarrow, pyarrow.parquet, pyarrow.dataset), or the one-line error that names the extra."""
    try:
        import pyarrow as pa
        import pyarrow.dataset as pads
        import pyarrow.parquet as pq
    except ImportError:
        raise VqcError(EXTRA_HINT + " (parquet input and output need pyarrow)") from None
    return pa, pq, pads


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
