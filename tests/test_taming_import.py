"""import-taming with checkpoints built here with taming's exact key names and shapes."""

import numpy as np
import pytest
import torch
from PIL import Image

import vqcodec
from vqcodec.cli import main
from vqcodec.errors import VqcModelError
from vqcodec.nets.autoencoder import build_autoencoder
from vqcodec.train.taming_import import import_taming, read_taming_state

from .conftest import make_image


def fake_ckpt(path, n_embed: int) -> None:
    torch.manual_seed(0)
    sd = build_autoencoder("taming-f16").state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith("usage")}
    sd["quantize.embedding.weight"] = torch.randn(n_embed, 256)
    sd["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)  # dropped on import
    sd["loss.logvar"] = torch.zeros(())
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 1234}, path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for i in range(2):
        Image.fromarray(make_image(48, 64, seed=i)).save(d / f"p{i}.png")
    return d


def test_import_1024_codes_and_round_trip(tmp_path, photos, capsys):
    fake_ckpt(tmp_path / "vqgan.ckpt", 1024)
    code = main(["import-taming", str(tmp_path / "vqgan.ckpt"), "--name", "taming-test", "--images", str(photos),
                 "--out", str(tmp_path / "bundle"), "--sizes", "8", "16"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    b = vqcodec.load_model(tmp_path / "bundle")
    assert b.manifest["arch"] == "taming-f16" and b.codebook_sizes == [8, 16, 1024]
    assert b.codebooks[1024].shape == (1024, 256)
    img = make_image(32, 48)
    out = vqcodec.decode_array(vqcodec.encode(img, 16, b), b)
    assert out.shape == img.shape


def test_import_16384_codes(tmp_path, photos):
    fake_ckpt(tmp_path / "big.ckpt", 16384)
    man = import_taming(tmp_path / "big.ckpt", "big", photos, tmp_path / "b", sizes=(8,))
    assert man["codebook_sizes"] == [8, 16384] and man["config"]["n_embed"] == 16384


def test_refuses_pickled_objects_and_wrong_layouts(tmp_path):
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": np.random.default_rng(0)}, tmp_path / "evil.ckpt")
    with pytest.raises(VqcModelError, match="weights_only"):
        read_taming_state(tmp_path / "evil.ckpt")
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "partial.ckpt")
    with pytest.raises(VqcModelError, match="not a taming VQModel"):
        read_taming_state(tmp_path / "partial.ckpt")
    sd = {k: v for k, v in build_autoencoder("vq-f16-small").state_dict().items() if not k.endswith("usage")}
    torch.save({"state_dict": sd}, tmp_path / "other.ckpt")
    with pytest.raises(VqcModelError):
        import_taming(tmp_path / "other.ckpt", "x", tmp_path, tmp_path / "o", sizes=(8,))
