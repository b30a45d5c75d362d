"""The taef2 backbone: TAEF2's published weights load and reconstruct, the coder has the codec's
shapes, CPU training runs in bf16, and a run exports to a bundle that encodes and decodes with
TAEF2's MIT notice beside its weights."""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqcodec import codec
from vqcodec.nets.autoencoder import build_autoencoder, native_bf16
from vqcodec.nets.taef2 import default_weights_dir, load_pretrained, taef2_decoder, taef2_encoder
from vqcodec.train import autoencoder, codebooks
from vqcodec.zoo import load_model

from .conftest import make_image
from .test_train import photos  # noqa: F401  (fixture)

needs_taef2 = pytest.mark.skipif(not (default_weights_dir() / "taef2_encoder.pth").exists(),
                                 reason="TAEF2 weights (../shared/weights/taef2) not present")  # fmt: skip


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


@needs_taef2
def test_pretrained_taef2_reconstructs_a_photo_like_image():
    enc, dec = taef2_encoder().eval(), taef2_decoder().eval()
    load_pretrained(enc, dec)  # strict: every published key and shape matches our modules
    img = make_image(64, 96, seed=1)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        lat = enc(x)
        y = dec(lat).clamp(0, 1)
    assert lat.shape == (1, 32, 8, 12)
    out = (y[0].permute(1, 2, 0).numpy() * 255).round()
    assert _psnr(out, img) > 22  # a random-init decoder gives ~10 dB


def test_taef2_coder_has_the_codec_shapes():
    torch.manual_seed(0)
    model = build_autoencoder("test-tiny-taef2").eval()
    assert model.stride == 16
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        idx = model.encode_indices(x)
        y = model.decode_indices(idx)
    assert idx.shape == (2, 1, 4, 6) and y.shape == x.shape


def _dtype_seen_by_first_conv(extra: list[str], photos, tmp_path) -> torch.dtype:  # noqa: F811
    args = autoencoder.build_parser().parse_args(
        ["--data", str(photos), "--out", str(tmp_path / "run"), "--arch", "test-tiny", "--pixel-crop", "32",
         "--pixel-batch", "2", "--n-val", "2", "--workers", "0", "--threads", "1", *extra])  # fmt: skip
    trainer = autoencoder.Trainer(args)
    seen = []
    hook = trainer.model.encoder.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    logs = trainer.train_step(x.contiguous(memory_format=torch.channels_last), autoencoder.phase_at(trainer.phases, 0))
    hook.remove()
    assert np.isfinite(logs["loss"])
    return seen[0]


def test_cpu_training_precision_follows_the_cpu_unless_told(photos, tmp_path):  # noqa: F811
    """bf16 by default only where it is native (emulated bf16 on AVX2 is ~6x slower than fp32)."""
    default = torch.bfloat16 if native_bf16() else torch.float32
    assert _dtype_seen_by_first_conv([], photos, tmp_path / "a") == default
    assert _dtype_seen_by_first_conv(["--bf16"], photos, tmp_path / "b") == torch.bfloat16
    assert _dtype_seen_by_first_conv(["--no-bf16"], photos, tmp_path / "c") == torch.float32


def test_native_bf16_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("VQC_FP32", "1")
    assert not native_bf16()


@needs_taef2
def test_taef2_run_latent_phase_export_and_codec_round_trip(photos, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    torch.manual_seed(0)
    autoencoder.main(["--data", str(photos), "--out", str(out), "--arch", "test-tiny-taef2", "--latent-steps", "2",
                      "--latent-batch", "2", "--latent-crop", "32", "--pixel-steps", "2", "--crop", "32", "--batch", "2",
                      "--lpips-weight", "0", "--steps", "4", "--n-val", "2", "--workers", "0", "--val-minutes", "0",
                      "--threads", "1"])  # fmt: skip
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert rows[-1]["step"] == "4" and float(rows[-1]["val_psnr"]) > 0
    state = torch.load(out / "last.ckpt", weights_only=True)
    # the TAEF2 encoder is frozen (its index maps would drift otherwise); the decoder trains
    pre = taef2_encoder()
    load_pretrained(pre, None)
    for k, v in pre.state_dict().items():
        assert torch.equal(state["model"][f"encoder.taef2.{k}"], v)
    codebooks.main([str(out / "last.ckpt"), "--out", str(tmp_path / "bundle"), "--name", "t2", "--arch",
                    "test-tiny-taef2", "--data", str(photos), "--images", "4"])  # fmt: skip
    assert "MIT License" in (tmp_path / "bundle" / "TAEF2-LICENSE").read_text()
    bundle = load_model(tmp_path / "bundle")
    assert "TAEF2-LICENSE" in bundle.manifest["licenses"]
    img = make_image(50, 70, seed=3)
    data = codec.encode(img, codebook_size=8, model=bundle)
    out_img = codec.decode(data, model=bundle)
    assert out_img.shape == img.shape and out_img.dtype == np.uint8


def _tiny_bundle(data, tmp_path) -> tuple[list[str], object]:
    """The tiny taef2 trainer flags and a bundle exported from a 2-step run of them (in tmp_path/b)."""
    tiny = ["--data", str(data), "--arch", "test-tiny-taef2", "--crop", "32", "--batch", "2", "--n-val", "2",
            "--workers", "0", "--val-minutes", "0", "--threads", "1", "--lpips-weight", "0"]  # fmt: skip
    torch.manual_seed(0)
    autoencoder.main(tiny + ["--out", str(tmp_path / "run"), "--latent-steps", "1", "--latent-batch", "2",
                             "--latent-crop", "32", "--pixel-steps", "1", "--steps", "2"])  # fmt: skip
    codebooks.main([str(tmp_path / "run" / "last.ckpt"), "--out", str(tmp_path / "b"), "--name", "t2", "--arch",
                    "test-tiny-taef2", "--data", str(data), "--images", "4"])  # fmt: skip
    return tiny, load_model(tmp_path / "b")


@needs_taef2
def test_grown_decoder_starts_where_the_bundle_is_and_ships(photos, tmp_path):  # noqa: F811
    """``--dec-blocks``: new decoder blocks start as the identity (same pictures as the bundle),
    train, and ``finetune --decoder-from`` ships the grown model, not the bundle's shape."""
    from vqcodec.train import finetune

    tiny, bundle = _tiny_bundle(photos, tmp_path)
    grow = tiny + ["--out", str(tmp_path / "grow"), "--init-from", str(tmp_path / "b"), "--decoder-only",
                   "--pixel-steps", "0", "--dec-blocks", "2", "3"]  # fmt: skip
    trainer = autoencoder.Trainer(autoencoder.build_parser().parse_args(grow + ["--steps", "2"]))
    assert trainer.model.config.dec_res_blocks == (2, 3)
    z = bundle.model.quantize.dequantize(torch.randint(0, 8, (1, 1, 4, 6)))
    with torch.no_grad():
        torch.testing.assert_close(trainer.model.decode_latent(z), bundle.model.float().decode_latent(z),
                                   atol=1e-3, rtol=0)  # fmt: skip  (bundle weights are fp16)
    autoencoder.main(grow + ["--steps", "4", "--lr", "1e-2"])
    assert torch.load(tmp_path / "grow" / "last.ckpt", weights_only=True)["config"]["dec_res_blocks"] == [2, 3]
    # --old-lr-scale: the bundle's weights at a share of the LR, the new blocks at the full LR, kept on resume
    slow = grow[:grow.index("--out")] + ["--out", str(tmp_path / "slow")] + grow[grow.index("--out") + 2:]
    autoencoder.main(slow + ["--steps", "2", "--lr", "1e-2", "--old-lr-scale", "0.25"])
    autoencoder.main(slow + ["--steps", "3", "--lr", "1e-2", "--resume"])
    state = torch.load(tmp_path / "slow" / "last.ckpt", weights_only=True)
    assert state["step"] == 3 and state["new_params"]
    assert all(n.startswith(("decoder.block0.1.", "decoder.block1.1.", "decoder.block1.2.")) for n in state["new_params"])
    old_g, new_g = state["opt"]["param_groups"]
    assert (old_g["lr_scale"], new_g["lr_scale"]) == (0.25, 1.0) and old_g["lr"] == pytest.approx(0.25 * new_g["lr"])
    assert len(new_g["params"]) == len(state["new_params"])
    with pytest.raises(SystemExit, match="--old-lr-scale needs --init-from"):
        autoencoder.main(tiny + ["--out", str(tmp_path / "x"), "--old-lr-scale", "0.5", "--steps", "1"])
    disc_file = tmp_path / "ft" / "discriminator.safetensors"
    finetune.main([str(tmp_path / "b"), "--decoder-from", str(tmp_path / "grow" / "last.ckpt"), "--steps", "0",
                   "--out", str(tmp_path / "ft"), "--data", str(photos), "--images", "4",
                   "--save-disc", str(disc_file)])  # fmt: skip
    # the committed between-ships checkpoint (bundle + fp16 discriminator) restarts the adversary too
    again = autoencoder.Trainer(autoencoder.build_parser().parse_args(
        tiny + ["--out", str(tmp_path / "again"), "--init-from", str(tmp_path / "ft"), "--decoder-only",
                "--pixel-steps", "0", "--disc-from", str(disc_file), "--steps", "1"]))  # fmt: skip
    again._start()
    trained = torch.load(tmp_path / "grow" / "last.ckpt", weights_only=True)["disc"]
    for k, v in again.disc.state_dict().items():
        torch.testing.assert_close(v, trained[k].half().float())
    with pytest.raises(SystemExit, match="--save-disc needs --decoder-from"):
        finetune.main([str(tmp_path / "b"), "--steps", "0", "--out", str(tmp_path / "x"), "--save-disc",
                       str(tmp_path / "d.safetensors")])  # fmt: skip
    grown = load_model(tmp_path / "ft")
    assert grown.model.config.dec_res_blocks == (2, 3)
    assert grown.model.decoder.block1[2].conv2.weight.abs().sum() > 0  # a new block, trained and shipped
    img = make_image(40, 56, seed=5)
    assert codec.decode(codec.encode(img, codebook_size=8, model=grown), model=grown).shape == img.shape
    with pytest.raises(SystemExit, match="dec-blocks"):  # shrinking would drop trained blocks
        autoencoder.main(tiny + ["--out", str(tmp_path / "shrink"), "--init-from", str(tmp_path / "ft"),
                                 "--decoder-only", "--dec-blocks", "1", "1", "--steps", "1"])  # fmt: skip


@needs_taef2
def test_book_lr_trains_the_reduced_books_with_the_decoder_and_ships_them(photos, tmp_path):  # noqa: F811
    """``--book-lr``: the reduced books (not the base one, which makes the encoder's index map)
    train beside the decoder, survive ``--resume`` in their own optimizer group, and
    ``finetune --decoder-from`` ships them with new frequency tables."""
    from vqcodec.train import finetune

    tiny, bundle = _tiny_bundle(photos, tmp_path)
    base = bundle.model.config.n_embed
    tune = tiny + ["--out", str(tmp_path / "tune"), "--init-from", str(tmp_path / "b"), "--decoder-only",
                   "--pixel-steps", "0", "--book-lr", "5e-2", "--book-sizes", "8"]  # fmt: skip
    autoencoder.main(tune + ["--steps", "2"])
    autoencoder.main(tune + ["--steps", "4", "--resume"])
    state = torch.load(tmp_path / "tune" / "last.ckpt", weights_only=True)
    assert state["step"] == 4
    books_g = state["opt"]["param_groups"][-1]
    reduced = [k for k in bundle.codebook_sizes if k != base]
    assert len(books_g["params"]) == len(reduced) and books_g["lr_scale"] == pytest.approx(5e-2 / float(state["args"]["lr"]))
    moved = {k for k in reduced if not torch.equal(state["books"][str(k)], bundle.codebook(k).float())}
    assert moved == {8}  # the drawn book trained, the others (no gradient) did not move
    assert torch.equal(state["books"][str(base)], bundle.codebook(base).float())
    finetune.main([str(tmp_path / "b"), "--decoder-from", str(tmp_path / "tune" / "last.ckpt"), "--steps", "0",
                   "--out", str(tmp_path / "ft"), "--data", str(photos), "--images", "4"])  # fmt: skip
    shipped = load_model(tmp_path / "ft")
    for k in reduced:
        torch.testing.assert_close(shipped.codebook(k).float(), state["books"][str(k)].float())
    assert shipped.manifest["training"]["decoder_finetuned"]["books_trained"] == [8]
    # codebook fine-tuning on top (--steps) starts from the run's books, not the bundle's K-means ones
    finetune.main([str(tmp_path / "b"), "--decoder-from", str(tmp_path / "tune" / "last.ckpt"), "--steps", "1",
                   "--lr", "1e-9", "--ks", "8", "--crop", "32", "--batch", "2", "--lpips-weight", "0",
                   "--out", str(tmp_path / "ft2"), "--data", str(photos), "--images", "4"])  # fmt: skip
    torch.testing.assert_close(load_model(tmp_path / "ft2").codebook(8).float(), state["books"]["8"], atol=1e-6, rtol=0)
    img = make_image(40, 56, seed=5)
    assert codec.decode(codec.encode(img, codebook_size=8, model=shipped), model=shipped).shape == img.shape
    with pytest.raises(SystemExit, match="--book-lr needs --decoder-only"):
        autoencoder.main(tiny + ["--out", str(tmp_path / "x"), "--book-lr", "1e-3", "--steps", "1"])


@needs_taef2
def test_joint_trains_encoder_books_and_decoder_and_ships_them_whole(photos, tmp_path):  # noqa: F811
    """``--joint``: the encoder learns through each step's book (straight-through), every book
    trains (the base one included, kept as the model's own codebook), the encoder has its own LR
    group that ``--resume`` rebuilds, and ``finetune --decoder-from`` ships the run whole: a new
    model id, new tables, and files that round-trip."""
    from vqcodec.train import finetune

    tiny, bundle = _tiny_bundle(photos, tmp_path)
    base = bundle.model.config.n_embed
    joint = tiny + ["--out", str(tmp_path / "joint"), "--init-from", str(tmp_path / "b"), "--joint",
                    "--pixel-steps", "0", "--book-lr", "5e-2", "--book-sizes", "8", str(base), "--lr", "1e-2",
                    "--old-lr-scale", "0.5", "--encoder-lr-scale", "1.0", "--restart-every", "1",
                    "--colour-weight", "1.0"]  # fmt: skip
    # the step count carries on from the bundle's (2): two steps, a log row (and a save) after each
    autoencoder.main(joint + ["--steps", "4", "--ckpt-minutes", "0"])
    with open(tmp_path / "joint" / "log.csv") as f:
        colour = [float(r["colour"]) for r in csv.DictReader(f) if r["l1"]]
    assert len(colour) == 2 and all(c > 0 for c in colour)
    autoencoder.main(joint + ["--steps", "6", "--resume"])
    state = torch.load(tmp_path / "joint" / "last.ckpt", weights_only=True)
    assert state["step"] == 6
    groups = state["opt"]["param_groups"]
    assert [g["lr_scale"] for g in groups[:2]] == [0.5, 1.0]
    own = bundle.model.state_dict()
    assert not torch.equal(state["model"]["quant_conv.weight"].float(), own["quant_conv.weight"].float())
    assert not torch.equal(state["books"][str(base)], bundle.codebook(base).float())  # the base book trained
    torch.testing.assert_close(state["model"]["quantize.embedding.weight"], state["books"][str(base)])
    finetune.main([str(tmp_path / "b"), "--decoder-from", str(tmp_path / "joint" / "last.ckpt"), "--steps", "0",
                   "--out", str(tmp_path / "ft"), "--data", str(photos), "--images", "4"])  # fmt: skip
    shipped = load_model(tmp_path / "ft")
    assert shipped.model_id != bundle.model_id
    rec = shipped.manifest["training"]["joint_trained"]
    assert rec["steps"] == 6 and "retrain" in rec["transformers"]
    got = shipped.model.state_dict()["quant_conv.weight"].float()
    torch.testing.assert_close(got, state["model"]["quant_conv.weight"].float(), atol=1e-2, rtol=1e-2)  # fp16
    img = make_image(40, 56, seed=5)
    for k in (8, base):
        assert codec.decode(codec.encode(img, codebook_size=k, model=shipped), model=shipped).shape == img.shape
    with pytest.raises(SystemExit, match="exclude each other"):
        autoencoder.main(joint + ["--out", str(tmp_path / "x"), "--decoder-only", "--steps", "1"])
    with pytest.raises(SystemExit, match="--encoder-lr-scale needs --joint"):
        autoencoder.main(tiny + ["--out", str(tmp_path / "y"), "--encoder-lr-scale", "1.0", "--steps", "1"])


@needs_taef2
def test_joint_commitment_to_the_base_book(photos, tmp_path):  # noqa: F811
    """``--commit-to base``: on a reduced book's step the decoder still gets that book's codes,
    but the encoder is pulled towards the base book's nearest code; on the base book's own step
    nothing changes. LooC/dual runs refuse it (their base book is the quantizer's own)."""
    tiny, bundle = _tiny_bundle(photos, tmp_path)
    base = bundle.model.config.n_embed
    flags = tiny + ["--out", str(tmp_path / "j"), "--init-from", str(tmp_path / "b"), "--joint", "--steps", "3"]
    drawn = autoencoder.Trainer(autoencoder.build_parser().parse_args(flags))
    to_base = autoencoder.Trainer(autoencoder.build_parser().parse_args(flags + ["--commit-to", "base"]))
    z = torch.randn(2, bundle.model.config.embed_dim, 3, 4)
    for k, same in ((8, False), (base, True)):
        zq_d, loss_d = drawn._joint_quantize(z, k)
        zq_b, loss_b = to_base._joint_quantize(z, k)
        torch.testing.assert_close(zq_d, zq_b)  # what the decoder sees does not change
        assert torch.equal(loss_d, loss_b) == same
    q = to_base.model.quantize
    flat = q._prep(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    book8, book0 = q.codes(to_base.books[8]), q.codes(to_base.books[base])
    want = F.mse_loss(book8[q._nearest(flat, to_base.books[8])], flat) + q.beta * F.mse_loss(
        flat, book0[q._nearest(flat, to_base.books[base])])  # fmt: skip
    torch.testing.assert_close(to_base._joint_quantize(z, 8)[1], want)
    with pytest.raises(SystemExit, match="--commit-to base"):
        autoencoder.main(flags + ["--out", str(tmp_path / "x"), "--commit-to", "base", "--quantizer", "looc"])
    with pytest.raises(SystemExit, match="--commit-to needs --joint"):
        autoencoder.main(tiny + ["--out", str(tmp_path / "y"), "--commit-to", "base", "--steps", "1"])


@needs_taef2
@pytest.mark.parametrize("quantizer", ["looc", "dual", "vq"])
def test_joint_with_a_new_quantizer_trains_its_own_ladder_and_exports_it(photos, tmp_path, quantizer):  # noqa: F811
    """``--joint --quantizer looc|dual`` from a plain bundle (the equal-budget quantizer comparison; ``vq``:
    a new plain book of another size): the new quantizer's books are seeded, its reduced books
    (any K, e.g. 3) are made from the same vectors and trained beside the encoder and the
    quantizer's own book; ``--resume`` keeps them, and ``vqc export`` ships exactly those books,
    whose files round-trip."""
    tiny, _ = _tiny_bundle(photos, tmp_path)
    joint = tiny + ["--out", str(tmp_path / "j"), "--init-from", str(tmp_path / "b"), "--joint",
                    "--quantizer", quantizer, "--codebook-size", "8", "--pixel-steps", "0", "--book-lr", "5e-2",
                    "--book-sizes", "3", "4", "8", "--lr", "1e-2", "--restart-every", "1"]  # fmt: skip
    torch.manual_seed(0)
    autoencoder.main(joint + ["--steps", "4", "--ckpt-minutes", "0"])
    first = torch.load(tmp_path / "j" / "last.ckpt", weights_only=True)
    assert sorted(first["books"]) == ["3", "4"] and first["config"]["quantizer"] == quantizer
    own = {n: v for n, v in first["model"].items() if n.startswith("quantize.") and not n.endswith("usage")}
    autoencoder.main(joint + ["--steps", "8", "--resume"])
    state = torch.load(tmp_path / "j" / "last.ckpt", weights_only=True)
    assert state["step"] == 8
    assert not torch.equal(state["books"]["3"], first["books"]["3"])  # the reduced books train
    assert any(not torch.equal(state["model"][n], v) for n, v in own.items())  # and the quantizer's own
    lr_scales = [g["lr_scale"] for g in state["opt"]["param_groups"]]
    assert lr_scales.count(5e-2 / 1e-2) == 2  # the own book (+ dual's transformer) and the reduced books
    codebooks.main([str(tmp_path / "j" / "last.ckpt"), "--out", str(tmp_path / "x"), "--name", "tx", "--arch",
                    "test-tiny-taef2", "--data", str(photos), "--images", "4",
                    "--save-disc", str(tmp_path / "x" / "disc.safetensors")])  # fmt: skip
    shipped = load_model(tmp_path / "x")
    disc = autoencoder.load_disc(tmp_path / "x" / "disc.safetensors", torch.device("cpu"))
    assert disc.keys() == state["disc"].keys()  # bundle + discriminator continue the run (fp16)
    for n, v in disc.items():
        torch.testing.assert_close(v, state["disc"][n].float(), atol=2e-3, rtol=1e-3)
    assert shipped.codebook_sizes == [3, 4, 8] and shipped.model.quantize.m == (1 if quantizer == "vq" else 2)
    torch.testing.assert_close(shipped.codebook(3).float(), state["books"]["3"].float(), atol=1e-2, rtol=0)  # fp16
    assert "--joint" in shipped.manifest["training"]["reduction"]
    img = make_image(40, 56, seed=5)
    for k in (3, 8):
        assert codec.decode(codec.encode(img, codebook_size=k, model=shipped), model=shipped).shape == img.shape
    with pytest.raises(SystemExit, match="--book-sizes \\[9\\]"):
        autoencoder.main(joint + ["--out", str(tmp_path / "y"), "--book-sizes", "9", "--steps", "1"])
    with pytest.raises(SystemExit, match="--decoder-only keeps the bundle's quantizer"):
        autoencoder.main(tiny + ["--out", str(tmp_path / "z"), "--init-from", str(tmp_path / "b"), "--decoder-only",
                                 "--quantizer", quantizer, "--codebook-size", "8", "--steps", "1"])  # fmt: skip


@needs_taef2
def test_book_lr_under_ddp_keeps_the_replicas_books_equal(photos, tmp_path):  # noqa: F811
    """Two gloo processes draw different books per step; every trained book is still reduced on
    both (zeros where not drawn), so the replicas end with the same books and weights."""
    import os
    import subprocess
    import sys

    tiny, bundle = _tiny_bundle(photos, tmp_path)
    tiny[tiny.index("test-tiny-taef2")] = "taef2-vq-f16"  # registered by conftest only; the bundle's config wins
    args = tiny + ["--out", str(tmp_path / "ddp"), "--init-from", str(tmp_path / "b"), "--decoder-only",
                   "--pixel-steps", "0", "--book-lr", "5e-2", "--steps", "4"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "vqcodec.train.autoencoder", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DDP: 2 replicas, weights in sync: True" in proc.stdout
    books = torch.load(tmp_path / "ddp" / "last.ckpt", weights_only=True)["books"]
    assert any(not torch.equal(books[str(k)], bundle.codebook(k).float()) for k in bundle.codebook_sizes)
