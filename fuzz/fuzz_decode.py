"""Coverage-guided fuzzing of the .vqc reader and the whole decode path (atheris / libFuzzer).

    pip install atheris==2.3.0
    mkdir -p fuzz/corpus
    python fuzz/fuzz_decode.py -runs=1000000 -timeout=10 -rss_limit_mb=3072 fuzz/corpus fuzz/seeds

``fuzz/seeds/`` (committed, written by the harness when missing) holds real encodes; libFuzzer adds
what it finds to ``fuzz/corpus/`` (not committed).

Every input must give an image or a ``VqcError`` with a one-line message; anything else (another
exception, a hang past ``-timeout``, memory past ``-rss_limit_mb``) is a finding, which libFuzzer
writes to ``crash-*``/``timeout-*``/``oom-*``: copy it into ``tests/regressions/`` so the test
suite replays it forever.

Mutated bytes rarely get past a checksum, so the first input byte picks a mode:
- 0 (mod 4): the bytes as they are (magic, versions, truncation, checksums themselves);
- 1: a v1 file whose CRC-32 is recomputed, so header fields and payloads are exercised;
- 2: a v2 (packetized) file rebuilt from the bytes: fuzzed header fields and packet payloads,
  packet checksums made valid, then packets dropped, duplicated or reordered;
- 3: a v4 (layered) file whose every layer CRC-32 is recomputed: fuzzed header fields, layer
  lengths and payloads (refinements included), then cut at a fuzzed point.
Packetized layered files (v5) enter as raw seeds (mode 0), whole and after a lossy channel.

The model is the tests' tiny seeded bundle with a tiny context/recovery transformer, so context
decoding and masked recovery are fuzzed too; decoding runs under a 256x256 pixel budget so
each input stays fast (the guard that refuses bigger images is itself part of what is fuzzed).
"""

from __future__ import annotations

import struct
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_PIXELS = 256 * 256
LAYERS = (8, 16, 64)
"""The harness bundle's nested chain (layered seeds)."""


def build_model(folder: Path):
    """The tests' tiny bundle plus an untrained (seeded) masked and ar transformer."""
    import torch

    from tests.conftest import build_tiny_bundle
    from vqcodec import zoo
    from vqcodec.nets.transformer import IndexTransformer, TransformerConfig

    build_tiny_bundle(folder)
    torch.manual_seed(0)
    for kind, causal in (("masked", False), ("ar", True)):
        cfg = TransformerConfig(sizes=(8, 16, 32, 64), dim=32, depth=1, heads=4, causal=causal)
        zoo.save_recovery(folder, IndexTransformer(cfg).eval(), {"steps": 0}, kind=kind)
    from vqcodec.train import layers

    bundle = zoo.load_model(folder)
    latents = torch.randn(4096, bundle.model.config.embed_dim, generator=torch.Generator().manual_seed(0))
    ls, _ = layers.fit(bundle, latents, LAYERS, (1.0, 1.0, 2.0), iters=2)
    layers.save(folder, ls, {"photos": 0})
    return zoo.load_model(folder)


def seed_corpus(bundle, folder: Path) -> None:
    """Real encodes in each of the harness's three modes (first byte): every coding mode and
    several K as v1 files, packetized v2 files (some damaged), and v2 field/payload seeds."""
    from tests.conftest import make_image
    from vqcodec import channel, codec, container, layerfile, progressive
    from vqcodec.container import CodingMode

    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w, k) in enumerate([(32, 48, 8), (48, 64, 16), (64, 96, 32), (80, 80, 64)]):
        enc = codec.analyze(make_image(h, w, seed=i), bundle, k)
        for mode in (m for m in CodingMode if m != CodingMode.INT8 or bundle.has_int8()):
            data = codec.pack(enc, bundle, mode)
            (folder / f"raw-v1-k{k}-{mode.name.lower()}").write_bytes(b"\x00" + data)
            (folder / f"crc-v1-k{k}-{mode.name.lower()}").write_bytes(b"\x01" + data)
        for packets in (2, 8):
            data = codec.pack(enc, bundle, CodingMode.STATIC, packets=packets)
            (folder / f"raw-v2-k{k}-p{packets}").write_bytes(b"\x00" + data)
            lossy, _ = channel.corrupt(data, loss=0.3, seed=i)
            (folder / f"raw-v2-k{k}-p{packets}-lossy").write_bytes(b"\x00" + lossy)
            spans = container.packet_spans(data)
            payloads = b"".join(data[a + container.PACKET_HEAD.size : b - 2] for a, b in spans)
            fields = struct.pack("<IHHHBB", bundle.model_id, k, w, h, 0, packets)
            (folder / f"built-v2-k{k}-p{packets}").write_bytes(b"\x02" + fields + payloads)
        for mode in (CodingMode.STATIC, CodingMode.EXACT):  # layered files, whole and cut, and their fields
            data, _ = progressive.compress(make_image(h, w, seed=i), bundle, LAYERS, mode)
            (folder / f"raw-v4-{i}-{mode.name.lower()}").write_bytes(b"\x00" + data)
            (folder / f"raw-v4-{i}-{mode.name.lower()}-cut").write_bytes(b"\x00" + data[: len(data) * 2 // 3])
            scan = layerfile.scan_layers(data)
            fields = struct.pack("<IHHBB", bundle.model_id, w, h, (0, 3, 4).index(int(mode)), 0)  # whole
            (folder / f"built-v4-{i}-{mode.name.lower()}").write_bytes(
                b"\x03" + fields + b"".join(struct.pack("<H", len(p)) + p for p in scan.payloads))
        data, _ = progressive.compress(make_image(h, w, seed=i), bundle, LAYERS, packets=4, parity=(2, 1, 0))
        (folder / f"raw-v5-{i}").write_bytes(b"\x00" + data)  # packetized layers, whole and lossy
        (folder / f"raw-v5-{i}-lossy").write_bytes(b"\x00" + channel.corrupt(data, loss=0.3, seed=i)[0])


def _with_crc32(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _v2_from(data: bytes) -> bytes:
    """A structurally valid packetized file built from fuzz bytes, then damaged by them."""
    from vqcodec import container
    from vqcodec.container import CodingMode, Header

    if len(data) < 12:
        return data
    model_id, k, w, h, mode, n = struct.unpack("<IHHHBB", data[:12])
    header = Header(model_id, max(2, k), 1, max(1, w % 512), max(1, h % 512), CodingMode(mode % 3))
    rest, n = data[12:], max(1, n % 16)
    step = max(1, len(rest) // n)
    payloads = [rest[i * step : (i + 1) * step] for i in range(n)]
    try:
        blob = container.pack_packets(header, payloads)
    except Exception:  # noqa: BLE001 - fuzzed fields the writer refuses: keep the raw bytes
        return data
    if rest and rest[0] & 1:  # drop, duplicate and reorder packets as a channel would
        from vqcodec import channel

        blob, _ = channel.corrupt(blob, loss=(rest[0] >> 1) / 128, seed=rest[-1], duplicate=0.2, shuffle=True)
    return blob


def _v4_from(data: bytes, tag: int) -> bytes:
    """A layered file built from fuzz bytes: header fields, then (u16 length, payload) layers, each
    framed with a valid CRC-32, then cut where the fields say (0: not cut); ``tag`` the harness
    bundle's layer-set tag, so that decoding gets past it."""
    from vqcodec import layerfile
    from vqcodec.container import CodingMode, Header

    if len(data) < 10:
        return data
    model_id, w, h, mode, cut = struct.unpack("<IHHBB", data[:10])
    header = Header(model_id, LAYERS[-1], 1, max(1, w % 256), max(1, h % 256), CodingMode((0, 3, 4)[mode % 3]))
    rest, payloads = data[10:], []
    while len(rest) >= 2 and len(payloads) < len(LAYERS):
        n = struct.unpack("<H", rest[:2])[0] % 4096
        payloads.append(rest[2 : 2 + n])
        rest = rest[2 + n :]
    if not payloads:
        return data
    try:
        blob = layerfile.pack_layers(header, LAYERS, tag, payloads)
    except Exception:  # noqa: BLE001 - fields the writer refuses: keep the raw bytes
        return data
    return blob[: len(blob) * cut // 256] if cut else blob


def make_target(bundle):
    from vqcodec import codec
    from vqcodec.errors import VqcError

    tag = bundle.layer_set(LAYERS).tag

    def test_one_input(data: bytes) -> None:
        if not data:
            return
        mode, body = data[0] % 4, data[1:]
        if mode == 1:
            body = _with_crc32(body[:-4] if len(body) > 4 else body)
        elif mode == 2:
            body = _v2_from(body)
        elif mode == 3:
            body = _v4_from(body, tag)
        for call in (lambda: codec.info(body), lambda: codec.decode_with_report(body, bundle, MAX_PIXELS)):
            try:
                out = call()
            except VqcError as e:
                if "\n" in str(e):
                    raise AssertionError(f"multi-line error message: {e!r}") from None
            else:
                if isinstance(out, tuple):
                    pixels = out[0]
                    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype.name == "uint8"

    return test_one_input


def main() -> None:
    import atheris
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = build_model(Path(tmp) / "fuzz-tiny")
        seeds = ROOT / "fuzz" / "seeds"
        if not seeds.exists() or not any(seeds.iterdir()):
            seed_corpus(bundle, seeds)
        target = make_target(bundle)
        atheris.instrument_all() if "--instrument-all" in sys.argv else None
        argv = [a for a in sys.argv if a != "--instrument-all"]
        atheris.Setup(argv, target)
        atheris.Fuzz()


if __name__ == "__main__":
    with __import__("atheris").instrument_imports(include=["vqcodec"]):
        import vqcodec.codec  # noqa: F401  (instrumented for coverage)
        import vqcodec.container  # noqa: F401
        import vqcodec.context  # noqa: F401
        import vqcodec.entropy  # noqa: F401
        import vqcodec.layerfile  # noqa: F401
        import vqcodec.layerpackets  # noqa: F401
        import vqcodec.layers  # noqa: F401
        import vqcodec.progressive  # noqa: F401
        import vqcodec.recovery  # noqa: F401
    main()
