"""The decoder network in int8 on OpenVINO: 8-bit convolutions where the pixels are, 1.7x faster.

Why: on CPUs without AMX the pixel networks are most of a round trip (AMD EPYC with AVX-512 BF16:
0.6 s of a 0.8 s decode, 94 % of it in convolutions running close to the CPU's bf16 peak), so
only fewer multiplications or cheaper ones help. int8 convolutions (VNNI, AMX-INT8) do twice the
work of bf16 per cycle. The picture need not be bit-exact (only index maps must be, and the
decoder never touches them), but it must look the same: measured on held-out training photos
and Kodak, docs/results.md ("The decoder in int8").

What: a *spec* shipped in the bundle (``pixels-int8.json``, made once by
``python -m vqcodec.train.int8_spec`` with NNCF's post-training quantisation on training photos)
lists where the quantisers sit in the OpenVINO graph of the decoder and their calibrated ranges
(nodes by name, or, for the few OpenVINO names itself and numbers per conversion, as the consumer
of a given type of a named node):

- ``activations``: per-tensor 8-bit fake-quantisers, each on one output of a node (``source``,
  ``port``) feeding the listed ``consumers`` (node, input index), with its range;
- ``weights``: the convolutions whose weights are stored as int8 with a per-output-channel scale
  (symmetric, max |w| / 127), recomputed here from the network's own weights.

``apply`` inserts them into the float IR that ``openvino_engine`` converts; OpenVINO's CPU plugin
then runs those convolutions in int8. Only TAEF2's decoder is quantised; the coder before it
(low resolution), the GroupNorm branches and the first and last convolutions stay in bf16, as
calibration on held-out photos showed the encoder (whose index map moved by 10-30 %) and those
layers to be sensitive. The spec names its weights' digest: a bundle whose weights differ does not
use it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPEC_FORMAT = 1
SPEC_FILE = "pixels-int8.json"


def read_spec(path: Path) -> dict:
    """The spec at ``path``, checked for its format (ValueError otherwise)."""
    spec = json.loads(Path(path).read_text())
    if spec.get("format") != SPEC_FORMAT or not isinstance(spec.get("activations"), list):
        raise ValueError(f"{path}: not an int8 spec of format {SPEC_FORMAT}")
    return spec


def apply(model, spec: dict):
    """``model`` (an OpenVINO model of the float decoder) with the spec's quantisers inserted, in
    place; raises KeyError when a named node is missing (the graph is not the one calibrated)."""
    import openvino.opset13 as ops

    nodes = {op.get_friendly_name(): op for op in model.get_ordered_ops()}

    def node(ref):
        """A node by name, or (for nodes OpenVINO names itself, numbered per conversion) as the one
        consumer of a named node's output with the given type."""
        if isinstance(ref, str):
            return nodes[ref]
        found = [t.get_node() for t in nodes[ref["consumer_of"]].output(0).get_target_inputs()
                 if t.get_node().get_type_name() == ref["type"]]  # fmt: skip
        if len(found) != 1:
            raise KeyError(f"{len(found)} {ref['type']} nodes after {ref['consumer_of']}")
        return found[0]

    targets = [[(node(name), index) for name, index in q["consumers"]] for q in spec["activations"]]
    convs = [node(ref) for ref in spec["weights"]]  # every node found before the graph changes
    for q, consumers in zip(spec["activations"], targets, strict=True):
        src = nodes[q["source"]].output(q["port"])
        lo, hi = (ops.constant(np.float32(v)) for v in q["range"])
        fq = ops.fake_quantize(src, lo, hi, lo, hi, q["levels"])
        fq.set_friendly_name(f"{q['source']}/int8_{q['port']}")
        for consumer, index in consumers:
            consumer.input(index).replace_source_output(fq.output(0))
    for conv in convs:
        w = _constant(conv.input_value(1).get_node()).astype(np.float32)
        scale = np.abs(w).reshape(w.shape[0], -1).max(1).clip(min=1e-12) / 127.0
        scale = scale.astype(np.float32).reshape((-1,) + (1,) * (w.ndim - 1))
        wq = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        deq = ops.multiply(ops.convert(ops.constant(wq), "f32"), ops.constant(scale))
        conv.input(1).replace_source_output(deq.output(0))
    model.validate_nodes_and_infer_types()
    return model


def _constant(node) -> np.ndarray:
    """The value of a weight input: a Constant, possibly behind a Convert (fp16 IR weights)."""
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        raise KeyError(f"weights of an int8 convolution are not a constant ({node.get_type_name()})")
    return np.array(node.get_data())


__all__ = ["SPEC_FILE", "SPEC_FORMAT", "apply", "read_spec"]
