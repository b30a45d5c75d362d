"""The wheel a user installs carries the code, the shipped bundles and their licences, and works
from a fresh virtual environment outside the checkout (no editable install, no models/ folder)."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vqcodec
from vqcodec.zoo import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="the dev extra installs 'build'")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
                   check=True, capture_output=True)  # fmt: skip
    (whl,) = out.glob("vqcodec-*.whl")
    assert list(out.glob("vqcodec-*.tar.gz")), "the sdist is built too"
    return whl


def test_wheel_carries_the_default_bundle_and_the_licences(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    bundle = f"vqcodec/models/{DEFAULT_MODEL}/"
    for f in ("manifest.json", "autoencoder.safetensors", "codebooks.safetensors", "recovery.safetensors",
              "pixels-int8.json"):  # the int8 decoder spec (nets/int8_pixels)
        assert bundle + f in names
    assert bundle + "TAEF2-LICENSE" in names  # the MIT notice of the weights it derives from, beside them
    assert "License-Expression: MIT" in meta
    assert "License-File: LICENSE" in meta and "TAEF2-LICENSE" in meta
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    # the seed papers' other quantizers ship in the repository only (docs/models.md says why)
    assert not any(n.startswith(("vqcodec/models/vqc-looc/", "vqcodec/models/vqc-dual/")) for n in names)
    assert "vqcodec/bulk/__init__.py" in names and "vqcodec/bulk/engine.py" in names  # packages listed in pyproject
    assert wheel.name.startswith(f"vqcodec-{vqcodec.__version__}-")  # the version is written once, in vqcodec


def test_wheel_installed_in_a_fresh_venv_encodes_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # the dependencies (torch, numpy, ...) come from this environment's site-packages, appended
    # after the new venv's own: vqcodec itself can only come from the installed wheel
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(work / "photo.png")
    env = {k: v for k, v in os.environ.items() if k not in ("VQC_MODELS", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"

    def run(*args: str) -> str:
        r = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout + r.stderr

    where = run(str(py), "-c", "import vqcodec; print(vqcodec.__file__)")
    assert str(venv) in where and str(REPO) not in where
    vqc = str(venv / "bin" / "vqc")
    assert f"model {DEFAULT_MODEL}" in run(vqc, "encode", "photo.png", "-o", "photo.vqc", "-k", "8")
    run(vqc, "decode", "photo.vqc", "-o", "photo.out.png")
    assert Image.open(work / "photo.out.png").size == (64, 48)
    assert "K" in run(vqc, "info", "photo.vqc")
    assert DEFAULT_MODEL in run(vqc, "models")
    assert run(vqc, "--version").startswith(f"vqcodec {vqcodec.__version__}\ndefault model: {DEFAULT_MODEL}")
