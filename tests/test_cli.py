import numpy as np
import pytest
from PIL import Image

from vqcodec.cli import main

from .conftest import make_image


@pytest.fixture()
def photo(tmp_path):
    p = tmp_path / "photo.png"
    Image.fromarray(make_image(40, 72)).save(p)
    return p


def run(capsys, *args):
    code = main(list(map(str, args)))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_encode_decode_info_round_trip(models_env, photo, tmp_path, capsys):
    vqc = tmp_path / "photo.vqc"
    code, _, err = run(capsys, "encode", photo, "-o", vqc, "--codebook", 16, "--model", models_env)
    assert code == 0, err
    assert "bpp" in err and "K=16" in err
    code, out, _ = run(capsys, "info", vqc)
    assert code == 0
    assert "72x40" in out and "codebook size K  16" in out and "bpp" in out
    png = tmp_path / "out.png"
    code, _, err = run(capsys, "decode", vqc, "-o", png)
    assert code == 0, err
    assert np.asarray(Image.open(png)).shape == (40, 72, 3)


def test_default_output_names(models_env, photo, capsys):
    assert run(capsys, "encode", photo, "-k", 8, "--model", models_env, "-q")[0] == 0
    assert photo.with_suffix(".vqc").exists()
    assert run(capsys, "decode", photo.with_suffix(".vqc"), "-o", photo.parent / "d.webp", "-q")[0] == 0
    assert Image.open(photo.parent / "d.webp").format == "WEBP"


def test_models_lists_bundles(models_env, capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "tiny" in out and "8,16,32,64" in out


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["encode", "{photo}", "-k", "100", "--model", "{model}"], 2, "choose one of 8, 16, 32, 64"),
        (["encode", "{photo}", "--bogus"], 2, "No such option"),
        (["encode", "{photo}", "-k", "abc"], 2, "--codebook"),
        (["encode", "{missing}", "--model", "{model}"], 1, "no such file"),
        (["encode", "{notimage}", "--model", "{model}"], 1, "not an image"),
        (["encode", "{photo}", "--model", "nonexistent-model"], 1, "not found"),
        (["encode", "{photo}", "--model", "{model}", "--max-pixels", "100"], 1, "limit"),
        (["decode", "{notimage}"], 1, "bad magic"),
        (["decode", "{missing}"], 1, "no such file"),
        (["info", "{notimage}"], 1, "bad magic"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_errors_are_one_line_with_exit_codes(models_env, photo, tmp_path, capsys, args, code, needle):
    (tmp_path / "notimage.png").write_bytes(b"hello")
    subs = {"photo": photo, "model": models_env, "missing": tmp_path / "missing.png",
            "notimage": tmp_path / "notimage.png"}  # fmt: skip
    argv = [a.format(**subs) for a in args]
    got, out, err = (
        run(capsys, *argv, "-o", tmp_path / "out.bin") if args[0] in ("encode", "decode") else run(capsys, *argv)
    )
    assert got == code
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not (tmp_path / "out.bin").exists()


def test_truncated_file_leaves_no_output(models_env, photo, tmp_path, capsys):
    vqc = tmp_path / "p.vqc"
    assert run(capsys, "encode", photo, "-o", vqc, "-k", 16, "--model", models_env)[0] == 0
    data = vqc.read_bytes()
    for cut in (0, 5, len(data) // 2, len(data) - 1):
        (tmp_path / "t.vqc").write_bytes(data[:cut])
        code, _, err = run(capsys, "decode", tmp_path / "t.vqc", "-o", tmp_path / "t.png")
        assert code == 1 and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "t.png").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_help_has_examples(capsys):
    code, out, _ = run(capsys, "encode", "--help")
    assert code == 0 and "vqc encode photo.png" in out


def test_batch_encode_and_decode_folders(models_env, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(make_image(32 + 16 * i, 48, seed=i)).save(src / f"im{i}.png")
    (src / "broken.png").write_bytes(b"nope")
    (src / "notes.txt").write_text("ignored")
    code, _, err = run(capsys, "encode", src, "-o", tmp_path / "vqc", "-k", 16, "--model", models_env, "-j", 2)
    assert code == 1  # one file failed, the others were written
    assert "broken.png: not an image" in err and "mean bpp" in err
    assert sorted(p.name for p in (tmp_path / "vqc").iterdir()) == ["im0.vqc", "im1.vqc", "im2.vqc"]
    code, _, err = run(capsys, "decode", str(tmp_path / "vqc" / "*.vqc"), "-o", tmp_path / "png", "--format", "webp")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["im0.webp", "im1.webp", "im2.webp"]
    assert Image.open(tmp_path / "png" / "im2.webp").size == (48, 64)


def test_batch_usage_errors(models_env, photo, tmp_path, capsys):
    assert run(capsys, "encode", str(tmp_path / "*.nothing"), "--model", models_env)[0] == 2
    assert run(capsys, "encode", photo, photo, "-o", "-", "--model", models_env)[0] == 2
    assert run(capsys, "encode", photo, photo, "-o", photo, "--model", models_env)[0] == 2
    assert run(capsys, "decode", photo, "--format", "nope")[0] == 2


def test_stdin_to_stdout(models_env, photo, tmp_path):
    import subprocess
    import sys

    env = {"VQC_MODELS": str(models_env.parent), "PATH": "/usr/bin:/bin"}
    enc = subprocess.run([sys.executable, "-m", "vqcodec.cli", "encode", "-", "-o", "-", "-k", "16", "--model",
                          str(models_env)], input=photo.read_bytes(), capture_output=True, env=env, check=True)  # fmt: skip
    assert enc.stdout[:3] == b"VQC"
    dec = subprocess.run([sys.executable, "-m", "vqcodec.cli", "decode", "-", "-o", "-"], input=enc.stdout,
                         capture_output=True, env=env, check=True)  # fmt: skip
    assert dec.stdout[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-m", "vqcodec.cli", "decode", "-", "-o", "-"], input=b"VQC\x01junk",
                         capture_output=True, env=env)  # fmt: skip
    assert bad.returncode == 1 and bad.stdout == b"" and len(bad.stderr.decode().strip().splitlines()) == 1


def test_models_show_and_verify(models_env, tmp_path, capsys):
    code, out, _ = run(capsys, "models", "show", models_env)
    assert code == 0 and '"model_id"' in out
    code, out, _ = run(capsys, "models", "verify", models_env)
    assert code == 0 and "OK" in out
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(models_env, copy)
    with open(copy / "autoencoder.safetensors", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    code, _, err = run(capsys, "models", "verify", copy)
    assert code == 1 and "sha256 mismatch" in err


def test_input_faults_are_one_line_errors(models_env, photo, tmp_path, capsys, monkeypatch):
    """Zero-byte and directory inputs, unreadable files, unknown/wrong/damaged models: one line,
    exit 1, no output file, no traceback."""
    import io
    import shutil

    from vqcodec import zoo

    from .conftest import build_tiny_bundle

    out = tmp_path / "out.bin"

    def check(needle, *args, code_wanted=1):
        code, _, err = run(capsys, *args, "-o", out)
        assert code == code_wanted, err
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not out.exists()

    (tmp_path / "empty.png").write_bytes(b"")
    check("empty", "encode", tmp_path / "empty.png", "--model", models_env)
    (tmp_path / "empty.vqc").write_bytes(b"")
    check("empty file", "decode", tmp_path / "empty.vqc")
    (tmp_path / "adir.png").mkdir()
    check("no input files", "encode", tmp_path / "adir.png", "--model", models_env, code_wanted=2)  # a batch of 0
    # no permission (simulated: the tests may run as root, which ignores file modes)
    vqc = tmp_path / "p.vqc"
    assert run(capsys, "encode", photo, "-o", vqc, "-k", 16, "--model", models_env)[0] == 0
    real_open = io.open

    def denied(file, *a, **k):
        if str(file) in (str(vqc), str(photo)):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(io, "open", denied)
        m.setattr("builtins.open", denied)
        check("ermission denied", "decode", vqc)
        check("ermission denied", "encode", photo, "--model", models_env)
    # a file whose model is not installed
    other = build_tiny_bundle(tmp_path / "other", seed=1, name="other")
    foreign = tmp_path / "foreign.vqc"
    assert run(capsys, "encode", photo, "-o", foreign, "-k", 16, "--model", other)[0] == 0
    check("no installed bundle", "decode", foreign)
    # the wrong model named for a file
    check("made with model id", "decode", vqc, "--model", other)
    # an installed bundle whose weights were altered
    damaged = tmp_path / "damaged"
    shutil.copytree(models_env, damaged)
    blob = bytearray((damaged / zoo.WEIGHTS).read_bytes())
    blob[-3] ^= 0x10
    (damaged / zoo.WEIGHTS).write_bytes(bytes(blob))
    check("sha256 mismatch", "decode", vqc, "--model", damaged)


def _sizes(photo, model, **pack) -> dict[int, int]:
    """File size per K for ``photo`` (what ``vqc encode -k K`` writes, with the same coding choice)."""
    from vqcodec import codec, zoo
    from vqcodec.container import CodingMode
    from vqcodec.imageio import load_image

    bundle = zoo.load_model(model)
    pixels = load_image(photo).pixels
    out = {}
    for k in bundle.codebook_sizes:
        enc = codec.analyze(pixels, bundle, k)
        mode = CodingMode.STATIC if pack.get("packets") else codec.best_mode(bundle, k)
        out[k] = len(codec.pack(enc, bundle, mode, pack.get("packets", 0)))
    return out


def _largest_fitting(sizes: dict[int, int], budget: int) -> int:
    return max(k for k, n in sizes.items() if n <= budget)


def test_max_bytes_picks_the_largest_k_that_fits(models_env, photo, tmp_path, capsys):
    from vqcodec import fileinfo

    sizes = _sizes(photo, models_env)
    ks = sorted(sizes)
    assert [sizes[k] for k in ks] == sorted(sizes[k] for k in ks)  # the premise: bytes grow with K
    budgets = sorted({n for n in sizes.values()} | {n + 1 for n in sizes.values()} | {sizes[ks[-1]] + 100})
    for budget in budgets:
        out = tmp_path / f"b{budget}.vqc"
        code, _, err = run(capsys, "encode", photo, "-o", out, "--max-bytes", budget, "--model", models_env)
        assert code == 0, err
        data = out.read_bytes()
        k = fileinfo.info(data).header.codebook_size
        assert len(data) <= budget
        assert k == _largest_fitting(sizes, budget)
        larger = [x for x in ks if x > k]
        assert not larger or sizes[larger[0]] > budget  # the next K up would not have fitted
        assert f"{len(data)} bytes" in err and f"K={k} (largest K within {budget} bytes)" in err
        direct = tmp_path / "direct.vqc"  # one shared encoder pass gives the very bytes of -k K
        assert run(capsys, "encode", photo, "-o", direct, "-k", k, "--model", models_env, "-q")[0] == 0
        assert direct.read_bytes() == data


def test_max_bytes_below_the_smallest_file_fails_cleanly(models_env, photo, tmp_path, capsys):
    smallest = min(_sizes(photo, models_env).values())
    out = tmp_path / "out.vqc"
    code, stdout, err = run(capsys, "encode", photo, "-o", out, "--max-bytes", smallest - 1, "--model", models_env)
    assert code == 1
    assert f"fits in {smallest - 1} bytes" in err and f"is {smallest} bytes" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]  # no temporary file left either
    code, stdout, err = run(capsys, "encode", photo, "-o", "-", "--max-bytes", 1, "--model", models_env)
    assert code == 1 and stdout == ""


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--codebook", "16"], "not both"),
        (["-k", "64"], "not both"),  # even the default value, when typed
        (["--max-bytes", "0"], "positive"),
        (["--max-bytes", "-5"], "positive"),
        (["--max-bytes", "lots"], "--max-bytes"),
        (["--entropy", "context"], "no context model"),  # the tiny bundle has none, for any K
    ],
)
def test_max_bytes_usage_errors(models_env, photo, tmp_path, capsys, extra, needle):
    out = tmp_path / "out.vqc"
    args = ["encode", photo, "-o", out, "--model", models_env, *extra]
    if "--max-bytes" not in extra:
        args += ["--max-bytes", 1000]
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_max_bytes_keeps_the_packet_count(models_env, photo, tmp_path, capsys):
    from vqcodec import fileinfo

    sizes = _sizes(photo, models_env, packets=4)
    budget = sorted(sizes.values())[len(sizes) // 2]
    out = tmp_path / "p.vqc"
    code, _, err = run(capsys, "encode", photo, "-o", out, "--max-bytes", budget, "--packets", 4,
                       "--model", models_env)  # fmt: skip
    assert code == 0, err
    fi = fileinfo.info(out.read_bytes())
    assert fi.file_bytes <= budget and fi.packets is not None and fi.packets.packets == 4
    assert fi.header.codebook_size == _largest_fitting(sizes, budget)


def test_max_bytes_batch_meets_the_budget_per_file(models_env, tmp_path, capsys):
    from vqcodec import fileinfo

    src = tmp_path / "src"
    src.mkdir()
    for i, (h, w) in enumerate([(40, 72), (64, 96)]):
        Image.fromarray(make_image(h, w, seed=i)).save(src / f"im{i}.png")
    sizes = {p.stem: _sizes(p, models_env) for p in sorted(src.iterdir())}
    budget = max(min(s.values()) for s in sizes.values())  # every image fits, with some K
    code, _, err = run(capsys, "encode", src, "-o", tmp_path / "vqc", "--max-bytes", budget, "--model", models_env)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "vqc").iterdir()) == ["im0.vqc", "im1.vqc"]
    for stem, s in sizes.items():
        data = (tmp_path / "vqc" / f"{stem}.vqc").read_bytes()
        assert len(data) <= budget
        assert fileinfo.info(data).header.codebook_size == _largest_fitting(s, budget)
    assert f"largest K within {budget} bytes: K=" in err
    # a budget only one image meets: the other fails (exit 1, named), the first is written
    tight = min(min(s.values()) for s in sizes.values())
    if tight < budget:
        out = tmp_path / "tight"
        code, _, err = run(capsys, "encode", src, "-o", out, "--max-bytes", tight, "--model", models_env)
        assert code == 1 and f"fits in {tight} bytes" in err
        assert len(list(out.iterdir())) == 1


def test_light_commands_do_not_import_torch(models_env, photo, tmp_path):
    """--help, info, models and corrupt only read containers and manifests: no torch at start-up
    (VQC_THREADS set on purpose: it must not pull torch in for them either)."""
    import json
    import os
    import subprocess
    import sys

    import vqcodec

    data = vqcodec.encode(photo, 16, models_env)
    (tmp_path / "p.vqc").write_bytes(data)
    from vqcodec import codec, zoo

    bundle = zoo.load_model(models_env)
    packed = codec.pack(codec.analyze(make_image(40, 72), bundle, 16), bundle, packets=4)
    (tmp_path / "pk.vqc").write_bytes(packed)
    argvs = [
        ["--help"],
        ["info", str(tmp_path / "p.vqc")],
        ["info", str(tmp_path / "pk.vqc")],
        ["models"],
        ["models", "list"],
        ["models", "show", "tiny"],
        ["corrupt", str(tmp_path / "pk.vqc"), "-o", str(tmp_path / "lossy.vqc"), "--loss", "0.5", "--seed", "1"],
    ]
    script = (
        "import json, sys\n"
        "from vqcodec.cli import main\n"
        "codes = [main(a) for a in json.loads(sys.argv[1])]\n"
        "import vqcodec\n"
        "vqcodec.VqcError, vqcodec.info, vqcodec.FileInfo, vqcodec.available()\n"
        "print(json.dumps({'codes': codes, 'torch': 'torch' in sys.modules}))\n"
    )
    env = {**os.environ, "VQC_MODELS": str(models_env.parent), "VQC_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(argvs)], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["codes"] == [0] * len(argvs), proc.stderr
    assert got["torch"] is False
    assert "72x40" in proc.stdout and "tiny" in proc.stdout and (tmp_path / "lossy.vqc").exists()


def test_version_names_package_default_model_and_formats(tmp_path):
    import subprocess
    import sys

    from typer.testing import CliRunner

    import vqcodec
    from vqcodec import container, zoo
    from vqcodec.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    model_id = zoo._read_manifest(zoo.find_bundle(zoo.DEFAULT_MODEL))["model_id"]
    assert lines[0] == f"vqcodec {vqcodec.__version__}"
    assert zoo.DEFAULT_MODEL in lines[1] and model_id in lines[1]
    for v in (container.VERSION, container.PACKET_VERSION, container.PARITY_VERSION):
        assert f"{v} (" in lines[2]
    # answers without loading torch (a fresh process: this one has it already)
    code = "import sys; from vqcodec.cli import main; main(['--version']); assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"vqcodec {vqcodec.__version__}")


@pytest.mark.parametrize("module", ["vqcodec.train.finetune", "vqcodec.train.codebooks"])
def test_training_tools_import_on_their_own(module, tmp_path):
    """vqc export (codebooks) and vqc finetune share their checkpoint code through
    vqcodec.train.checkpoint, not through each other: either imports first in a fresh process."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_cli_writes_what_the_api_returns(models_env, photo, tmp_path, capsys):
    """vqc encode/decode are doors over vqcodec.encode/decode_report: the same bytes, the same report."""
    import vqcodec

    vqc = tmp_path / "p.vqc"
    args = ["encode", photo, "-o", vqc, "-k", 16, "--model", models_env, "--packets", 8, "--parity", 2, "-q"]
    assert run(capsys, *args)[0] == 0
    data = vqc.read_bytes()
    assert data == vqcodec.encode(photo, 16, str(models_env), packets=8, parity=2)
    (tmp_path / "lossy.vqc").write_bytes(vqcodec.corrupt(data, loss=0.5, seed=2))
    code, _, err = run(capsys, "decode", tmp_path / "lossy.vqc", "-o", tmp_path / "out.png", "--recover", "neighbour")
    decoded = vqcodec.decode_report((tmp_path / "lossy.vqc").read_bytes(), recover="neighbour")
    assert code == 0 and decoded.report.summary() in err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(decoded.image))
