"""The codecs the rate-distortion benchmark compares, behind one ``Codec`` interface.

bpp always comes from the size of the whole compressed file. Each codec records its version. A codec
whose tool or library is missing reports why via ``unavailable()`` and is skipped, never a crash.
External binaries are found through an environment variable, then PATH, then ``../shared/bin``.

Sweeps reach down to our rates (0.005-0.1 bpp) and stop at about 0.15-0.25 bpp on Kodak: higher
settings (measured on kodim01/07/23: HEIF q30 0.34 bpp, JPEG XL d7 0.36, WebP q20 0.36, JPEG q10
0.26) lie outside every curve we compare against and cost benchmark hours for nothing.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_BIN = REPO.parent / "shared" / "bin"


class Codec(ABC):
    name: str = ""
    settings: list = []

    def signature(self) -> str:
        """What besides (name, setting) decides the output: part of rd.py's cache key, so a changed
        command is measured again instead of served from results of the old one ("" = nothing)."""
        return ""

    def unavailable(self) -> str | None:
        """None when usable, else the reason it is skipped."""
        return None

    def version(self) -> str:
        return ""

    @abstractmethod
    def run(self, img: np.ndarray, setting, tmp: Path) -> tuple[int, np.ndarray, float, float]:
        """Encode and decode: (compressed bytes, reconstruction, encode s, decode s)."""


def find_tool(name: str, env: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    hit = shutil.which(name)
    if hit:
        return hit
    local = SHARED_BIN / name
    return str(local) if local.is_file() and os.access(local, os.X_OK) else None


class BinaryCodec(Codec):
    """A codec driven through command-line tools: subclasses only build the commands."""

    tools: dict[str, str] = {}  # tool name -> environment variable

    def path(self, tool: str) -> str:
        p = find_tool(tool, self.tools[tool])
        if p is None:
            raise FileNotFoundError(tool)
        return p

    def unavailable(self) -> str | None:
        missing = [t for t, env in self.tools.items() if find_tool(t, env) is None]
        return f"not found: {', '.join(missing)} (set {', '.join(self.tools[t] for t in missing)})" if missing else None

    def sh(self, cmd: list[str]) -> None:
        r = subprocess.run(cmd, capture_output=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} failed: {r.stderr.decode(errors='replace').strip()[:200]}")


class BPG(BinaryCodec):
    """BPG (HEVC intra, x265), 4:4:4 chroma as learned-compression papers report it."""

    name = "BPG"
    tools = {"bpgenc": "VQC_BPGENC", "bpgdec": "VQC_BPGDEC"}
    settings = [51, 48, 45, 42, 39, 36]

    def version(self) -> str:
        r = subprocess.run([self.path("bpgenc"), "-h"], capture_output=True)
        return (r.stdout + r.stderr).decode(errors="replace").splitlines()[0].strip()

    def run(self, img, q, tmp):
        Image.fromarray(img).save(tmp / "in.png")
        t = time.perf_counter()
        self.sh(
            [self.path("bpgenc"), "-q", str(q), "-f", "444", "-m", "8", "-o", str(tmp / "o.bpg"), str(tmp / "in.png")]
        )
        enc = time.perf_counter() - t
        t = time.perf_counter()
        self.sh([self.path("bpgdec"), "-o", str(tmp / "rec.png"), str(tmp / "o.bpg")])
        dec = time.perf_counter() - t
        rec = np.asarray(Image.open(tmp / "rec.png").convert("RGB"))
        return (tmp / "o.bpg").stat().st_size, rec, enc, dec


def rgb_to_yuv420(img: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Full-range BT.601 (Pillow's YCbCr), edge-padded to even size, 2x2 box-filtered chroma."""
    h, w = img.shape[:2]
    img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    ycc = np.asarray(Image.fromarray(img).convert("YCbCr"), dtype=np.float64)
    H, W = ycc.shape[:2]
    c = ycc[..., 1:].reshape(H // 2, 2, W // 2, 2, 2).mean(axis=(1, 3))
    planes = [ycc[..., 0], c[..., 0], c[..., 1]]
    return np.concatenate([np.clip(np.round(p), 0, 255).astype(np.uint8).ravel() for p in planes]), W, H


def yuv420_10_to_rgb(raw: np.ndarray, w: int, h: int) -> np.ndarray:
    """10-bit planar 4:2:0 (uint16) -> RGB, bilinear chroma upsampling."""
    a = raw.astype(np.float64) / 4.0
    n = w * h
    y = a[:n].reshape(h, w)
    cb = a[n : n + n // 4].reshape(h // 2, w // 2)
    cr = a[n + n // 4 : n + n // 2].reshape(h // 2, w // 2)
    up = [
        np.asarray(Image.fromarray(p.astype(np.float32), "F").resize((w, h), Image.Resampling.BILINEAR))
        for p in (cb, cr)
    ]
    ycc = np.clip(np.round(np.stack([y, up[0], up[1]], axis=-1)), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(ycc, "YCbCr").convert("RGB"))


class VVC(BinaryCodec):
    """VVC intra (VVenC) at its best for one still picture: all-intra, 4:2:0 10-bit, QPA on, preset slow.

    ``-r 1 --intraperiod 1``: without a frame rate vvenc assumes 60 fps and a one-second refresh
    period, and codes the lone picture as the top of a 64-frame GOP with a lower QP: kodim23 at
    QP 63 took 510 bytes instead of 310 (docs/results.md). ``--qpa 1`` (vvenc's default): the
    XPSNR-driven QP adaptation; on 6 Kodak images at QP 54-60 it needs 8.5 % fewer bits for the same
    LPIPS than ``--qpa 0`` (1.3 % for DISTS, 5.6 % for PSNR; docs/results.md), so the anchor keeps
    it. Preset from $VQC_VVC_PRESET (default ``slow``; ``slower`` saves about 2 % more bytes at 3x
    the time).
    """

    name = "VVC"
    tools = {"vvencapp": "VQC_VVENC", "vvdecapp": "VQC_VVDEC"}
    settings = [63, 60, 57, 54, 51, 48, 45]

    @staticmethod
    def preset() -> str:
        return os.environ.get("VQC_VVC_PRESET", "slow")

    @classmethod
    def command(cls, vvencapp: str, yuv: Path, w: int, h: int, qp: int, out: Path) -> list[str]:
        """The encoder command line (one place, pinned by tests/test_benchmarks.py)."""
        return [vvencapp, "-i", str(yuv), "-s", f"{w}x{h}", "-c", "yuv420", "--preset", cls.preset(), "-q", str(qp),
                "--qpa", "1", "-r", "1", "--intraperiod", "1", "-f", "1", "--internal-bitdepth", "10",
                "--range", "full", "-v", "1", "-t", "1", "-o", str(out)]  # fmt: skip

    def signature(self) -> str:
        return f"vvenc {self.preset()} r1 ip1 qpa1 yuv420p10"

    def version(self) -> str:
        r = subprocess.run([self.path("vvencapp"), "--version"], capture_output=True)
        return (r.stdout + r.stderr).decode(errors="replace").strip().splitlines()[0][:80]

    def run(self, img, qp, tmp):
        yuv, w, h = rgb_to_yuv420(img)
        yuv.tofile(tmp / "in.yuv")
        t = time.perf_counter()
        self.sh(self.command(self.path("vvencapp"), tmp / "in.yuv", w, h, qp, tmp / "o.266"))
        enc = time.perf_counter() - t
        t = time.perf_counter()
        self.sh([self.path("vvdecapp"), "-b", str(tmp / "o.266"), "-o", str(tmp / "rec.yuv"), "-v", "1"])
        dec = time.perf_counter() - t
        rec = yuv420_10_to_rgb(np.fromfile(tmp / "rec.yuv", dtype="<u2"), w, h)[: img.shape[0], : img.shape[1]]
        return (tmp / "o.266").stat().st_size, rec, enc, dec


class PillowCodec(Codec):
    """JPEG, WebP and AVIF through Pillow's own encoders."""

    def __init__(self, name: str, fmt: str, settings: list, **opts) -> None:
        self.name, self.fmt, self.settings, self.opts = name, fmt, settings, opts

    def unavailable(self):
        from PIL import features

        feature = {"WEBP": "webp", "AVIF": "avif", "JPEG": "jpg"}[self.fmt]
        return None if features.check(feature) else f"Pillow built without {feature}"

    def version(self):
        from PIL import __version__, features

        feature = {"WEBP": "webp", "AVIF": "avif", "JPEG": "jpg"}[self.fmt]
        return f"Pillow {__version__} / {feature} {features.version(feature)}"

    def run(self, img, q, tmp):
        buf = io.BytesIO()
        t = time.perf_counter()
        Image.fromarray(img).save(buf, format=self.fmt, quality=q, **self.opts)
        enc = time.perf_counter() - t
        data = buf.getvalue()
        t = time.perf_counter()
        rec = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        return len(data), rec, enc, time.perf_counter() - t


class HEIF(Codec):
    """HEIF (x265 HEVC) through pillow-heif."""

    name = "HEIF"
    settings = [0, 5, 10, 20]

    def unavailable(self):
        try:
            import pillow_heif  # noqa: F401
        except ImportError:
            return "pillow-heif not installed"
        return None

    def version(self):
        import pillow_heif

        return f"pillow-heif {pillow_heif.__version__} / libheif {pillow_heif.libheif_version()}"

    def run(self, img, q, tmp):
        import pillow_heif

        t = time.perf_counter()
        data = pillow_heif.from_bytes("RGB", (img.shape[1], img.shape[0]), img.tobytes())
        buf = io.BytesIO()
        data.save(buf, quality=q)
        enc = time.perf_counter() - t
        t = time.perf_counter()
        rec = np.asarray(pillow_heif.open_heif(io.BytesIO(buf.getvalue())).to_pillow().convert("RGB"))
        return len(buf.getvalue()), rec, enc, time.perf_counter() - t


class JXL(Codec):
    """JPEG XL (libjxl) through imagecodecs, swept by Butteraugli distance."""

    name = "JPEG XL"
    settings = [25.0, 15.0, 10.0]

    def unavailable(self):
        try:
            import imagecodecs
        except ImportError:
            return "imagecodecs not installed"
        return None if imagecodecs.JPEGXL.available else "imagecodecs built without JPEG XL"

    def version(self):
        import imagecodecs

        return f"imagecodecs {imagecodecs.__version__} / libjxl {imagecodecs.jpegxl_version()}"

    def run(self, img, d, tmp):
        import imagecodecs

        t = time.perf_counter()
        data = imagecodecs.jpegxl_encode(img, distance=float(d), effort=7)
        enc = time.perf_counter() - t
        t = time.perf_counter()
        rec = np.asarray(imagecodecs.jpegxl_decode(data))[..., :3]
        return len(data), rec, enc, time.perf_counter() - t


class VQC(Codec):
    """vqcodec itself at every codebook size of a bundle."""

    def __init__(self, model: str | None = None) -> None:
        sys.path.insert(0, str(REPO))
        from vqcodec import zoo

        self.model = model
        self.bundle = None
        try:
            man = zoo._read_manifest(zoo.find_bundle(model or zoo.DEFAULT_MODEL))
            # the model id is part of the name, so rd.py's cache never serves another model's results
            self.name = f"vqcodec ({man['name']} {man['model_id']})"
            self.settings = list(man["codebook_sizes"])
            self._version = man["model_id"]
            # the context model decides the bytes but not the model id: a bundle that gains or
            # changes one is measured again (the first 4 hex digits are the file's context tag)
            ctx = man["files"].get(zoo.RECOVERY)
            self._signature = f"context {ctx[:4]}" if ctx else "static"
            # so does the default coding mode (int8-paired from 0.3.0 where the int8 model ships),
            # and the engine decides the index map (OpenVINO's differs in about 1 % of positions)
            if zoo.INT8 in man["files"]:
                self._signature += f"; int8-paired {man['files'][zoo.INT8][:4]}"
            if man.get("config", {}).get("backbone") == "taef2" and os.environ.get("VQC_ENGINE", "") != "torch":
                self._signature += "; openvino"
            self._missing = None
        except Exception as e:  # noqa: BLE001
            self.name, self.settings, self._version, self._missing = "vqcodec", [], "", str(e)

    def unavailable(self):
        return self._missing

    def signature(self) -> str:
        return getattr(self, "_signature", "")

    def version(self):
        return f"model id {self._version}"

    def run(self, img, k, tmp):
        from vqcodec import codec, zoo

        if self.bundle is None:
            self.bundle = zoo.load_model(self.model)
        t = time.perf_counter()
        data = codec.encode(img, int(k), self.bundle)
        enc = time.perf_counter() - t
        t = time.perf_counter()
        rec = codec.decode(data, self.bundle)
        return len(data), rec, enc, time.perf_counter() - t


def select(codecs: list[Codec], names: list[str] | None) -> list[Codec]:
    """The codecs ``names`` asks for (all when None): a full name (any case), or a first word
    ("vqcodec" for "vqcodec (vqc-small)"), or an alias such as JXL; "JPEG" is JPEG, not JPEG XL."""
    if not names:
        return list(codecs)
    asked = {ALIASES.get(n.lower(), n.lower()) for n in names}
    full = {c.name.lower() for c in codecs}
    return [c for c in codecs
            if c.name.lower() in asked or (c.name.split(" ")[0].lower() in asked - full)]  # fmt: skip


def usable(model: str | list[str] | None, names: list[str] | None) -> list[Codec]:
    """The asked-for codecs that can run here; each missing one is skipped with a warning."""
    out = []
    for c in select(all_codecs(model), names):
        why = c.unavailable()
        if why:
            print(f"warning: skipping {c.name}: {why}", file=sys.stderr)
            continue
        out.append(c)
    return out


ALIASES = {"jxl": "jpeg xl", "jpegxl": "jpeg xl", "hevc": "bpg", "vtm": "vvc"}


def all_codecs(model: str | list[str] | None = None) -> list[Codec]:
    """vqcodec with ``model`` (a bundle, several bundles, or the default one), then the others."""
    models = model if isinstance(model, list) else [model]
    return [
        *(VQC(m) for m in models),
        BPG(),
        VVC(),
        HEIF(),
        PillowCodec("AVIF", "AVIF", [0, 5, 10, 20], speed=4),
        JXL(),
        PillowCodec("WebP", "WEBP", [0, 5, 10], method=6),
        PillowCodec("JPEG", "JPEG", [1, 3, 5], optimize=True),
    ]
