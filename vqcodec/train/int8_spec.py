"""Calibrate the int8 decoder of a bundle (``nets/int8_pixels``) and write its spec into the bundle.

Why a tool and not a step at first use: calibration needs photos (the decoder's inputs are index
maps of natural images), which a user's machine does not have, and NNCF, which the codec does not
need at run time. Run once per bundle whose decoder changes:

    pip install nncf
    python -m vqcodec.train.int8_spec models/vqc-gan2 --photos 32

NNCF's post-training quantisation (``nncf.quantize``, OpenVINO backend, statistics only: no bias
correction, which ``int8_pixels.apply`` would not reproduce) places 8-bit quantisers on the
decoder's OpenVINO graph from ``--photos`` training photos (never the held-out 8, never Kodak),
each coded at K = 8, 64 and 1024 in turn (long side 768). Ignored: the coder before TAEF2's
decoder, its GroupNorm branches and its first and last convolutions (``IGNORED``). The quantisers
it placed are read back into the spec (``int8_pixels``), written as ``pixels-int8.json`` and
recorded in the manifest (sha256 and how it was made).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from vqcodec import codec, zoo
from vqcodec.nets import int8_pixels, openvino_engine
from vqcodec.train.data import list_images, load_rgb, split_holdout

IGNORED = [
    r".*\.pool\..*",  # GroupNorm branches (image-wide statistics)
    r".*model\.(encoder|decoder)\.(?!taef2).*",  # the coder: low resolution, cheap, sensitive
    r".*quant_conv.*",
    r".*decoder\.taef2\.(0|1|19)/.*",  # the input clamp, first and last convolutions
    r".*GroupNorm.*",
    r".*aten::(sub|div|mean|pow|sqrt|add_|mul)/.*",  # GroupNorm arithmetic
]
KS = (8, 64, 1024)


def calibration_inputs(bundle, photos: int, seed: int = 0, root: Path | None = None) -> tuple[list, list[str]]:
    """Decoder inputs (quantized latents) of ``photos`` training photos outside the held-out split."""
    root = root or Path(__file__).resolve().parents[3] / "shared" / "datasets" / "train"
    train, _ = split_holdout(list_images(root), 8)
    chosen = random.Random(seed).sample(train, photos)
    out = []
    for i, p in enumerate(chosen):
        k = KS[i % len(KS)]
        enc = codec.quantize(codec.encode_latent(load_rgb(p, 768), bundle), bundle, k)
        z = bundle.model.quantize.dequantize(torch.from_numpy(enc.indices)[None], bundle.codebook(k))
        out.append(z.float().numpy())
    return out, [p.name for p in chosen]


def _int8_weights(node) -> bool:
    """Whether a convolution's weight input is NNCF's compressed form: int8 constant, Convert, Multiply."""
    import openvino as ov

    if node.get_type_name() != "Multiply":
        return False
    for source in node.input_values():
        producer = source.get_node()
        if producer.get_type_name() == "Convert" and producer.input_value(0).get_element_type() == ov.Type.i8:
            return True
    return False


def spec_from(quantized) -> dict:
    """The quantisers NNCF placed in ``quantized``, as an ``int8_pixels`` spec."""
    acts, weights = [], []
    for op in quantized.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            src = op.input_value(0)
            vals = [float(np.array(op.input_value(j).get_node().get_data()).reshape(-1)[0]) for j in range(1, 5)]
            if vals[0] != vals[2] or vals[1] != vals[3]:
                raise ValueError(f"{op.get_friendly_name()}: output range differs from input range")
            consumers = sorted([t.get_node().get_friendly_name(), t.get_index()] for t in op.output(0).get_target_inputs())
            acts.append({"source": src.get_node().get_friendly_name(), "port": src.get_index(),
                         "consumers": consumers, "range": vals[:2], "levels": int(op.get_attributes()["levels"])})  # fmt: skip
        elif kind == "Convolution" and _int8_weights(op.input_value(1).get_node()):
            weights.append(op.get_friendly_name())
    # nodes OpenVINO named itself (``Multiply_42115``: the last convolution fused with the output
    # scaling) are numbered per conversion: the spec names them by what feeds them instead
    stable = lambda name: name.startswith("__module.")  # noqa: E731
    nodes = {op.get_friendly_name(): op for op in quantized.get_ordered_ops()}
    for a in acts:
        a["consumers"] = [c if stable(c[0]) else [{"consumer_of": a["source"], "type": nodes[c[0]].get_type_name()}, c[1]]
                          for c in a["consumers"]]  # fmt: skip
    for i, name in enumerate(weights):
        if not stable(name):
            data = nodes[name].input_value(0).get_node()
            source = data.input_value(0).get_node() if data.get_type_name() == "FakeQuantize" else data
            weights[i] = {"consumer_of": source.get_friendly_name(), "type": "Convolution"}
    if any(not stable(a["source"]) for a in acts) or any(isinstance(w, dict) and not stable(w["consumer_of"]) for w in weights):
        raise ValueError("a quantiser sits after a node OpenVINO named itself: the spec could not name it")
    return {"format": int8_pixels.SPEC_FORMAT, "activations": acts, "weights": weights}


def main(argv: list[str] | None = None) -> None:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--photos", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    bundle = zoo.load_model(args.bundle)
    t0 = time.time()
    data, names = calibration_inputs(bundle, args.photos, args.seed)
    model = openvino_engine.float_ir(bundle.model, "decoder")
    quantized = nncf.quantize(model, nncf.Dataset(data), subset_size=len(data),
                              ignored_scope=nncf.IgnoredScope(patterns=IGNORED, validate=False),
                              advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=True))  # fmt: skip
    spec = spec_from(quantized)
    spec["digest"] = openvino_engine.digest(bundle.model)
    path = bundle.path / int8_pixels.SPEC_FILE
    path.write_text(json.dumps(spec, indent=1) + "\n")
    manifest = zoo._read_manifest(bundle.path)
    manifest["files"][int8_pixels.SPEC_FILE] = zoo.sha256_file(path)
    manifest["pixels_int8"] = {
        "file": int8_pixels.SPEC_FILE, "part": "decoder", "tool": f"nncf {nncf.__version__}, openvino {ov.__version__}",
        "photos": len(names), "ks": list(KS), "seed": args.seed, "ignored": IGNORED, "bias_correction": False,
        "activation_quantisers": len(spec["activations"]), "int8_convolutions": len(spec["weights"]),
        "data": "training photos outside the held-out split (never Kodak), long side 768",
    }  # fmt: skip
    zoo.write_manifest(bundle.path, manifest)
    print(f"{path}: {len(spec['activations'])} activation quantisers, {len(spec['weights'])} int8 convolutions "
          f"({time.time() - t0:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
