"""Model bundles: ``models/<name>/manifest.json`` + safetensors, sha256-checked on load.

A bundle holds the autoencoder weights (fp16 on disk, fp32 in memory), one codebook and one
index-frequency table per supported K, and a manifest with the architecture config, the
32-bit model id that .vqc headers carry, the sha256 of every file, how it was trained and what
it scored. The manifest is the source of truth: config and hashes never come from tensor shapes.

Bundles are searched in ``$VQC_MODELS`` (colon-separated folders), then the bundles installed
with the package (``vqcodec/models/`` of a wheel: the repository's ``models/`` as package data),
then the repository's ``models/`` (a checkout or an editable install).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vqcodec.entropy import FrequencyTable
from vqcodec.errors import VqcModelError, VqcUsageError

# torch, safetensors and the networks are imported only where weights are read or written, so
# that listing bundles and reading manifests (vqc models, find_by_id) start without torch
if TYPE_CHECKING:
    import torch

    from vqcodec.nets.autoencoder import AutoencoderConfig, VQAutoencoder

DEFAULT_MODEL = "vqc-gan2"
MANIFEST = "manifest.json"
WEIGHTS = "autoencoder.safetensors"
CODEBOOKS = "codebooks.safetensors"
TAEF2_LICENSE = Path(__file__).resolve().parent / "licenses" / "TAEF2-LICENSE"
"""MIT notice of the TAEF2 weights, copied beside every bundle derived from them."""
RECOVERY = "recovery.safetensors"
RECOVERY_AR = "recovery-ar.safetensors"
RECOVERY_FILL = "recovery-fill.safetensors"
# kind -> (manifest key, weight file) of the index-map transformers a bundle may ship: ``masked``
# serves the context coder (and recovery when there is no ``fill``), ``fill`` is trained on
# packet-loss holes only, ``ar`` is the paper's autoregressive model
TRANSFORMERS = {
    "masked": ("recovery", RECOVERY),
    "ar": ("recovery_ar", RECOVERY_AR),
    "fill": ("recovery_fill", RECOVERY_FILL),
}
EXACT = {"masked": "recovery-int.safetensors", "fill": "recovery-fill-int.safetensors"}
"""kind -> file of the integer-exact copy of a bidirectional transformer (``nets/int_transformer``):
the context coder's frequencies (coding mode ``exact``) and recovery's filled index maps are
computed from it, identical on every CPU, GPU and thread count. Written beside the float weights
whenever those are (``save_recovery``), listed in the manifest's ``files``; not in the model id."""
INT8 = "recovery-int8.safetensors"
"""The file of the int8 context model (coding mode ``int8``), beside the int16 one; not in the model id."""
INT8_FILES = {"masked": INT8, "fill": "recovery-fill-int8.safetensors"}
"""kind -> file of the int8 copy of a bidirectional transformer: the context model (coding mode
``int8``) and the recovery-only ``fill`` model (packet-loss recovery, from 0.3.0); not in the model id."""
LAYERS = "layers.safetensors"
"""The nested codebooks of layered files (``vqcodec.layers``); not in the model id."""
BUNDLE_FORMAT = 1


def search_paths() -> list[Path]:
    paths = [Path(p) for p in os.environ.get("VQC_MODELS", "").split(os.pathsep) if p]
    here = Path(__file__).resolve().parent
    checkout = here.parent / "models" if (here.parent / "pyproject.toml").is_file() else None
    return paths + [here / "models"] + ([checkout] if checkout else [])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Bundle:
    """A loaded model bundle, ready to encode and decode."""

    name: str
    path: Path
    manifest: dict
    model: VQAutoencoder
    codebooks: dict[int, torch.Tensor] = field(default_factory=dict)
    tables: dict[int, FrequencyTable] = field(default_factory=dict)
    _transformers: dict = field(default_factory=dict)
    planes: dict[int, list[FrequencyTable]] = field(default_factory=dict)  # m > 1: one table per index plane

    def has_transformer(self, kind: str) -> bool:
        """Whether the bundle ships the ``masked`` or ``ar`` transformer (without loading it)."""
        return kind in TRANSFORMERS and TRANSFORMERS[kind][0] in self.manifest

    def transformer(self, kind: str):
        """The ``masked`` or ``ar`` index-map transformer, loaded once; None if not shipped."""
        if kind not in self._transformers and self.has_transformer(kind):
            from safetensors.torch import load_file

            from vqcodec.nets.transformer import IndexTransformer, TransformerConfig

            key, fname = TRANSFORMERS[kind]
            try:
                cfg = TransformerConfig.from_dict(self.manifest[key]["config"])
                net = _checked_build(self.path, IndexTransformer, cfg)
                sd = load_file(_verified(self.path, self.manifest, fname))
                net.load_state_dict({k: v.float() for k, v in sd.items()})
            except VqcModelError:
                raise
            except Exception as e:  # noqa: BLE001 - a damaged bundle must not surface as a traceback
                raise VqcModelError(f"{self.path}: cannot load {fname} ({_first_line(e)})") from None
            self._transformers[kind] = net.eval().requires_grad_(False)
        return self._transformers.get(kind)

    def has_exact(self, kind: str) -> bool:
        """Whether the bundle ships the integer-exact copy of transformer ``kind`` (masked or fill)."""
        return kind in EXACT and EXACT[kind] in self.manifest.get("files", {}) and self.has_transformer(kind)

    def exact_transformer(self, kind: str):
        """The integer-exact ``IntTransformer`` of ``kind``, loaded once; None if not shipped."""
        key = "exact:" + kind
        if key not in self._transformers and self.has_exact(kind):
            from vqcodec.nets.int_transformer import IntTransformer
            from vqcodec.nets.transformer import IndexTransformer

            def build(cfg, tensors):
                _checked_build(self.path, IndexTransformer, cfg)  # bounds the config's size
                return IntTransformer(cfg, tensors)

            self._transformers[key] = self._integer_net(kind, EXACT[kind], build)
        return self._transformers.get(key)

    def _integer_net(self, kind: str, fname: str, build):
        """``build(config of transformer kind, tensors of fname)``, with a damaged or tampered file
        (sha256, bounds, shapes) a one-line ``VqcModelError``, never a traceback."""
        from safetensors.torch import load_file

        from vqcodec.nets.transformer import TransformerConfig

        try:
            cfg = TransformerConfig.from_dict(self.manifest[TRANSFORMERS[kind][0]]["config"])
            return build(cfg, load_file(_verified(self.path, self.manifest, fname)))
        except VqcModelError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged bundle must not surface as a traceback
            raise VqcModelError(f"{self.path}: cannot load {fname} ({_first_line(e)})") from None

    def has_int8(self, kind: str = "masked") -> bool:
        """Whether the bundle ships the int8 copy of transformer ``kind`` (and the float model whose
        config it shares): ``masked`` is the context model of coding mode ``int8``, ``fill`` recovery's."""
        return kind in INT8_FILES and INT8_FILES[kind] in self.manifest.get("files", {}) and self.has_transformer(kind)

    def int8_transformer(self, kind: str = "masked"):
        """The int8 copy of transformer ``kind`` (``nets/int8_transformer.Int8Transformer``), loaded
        once; None if not shipped. A file that fails its sha256 or its bounds is a ``VqcModelError``."""
        key = "int8:" + kind
        if key not in self._transformers and self.has_int8(kind):
            from vqcodec.nets.int8_transformer import Int8Transformer

            self._transformers[key] = self._integer_net(kind, INT8_FILES[kind], Int8Transformer)
        return self._transformers.get(key)

    def layer_sets(self) -> list[tuple[int, ...]]:
        """The chains of codebook sizes the bundle ships nested books for (``layer_set``)."""
        if LAYERS not in self.manifest.get("files", {}):
            return []
        return [tuple(int(k) for k in name.split(",")) for name in self.manifest.get("layers", {})]

    def layer_set(self, sizes: tuple[int, ...]):
        """The shipped ``layers.LayerSet`` whose chain is ``sizes`` or starts with it (a file of
        fewer layers holds the first layers of the shipped chain, chosen as for the whole chain).
        A usage error names the chains shipped; a damaged file is a ``VqcModelError``."""
        from vqcodec.layers import LayerSet

        sizes = tuple(sizes)
        full = next((c for c in self.layer_sets() if c[: len(sizes)] == sizes), None)
        if full is None:
            offered = "; ".join(",".join(map(str, c)) for c in self.layer_sets()) or "none"
            raise VqcUsageError(f"model {self.name!r} has no nested codebooks for layers {','.join(map(str, sizes))} "
                                f"(it ships: {offered})")  # fmt: skip
        key = "layers:" + ",".join(map(str, full))
        if key not in self._transformers:
            from safetensors.torch import load_file

            name = "-".join(map(str, full))
            try:
                t = load_file(_verified(self.path, self.manifest, LAYERS))
                books = tuple(t[f"{name}.book.{k}"].float() for k in full[:-1]) + (self.codebook(full[-1]),)
                parents = tuple(t[f"{name}.parent.{k}"].numpy().astype(np.int64) for k in full[1:])
                record = self.manifest["layers"][",".join(map(str, full))]
                weights = tuple(float(w) for w in record["weights"])
                tag = int(self.manifest["files"][LAYERS][:4], 16)
                draw = None
                if record.get("draw", "books") == "flat":  # coarse layers drawn with the flat books' vectors
                    draw = tuple(self.codebook(k) for k in full)
                self._transformers[key] = LayerSet(full, parents, books, weights, tag, draw)
            except VqcModelError:
                raise
            except Exception as e:  # noqa: BLE001 - a damaged bundle must not surface as a traceback
                raise VqcModelError(f"{self.path}: cannot load {LAYERS} ({_first_line(e)})") from None
        return self._transformers[key]

    @property
    def exact_tag(self) -> int:
        """16 bits of the integer context model's sha256 (as ``context_tag``, for coding mode exact)."""
        return int(self.manifest["files"][EXACT["masked"]][:4], 16)

    @property
    def recovery_model(self):
        """The bidirectional index-map transformer (masked recovery, context coding), or None."""
        return self.transformer("masked")

    @property
    def ar_model(self):
        """The causal (raster-order) index-map transformer of ``--recover ar``, or None."""
        return self.transformer("ar")

    @property
    def context_levels(self) -> int:
        """Lattice levels of the context coder's group order (``context.groups``), set when the
        context model is shipped: 1 = four groups, 2 = seven."""
        return int(self.manifest.get("recovery", {}).get("context_levels", 1))

    @property
    def context_tag(self) -> int:
        """16 bits of the context model's sha256, written into context-coded payloads so that a
        file coded with another version of the transformer is refused up front."""
        return int(self.manifest["files"][RECOVERY][:4], 16)

    @property
    def model_id(self) -> int:
        return int(self.manifest["model_id"], 16)

    @property
    def codebook_sizes(self) -> list[int]:
        return sorted(self.codebooks)

    @property
    def stride(self) -> int:
        return self.model.stride

    @property
    def m(self) -> int:
        return self.model.quantize.m

    def codebook(self, k: int) -> torch.Tensor:
        if k not in self.codebooks:
            raise VqcUsageError(
                f"codebook size {k} is not available in model {self.name!r}; "
                f"choose one of {', '.join(map(str, self.codebook_sizes))}"
            )
        return self.codebooks[k]

    def table(self, k: int) -> FrequencyTable:
        self.codebook(k)
        return self.tables[k]

    def plane_tables(self, k: int) -> list[FrequencyTable] | None:
        """One frequency table per index plane for K (bundles with m > 1 that ship them), else None:
        the static coder then codes plane j with table j instead of the pooled ``table(k)``."""
        self.codebook(k)
        return self.planes.get(k)


MAX_MANIFEST_BYTES = 1 << 20
MAX_WEIGHT_BYTES = 512 << 20
MAX_PARAMETERS = 100_000_000
"""Bounds on what a bundle may make us read or allocate, checked before reading or building:
a hostile or damaged manifest cannot declare a network that eats all memory."""


def _first_line(e: Exception) -> str:
    """``Type: first line of the message``: a library exception as part of a one-line error."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _check_bytes(path: Path, limit: int) -> None:
    size = path.stat().st_size
    if size > limit:
        raise VqcModelError(f"{path}: {size} bytes, more than the {limit >> 20} MiB a bundle file may have")


def _no_init_mode():
    """A torch function mode under which the random initialisers do nothing.

    Why: counting a config's parameters on the meta device needs no values, and ``normal_`` on a
    meta tensor goes through torch's Python reference kernels, whose first call imports
    ``torch._dynamo``: 1.2-1.8 s of every process's model load on a 2-core CPU, for nothing.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    skip = {"normal_", "uniform_"}  # torch.Tensor's and torch._C.TensorBase's methods alike

    class _NoInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", None) in skip:  # torch.nn.init passes the tensor by keyword
                target = args[0] if args else (kwargs or {}).get("tensor")
                if isinstance(target, torch.Tensor):
                    return target
            return func(*args, **(kwargs or {}))

    return _NoInit()


def _checked_build(path: Path, build, config) -> torch.nn.Module:
    """Build a network only after counting its parameters on the meta device (no memory)."""
    import torch

    try:
        with torch.device("meta"), _no_init_mode():
            n = sum(p.numel() for p in build(config).parameters())
    except Exception as e:  # noqa: BLE001 - any nonsense in a config is the bundle's fault
        raise VqcModelError(f"{path}: invalid network config ({type(e).__name__}: {e})") from None
    if n > MAX_PARAMETERS:
        raise VqcModelError(f"{path}: config declares {n} parameters, more than the limit of {MAX_PARAMETERS}")
    return build(config)


def _read_manifest(folder: Path) -> dict:
    try:
        _check_bytes(folder / MANIFEST, MAX_MANIFEST_BYTES)
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise VqcModelError(f"{folder}: no {MANIFEST}, not a model bundle") from None
    except (OSError, json.JSONDecodeError) as e:
        raise VqcModelError(f"{folder}/{MANIFEST}: unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise VqcModelError(f"{folder}: unsupported bundle format {manifest.get('format')!r}")
    for key in ("name", "model_id", "arch", "config", "files", "codebook_sizes"):
        if key not in manifest:
            raise VqcModelError(f"{folder}/{MANIFEST}: missing {key!r}")
    return manifest


def _verified(folder: Path, manifest: dict, fname: str) -> Path:
    path = folder / fname
    want = manifest["files"].get(fname)
    if want is None:
        raise VqcModelError(f"{folder}: {fname} is not listed in the manifest")
    if not path.is_file():
        raise VqcModelError(f"{folder}: {fname} is missing")
    _check_bytes(path, MAX_WEIGHT_BYTES)
    if sha256_file(path) != want:
        raise VqcModelError(f"{folder}: sha256 mismatch for {fname} (damaged or replaced file)")
    return path


def find_bundle(name_or_path: str | os.PathLike) -> Path:
    """A bundle folder by path, or by name in the search paths."""
    p = Path(name_or_path)
    if (p / MANIFEST).is_file():
        return p
    for root in search_paths():
        if (root / str(name_or_path) / MANIFEST).is_file():
            return root / str(name_or_path)
    raise VqcModelError(f"model {str(name_or_path)!r} not found; installed: {', '.join(available()) or 'none'}")


def available() -> list[str]:
    """Names of the bundles found in the search paths."""
    names = []
    for root in search_paths():
        if root.is_dir():
            names += sorted(d.name for d in root.iterdir() if (d / MANIFEST).is_file())
    return list(dict.fromkeys(names))


def manifests() -> list[tuple[Path, dict]]:
    out = []
    for name in available():
        folder = find_bundle(name)
        try:
            out.append((folder, _read_manifest(folder)))
        except VqcModelError:
            continue
    return out


REFERENCE_BITS = 6.0
"""Bits a position of plain VQ at K=64, the rate at which ``vqc models`` quotes each bundle's Kodak
LPIPS: a bundle with m index planes is quoted at the K where m x log2 K is nearest (LooC or the dual
codebook with m = 2: K = 8), so bundles of different quantizers are listed at about the same rate."""


def _planes(manifest: dict) -> int:
    """Index planes m of a manifest's quantizer (1 for plain VQ)."""
    return int(manifest.get("quantizer", {}).get("m", manifest.get("config", {}).get("m", 1)))


def reference_k(manifest: dict) -> int | None:
    """The scored K of a bundle nearest to ``REFERENCE_BITS`` bits a position (ties: the smaller K)."""
    m = _planes(manifest)
    scored = [int(k) for k, s in manifest.get("scores", {}).items() if k.isdigit() and isinstance(s, dict)]
    if not scored:
        return None
    return min(scored, key=lambda k: (abs(m * np.log2(k) - REFERENCE_BITS), k))


def kodak_lpips(manifest: dict) -> str:
    """``0.389 (K=64)``: the measured Kodak LPIPS-Alex of a manifest at its reference K (m > 1: the
    planes are named, ``K=8, m=2``), or ``-`` when the bundle carries no Kodak scores."""
    k = reference_k(manifest)
    s = manifest["scores"].get(str(k), {}) if k is not None else {}
    if "lpips" not in s:
        return "-"
    m = _planes(manifest)
    return f"{s['lpips']:.3f} (K={k}" + (f", m={m})" if m > 1 else ")")


def find_by_id(model_id: int) -> Path:
    """The installed bundle whose manifest carries ``model_id`` (what a .vqc header names)."""
    for folder, man in manifests():
        if int(man["model_id"], 16) == model_id:
            return folder
    have = ", ".join(f"{m['name']}={m['model_id']}" for _, m in manifests()) or "none"
    raise VqcModelError(f"file needs model id {model_id:08x}, which no installed bundle has (installed: {have})")


def load_bundle_state(folder: str | os.PathLike) -> tuple[AutoencoderConfig, dict, dict]:
    """(config, fp32 state dict, training record) of a bundle: what a trainer resumes from."""
    from safetensors.torch import load_file

    from vqcodec.nets.autoencoder import AutoencoderConfig

    folder = find_bundle(folder)
    manifest = _read_manifest(folder)
    cfg = AutoencoderConfig.from_dict(manifest["config"])
    sd = {k: v.float() for k, v in load_file(_verified(folder, manifest, WEIGHTS)).items()}
    return cfg, sd, manifest.get("training", {})


@lru_cache(maxsize=4)
def _load_cached(folder: str, mtime: float) -> Bundle:
    import torch
    from safetensors.torch import load_file

    from vqcodec.nets.autoencoder import AutoencoderConfig, build_autoencoder

    path = Path(folder)
    manifest = _read_manifest(path)
    try:
        cfg = AutoencoderConfig.from_dict(manifest["config"])
        kind = manifest.get("quantizer", {}).get("type", "vq")
        if kind != cfg.quantizer:
            raise VqcModelError(f"{path}: manifest says quantizer {kind!r}, config says {cfg.quantizer!r}")
        model = _checked_build(path, build_autoencoder, cfg)
        sd = load_file(_verified(path, manifest, WEIGHTS))
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
        missing = [k for k in missing if not k.endswith("usage")]  # training statistics, not shipped
        if missing or unexpected:
            raise VqcModelError(
                f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        cb = load_file(_verified(path, manifest, CODEBOOKS))
    except VqcModelError:
        raise
    except Exception as e:  # a damaged bundle must not surface as a traceback
        raise VqcModelError(f"{path}: cannot load weights ({_first_line(e)})") from None
    model.eval().requires_grad_(False)
    model.pixels_int8 = _int8_spec(path, manifest)
    if model.config.backbone == "taef2":  # full-resolution convolutions: channels_last is what oneDNN runs fastest
        model = model.to(memory_format=torch.channels_last)
    codebooks, tables = {}, {}
    for k in manifest["codebook_sizes"]:
        if f"codebook.{k}" not in cb or f"freq.{k}" not in cb:
            raise VqcModelError(f"{path}: codebook or frequency table for K={k} missing")
        codebooks[int(k)] = cb[f"codebook.{k}"].float()
        tables[int(k)] = FrequencyTable(cb[f"freq.{k}"].numpy().astype(np.int64))
    planes = {}
    m = model.quantize.m
    for k in manifest["codebook_sizes"]:
        if f"freq.{k}.0" in cb:
            if any(f"freq.{k}.{j}" not in cb for j in range(m)):
                raise VqcModelError(f"{path}: per-plane frequency tables for K={k} incomplete (m = {m})")
            planes[int(k)] = [FrequencyTable(cb[f"freq.{k}.{j}"].numpy().astype(np.int64)) for j in range(m)]
    return Bundle(manifest["name"], path, manifest, model, codebooks, tables, planes=planes)


def _int8_spec(path: Path, manifest: dict) -> dict | None:
    """The bundle's int8 decoder spec (``nets/int8_pixels``), or None where it has none."""
    entry = manifest.get("pixels_int8")
    if not entry:
        return None
    from vqcodec.nets import int8_pixels

    try:
        return int8_pixels.read_spec(_verified(path, manifest, entry["file"]))
    except VqcModelError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged spec is a damaged bundle
        raise VqcModelError(f"{path}: cannot read the int8 decoder spec ({_first_line(e)})") from None


def load_model(name_or_path: str | os.PathLike | None = None) -> Bundle:
    """Load a bundle by name (default: the shipped default) or folder; sha256-verified."""
    folder = find_bundle(name_or_path or DEFAULT_MODEL).resolve()
    return _load_cached(str(folder), (folder / MANIFEST).stat().st_mtime)


def _readable(path: Path) -> None:
    """Give a written file the mode the umask allows (0644 usually): safetensors creates its files
    0600, which would leave a bundle written by one user unreadable by the others. Reading the
    umask means setting it for an instant; bundles are written from one thread, so that is safe."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def save_fp16(state: dict, path: Path) -> None:
    """A state dict as fp16 safetensors: bundles ship fp16, half the bytes of fp32."""
    import torch
    from safetensors.torch import save_file

    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}, str(path))
    _readable(path)


def write_manifest(folder: Path, manifest: dict) -> None:
    """Replace ``folder``'s manifest all at once (written beside it, then renamed), and drop the
    cached bundles so the next load sees it."""
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, folder / MANIFEST)
    _load_cached.cache_clear()


def save_bundle(
    folder: Path,
    name: str,
    model: VQAutoencoder,
    arch: str,
    codebooks: dict[int, torch.Tensor],
    tables: dict[int, FrequencyTable],
    training: dict,
    scores: dict | None = None,
    extra: dict | None = None,
    plane_tables: dict[int, list[FrequencyTable]] | None = None,
) -> dict:
    """Write a bundle (fp16 weights) and its manifest; returns the manifest.

    ``plane_tables`` (m > 1): per K, one frequency table per index plane (``freq.<K>.<j>``)."""
    import torch
    from safetensors.torch import save_file

    from vqcodec.nets.autoencoder import quantizer_record

    folder.mkdir(parents=True, exist_ok=True)
    save_fp16({k: v for k, v in model.state_dict().items() if not k.endswith("usage")}, folder / WEIGHTS)
    cb: dict[str, torch.Tensor] = {}
    for k in sorted(codebooks):
        cb[f"codebook.{k}"] = codebooks[k].detach().float().contiguous()
        cb[f"freq.{k}"] = torch.from_numpy(tables[k].counts.astype(np.int32))
        for j, t in enumerate((plane_tables or {}).get(k, [])):
            cb[f"freq.{k}.{j}"] = torch.from_numpy(t.counts.astype(np.int32))
    save_file(cb, str(folder / CODEBOOKS))
    _readable(folder / CODEBOOKS)
    files = {f: sha256_file(folder / f) for f in (WEIGHTS, CODEBOOKS)}
    model_id = hashlib.sha256((files[WEIGHTS] + files[CODEBOOKS]).encode()).hexdigest()[:8]
    manifest = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "model_id": model_id,
        "arch": arch,
        "config": model.config.to_dict(),
        "quantizer": quantizer_record(model.quantize),
        "codebook_sizes": sorted(int(k) for k in codebooks),
        "files": files,
        "training": training,
        "scores": scores or {},
        **(extra or {}),
    }
    if model.config.backbone == "taef2":  # weights derived from TAEF2 (MIT): its notice travels with them
        shutil.copyfile(TAEF2_LICENSE, folder / TAEF2_LICENSE.name)
        manifest["licenses"] = {TAEF2_LICENSE.name: "MIT, (c) 2023 Ollin Boer Bohan: TAEF2 encoder/decoder "
                                "(github.com/madebyollin/taesd), fine-tuned here"}  # fmt: skip
    write_manifest(folder, manifest)
    return manifest


def copy_transformers(src: Bundle, folder: Path) -> dict:
    """Carry ``src``'s index-map transformers (files and manifest entries) into the bundle at
    ``folder``: right when the new bundle has the same encoder and code order (a fine-tuned
    decoder or books), so its index maps mean what the transformers were trained on."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    for key, fname in TRANSFORMERS.values():
        if key in src.manifest:
            shutil.copyfile(_verified(src.path, src.manifest, fname), folder / fname)
            manifest["files"][fname] = sha256_file(folder / fname)
            manifest[key] = src.manifest[key]
    for fname in [*EXACT.values(), *INT8_FILES.values()]:
        if fname in src.manifest["files"]:
            shutil.copyfile(_verified(src.path, src.manifest, fname), folder / fname)
            manifest["files"][fname] = sha256_file(folder / fname)
    write_manifest(folder, manifest)
    return manifest


def save_exact(folder: Path, net, kind: str = "masked") -> dict:
    """Write the integer-exact copy of the bundle's (fp16-stored) transformer ``net`` (masked or
    fill) and list it in the manifest. Exported from the fp16-rounded weights, the ones the float
    path loads, so both paths start from the same numbers."""
    import torch
    from safetensors.torch import save_file

    from vqcodec.nets.int_transformer import export
    from vqcodec.nets.transformer import IndexTransformer

    folder = find_bundle(folder)
    manifest = _read_manifest(folder)
    rounded = IndexTransformer(net.config)
    rounded.load_state_dict({k: v.detach().to(torch.float16).float() for k, v in net.state_dict().items()})
    save_file({k: v.contiguous() for k, v in export(rounded.eval()).items()}, str(folder / EXACT[kind]))
    _readable(folder / EXACT[kind])
    manifest["files"][EXACT[kind]] = sha256_file(folder / EXACT[kind])
    write_manifest(folder, manifest)
    return manifest


def save_recovery(folder: Path, net, record: dict, kind: str = "masked") -> dict:
    """Add (or replace) a bundle's index-map transformer (``kind`` masked or ar); the model id
    does not change, since it only hashes the autoencoder and codebooks, so static-coded files
    still decode (context-coded ones carry the transformer's own tag)."""
    key, fname = TRANSFORMERS[kind]
    folder = find_bundle(folder)
    manifest = _read_manifest(folder)
    save_fp16(net.state_dict(), folder / fname)
    manifest["files"][fname] = sha256_file(folder / fname)
    manifest[key] = {"config": net.config.to_dict(), **record}
    for stale in (EXACT.get(kind), INT8_FILES.get(kind)):  # never left describing the previous weights:
        if stale:  # the int16 copy is written again below, the int8 one by its calibrated export
            manifest["files"].pop(stale, None)
    write_manifest(folder, manifest)
    if kind in EXACT and not net.config.causal:
        manifest = save_exact(folder, net, kind)
    return manifest
