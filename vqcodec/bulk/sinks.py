"""The outputs of a bulk job (DST): a folder that mirrors SRC, or a parquet dataset folder; each
knows which outputs an earlier run completed (the resume check), and writes atomically.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from vqcodec.bulk.settings import EncodeSettings, Outcome, _one_line
from vqcodec.bulk.sources import Source, _arrow
from vqcodec.errors import VqcError, VqcUsageError

PART_GLOB = "part-*.parquet"

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
    from vqcodec import container, options

    forced = options.ENTROPY_CODERS.get(settings.entropy)  # None: "auto"

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
