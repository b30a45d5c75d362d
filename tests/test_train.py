import csv

import numpy as np
import pytest
import torch
from PIL import Image

from vqcodec.perceptual import weights_dir
from vqcodec.train import autoencoder, codebooks
from vqcodec.train.data import CropStream, list_images, split_holdout
from vqcodec.zoo import load_model

from .conftest import make_image


@pytest.fixture()
def photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(12):
        Image.fromarray(make_image(80 + i, 120, seed=i)).save(d / f"p{i:02d}.png")
    return d


def test_data_split_and_crops(photos):
    files = list_images(photos)
    train, val = split_holdout(files, 3)
    assert len(train) == 9 and len(val) == 3 and not set(train) & set(val)
    assert split_holdout(files, 3) == (train, val)
    imgs = [np.asarray(Image.open(p)) for p in train]
    it = iter(CropStream(imgs, 32, seed=1))
    a = next(it)
    assert a.shape == (3, 32, 32) and -1 <= a.min() and a.max() <= 1


def test_kodak_is_refused(tmp_path):
    (tmp_path / "kodak").mkdir()
    Image.fromarray(make_image(8, 8)).save(tmp_path / "kodak" / "k.png")
    with pytest.raises(ValueError, match="Kodak"):
        list_images(tmp_path)


def common(photos, out):
    return ["--data", str(photos), "--out", str(out), "--arch", "test-tiny", "--pixel-crop", "32",
            "--pixel-batch", "4", "--crop", "32", "--batch", "2", "--n-val", "2", "--workers", "0",
            "--restart-every", "2", "--val-minutes", "0", "--threads", "1"]  # fmt: skip


def test_train_resume_export(photos, tmp_path):
    out = tmp_path / "run"
    torch.manual_seed(0)
    autoencoder.main(common(photos, out) + ["--steps", "3", "--pixel-steps", "100"])
    state = torch.load(out / "last.ckpt", weights_only=False)
    assert state["step"] == 3
    with pytest.raises(SystemExit, match="exists"):
        autoencoder.main(common(photos, out) + ["--steps", "4"])
    autoencoder.main(common(photos, out) + ["--steps", "5", "--pixel-steps", "100", "--resume"])
    assert torch.load(out / "last.ckpt", weights_only=False)["step"] == 5
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert rows[-1]["step"] == "5" and float(rows[-1]["val_psnr"]) > 0
    assert list(out.glob("val_*.png"))
    codebooks.main([str(out / "last.ckpt"), "--out", str(tmp_path / "bundle"), "--name", "t", "--arch",
                    "test-tiny", "--data", str(photos), "--images", "4"])  # fmt: skip
    bundle = load_model(tmp_path / "bundle")
    assert bundle.manifest["training"]["steps"] == 5
    assert bundle.codebook_sizes == [8, 16, 32, 64]


@pytest.mark.skipif(not (weights_dir() / "vgg16_features_torchvision_IMAGENET1K_V1.pth").exists(),
                    reason="VGG weights not present")  # fmt: skip
def test_perceptual_and_gan_phases_run(photos, tmp_path):
    out = tmp_path / "run"
    autoencoder.main(common(photos, out) + ["--steps", "4", "--pixel-steps", "1", "--gan-start", "3"])
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert rows[-1]["phase"] == "gan"
    assert float(rows[-1]["val_lpips_vgg"]) > 0


def test_finetune_codebooks_updates_the_bundle(tiny_bundle_dir, photos, tmp_path):
    from vqcodec.train import finetune

    finetune.main([str(tiny_bundle_dir), "--out", str(tmp_path / "ft"), "--data", str(photos), "--ks", "8",
                   "--steps", "3", "--batch", "2", "--crop", "32", "--lpips-weight", "0", "--images", "4"])  # fmt: skip
    b = load_model(tmp_path / "ft")
    assert b.manifest["training"]["finetuned"]["per_k"]["8"]["steps"] == 3
    old = load_model(tiny_bundle_dir)
    assert not torch.equal(b.codebooks[8], old.codebooks[8])
    assert torch.equal(b.codebooks[16], old.codebooks[16])
    assert b.model_id != old.model_id


class _PoolModel(torch.nn.Module):
    """A known-answer 'autoencoder': latents are 16x16 colour means, decoding repeats them."""

    def __init__(self) -> None:
        super().__init__()
        from vqcodec.nets.quantizers import CosineVQ

        self.quantize = CosineVQ(8, 3, cosine=False)

    def encode_latent(self, x):
        return torch.nn.functional.avg_pool2d(x, 16)

    def decode_latent(self, z):
        return torch.nn.functional.interpolate(z, scale_factor=16, mode="nearest")


def test_finetune_book_fits_codes_to_the_data(photos):
    from vqcodec.train.finetune import finetune_book

    imgs = [np.asarray(Image.open(p)) for p in sorted(photos.iterdir())]
    model = _PoolModel()
    book = torch.randn(8, 3) * 0.1  # poor initial codes
    new, log = finetune_book(model, book, CropStream(imgs, 32), steps=60, batch=4, lr=0.05)
    assert log["probe_loss_after"] < 0.7 * log["probe_loss_before"]
    assert not torch.equal(new, book)


def test_ddp_two_cpu_processes_gloo(photos, tmp_path):
    """torchrun, two CPU processes, gloo: same start, averaged gradients, replicas still equal."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    args = ["--data", str(photos), "--out", str(out), "--pixel-crop", "32", "--pixel-batch", "2", "--n-val", "2",
            "--workers", "0", "--val-minutes", "1000", "--threads", "1", "--steps", "3", "--pixel-steps", "100"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "vqcodec.train.autoencoder", *args], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DDP: 2 replicas, weights in sync: True" in proc.stdout
    assert torch.load(out / "last.ckpt", weights_only=True)["step"] == 3


def test_decoder_only_run_keeps_index_maps_and_transformers(tiny_bundle_dir, photos, tmp_path, monkeypatch):
    """--decoder-only trains the decoder alone; finetune --decoder-from ships it with the same
    encoder, books and transformers, so files keep their index maps and decode differently."""
    import shutil

    from vqcodec import codec, zoo
    from vqcodec.nets.transformer import IndexTransformer, TransformerConfig
    from vqcodec.train import finetune

    src = tmp_path / "src"
    shutil.copytree(tiny_bundle_dir, src)
    torch.manual_seed(0)
    cfg = TransformerConfig(sizes=(8, 16, 32, 64), dim=32, depth=1, heads=4, local=1)
    zoo.save_recovery(src, IndexTransformer(cfg).eval(), {"steps": 0}, kind="masked")
    run = tmp_path / "run"
    autoencoder.main(common(photos, run) + ["--init-from", str(src), "--decoder-only", "--steps", "4",
                                            "--pixel-steps", "100", "--lr", "1e-2"])  # fmt: skip
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert float(rows[-1]["val_psnr_k8"]) > 0 and "val_lpips_vgg_k64" in rows[-1]
    finetune.main([str(src), "--decoder-from", str(run / "last.ckpt"), "--steps", "0", "--out", str(tmp_path / "ft"),
                   "--data", str(photos), "--images", "4"])  # fmt: skip
    old, new = load_model(src), load_model(tmp_path / "ft")
    assert new.manifest["training"]["decoder_finetuned"]["steps"] == 4
    for name, t in old.model.state_dict().items():
        same = torch.equal(t, new.model.state_dict()[name])
        assert same if name.startswith(finetune.FROZEN) else True
    assert not torch.equal(old.model.decoder.conv_out.weight, new.model.decoder.conv_out.weight)
    assert all(torch.equal(old.codebooks[k], new.codebooks[k]) for k in old.codebooks)
    assert all(np.array_equal(old.tables[k].counts, new.tables[k].counts) for k in old.tables)  # kept, not recounted
    assert new.manifest["recovery"] == old.manifest["recovery"] and new.context_tag == old.context_tag
    img = make_image(64, 96, seed=3)
    a, b = codec.encode(img, 16, old), codec.encode(img, 16, new)
    assert np.array_equal(codec.unpack(a, old)[0].indices, codec.unpack(b, new)[0].indices)
    assert not np.array_equal(codec.decode(a, old), codec.decode(b, new))
    # --book-sizes: the books drawn (weighted by repetition), checked against the bundle's and the mode
    drawn, choice = [], autoencoder.random.choice
    monkeypatch.setattr(autoencoder.random, "choice", lambda seq: drawn.append(list(seq)) or choice(seq))
    autoencoder.main(common(photos, tmp_path / "low") + ["--init-from", str(src), "--decoder-only", "--steps", "2",
                                                         "--book-sizes", "8", "8", "16"])  # fmt: skip
    assert drawn.count([8, 8, 16]) == 2 and [8, 16, 32, 64] not in drawn
    with pytest.raises(SystemExit, match=r"--book-sizes \[12\]: the bundle's books are K = \[8, 16, 32, 64\]"):
        autoencoder.main(common(photos, tmp_path / "bad") + ["--init-from", str(src), "--decoder-only", "--steps", "1",
                                                             "--book-sizes", "8", "12"])  # fmt: skip
    with pytest.raises(SystemExit, match="--book-sizes needs --decoder-only"):
        autoencoder.main(common(photos, tmp_path / "bad2") + ["--init-from", str(src), "--steps", "1",
                                                              "--book-sizes", "8"])  # fmt: skip
    # a checkpoint whose encoder moved is refused
    autoencoder.main(common(photos, tmp_path / "full") + ["--init-from", str(src), "--steps", "2", "--lr", "1e-2"])
    with pytest.raises(SystemExit, match="differs"):
        finetune.take_decoder(load_model(src).model, tmp_path / "full" / "last.ckpt")


@pytest.mark.parametrize("quantizer,extra,m", [("looc", ["--m", "4", "--extrapolate"], 16), ("dual", [], 2)])
def test_train_other_quantizer_from_a_bundle_and_export(tiny_bundle_dir, photos, tmp_path, quantizer, extra, m):
    """``--quantizer`` on a VQ bundle: encoder and decoder kept, new books seeded, trained, exported."""
    out = tmp_path / "run"
    torch.manual_seed(0)
    autoencoder.main(common(photos, out) + ["--init-from", str(tiny_bundle_dir), "--steps", "2", "--pixel-steps",
                     "100", "--quantizer", quantizer, "--codebook-size", "16", *extra])  # fmt: skip
    state = torch.load(out / "last.ckpt", weights_only=False)
    assert state["config"]["quantizer"] == quantizer
    old = load_model(tiny_bundle_dir).model.state_dict()
    assert not torch.equal(state["model"]["decoder.conv_out.weight"], old["decoder.conv_out.weight"].float())
    codebooks.main([str(out / "last.ckpt"), "--out", str(tmp_path / "bundle"), "--name", "t", "--arch",
                    "test-tiny", "--data", str(photos), "--images", "4"])  # fmt: skip
    bundle = load_model(tmp_path / "bundle")
    assert bundle.manifest["quantizer"]["type"] == quantizer and bundle.m == m
    assert bundle.codebook_sizes == [8, 16]
    with pytest.raises(SystemExit, match="m = 1"):
        autoencoder.main(common(photos, tmp_path / "bad") + ["--quantizer", "vq", "--m", "3"])


def test_disc_lr_scales_the_discriminator_with_the_generator_schedule(photos, tmp_path):
    """--disc-lr (two time-scale update): the discriminator follows the same warm-up and decay."""
    args = autoencoder.build_parser().parse_args(
        common(photos, tmp_path / "run") + ["--lr", "1e-4", "--disc-lr", "4e-4", "--decay-start", "0",
                                           "--decay-steps", "10"])  # fmt: skip
    trainer = autoencoder.Trainer(args)
    trainer.step = 5
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    trainer.train_step(x, autoencoder.phase_at(trainer.phases, 0))
    g, d = trainer.opt.param_groups[0]["lr"], trainer.opt_d.param_groups[0]["lr"]
    assert g == pytest.approx(1e-4 * 6 / 200 * (1 - 0.9 * 0.5))
    assert d == pytest.approx(4 * g)


def test_l1_weight_scales_the_pixel_loss(photos, tmp_path):
    """--l1-weight: the L1 term enters the generator's loss at that weight (taming's 1.0 by default)."""
    args = autoencoder.build_parser().parse_args(
        common(photos, tmp_path / "run") + ["--pixel-steps", "0", "--lpips-weight", "0", "--l1-weight", "0.25"])
    trainer = autoencoder.Trainer(args)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    logs = trainer.train_step(x, autoencoder.phase_at(trainer.phases, trainer.step))
    assert logs["loss"] == pytest.approx(0.25 * logs["l1"] + logs["q"], rel=1e-5)
