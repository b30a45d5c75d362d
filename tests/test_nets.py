import pytest
import torch

from vqcodec.nets.autoencoder import ARCHS, AutoencoderConfig, build_autoencoder, register_arch
from vqcodec.nets.quantizers import CosineVQ, l2norm


def test_taming_f16_names_and_shapes():
    sd = build_autoencoder("taming-f16").state_dict()
    expect = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.3.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.down.4.attn.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "quant_conv.weight": (256, 256, 1, 1),
        "quantize.embedding.weight": (1024, 256),
        "post_quant_conv.weight": (256, 256, 1, 1),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.up.4.block.2.conv2.weight": (512, 512, 3, 3),
        "decoder.up.4.attn.2.k.weight": (512, 512, 1, 1),
        "decoder.up.3.block.0.conv1.weight": (256, 512, 3, 3),
        "decoder.up.1.upsample.conv.weight": (128, 128, 3, 3),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert "encoder.down.4.downsample.conv.weight" not in sd
    assert "decoder.up.0.upsample.conv.weight" not in sd
    assert not any(k.startswith("decoder.up.3.attn") for k in sd)


def test_small_default_shapes_and_size():
    m = build_autoencoder("vq-f16-small").eval()
    assert m.stride == 16
    params = sum(p.numel() for p in m.parameters())
    assert 3e6 < params < 10e6
    with torch.no_grad():
        idx = m.encode_indices(torch.zeros(1, 3, 48, 80))
        assert idx.shape == (1, 1, 3, 5)
        assert m.decode_indices(idx).shape == (1, 3, 48, 80)


def test_config_round_trip_and_registry():
    cfg = ARCHS["vq-f16-small"]
    assert AutoencoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        AutoencoderConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="already"):
        register_arch("vq-f16-small", cfg)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_autoencoder("nope")


@pytest.mark.parametrize("cosine", [True, False])
def test_quantizer_round_trip(cosine):
    torch.manual_seed(0)
    q = CosineVQ(32, 4, cosine=cosine)
    z = torch.randn(2, 4, 3, 5)
    idx = q.quantize(z)
    assert idx.shape == (2, 1, 3, 5) and idx.dtype == torch.int64
    zq = q.dequantize(idx)
    assert torch.equal(q.quantize(zq), idx)  # a code is its own nearest neighbour
    zq_train, loss, idx_train = q(z)
    assert torch.equal(idx_train, idx) and loss.item() >= 0
    assert torch.allclose(zq_train, zq if cosine else zq, atol=1e-6) or not cosine


def test_quantizer_with_reduced_book():
    torch.manual_seed(0)
    q = CosineVQ(64, 8)
    book = torch.randn(8, 8)
    z = torch.randn(1, 8, 4, 4)
    idx = q.quantize(z, book)
    assert idx.max() < 8
    sims = l2norm(z.permute(0, 2, 3, 1).reshape(-1, 8)) @ l2norm(book).t()
    assert torch.equal(idx.flatten(), sims.argmax(1))
    with pytest.raises(ValueError):
        q.dequantize(idx[:, 0])


def test_dead_codes_are_restarted():
    torch.manual_seed(0)
    q = CosineVQ(16, 4).train()
    z = torch.randn(1, 4, 8, 8)
    for _ in range(3):
        q(z)
    q.usage[:8] = 0
    before = q.embedding.weight[:8].clone()
    assert q.restart_dead_codes() >= 8
    assert not torch.equal(before, q.embedding.weight[:8])
