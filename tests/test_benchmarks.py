"""The packet-loss and entropy benchmarks run end to end on a tiny bundle (values, resumability)."""

import csv
import importlib.util
import shutil
import sys

import pytest
import torch
from PIL import Image

from vqcodec import zoo
from vqcodec.nets.transformer import IndexTransformer, TransformerConfig
from vqcodec.perceptual import weights_dir

from .conftest import REPO, make_image


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # so that spawned workers (speed.py) pickle its functions by name
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def bundle_with_transformers(tiny_bundle_dir, tmp_path):
    d = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, d)
    torch.manual_seed(0)
    for kind, causal in (("masked", False), ("ar", True)):
        cfg = TransformerConfig(sizes=(8, 16, 32, 64), dim=32, depth=1, heads=4, causal=causal, local=1)
        zoo.save_recovery(d, IndexTransformer(cfg).eval(), {"steps": 0}, kind=kind)
    return d


@pytest.mark.skipif(not weights_dir().exists(), reason="LPIPS/DISTS weights not present")
def test_packet_loss_benchmark_resumes_from_its_cache(bundle_with_transformers, tmp_path, capsys):
    data = tmp_path / "imgs"
    data.mkdir()
    for i in range(2):
        Image.fromarray(make_image(64, 96, seed=i)).save(data / f"im{i}.png")
    pl = _load("packet_loss")
    argv = ["--model", str(bundle_with_transformers), "--data", str(data), "--ks", "16", "--losses", "0", "0.5",
            "--seeds", "2", "--packets", "8", "--out", str(tmp_path / "out")]  # fmt: skip
    pl.main(argv)
    rows = list(csv.DictReader(open(tmp_path / "out" / "packet_loss.csv")))
    assert {r["method"] for r in rows} == {"none", "neighbour", "ar", "masked", "masked-index"}
    assert len(rows) == 2 * (1 + 2) * 5  # images x (loss 0 once + 2 seeds) x methods
    clean = [r for r in rows if r["loss"] == "0.0"]
    assert len({(r["image"], r["psnr"]) for r in clean}) == 2  # loss 0: one picture per image, every method
    lossy = [r for r in rows if r["loss"] == "0.5"]
    assert all(int(r["lost_packets"]) > 0 for r in lossy)
    lines = (tmp_path / "out" / "cache.jsonl").read_text().splitlines()
    pl.main(argv)  # everything cached: nothing new measured, same table
    assert (tmp_path / "out" / "cache.jsonl").read_text().splitlines() == lines
    assert list(csv.DictReader(open(tmp_path / "out" / "packet_loss.csv"))) == rows


@pytest.mark.skipif(not weights_dir().exists(), reason="LPIPS/DISTS weights not present")
def test_packet_loss_benchmark_parity_and_bursts(bundle_with_transformers, tmp_path, capsys):
    """Parity settings cost bytes and rebuild what they can; burst loss is a setting of its own."""
    data = tmp_path / "imgs"
    data.mkdir()
    Image.fromarray(make_image(64, 96, seed=3)).save(data / "im.png")
    pl = _load("packet_loss")
    pl.main(["--model", str(bundle_with_transformers), "--data", str(data), "--ks", "16", "--losses", "0", "0.2",
             "--seeds", "3", "--packets", "8", "--parities", "0", "2", "--bursts", "1", "3", "--methods", "neighbour",
             "--out", str(tmp_path / "out")])  # fmt: skip
    rows = list(csv.DictReader(open(tmp_path / "out" / "packet_loss.csv")))
    assert len(rows) == 4 * (1 + 3)  # (parity x burst) x (loss 0 once + 3 seeds)
    size = {r["parity"]: int(r["bytes"]) for r in rows}
    assert size["2"] > size["0"]
    clean = {r["psnr"] for r in rows if r["loss"] == "0.0"}
    assert len(clean) == 1
    rebuilt = [r for r in rows if r["parity"] == "2" and r["loss"] == "0.2" and r["lost_packets"] == "0"]
    assert rebuilt and all(r["psnr"] in clean for r in rebuilt)  # at most 2 lost: rebuilt exactly
    summary = list(csv.DictReader(open(tmp_path / "out" / "packet_loss_summary.csv")))
    assert {(r["parity"], r["burst"]) for r in summary} == {("0", "1.0"), ("0", "3.0"), ("2", "1.0"), ("2", "3.0")}
    out = capsys.readouterr().out
    assert "| parity | burst |" in out and "by bytes:" in out
    table = out.split("independent loss, by bytes:")[1].split("\n\n")[0]
    assert table.index("| 16 | 0 |") < table.index("| 16 | 2 |")  # ordered by bytes
    pl.main(["--model", str(bundle_with_transformers), "--data", str(data), "--ks", "8", "16", "--losses", "0",
             "0.2", "--seeds", "1", "--packets", "8", "--parities", "0", "2", "--parity-ks", "16",
             "--methods", "neighbour", "--out", str(tmp_path / "out2")])  # fmt: skip
    rows = list(csv.DictReader(open(tmp_path / "out2" / "packet_loss.csv")))
    assert {(r["K"], r["parity"]) for r in rows} == {("8", "0"), ("16", "0"), ("16", "2")}


def test_entropy_benchmark_reports_every_mode(bundle_with_transformers, tmp_path, capsys):
    data = tmp_path / "imgs"
    data.mkdir()
    Image.fromarray(make_image(64, 96, seed=3)).save(data / "im.png")
    _load("entropy").main(
        ["--model", str(bundle_with_transformers), "--data", str(data), "--ks", "16", "--levels", "2"]
    )
    out = capsys.readouterr().out
    assert "2-level" in out and "| 16 | 4.000 |" in out


def test_speed_benchmark_times_every_codec_in_its_own_process(tiny_bundle_dir, tmp_path, capsys):
    data = tmp_path / "imgs"
    data.mkdir()
    for s in range(2):
        Image.fromarray(make_image(64, 96, seed=s)).save(data / f"im{s}.png")
    _load("speed").main(["--model", str(tiny_bundle_dir), "--data", str(data), "--codecs", "vqcodec", "JPEG",
                         "--ks", "8", "--images", "2", "--threads", "1", "--out", str(tmp_path / "out")])  # fmt: skip
    rows = list(csv.DictReader(open(tmp_path / "out" / "speed.csv")))
    assert [(r["codec"].split(" ")[0], r["setting"]) for r in rows] == [("vqcodec", "8"), ("JPEG", "1")]
    for r in rows:
        assert float(r["enc_s"]) > 0 and float(r["dec_s"]) > 0 and float(r["rss_mb"]) > 10
        assert float(r["bpp"]) == pytest.approx(float(r["bytes"]) * 8 / (64 * 96))
    assert "| JPEG | 1 |" in capsys.readouterr().out


def test_codec_selection_by_name_alias_and_first_word():
    rc = _load("rd_codecs")
    codecs = [type("C", (), {"name": n})() for n in ("vqcodec (vqc-small)", "BPG", "JPEG XL", "JPEG", "WebP")]

    def names(asked):
        return [c.name for c in rc.select(codecs, asked)]

    assert names(None) == [c.name for c in codecs]
    assert names(["JPEG"]) == ["JPEG"]
    assert names(["jxl", "vqcodec"]) == ["vqcodec (vqc-small)", "JPEG XL"]
    assert names(["jpeg xl", "webp"]) == ["JPEG XL", "WebP"]
    assert names(["nothing"]) == []


@pytest.mark.skipif(not weights_dir().exists(), reason="LPIPS/DISTS weights not present")
def test_rd_benchmark_writes_every_output_and_resumes(tiny_bundle_dir, tmp_path):
    data = tmp_path / "imgs"
    data.mkdir()
    for s in range(2):
        Image.fromarray(make_image(176, 176, seed=s)).save(data / f"im{s}.png")
    out = tmp_path / "out"
    argv = ["--models", str(tiny_bundle_dir), "--data", str(data), "--codecs", "vqcodec", "JPEG", "WebP",
            "--jobs", "1", "--anchors", "JPEG", "--out", str(out)]  # fmt: skip
    rd = _load("rd")
    rd.main(argv)
    rows = list(csv.DictReader(open(out / "rd.csv")))
    n_vqc = len(zoo.load_model(tiny_bundle_dir).codebook_sizes)
    assert len(rows) == 2 * (n_vqc + 3 + 3)  # images x (every K + JPEG's and WebP's three settings)
    for r in rows:
        assert float(r["bpp"]) == pytest.approx(int(r["bytes"]) * 8 / 176**2)
        assert float(r["lpips"]) > 0 and 0 < float(r["dists"]) < 1 and 0 < float(r["ms_ssim"]) <= 1
    jpeg = sorted(
        (r for r in rows if r["codec"] == "JPEG" and r["image"] == "im0.png"), key=lambda r: int(r["setting"])
    )
    assert [int(r["setting"]) for r in jpeg] == [1, 3, 5] and float(jpeg[0]["bytes"]) < float(jpeg[-1]["bytes"])
    md = (out / "bdrate.md").read_text()
    assert "BD-rate against JPEG" in md and "| WebP |" in md
    for f in ("rd_summary.csv", "rd_psnr.png", "rd_lpips.png", "crops.png"):
        assert (out / f).stat().st_size > 0
    assert Image.open(out / "crops.png").size[0] == (176 + 4) * 4  # original + three codecs
    cache = (out / "cache.jsonl").read_text()
    rd.main(argv)  # all cached: nothing measured again
    assert (out / "cache.jsonl").read_text() == cache


@pytest.mark.skipif(not weights_dir().exists(), reason="LPIPS/DISTS weights not present")
def test_recovery_holdout_compares_every_variant_on_held_out_photos(bundle_with_transformers, tmp_path, capsys):
    import numpy as np

    cfg = TransformerConfig(sizes=(8, 16, 32, 64), dim=32, depth=1, heads=4, local=1)
    torch.manual_seed(1)
    zoo.save_recovery(bundle_with_transformers, IndexTransformer(cfg).eval(), {"steps": 0}, kind="fill")
    data = tmp_path / "train"
    data.mkdir()
    for i in range(8):  # split_holdout keeps a quarter of a small folder out: 2 photos
        Image.fromarray(make_image(64, 96, seed=i)).save(data / f"p{i}.png")
    rh = _load("recovery_holdout")
    m = rh.holes(6, 8, 0.3, seed=4)
    assert m.any() and np.array_equal(m, rh.holes(6, 8, 0.3, seed=4))
    rh.main(
        ["--model", str(bundle_with_transformers), "--data", str(data), "--k", "16", "--loss", "0.5", "--seeds", "1"]
    )
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in out.splitlines() if line.startswith("| ")}
    expected = {"neighbour", "ar", "shared-unit", "shared-plain", "fill-plain", "fill-plain-ar", "masked-index"}
    assert expected <= set(rows) and rows["neighbour"][1].strip() == "100%"
    assert all(np.isfinite(float(v[0])) for name, v in rows.items() if name in expected)
    assert "2 held-out photos x 1 seeds" in out


def test_recovery_speed_times_every_method(bundle_with_transformers, tmp_path, capsys):
    data = tmp_path / "imgs"
    data.mkdir()
    Image.fromarray(make_image(64, 96, seed=0)).save(data / "a.png")
    rs = _load("recovery_speed")
    rs.main(["--model", str(bundle_with_transformers), "--data", str(data), "--images", "1", "--k", "16",
             "--packets", "8", "--loss", "0.5", "--threads", "1"])  # fmt: skip
    out = capsys.readouterr().out
    names = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")}
    assert {"(loss-free)", "none", "neighbour", "ar", "masked", "masked-index"} <= names
    with pytest.raises(SystemExit, match="no .png"):
        rs.main(["--model", str(bundle_with_transformers), "--data", str(tmp_path / "empty"), "--threads", "1"])


def test_vvc_is_configured_for_one_intra_picture(tmp_path):
    """The VVC anchor at its best: a regression to a command without ``-r 1 --intraperiod 1`` (vvenc then
    codes the lone picture as the top of a 60 fps GOP at a lower QP) spends ~200 bytes more here."""
    rc = _load("rd_codecs")
    vvc = rc.VVC()
    if vvc.unavailable():
        pytest.skip(vvc.unavailable())
    cmd = vvc.command("vvencapp", tmp_path / "in.yuv", 128, 128, 50, tmp_path / "o.266")
    for flag, value in (("-r", "1"), ("--intraperiod", "1"), ("--qpa", "1"), ("--internal-bitdepth", "10")):
        assert cmd[cmd.index(flag) + 1] == value
    assert "slow" in vvc.signature() and cmd[cmd.index("--preset") + 1] == "slow"
    nbytes, rec, _, _ = vvc.run(make_image(128, 128, seed=0), 50, tmp_path)
    assert nbytes < 300  # 222 bytes with the all-intra command, 408 with the old one (medium, 60 fps, QPA off)
    assert rec.shape == (128, 128, 3)


def test_rd_cache_key_carries_the_codec_signature(tmp_path):
    """A result measured with an older command (another signature) is not served for the new one."""
    rd = _load("rd")
    rows = [{"codec": "VVC", "setting": 50, "image": "a.png", "bpp": 1.0},
            {"codec": "VVC", "setting": 50, "image": "a.png", "sig": "vvenc slow r1 ip1 qpa1 yuv420p10", "bpp": 0.5}]  # fmt: skip
    (tmp_path / "cache.jsonl").write_text("\n".join(__import__("json").dumps(r) for r in rows) + "\n")
    cache = rd.load_cache(tmp_path / "cache.jsonl")
    assert cache[("VVC", "50", "a.png", "")]["bpp"] == 1.0
    assert cache[("VVC", "50", "a.png", "vvenc slow r1 ip1 qpa1 yuv420p10")]["bpp"] == 0.5


def test_published_reference_curves_load_with_sources():
    """The field's published Kodak points (drawn dashed on the rd plots) parse, each with a source."""
    import csv as _csv

    rd = _load("rd")
    ref = rd.published()
    assert {"StableCodec", "MS-ILLM", "GLC"} <= set(ref)
    assert [p["lpips"] for p in ref["StableCodec"]] == [0.310, 0.244, 0.207, 0.182, 0.166]
    for pts in ref.values():
        assert all(0 < p["bpp"] < 0.1 and 0 < p["lpips"] < 1 for p in pts)
        assert [p["bpp"] for p in pts] == sorted(p["bpp"] for p in pts)
    for row in _csv.DictReader(open(REPO / "benchmarks" / "published_kodak.csv")):
        assert row["source"] and row["value"].split()[0] in ("exact", "read")


def test_big_images_benchmark_measures_each_vqc_process_on_its_own(tiny_bundle_dir, tmp_path, monkeypatch):
    big = _load("big_images")
    img = tmp_path / "a.png"
    Image.fromarray(make_image(64, 96)).save(img)
    monkeypatch.setenv("VQC_MODELS", str(tiny_bundle_dir.parent))
    name = zoo._read_manifest(tiny_bundle_dir)["name"]
    wall, peak_mb = big.timed(["encode", str(img), "-o", str(tmp_path / "a.vqc"), "-k", "8", "--model", name], 1)
    assert (tmp_path / "a.vqc").is_file()
    # VmHWM of the vqc process itself: at least torch's footprint, not this (bigger) test process's
    assert 50 < peak_mb < 4000 and wall > 0
    with pytest.raises(SystemExit, match="failed"):
        big.timed(["decode", str(tmp_path / "missing.vqc"), "-o", str(tmp_path / "b.png")], 1)


def test_paired_comparison_pairs_photos_and_applies_the_two_se_rule(tmp_path, capsys):
    """paired.py: differences are taken photo by photo (a photo only one run scored is left out),
    and "clearly better" needs LPIPS lower by more than two standard errors at K=8 and K=64."""
    paired = _load("paired")

    def write(name, lpips):
        path = tmp_path / name
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "K", "bytes", "bpp", "psnr", "ms_ssim", "lpips", "dists"])
            for (img, k), v in lpips.items():
                w.writerow([img, k, 100, 0.01, 18.0, 0.6, v, 0.25])
        return path

    base = {(f"p{i}", k): 0.40 + 0.05 * i for i in range(4) for k in (8, 64)}
    steady = {key: v - 0.02 + 0.001 * (int(key[0][1:]) % 2) for key, v in base.items()}  # always ~0.02 better
    noisy = {key: v + (0.03 if key[0] in ("p0", "p2") else -0.035) for key, v in base.items()}
    base_csv = write("base.csv", base | {("extra", 8): 0.9})
    r = paired.compare(paired.read(base_csv), paired.read(write("steady.csv", steady)), "lpips")
    assert r[8]["n"] == 4 and r[8]["better"] == 4 and r[8]["mean"] == pytest.approx(-0.0195, abs=1e-3)
    assert paired.clearly_better(r)
    assert not paired.clearly_better(paired.compare(paired.read(base_csv), paired.read(write("noisy.csv", noisy)), "lpips"))
    assert not paired.clearly_better({8: r[8]})  # K=64 missing: no verdict in its favour
    paired.main([str(base_csv), str(tmp_path / "steady.csv")])
    assert "verdict (LPIPS-Alex lower by > 2 SE at K=8 and K=64): clearly better" in capsys.readouterr().out
    assert "block_de" not in capsys.readouterr().out  # old CSVs have no colour column: nothing compared


def test_paired_equal_bpp_interpolates_the_candidate_per_photo_and_flags_colour(tmp_path, capsys):
    """--equal-bpp: a candidate with other bytes per K is read at the base's bpp (linear in log
    bpp between its own points, per photo); a point outside its range drops out; a higher block
    colour error is reported as not shippable."""
    paired = _load("paired")

    def write(name, rows):
        path = tmp_path / name
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "K", "bytes", "bpp", "psnr", "ms_ssim", "lpips", "dists", "block_de"])
            w.writerows(rows)
        return path

    base = write("b.csv", [[f"p{i}", k, 0, bpp, 20, 0.5, lp + 0.01 * i, 0.2, 3.0 + 0.1 * i]
                           for i in range(4) for k, bpp, lp in ((8, 0.01, 0.5), (64, 0.02, 0.4))])  # fmt: skip
    # candidate: twice the bytes at each K, and at 0.01 / 0.02 bpp 0.03 better than the base, worse colour
    cand = write("c.csv", [[f"p{i}", k, 0, bpp, 20, 0.5, lp + 0.01 * i, 0.2, 4.0 + 0.1 * i + 0.01 * (i % 2)]
                           for i in range(4) for k, bpp, lp in ((8, 0.005, 0.6), (64, 0.01, 0.47), (256, 0.04, 0.25))])  # fmt: skip
    at = paired.at_equal_bpp(paired.read(base), paired.read(cand))
    assert at[("p0", 8)]["lpips"] == pytest.approx(0.47)  # exactly its K=64 point
    assert at[("p0", 64)]["lpips"] == pytest.approx(0.47 + 0.5 * (0.25 - 0.47))  # halfway in log bpp
    assert at[("p0", 64)]["bpp"] == 0.02
    assert paired.at_equal_bpp(paired.read(base), {("p0", 8): {"bpp": 0.03, "lpips": 0.1}}) == {}  # out of range
    tie = {("p0", 8): {"bpp": 0.005, "lpips": 0.6}, ("p0", 16): {"bpp": 0.005, "lpips": 0.55},
           ("p0", 64): {"bpp": 0.02, "lpips": 0.4}}  # two K of equal bpp (tiny photos): no crash
    assert paired.at_equal_bpp(paired.read(base), tie)[("p0", 8)]["bpp"] == 0.01
    paired.main([str(base), str(cand), "--equal-bpp"])
    out = capsys.readouterr().out
    assert "K=8 and K=64): clearly better" in out and "block_de) worse by > 2 SE at K = [8, 64]: not shippable" in out
