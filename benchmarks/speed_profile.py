"""Where the time of one round trip goes, stage by stage, against the shipped codec in the same run.

For one photo at one K: model load, image I/O (PNG read and write), encoder networks, quantizer,
context model (the transformer passes and their frequencies), range coder (coding plus container),
recovery (filling lost packets) and decoder networks, for three paths:

- ``encode``: PNG file -> .vqc bytes (the encoder's default coding mode, or ``--mode``);
- ``decode``: .vqc bytes -> PNG file, nothing lost;
- ``lossy``: the same image as a packetized file (``--packets``, static coding), ``--loss`` of its
  packets dropped (``vqc corrupt``'s channel, seed 0), decoded with the default recovery.

Each tree is timed in a fresh process that imports ``vqcodec`` from that tree: this checkout, and
with ``--baseline PATH`` another checkout of the project (a ``git worktree`` of an earlier commit,
outside this repository), so both run on the same machine under the same load. Stages are timed
by wrapping the functions that do them; a stage's figure is the median over ``--repeats`` round
trips after one warm-up (``--rounds`` processes per tree, alternating between the trees, so
that a change of load on a shared machine hits both alike). The CPU's model and instruction-set
flags and the load average are printed with the table: on a shared machine absolute times are
inflated, ratios within one run are what compares.

    python benchmarks/speed_profile.py --baseline ../baseline-efa7a82           # kodim05, K=64
    python benchmarks/speed_profile.py --k 8 --repeats 5 --mode exact
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "datasets" / "kodak"
STAGES = ["load", "image I/O", "encoder networks", "quantizer", "context model", "range coder", "recovery",
          "decoder networks"]  # fmt: skip
PATHS = ["encode", "decode", "lossy"]
FLAGS = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]


def cpu_summary() -> str:
    """The CPU model and the instruction-set flags that decide which kernels run."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    have = [f for f in FLAGS if f in flags]
    return f"{model}, {os.cpu_count()} logical CPUs; flags: {' '.join(have) or 'none of ' + ' '.join(FLAGS)}"


class Clock:
    """Accumulates the seconds spent in wrapped functions, per stage (nested calls count once)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self._depth: dict[str, int] = defaultdict(int)

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            self._depth[stage] += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth[stage] -= 1
                if not self._depth[stage]:
                    self.spent[stage] += time.perf_counter() - t

        return timed

    def patch(self, stage: str, owner, name: str) -> None:
        setattr(owner, name, self.wrap(stage, getattr(owner, name)))

    def take(self) -> dict[str, float]:
        out, self.spent = dict(self.spent), defaultdict(float)
        return out


def _patch_net(clock: Clock, net) -> None:
    """Time a context/fill network's passes (``coding_logits``, ``forward``, ``frequencies``) as one stage."""
    if net is None or getattr(net, "_profiled", False):
        return
    for name in ("coding_logits", "forward", "pooled_logits", "frequencies"):
        if hasattr(net, name):
            clock.patch("model", net, name)
    net._profiled = True


def worker(args) -> dict:
    """Runs inside the timed tree's interpreter: one warm-up and ``repeats`` timed round trips."""
    import torch

    torch.set_num_threads(args.threads)
    import vqcodec
    from vqcodec import codec, container, imageio, recovery, zoo

    # The channel simulator is vqcodec/channel.py since 0.2.0 and vqcodec/corrupt.py before it; ask the
    # tree, not the import system (an editable install would hand a missing module over from elsewhere).
    channel = importlib.import_module(
        "vqcodec.channel" if (args.worker / "vqcodec/channel.py").exists() else "vqcodec.corrupt"
    )

    if not Path(vqcodec.__file__).resolve().is_relative_to(args.worker.resolve()):
        raise SystemExit(f"imported {vqcodec.__file__}, not the tree {args.worker}")
    from vqcodec.container import CodingMode

    t = time.perf_counter()
    bundle = zoo.load_model(args.model)
    for kind in ("masked", "fill"):  # the context and recovery models the tree's default path runs
        if getattr(bundle, "has_int8", lambda _: False)(kind):  # 0.2.0 on: the int8 copies
            bundle.int8_transformer(kind)
        elif bundle.has_exact(kind):
            bundle.exact_transformer(kind)
    if (args.worker / "vqcodec/nets/openvino_engine.py").exists():  # 0.3.0: compiling the pixel networks
        importlib.import_module("vqcodec.nets.openvino_engine").prepare(bundle.model)  # is part of the load
    load_s = time.perf_counter() - t
    nets = [bundle.exact_transformer(kind) for kind in ("masked", "fill") if bundle.has_exact(kind)]  # to time
    mode = codec.best_mode(bundle, args.k) if args.mode == "default" else CodingMode[args.mode.upper()]
    from vqcodec import context

    if hasattr(context, "int8_model"):  # a tree with the int8 context model (0.2.0)
        nets.append(context.int8_model(bundle))
    clock = Clock()
    for net in nets:
        _patch_net(clock, net)
    clock.patch("image I/O", imageio, "load_image")
    clock.patch("image I/O", imageio, "save_image")
    clock.patch("encoder networks", codec, "encode_latent")
    clock.patch("quantizer", codec, "quantize")
    clock.patch("coding", codec, "_code")
    clock.patch("coding", codec, "_uncode")
    clock.patch("recovery", recovery, "recover_soft")
    clock.patch("decoder networks", codec, "synthesize")
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in PATHS}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.png"
        for rep in range(args.repeats + 1):
            stages = {}
            t = time.perf_counter()
            pixels = imageio.load_image(args.image).pixels
            enc = codec.analyze(pixels, bundle, args.k)
            data = codec.pack(enc, bundle, mode)
            stages["encode"] = (time.perf_counter() - t, clock.take())
            t = time.perf_counter()
            imageio.save_image(codec.synthesize(codec.unpack(data, bundle)[0], bundle), out)
            stages["decode"] = (time.perf_counter() - t, clock.take())
            lossy = codec.pack(enc, bundle, CodingMode.STATIC, args.packets)
            lossy = channel.corrupt(lossy, loss=args.loss, seed=0)[0]
            clock.take()
            t = time.perf_counter()
            imageio.save_image(codec.synthesize(codec.unpack_packets(lossy, bundle)[0], bundle), out)
            stages["lossy"] = (time.perf_counter() - t, clock.take())
            sizes = {"encode": len(data), "lossy": len(lossy), "mode": container.unpack(data)[0].mode.name.lower()}
            if rep == 0:
                continue  # warm-up: lazy imports, first-touch allocations
            for path, (total, spent) in stages.items():
                row = {s: spent.get(s, 0.0) for s in ("image I/O", "encoder networks", "quantizer", "recovery",
                                                         "decoder networks")}  # fmt: skip
                model = spent.get("model", 0.0)
                inner = min(model, spent.get("recovery", 0.0)) if path == "lossy" else 0.0
                row["context model"] = model - inner  # the fill model's passes belong to recovery
                row["range coder"] = max(0.0, spent.get("coding", 0.0) - model + inner)
                row["total"] = total
                row["other"] = max(0.0, total - sum(v for s, v in row.items() if s != "total"))
                runs[path].append(row)
    return {"load": [load_s], "runs": runs, "sizes": sizes, "threads": torch.get_num_threads(),
            "torch": torch.__version__}  # fmt: skip


def merge(results: list[dict]) -> dict:
    """One tree's rounds -> medians over every timed round trip (and every model load)."""
    out = dict(results[0])
    runs = {p: [row for r in results for row in r["runs"][p]] for p in PATHS}
    out["load"] = statistics.median(v for r in results for v in r["load"])
    out["median"] = {p: {s: statistics.median(row[s] for row in rows) for s in rows[0]} for p, rows in runs.items()}
    out["round_trips"] = len(runs["encode"])
    return out


def run_tree(root: Path, args) -> dict:
    """Time one tree in a fresh interpreter that imports ``vqcodec`` from ``root``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(root), "--image", str(args.image),
           "--k", str(args.k), "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--packets", str(args.packets), "--loss", str(args.loss),
           "--mode", args.mode if root == REPO else "default"]  # fmt: skip
    if args.model:
        cmd += ["--model", args.model]
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("VQC_MODELS", None)
    res = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"profiling {root} failed:\n{res.stderr.strip().splitlines()[-1] if res.stderr else ''}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per stage, a column per (tree, path), and each path's speed-up."""
    names = list(results)
    head = ["stage"] + [f"{n} {p} s" for p in PATHS for n in names]
    if len(names) == 2:
        head += [f"{p} x" for p in PATHS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage in STAGES + ["other", "total"]:
        cells = [stage]
        vals = {}
        for p in PATHS:
            for n in names:
                v = results[n]["load"] if stage == "load" else results[n]["median"][p].get(stage, 0.0)
                vals[(n, p)] = v
                cells.append("" if stage == "load" and p != "encode" else f"{v:.3f}")
        if len(names) == 2:
            for p in PATHS:
                a, b = vals[(names[1], p)], vals[(names[0], p)]
                cells.append(f"{a / b:.2f}" if b > 1e-4 and a > 1e-4 and (stage != "load" or p == "encode") else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", type=Path, default=KODAK / "kodim05.png")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed round trips per process (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=1, help="processes per tree, alternating between the trees")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--packets", type=int, default=16)
    ap.add_argument("--loss", type=float, default=0.3)
    ap.add_argument("--mode", default="default", help="coding mode of this tree's encode (default: the encoder's)")
    ap.add_argument("--model", default=None, help="bundle name (default: each tree's default model)")
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to time in the same run")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw medians here")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return
    print(f"CPU: {cpu_summary()}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    trees = {"now": REPO} | ({"baseline": args.baseline.resolve()} if args.baseline is not None else {})
    rounds: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.rounds):  # alternate the trees, so a change of load hits both alike
        for name, root in trees.items():
            rounds[name].append(run_tree(root, args))
    results = {name: merge(r) for name, r in rounds.items()}
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for name, r in results.items():
        print(f"{name}: torch {r['torch']}, {r['threads']} threads, file {r['sizes']['encode']} B "
              f"({r['sizes']['mode']}), lossy file {r['sizes']['lossy']} B")  # fmt: skip
    print(f"{args.image.name}, K={args.k}, medians of {args.rounds} x {args.repeats} round trips (seconds); "
          f"lossy: {args.packets} packets, {args.loss:.0%} lost; x = baseline / now")  # fmt: skip
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
