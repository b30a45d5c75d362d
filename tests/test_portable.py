"""Files decode to the same index maps on every computer: golden files, the numpy reference of the
integer context model, and decodes in fresh processes under limited instruction sets.

The golden files in ``tests/expected/portable/`` were made once with the shipped default model
(``GENERATE_EXPECTED=1 python -m pytest tests/test_portable.py`` remakes them, from Kodak crops in
``../shared``; ``GENERATE_EXPECTED=thumbs`` re-renders only their decoded thumbnails,
``GENERATE_EXPECTED=lossy`` only the lossy files' recovered maps, ``GENERATE_EXPECTED=int8`` adds
the int8-mode files of 0.2.0 beside the older ones, which stay as they were made,
``GENERATE_EXPECTED=layers`` the layered files of format version 4 likewise, and
``GENERATE_EXPECTED=paired`` the int8-paired files of 0.3.0); every run,
on whatever CPU CI lands on, decodes them and must find the same index maps. Pixels are compared with a tolerance: the image decoder is float (bf16 on CPUs with native
bf16) and its rounding may differ between machines; only the index map is promised bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vqcodec import channel, codec, container, zoo
from vqcodec.container import CodingMode
from vqcodec.context import groups_in_order
from vqcodec.errors import VqcFormatError, VqcUsageError
from vqcodec.nets import int_transformer as it

from .conftest import REPO, SHARED, make_image
from .int_reference import Int8Reference, Reference

GOLDEN = REPO / "tests" / "expected" / "portable"
PHOTOS = ("kodim01", "kodim05", "kodim13", "kodim23")
CROP = (400, 280)  # a 25 x 18 index map: tiles cut on both axes
THUMB = 4  # decoded pictures are kept at 1/4 size
MIN_PSNR = 30.0
"""Tolerance of a golden file's decoded thumbnail: the float image decoder's rounding (measured
between fp32 kernels here: docs/architecture.md, "Portable files"); index maps must be exact."""
PORTABILITY = REPO / "benchmarks" / "portability.py"


def map_hash(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<u2").tobytes()).hexdigest()[:16]


def _thumb(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[0] // THUMB * THUMB, pixels.shape[1] // THUMB * THUMB
    p = pixels[:h, :w].astype(np.float64).reshape(h // THUMB, THUMB, w // THUMB, THUMB, 3)
    return np.rint(p.mean((1, 3))).astype(np.uint8)


def _decode_map(data: bytes):
    return codec.unpack_any(data)[0]


def _record(name: str, enc, bundle) -> str:
    """Store a golden file's decoded index map and thumbnail beside it; returns the map's hash."""
    Image.fromarray(_thumb(codec.synthesize(enc, bundle))).save(GOLDEN / name.replace(".vqc", ".thumb.png"))
    np.save(GOLDEN / name.replace(".vqc", ".map.npy"), enc.indices.astype(np.uint16))
    return map_hash(enc.indices)


def _generate() -> None:
    """(Re)make the golden files from Kodak crops with the default bundle."""
    bundle = zoo.load_model(None)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    expected = {}
    for n, photo in enumerate(PHOTOS):
        crop = _crop(photo)
        jobs = [(k, mode, 0, None) for k in (8, 64, 1024) for mode in (CodingMode.EXACT, CodingMode.INT8)]
        jobs += [((64, 1024, 8, 64)[n], CodingMode.STATIC, 16, n)]  # packetized, 30 % of the packets lost
        if n == 0:
            jobs.append((64, CodingMode.CONTEXT, 0, None))  # a float-context (legacy mode) file
        for k, mode, packets, seed in jobs:
            data = codec.pack(codec.analyze(crop, bundle, k), bundle, mode, packets)
            if seed is not None:
                data = channel.corrupt(data, loss=0.3, seed=seed)[0]
            name = f"{photo}-k{k}-{mode.name.lower()}{'-lossy' if seed is not None else ''}.vqc"
            (GOLDEN / name).write_bytes(data)
            expected[name] = {
                "map": _record(name, _decode_map(data), bundle),
                "k": k,
                "mode": mode.name.lower(),
                "lossy": seed is not None,
            }
    (GOLDEN / "expected.json").write_text(
        json.dumps({"model": bundle.manifest["model_id"], "files": expected}, indent=1)
    )


def _rethumb() -> None:
    """Re-render the thumbnails of the existing golden files (``GENERATE_EXPECTED=thumbs``): for a
    deliberate change of the float picture side (the decoder, recovery's blend at the holes) that
    leaves the files and their index maps alone, so the maps keep their proof of portability."""
    bundle = zoo.load_model(None)
    for name in json.loads((GOLDEN / "expected.json").read_text())["files"]:
        try:
            enc = _decode_map((GOLDEN / name).read_bytes())
        except VqcFormatError:  # the legacy float-context file on a CPU whose float logits differ
            continue
        thumb = _thumb(codec.synthesize(enc, bundle)).astype(np.float64)
        path = GOLDEN / name.replace(".vqc", ".thumb.png")
        mse = ((thumb - np.asarray(Image.open(path)).astype(np.float64)) ** 2).mean()
        if mse > 0 and 10 * np.log10(255**2 / mse) < MIN_PSNR:  # only those the change moved
            Image.fromarray(thumb.astype(np.uint8)).save(path)


def _remap_lossy() -> None:
    """Re-derive the recovered maps (and thumbnails) of the existing lossy golden files
    (``GENERATE_EXPECTED=lossy``): for a retrained recovery model, which changes what a damaged file
    decodes to but not the file. The files stay the ones made on their first machine; the new maps
    are then checked in fresh processes under limited instruction sets
    (``test_golden_files_decode_alike_in_a_fresh_process``) and on the next machines CI lands on."""
    bundle = zoo.load_model(None)
    meta = json.loads((GOLDEN / "expected.json").read_text())
    for name, e in meta["files"].items():
        if not e["lossy"]:
            continue
        e["map"] = _record(name, _decode_map((GOLDEN / name).read_bytes()), bundle)
    (GOLDEN / "expected.json").write_text(json.dumps(meta, indent=1))


def _crop(photo: str) -> np.ndarray:
    img = np.asarray(Image.open(SHARED / "datasets" / "kodak" / f"{photo}.png").convert("RGB"))
    y0, x0 = (img.shape[0] - CROP[1]) // 2, (img.shape[1] - CROP[0]) // 2
    return np.ascontiguousarray(img[y0 : y0 + CROP[1], x0 : x0 + CROP[0]])


def _add_int8() -> None:
    """Add the int8-mode golden files (``GENERATE_EXPECTED=int8``) to the existing set: the same
    crops at K = 8, 64, 1024, coded with the int8 context model; every other file stays as made."""
    bundle = zoo.load_model(None)
    meta = json.loads((GOLDEN / "expected.json").read_text())
    for photo in PHOTOS:
        crop = _crop(photo)
        for k in (8, 64, 1024):
            name = f"{photo}-k{k}-int8.vqc"
            data = codec.pack(codec.analyze(crop, bundle, k), bundle, CodingMode.INT8)
            (GOLDEN / name).write_bytes(data)
            meta["files"][name] = {"map": _record(name, _decode_map(data), bundle), "k": k, "mode": "int8",
                                   "lossy": False}  # fmt: skip
    (GOLDEN / "expected.json").write_text(json.dumps(meta, indent=1))


def _add_paired() -> None:
    """Add the int8-paired golden files (``GENERATE_EXPECTED=paired``, coding mode 5 of 0.3.0): the
    same crops at K = 8, 64, 1024 and a layered file of the chain 8, 64, 1024; the rest as made."""
    from vqcodec import progressive

    bundle = zoo.load_model(None)
    meta = json.loads((GOLDEN / "expected.json").read_text())
    mode = CodingMode.INT8_PAIRED
    for photo in PHOTOS:
        crop = _crop(photo)
        for k in (8, 64, 1024):
            name = f"{photo}-k{k}-int8_paired.vqc"
            data = codec.pack(codec.analyze(crop, bundle, k), bundle, mode)
            (GOLDEN / name).write_bytes(data)
            meta["files"][name] = {"map": _record(name, _decode_map(data), bundle), "k": k, "mode": "int8_paired",
                                   "lossy": False}  # fmt: skip
    name = "kodim01-layers-int8_paired.vqc"
    data, _ = progressive.compress(_crop("kodim01"), bundle, (8, 64, 1024), mode)
    (GOLDEN / name).write_bytes(data)
    meta["files"][name] = {"map": _record(name, _decode_map(data), bundle), "k": 1024, "mode": "int8_paired",
                           "lossy": False, "layers": [8, 64, 1024]}  # fmt: skip
    (GOLDEN / "expected.json").write_text(json.dumps(meta, indent=1))


LAYERED = {"kodim01": CodingMode.INT8, "kodim23": CodingMode.INT8, "kodim05": CodingMode.STATIC}
"""Photos of the layered golden files (chain 8, 64, 1024) and their coding mode."""


def _add_layers() -> None:
    """Add the layered golden files (``GENERATE_EXPECTED=layers``): whole files of the chain
    8, 64, 1024; the map recorded is the top layer's (every layer below is its parents')."""
    from vqcodec import progressive

    bundle = zoo.load_model(None)
    meta = json.loads((GOLDEN / "expected.json").read_text())
    for photo, mode in LAYERED.items():
        name = f"{photo}-layers-{mode.name.lower()}.vqc"
        if name in meta["files"]:
            continue  # made on an earlier machine: kept as made
        data, _ = progressive.compress(_crop(photo), bundle, (8, 64, 1024), mode)
        (GOLDEN / name).write_bytes(data)
        meta["files"][name] = {"map": _record(name, _decode_map(data), bundle), "k": 1024, "mode": mode.name.lower(),
                               "lossy": False, "layers": [8, 64, 1024]}  # fmt: skip
    name = "kodim23-layers-packets-lossy.vqc"  # version 5, 30 % of its packets lost: recovery at the base layer
    if name not in meta["files"]:
        data, _ = progressive.compress(_crop("kodim23"), bundle, (8, 64, 1024), packets=8, parity=(2, 1, 0))
        data = channel.corrupt(data, loss=0.3, seed=3)[0]
        (GOLDEN / name).write_bytes(data)
        meta["files"][name] = {"map": _record(name, _decode_map(data), bundle), "k": 1024, "mode": "static",
                               "lossy": True, "layers": [8, 64, 1024], "packets": 8}  # fmt: skip
    (GOLDEN / "expected.json").write_text(json.dumps(meta, indent=1))


if os.environ.get("GENERATE_EXPECTED") == "1":
    _generate()
elif os.environ.get("GENERATE_EXPECTED") == "int8":
    _add_int8()
elif os.environ.get("GENERATE_EXPECTED") == "thumbs":
    _rethumb()
elif os.environ.get("GENERATE_EXPECTED") == "lossy":
    _remap_lossy()
elif os.environ.get("GENERATE_EXPECTED") == "layers":
    _add_layers()
elif os.environ.get("GENERATE_EXPECTED") == "paired":
    _add_paired()

EXPECTED = json.loads((GOLDEN / "expected.json").read_text())["files"]
EXACT_FILES = sorted(n for n, e in EXPECTED.items() if e["mode"] != "context")


@pytest.mark.parametrize("name", EXACT_FILES)
def test_golden_file_decodes_to_its_index_map(name):
    """Exact context coding and packet-loss recovery: the same index map as when the file was made."""
    data = (GOLDEN / name).read_bytes()
    enc = _decode_map(data)
    want = np.load(GOLDEN / name.replace(".vqc", ".map.npy")).astype(np.int64)
    assert np.array_equal(enc.indices, want), f"{(enc.indices != want).sum()} indices differ"
    assert map_hash(enc.indices) == EXPECTED[name]["map"]
    if not EXPECTED[name]["lossy"]:
        assert container.read_header(data).mode == CodingMode[EXPECTED[name]["mode"].upper()]
    pixels = codec.synthesize(enc, zoo.load_model(None))
    ref = np.asarray(Image.open(GOLDEN / name.replace(".vqc", ".thumb.png"))).astype(np.float64)
    mse = ((_thumb(pixels).astype(np.float64) - ref) ** 2).mean()
    assert mse == 0 or 10 * np.log10(255**2 / mse) >= MIN_PSNR


def test_legacy_float_context_file_decodes_or_refuses_cleanly():
    """A file of the float context model (mode 1) still decodes here; on a CPU whose float logits
    differ it fails the map checksum with a one-line error, never a wrong picture."""
    (name,) = [n for n, e in EXPECTED.items() if e["mode"] == "context"]
    data = (GOLDEN / name).read_bytes()
    assert container.read_header(data).mode == CodingMode.CONTEXT
    try:
        enc = codec.unpack(data)[0]
    except VqcFormatError as e:
        assert "checksum" in str(e) or "context" in str(e)
        return
    assert map_hash(enc.indices) == EXPECTED[name]["map"]


def _tensors(bundle):
    from safetensors.numpy import load_file

    return load_file(bundle.path / zoo.EXACT["masked"])


@pytest.mark.parametrize("name", ["kodim05-k64-exact.vqc", "kodim23-k1024-exact.vqc"])
def test_numpy_reference_gives_the_same_frequencies(name):
    """The spec's arithmetic, reimplemented in numpy int64 (tests/int_reference.py), gives the
    frequencies of every context group of a real index map exactly as the production path."""
    bundle = zoo.load_model(None)
    net = bundle.exact_transformer("masked")
    cfg = net.config
    ref = Reference(_tensors(bundle), cfg.sizes, cfg.dim, cfg.depth, cfg.heads, cfg.local)
    _same_frequencies(net, ref, name, bundle.context_levels)


def _same_frequencies(net, ref, name: str, levels: int, paired: bool = False) -> None:
    """Every context group of a golden file's map: the production logits (whole tiles and the coder's
    kept rows alike) give the reference's frequencies."""
    k = EXPECTED[name]["k"]
    plane = np.load(GOLDEN / name.replace(".vqc", ".map.npy")).astype(np.int64)[0]
    h, w = plane.shape
    visible = np.zeros((h, w), bool)
    idx = torch.from_numpy(plane)
    for sel in groups_in_order(h, w, levels, paired):
        want = ref.frequencies(ref.map_logits(plane, ~visible, k)[sel])
        full = net.tiled(idx, torch.from_numpy(~visible), k)[torch.from_numpy(sel)]
        fast = net.coding_logits(idx, torch.from_numpy(~visible), k, torch.from_numpy(sel), (0, h))
        assert torch.equal(full, fast)
        assert np.array_equal(net.frequencies(fast).numpy(), want)
        visible |= sel


def _run(env: dict[str, str], role: str, payload) -> dict[str, str]:
    proc = subprocess.run([sys.executable, str(PORTABILITY), f"--{role}"], input=json.dumps(payload),
                          env={**os.environ, **env}, capture_output=True, text=True, check=False, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


ENVS = {
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "dnnl-sse41": {"DNNL_MAX_CPU_ISA": "SSE41"},
    "dnnl-avx2": {"DNNL_MAX_CPU_ISA": "AVX2"},
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "fp32": {"VQC_FP32": "1"},
    "threads-1": {"VQC_THREADS": "1"},
    "threads-2": {"VQC_THREADS": "2"},
}


@pytest.mark.parametrize("env", ENVS, ids=list(ENVS))
def test_golden_files_decode_alike_in_a_fresh_process(env):
    """Instruction sets and thread counts are fixed when torch loads, so each runs in its own process."""
    files = [
        n
        for n in EXACT_FILES
        if n.startswith(("kodim01", "kodim23"))
        and (EXPECTED[n]["k"] == 64 or EXPECTED[n]["lossy"] or "layers" in EXPECTED[n])
    ]
    got = _run(ENVS[env], "worker", [str(GOLDEN / n) for n in files])
    assert {n: got[str(GOLDEN / n)] for n in files} == {n: EXPECTED[n]["map"] for n in files}


def test_encoded_under_limited_instruction_sets_decodes_with_the_full_ones(tmp_path):
    img = tmp_path / "im.png"
    Image.fromarray(make_image(112, 176, seed=3)).save(img)
    jobs = [[str(img), 64, "EXACT", str(tmp_path / "a.vqc"), 0, None],
            [str(img), 1024, "EXACT", str(tmp_path / "b.vqc"), 0, None],
            [str(img), 64, "INT8", str(tmp_path / "d.vqc"), 0, None],
            [str(img), 1024, "INT8_PAIRED", str(tmp_path / "e.vqc"), 0, None],
            [str(img), 64, "STATIC", str(tmp_path / "c.vqc"), 8, 2]]  # fmt: skip
    limited = {"ATEN_CPU_CAPABILITY": "default", "DNNL_MAX_CPU_ISA": "SSE41", "VQC_THREADS": "1"}
    made = _run(limited, "encoder", jobs)
    recovered = _run(limited, "worker", [str(tmp_path / "c.vqc")])
    for f, h in {**made, **recovered}.items():
        if h != "lossy":
            assert map_hash(_decode_map(open(f, "rb").read()).indices) == h


# -- the integer arithmetic itself ----------------------------------------------------------------


def test_isqrt_and_rounded_division_are_exact():
    rng = np.random.default_rng(0)
    v = torch.from_numpy(np.concatenate([rng.integers(0, 1 << 62, 5000), np.arange(0, 5000),
                                         (np.arange(1, 3000, dtype=np.int64) ** 2) - 1, [(1 << 31) ** 2 - 1]]))  # fmt: skip
    r = it.isqrt(v)
    assert bool(((r * r <= v) & ((r + 1) * (r + 1) > v)).all())
    a = torch.from_numpy(rng.integers(-(1 << 49), 1 << 49, 20000))
    b = torch.from_numpy(rng.integers(1, 1 << 30, 20000))
    b[:100] = 1
    a[100:200] = b[100:200] * 7 + b[100:200] // 2  # exact halves
    got = it.fdiv_round(a.double(), b.double()).long()
    assert torch.equal(got, it.rdiv(a, b))


def test_integer_model_follows_the_float_one():
    """The exported integer network's logits track the float network's (tiny random model)."""
    from vqcodec.nets.transformer import IndexTransformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig(sizes=(8, 64), dim=32, depth=2, heads=4, local=1)
    net = IndexTransformer(cfg).eval()
    exact = it.IntTransformer(cfg, it.export(net))
    idx = torch.randint(0, 64, (3, 16, 16))
    mask = torch.rand(3, 16, 16) < 0.4
    with torch.inference_mode():
        want = net(idx, mask, 64).double()
    got = exact(idx, mask, 64) / 2**it.ACT_BITS
    assert (got - want).abs().max() < 0.02
    assert exact.frequencies(exact(idx, mask, 64)).min() >= 1


def test_stored_tables_are_the_documented_functions():
    t = _tensors(zoo.load_model(None))
    for name, table in it.tables().items():
        assert np.array_equal(t[name], table.numpy())


def test_damaged_integer_model_is_refused(tmp_path):
    import shutil

    from safetensors.torch import save_file

    from vqcodec.errors import VqcModelError

    src = zoo.load_model(None)
    d = tmp_path / "b"
    shutil.copytree(src.path, d)
    tensors = dict(_tensors(src))
    tensors["layers.0.ff1.w"] = tensors["layers.0.ff1.w"].astype(np.int32) * 4  # beyond int16
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, str(d / zoo.EXACT["masked"]))
    man = json.loads((d / "manifest.json").read_text())
    man["files"][zoo.EXACT["masked"]] = zoo.sha256_file(d / zoo.EXACT["masked"])
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(VqcModelError, match="out of range"):
        zoo.load_model(d).exact_transformer("masked")


def test_tempered_blend_changes_the_vectors_not_the_map():
    """Recovery's temperature softens only the decoder's blend at the holes: the recovered index map
    (the portable part) is the same at any temperature, in the float and in the integer network."""
    import torch.nn.functional as F

    from vqcodec.nets.transformer import IndexTransformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig(sizes=(8, 64), dim=32, depth=2, heads=4, local=1)
    net = IndexTransformer(cfg).eval()
    exact = it.IntTransformer(cfg, it.export(net))
    gen = torch.Generator().manual_seed(3)
    codes = F.normalize(torch.randn(64, 6, generator=gen), dim=1)
    x = torch.randint(0, 64, (20, 23), generator=gen)
    miss = torch.rand(20, 23, generator=gen) < 0.3
    blends = {}
    for name, model in (("float", net), ("int", exact)):
        i1, s1 = model.fill_soft(x, miss, 64, codes)
        i2, s2 = model.fill_soft(x, miss, 64, codes, temperature=2.0)
        assert torch.equal(i1, i2) and torch.equal(i1[~miss], x[~miss])
        assert (s2[~miss] == 0).all() and not torch.allclose(s1[miss], s2[miss])
        # softer: on average the blend sits further inside the unit ball
        assert s2[miss].norm(dim=1).mean() < s1[miss].norm(dim=1).mean()
        blends[name] = (i1, s2)
    (fi, fs), (ii, is_) = blends["float"], blends["int"]
    same = miss & (fi == ii)
    assert same.sum() > 0.8 * miss.sum()  # the integer network mostly makes the float one's choices
    assert (fs[same] - is_[same]).abs().max() < 0.05  # and its tempered blend tracks the float one's


# -- the int8 context model (coding mode int8, 0.2.0) -----------------------------------------------


def _int8_tensors(bundle):
    from safetensors.numpy import load_file

    return load_file(bundle.path / zoo.INT8)


INT8_REFERENCE_FILES = ["kodim05-k64-int8.vqc", "kodim23-k1024-int8.vqc", "kodim23-layers-int8.vqc",
                        "kodim01-k64-int8_paired.vqc", "kodim13-k8-int8_paired.vqc"]  # fmt: skip


@pytest.mark.parametrize("name", INT8_REFERENCE_FILES)
def test_int8_numpy_reference_gives_the_same_frequencies(name):
    """The int8 spec in numpy int64 (tests/int_reference.py) gives every context group's
    frequencies exactly as the production path (torch._int_mm and float32 products)."""
    from vqcodec import context

    bundle = zoo.load_model(None)
    net = context.int8_model(bundle)
    cfg = net.config
    ref = Int8Reference(_int8_tensors(bundle), cfg.sizes, cfg.dim, cfg.depth, cfg.heads, cfg.local)
    _same_frequencies(net, ref, name, bundle.context_levels, paired=EXPECTED[name]["mode"] == "int8_paired")


def test_damaged_int8_model_is_refused(tmp_path):
    import shutil

    from safetensors.torch import save_file

    from vqcodec import context
    from vqcodec.errors import VqcModelError

    src = zoo.load_model(None)
    d = tmp_path / "b"
    shutil.copytree(src.path, d)
    tensors = dict(_int8_tensors(src))
    tensors["layers.0.ff1.w"] = np.clip(tensors["layers.0.ff1.w"].astype(np.int16) * 2, -127, 127).astype(np.int8)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, str(d / zoo.INT8))
    man = json.loads((d / "manifest.json").read_text())
    man["files"][zoo.INT8] = zoo.sha256_file(d / zoo.INT8)
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(VqcModelError, match="out of range"):
        context.int8_model(zoo.load_model(d))


def test_int8_fill_model_matches_the_numpy_reference():
    """Recovery's int8 ``fill`` model (0.3.0) runs the int8 spec as the context model does: on a
    golden map with the holes of lost interleaved packets, its logits are the numpy reference's."""
    from safetensors.numpy import load_file

    from vqcodec import interleave

    bundle = zoo.load_model(None)
    net = bundle.int8_transformer("fill")
    cfg = net.config
    ref = Int8Reference(load_file(bundle.path / zoo.INT8_FILES["fill"]), cfg.sizes, cfg.dim, cfg.depth, cfg.heads,
                        cfg.local)  # fmt: skip
    plane = np.load(GOLDEN / "kodim23-k1024-int8.map.npy").astype(np.int64)[0]
    mask = np.isin(interleave.assignment(*plane.shape, 16), [2, 5, 11])
    got = net.tiled(torch.from_numpy(plane), torch.from_numpy(mask), 1024)
    assert np.array_equal(got.numpy().astype(np.int64), ref.map_logits(plane, mask, 1024))


def test_recovery_runs_the_int8_fill_model():
    """A damaged file's holes are filled by the int8 copy of ``fill`` where the bundle ships it."""
    bundle = zoo.load_model(None)
    method, net, _ = codec._recovery_choice(bundle, "auto", True)
    assert method == "masked" and net is bundle.int8_transformer("fill")


def test_int8_paired_mode_is_the_default_and_the_int8_modes_refuse_packets():
    bundle = zoo.load_model(None)
    enc = codec.analyze(make_image(64, 96, seed=1), bundle, 64)
    assert codec.best_mode(bundle, 64) == CodingMode.INT8_PAIRED
    for mode in (CodingMode.INT8_PAIRED, CodingMode.INT8):
        data = codec.pack(enc, bundle, mode)
        assert container.read_header(data).mode == mode
        assert np.array_equal(codec.unpack(data)[0].indices, enc.indices)
        with pytest.raises(VqcUsageError, match="whole map"):
            codec.pack(enc, bundle, mode, packets=4)


def test_paired_and_seven_pass_files_differ_and_neither_reads_as_the_other():
    """Modes 4 and 5 code the same map from different probabilities (a mode-5 group sees fewer
    neighbours): a payload read in the other order fails the map checksum, never a wrong map."""
    from vqcodec import context

    bundle = zoo.load_model(None)
    enc = codec.analyze(make_image(96, 160, seed=4), bundle, 64)
    net, tag = codec._int8_net(bundle, 64), context.int8_tag(bundle)
    for mode, other in ((CodingMode.INT8, True), (CodingMode.INT8_PAIRED, False)):
        payload = container.unpack(codec.pack(enc, bundle, mode))[1]
        with pytest.raises(VqcFormatError):
            context.decode_context(payload, net, 64, 1, 6, 10, tag=tag, levels=bundle.context_levels, paired=other)


# -- layered files (format version 4) --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if "layers" in e and "packets" not in e))
def test_layered_golden_file_prefixes_decode_to_the_parents(name):
    """Every layer of a layered golden file: each prefix of whole layers decodes to the parents of
    the recorded top map (the refinements' restricted frequencies are the same integers here)."""
    from vqcodec import layerfile

    data = (GOLDEN / name).read_bytes()
    top = np.load(GOLDEN / name.replace(".vqc", ".map.npy")).astype(np.int64)[0]
    ls = zoo.load_model(None).layer_set(tuple(EXPECTED[name]["layers"]))
    want = [top]
    for p in reversed(ls.parents):
        want.insert(0, p[want[0]])
    for n, end in enumerate(layerfile.scan_layers(data).ends):
        enc, _, report = codec.unpack_any(data[:end])
        assert report.layers_decoded == n + 1
        assert np.array_equal(enc.indices[0], want[n]), f"layer {n + 1}: {(enc.indices[0] != want[n]).sum()} differ"
