"""The int8 context model (coding mode int8, 0.2.0): exact int8 products, the export of a float
model, the numpy reference of ``docs/bitstream.md`` against the production path, modes 4 and 5 in
the container, and mode 5's paired group order. Tiny random models only; the shipped model is checked on golden files in test_portable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqcodec import container, context
from vqcodec.container import CodingMode, Header
from vqcodec.errors import VqcFormatError, VqcUsageError
from vqcodec.nets.int_transformer import ACT_BITS

from .int_reference import Int8Reference


def test_int8_products_are_exact_at_the_bounds():
    """int8 x int8 -> int32 at the extremes the format allows (|a| <= 127, |w| <= 64): the sums of a
    3x3 convolution's 1152 terms, equal to int64 arithmetic whichever kernel runs."""
    from vqcodec.nets import int8_transformer as i8

    rng = np.random.default_rng(0)
    for a, w in [(127, 64), (-127, 64), (127, -64)]:
        x = torch.full((40, 1152), a, dtype=torch.int8)
        wt = torch.full((1152, 24), w, dtype=torch.int8)
        assert torch.equal(i8.mm8(x, wt).long(), x.long() @ wt.long())
    x = torch.from_numpy(rng.integers(-127, 128, (300, 512)).astype(np.int8))
    wt = torch.from_numpy(rng.integers(-64, 65, (512, 136)).astype(np.int8))
    assert torch.equal(i8.mm8(x, wt).long(), x.long() @ wt.long())
    assert torch.equal(i8.mm8(x[:5], wt).long(), x[:5].long() @ wt.long())


def test_int8_model_follows_the_float_one():
    """Post-training int8 quantisation of a tiny random model: its logits track the float model's,
    and the numpy reference agrees with it bit for bit, the last layer's kept rows too."""
    from vqcodec.nets import int8_transformer as i8
    from vqcodec.nets.transformer import IndexTransformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig(sizes=(8, 64), dim=32, depth=2, heads=4, local=1)
    net = IndexTransformer(cfg).eval()
    calib = [(torch.randint(0, k, (16, 16)), k) for k in (8, 64) for _ in range(6)]
    tensors = i8.export(net, calib)
    model = i8.Int8Transformer(cfg, tensors)
    idx = torch.randint(0, 64, (3, 16, 16))
    mask = torch.rand(3, 16, 16) < 0.4
    with torch.inference_mode():
        want = torch.log_softmax(net(idx, mask, 64).double(), -1)
    got = model(idx, mask, 64)
    assert (torch.log_softmax(got / 2**ACT_BITS, -1) - want).abs().mean() < 0.05
    ref = Int8Reference({k: v.numpy() for k, v in tensors.items()}, cfg.sizes, cfg.dim, cfg.depth, cfg.heads, cfg.local)
    assert np.array_equal(got.long().numpy(), ref.forward(idx.numpy(), mask.numpy(), 64))
    keep = torch.tensor([0, 17, 255])
    assert torch.equal(model(idx, mask, 64, keep), got.reshape(3, 256, 64)[:, keep])


def _tiny():
    from vqcodec.nets import int8_transformer as i8
    from vqcodec.nets.transformer import IndexTransformer, TransformerConfig

    torch.manual_seed(1)
    cfg = TransformerConfig(sizes=(8, 64), dim=32, depth=2, heads=4, local=1)
    net = IndexTransformer(cfg).eval()
    calib = [(torch.randint(0, 64, (20, 23)), 64) for _ in range(4)]
    return i8.Int8Transformer(cfg, i8.export(net, calib))


def test_context_coding_with_the_int8_model_round_trips():
    """A map that spans several tiles, coded group by group with the int8 model's frequencies,
    decodes to itself with one thread or two (the frequencies do not depend on the thread count)."""
    model = _tiny()
    gen = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 64, (1, 21, 37), generator=gen).numpy()
    payload = context.encode_context(idx, model, 64, tag=0x4242, levels=2)
    old = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            back = context.decode_context(payload, model, 64, 1, 21, 37, tag=0x4242, levels=2)
            assert np.array_equal(back, idx)
    finally:
        torch.set_num_threads(old)
    with pytest.raises(VqcFormatError, match="another context model"):
        context.decode_context(payload, model, 64, 1, 21, 37, tag=0x4243, levels=2)


def test_mode_4_in_the_container():
    """Mode 4 takes the third flag bit of a version-1 header; packet headers have no room for it."""
    h = Header(1, 64, 1, 48, 32, CodingMode.INT8)
    data = container.pack(h, b"abcd")
    assert data[8] == 4 and container.unpack(data) == (h, b"abcd")
    bad = bytearray(data)
    bad[8] = 6
    with pytest.raises(VqcFormatError, match="unknown coding mode 6"):
        container.read_header(bytes(bad))
    bad[8] = 0x0C
    with pytest.raises(VqcFormatError, match="reserved"):
        container.read_header(bytes(bad))
    with pytest.raises(VqcUsageError, match="cannot be packetized"):
        container.pack_packets(Header(1, 64, 1, 48, 32, CodingMode.INT8, container.PACKET_VERSION), [b"a", b"b"])


def test_mode_5_in_the_container():
    """Mode 5 (int8-paired, 0.3.0) is the third flag bit and the first; packets refuse it like mode 4."""
    h = Header(1, 64, 1, 48, 32, CodingMode.INT8_PAIRED)
    data = container.pack(h, b"abcd")
    assert data[8] == 5 and container.unpack(data) == (h, b"abcd")
    with pytest.raises(VqcUsageError, match="cannot be packetized"):
        container.pack_packets(Header(1, 64, 1, 48, 32, CodingMode.INT8_PAIRED, container.PACKET_VERSION), [b"a"])


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_paired_schedule_codes_every_position_once_with_the_edge_cosets_together(levels):
    """The paired order: the same lattice groups, each level's (0, half) and (half, 0) cosets in one
    pass; every position in exactly one group, each group after everything it may see."""
    h, w = 21, 37
    g = context.groups(h, w, levels)
    plain = list(context.groups_in_order(h, w, levels))
    paired = list(context.groups_in_order(h, w, levels, paired=True))
    assert len(plain) == 3 * levels + 1 and len(paired) == 2 * levels + 1
    assert np.array_equal(sum(s.astype(int) for s in paired), np.ones((h, w), int))
    assert context.schedule(levels, True)[-1] == (3 * levels - 1, 3 * levels)
    for s in paired:
        assert len(set(g[s].tolist())) in (1, 2)
    assert [int(s.sum()) for s in paired[:2]] == [int(s.sum()) for s in plain[:2]]
