"""vqc pack-data: the folder that travels to an accelerator trains like the original."""

import numpy as np
import pytest
import torch
from PIL import Image

from vqcodec.cli import main
from vqcodec.perceptual import DISTS, LPIPS
from vqcodec.train.data import list_images, split_holdout

from .conftest import make_image


def test_pack_keeps_photos_holdout_and_the_training_loss(tmp_path, monkeypatch):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(make_image(90, 200 + 10 * i, seed=i)).save(src / "sub" / f"p{i}.png")
    out = tmp_path / "carry"
    assert main(["pack-data", "--data", str(src), "--out", str(out), "--max-side", "120"]) == 0
    packed = list_images(out / "train")
    assert [p.relative_to(out / "train").with_suffix("") for p in packed] == [
        p.relative_to(src).with_suffix("") for p in list_images(src)
    ]
    assert all(p.suffix == ".jpg" and max(Image.open(p).size) == 120 for p in packed)
    # the same photos are held out from the packed copy as from the original
    stems = lambda files: sorted(p.stem for p in files)  # noqa: E731
    assert stems(split_holdout(packed, 2)[1]) == stems(split_holdout(list_images(src), 2)[1])

    ref = LPIPS("vgg", layers=3)
    monkeypatch.setenv("VQC_WEIGHTS", str(out / "weights"))
    small = LPIPS("vgg", layers=3)
    assert len(small.features) == len(ref.features) == 16
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1, torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    np.testing.assert_allclose(small(a, b).numpy(), ref(a, b).numpy(), rtol=1e-2)
    with pytest.raises(ValueError, match="stop at layer"):
        LPIPS("vgg", layers=5)
    with pytest.raises(ValueError, match="13 VGG16 conv layers"):
        DISTS()
