"""``--device auto|cpu|cuda``: the choice, the fallback without a GPU, and the exact coding mode
that makes a file's bytes independent of where it was made (GPU runs: benchmarks/gpu.py)."""

import numpy as np
import pytest
import torch
from PIL import Image

from vqcodec import codec, container, device, zoo
from vqcodec.api import decode as api_decode
from vqcodec.api import encode as api_encode
from vqcodec.cli import main
from vqcodec.container import CodingMode
from vqcodec.errors import VqcUsageError

from .conftest import make_image


def test_auto_is_cuda_only_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.resolve("auto") == torch.device("cpu")
    assert device.resolve(None) == torch.device("cpu")
    with pytest.raises(VqcUsageError, match="no CUDA device"):
        device.resolve("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device.resolve("auto") == torch.device("cuda")
    assert device.resolve("cuda:0") == torch.device("cuda:0")
    with pytest.raises(VqcUsageError, match="only 1 CUDA"):
        device.resolve("cuda:3")
    with pytest.raises(VqcUsageError, match="unknown device"):
        device.resolve("tpu")


def test_using_scopes_the_choice():
    assert device.current() == torch.device("cpu")
    with device.using("cpu") as d:
        assert d == device.current() == torch.device("cpu")
    assert device.current() == torch.device("cpu")


def test_cli_refuses_a_missing_gpu_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    img = tmp_path / "a.png"
    Image.fromarray(make_image(48, 64)).save(img)
    code = main(["encode", str(img), "-o", str(tmp_path / "a.vqc"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "no CUDA device" in err and "Traceback" not in err
    assert not (tmp_path / "a.vqc").exists()
    assert main(["encode", str(img), "-o", str(tmp_path / "a.vqc"), "--device", "auto", "-q"]) == 0
    assert main(["decode", str(tmp_path / "a.vqc"), "-o", str(tmp_path / "a.png"), "--device", "cpu", "-q"]) == 0
    assert main(["decode", str(tmp_path / "a.vqc"), "-o", str(tmp_path / "b.png"), "--device", "gpu"]) == 2


def test_default_mode_is_exact_and_device_does_not_change_the_bytes():
    pixels = make_image(64, 80, seed=5)
    data = api_encode(pixels, 64)
    assert container.read_header(data).mode == CodingMode.INT8_PAIRED  # integer-exact: int8 0.2.0, paired 0.3.0
    assert api_encode(pixels, 64, device="cpu") == data
    assert np.asarray(api_decode(data, device="cpu")).shape == (64, 80, 3)


def test_float_context_files_still_made_on_request_and_decode():
    bundle = zoo.load_model(None)
    pixels = make_image(64, 80, seed=6)
    legacy = codec.encode(pixels, 64, bundle, CodingMode.CONTEXT)
    exact = codec.encode(pixels, 64, bundle)
    assert container.read_header(legacy).mode == CodingMode.CONTEXT
    assert np.array_equal(codec.unpack(legacy)[0].indices, codec.unpack(exact)[0].indices)
    assert abs(len(legacy) - len(exact)) <= 8  # the same model, rounded to integers: the same bits


def test_exact_file_needs_the_exact_model(tmp_path):
    """A bundle without the integer model refuses mode-3 files with a one-line reason."""
    import json
    import shutil

    from vqcodec.errors import VqcFormatError

    src = zoo.load_model(None)
    d = tmp_path / "b"
    shutil.copytree(src.path, d)
    man = json.loads((d / "manifest.json").read_text())
    del man["files"][zoo.EXACT["masked"]]
    del man["files"]["recovery-int8.safetensors"]
    (d / "manifest.json").write_text(json.dumps(man))
    data = codec.encode(make_image(48, 48), 64, src, CodingMode.EXACT)
    with pytest.raises(VqcFormatError, match="integer-exact context model"):
        codec.unpack(data, zoo.load_model(d))
    assert codec.best_mode(zoo.load_model(d), 64) == CodingMode.STATIC
