"""The int8 context model: calibration maps, export into the bundle, and bits against the int16 one.

Three steps, each rerunnable:

    python benchmarks/int8_context.py maps              # index maps of photos, cached in bench_out/int8/
    python benchmarks/int8_context.py export            # models/vqc-gan2/recovery-int8.safetensors + manifest
    python benchmarks/int8_context.py export --kind fill  # recovery's model: recovery-fill-int8.safetensors
    python benchmarks/int8_context.py bits --set holdout --ks 8 64 1024 --modes exact int8
    python benchmarks/int8_context.py bits --set holdout --modes int8 int8-paired --check
    python benchmarks/int8_context.py schedules --set holdout   # which lattice groups may share a pass

``maps`` encodes three sets once and keeps their index maps at every K: ``calib`` (training photos
outside the 8 held-out ones, long side 512: the int8 model's activation ranges are measured on
them), ``holdout`` (the 8 held-out training photos, long side 768) and ``kodak`` (the 24 Kodak
photos at full size: only ever scored, never calibrated on). ``export`` quantises the bundle's
float ``masked`` transformer (the one the int16 model ``recovery-int.safetensors`` was exported
from) with ranges calibrated on ``calib`` and writes the file and its sha256 into the manifest.
``bits`` context-codes each map in each mode (the payload a file carries: model tag, CRC and
range-coded words) and reports bytes per image, the change against the first mode and the CPU
seconds spent (process time: other work on a shared machine is not counted). ``schedules``
prices other orders of the lattice groups with the int8 model (ideal bits, -log2 of each coded
index's probability): the groups named together share one pass of the model (mode 5, int8-paired,
is "pairs").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vqcodec import codec, zoo  # noqa: E402
from vqcodec.train.data import list_images, load_rgb, split_holdout  # noqa: E402
from vqcodec.zoo import load_model  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
OUT = REPO / "bench_out" / "int8"
SETS = {"calib": 512, "holdout": 768, "kodak": 0}
CALIB_PHOTOS = 24


def photos(name: str) -> list[Path]:
    if name == "kodak":
        return sorted((SHARED / "kodak").glob("*.png"))
    train, held = split_holdout(list_images(SHARED / "train"), 8)
    if name == "holdout":
        return held
    step = max(1, len(train) // CALIB_PHOTOS)
    return train[::step][:CALIB_PHOTOS]


def maps(args) -> None:
    bundle = load_model(args.model)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in args.sets:
        out = OUT / f"maps-{name}.npz"
        if out.exists():
            print(f"{out} exists")
            continue
        store = {}
        for i, p in enumerate(photos(name)):
            side = SETS[name]
            pixels = load_rgb(p, side) if side else load_rgb(p, 1 << 30)
            lat = codec.encode_latent(pixels, bundle)
            for k in bundle.codebook_sizes:
                store[f"{p.stem}/{k}"] = codec.quantize(lat, bundle, k).indices[0].astype(np.int16)
            print(f"{name} {i}: {p.name} {pixels.shape}", flush=True)
        np.savez_compressed(out, **store)


def load_maps(name: str, k: int | None = None) -> dict[str, np.ndarray]:
    data = np.load(OUT / f"maps-{name}.npz")
    return {key: data[key].astype(np.int64) for key in data.files if k is None or key.endswith(f"/{k}")}


def export(args) -> None:
    from safetensors.torch import save_file

    from vqcodec.nets import int8_transformer as i8

    bundle = load_model(args.model)
    net = bundle.transformer(args.kind)
    torch.set_num_threads(1)
    maps = sorted(load_maps("calib").items())[:: args.calib_step]
    calib = [(torch.from_numpy(m), int(key.split("/")[1])) for key, m in maps]
    t = time.perf_counter()
    tensors = i8.export(net, calib, seed=0, task="fill" if args.kind == "fill" else "context")
    name = zoo.INT8_FILES[args.kind]  # the bundle file the codec loads this model from
    path = args.out or bundle.path / name
    save_file(tensors, str(path))
    path.chmod(0o644)  # shipped in the wheel: readable by every user, as the bundle's other files
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if args.out is None:  # into the bundle: the manifest lists it with its sha256
        manifest_path = bundle.path / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["files"][name] = digest
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {path} ({path.stat().st_size} B, sha256 {digest[:16]}) in {time.perf_counter() - t:.0f} s "
          f"from {len(calib)} calibration maps")  # fmt: skip


def _nets(bundle, modes: list[str], int8_file: Path | None) -> dict:
    """mode -> (context model, tag) to code with."""
    from safetensors.torch import load_file

    from vqcodec import context
    from vqcodec.nets.int8_transformer import Int8Transformer

    out = {}
    for m in modes:
        if m == "exact":
            out[m] = (bundle.exact_transformer("masked"), bundle.exact_tag)
        elif m == "int8" and int8_file is not None:
            net = Int8Transformer(bundle.transformer("masked").config, load_file(str(int8_file)))
            out[m] = (net, int(hashlib.sha256(int8_file.read_bytes()).hexdigest()[:4], 16))
        elif m in ("int8", "int8-paired"):
            out[m] = (context.int8_model(bundle), context.int8_tag(bundle))
        else:
            raise SystemExit(f"mode {m}: exact, int8 or int8-paired")
    return out


def bits(args) -> None:
    from vqcodec import context

    torch.set_num_threads(args.threads)
    bundle = load_model(args.model)
    nets = _nets(bundle, args.modes, args.int8)
    rows = []
    for k in args.ks:
        got = {m: [] for m in args.modes}
        secs = {m: 0.0 for m in args.modes}
        for key, idx in load_maps(args.set, k).items():
            h, w = idx.shape
            for m, (net, tag) in nets.items():
                t = time.process_time()
                paired = m == "int8-paired"
                data = context.encode_context(idx[None], net, k, tag, bundle.context_levels, paired)
                secs[m] += time.process_time() - t
                got[m].append(len(data))
                if args.check:
                    back = context.decode_context(data, net, k, 1, h, w, tag, bundle.context_levels, paired)
                    assert np.array_equal(back[0], idx), f"{key}: {m} round trip differs"
        base = np.mean(got[args.modes[0]])
        cells = " | ".join(f"{np.mean(got[m]):.1f} ({(np.mean(got[m]) / base - 1) * 100:+.2f} %, {secs[m]:.1f} s)"
                           for m in args.modes)  # fmt: skip
        n = len(got[args.modes[0]])
        print(f"| {args.set} | {k} | {n} | {cells} |", flush=True)
        rows.append({"set": args.set, "k": k, "images": n, **{m: got[m] for m in args.modes}})
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"bits-{args.set}.json").write_text(json.dumps(rows))


SCHEDULES = {  # lattice groups of levels 2 (context.groups) coded in one pass, in coding order
    "seven (mode 4)": [[0], [1], [2], [3], [4], [5], [6]],
    "last pair": [[0], [1], [2], [3], [4], [5, 6]],
    "pairs (mode 5)": [[0], [1], [2, 3], [4], [5, 6]],
    "4x4 level in one": [[0], [1, 2, 3], [4], [5, 6]],
    "2x2 level in one": [[0], [1, 2, 3], [4, 5, 6]],
}


def schedules(args) -> None:
    from vqcodec import context

    torch.set_num_threads(args.threads)
    bundle = load_model(args.model)
    net = context.int8_model(bundle)
    if bundle.context_levels != 2:
        raise SystemExit("the schedules compared are those of a 2-level lattice")
    print("| K | " + " | ".join(SCHEDULES) + " |  (ideal bytes per image, change against seven passes)")
    for k in args.ks:
        bits = dict.fromkeys(SCHEDULES, 0.0)
        maps = load_maps(args.set, k)
        for idx in maps.values():
            h, w = idx.shape
            g, plane = context.groups(h, w, 2), torch.from_numpy(idx)
            for name, order in SCHEDULES.items():
                visible = torch.zeros(h, w, dtype=torch.bool)
                for grp in order:
                    sel = np.isin(g, grp)
                    f = np.concatenate(list(context.group_frequencies(net, plane, visible, sel, k))).astype(np.float64)
                    bits[name] -= np.log2(f[np.arange(len(f)), idx[sel]] / f.sum(1)).sum()
                    visible |= torch.from_numpy(sel)
        base = bits["seven (mode 4)"]
        cells = [f"{b / 8 / len(maps):.1f} B ({(b / base - 1) * 100:+.2f} %)" for b in bits.values()]
        print(f"| {k} | " + " | ".join(cells) + " |", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=["maps", "export", "bits", "schedules"])
    ap.add_argument("--model", default="vqc-gan2")
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--set", default="holdout", choices=list(SETS))
    ap.add_argument("--ks", type=int, nargs="*", default=[8, 64, 1024])
    ap.add_argument("--modes", nargs="*", default=["exact", "int8"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="also decode every file and compare the maps")
    ap.add_argument("--out", type=Path, default=None, help="export: write here, not into the bundle")
    ap.add_argument(
        "--kind",
        default="masked",
        choices=["masked", "fill"],
        help="export: the context model (masked) or recovery's fill model",
    )
    ap.add_argument("--calib-step", type=int, default=3, help="export: every n-th calibration map (sorted by name)")
    ap.add_argument("--int8", type=Path, default=None, help="bits: this int8 file instead of the bundle's")
    args = ap.parse_args(argv)
    if args.step == "maps":
        torch.set_num_threads(args.threads)
        maps(args)
    else:
        globals()[args.step](args)


if __name__ == "__main__":
    main()
