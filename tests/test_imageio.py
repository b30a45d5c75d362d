import numpy as np
import pytest
from PIL import Image

from vqcodec import imageio
from vqcodec.errors import VqcImageError


def test_modes_become_rgb(tmp_path):
    base = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cases = {
        "L.png": Image.fromarray(base[..., 0]),
        "P.png": Image.fromarray(base).convert("P"),
        "RGBA.png": Image.fromarray(np.dstack([base, np.full((20, 30), 128, np.uint8)])),
        "I16.png": Image.fromarray(base[..., 0].astype(np.uint16) * 257),
        "CMYK.jpg": Image.fromarray(base).convert("CMYK"),
    }
    for name, im in cases.items():
        p = tmp_path / name
        im.save(p)
        got = imageio.load_image(p)
        assert got.pixels.shape == (20, 30, 3) and got.pixels.dtype == np.uint8, name
        assert got.converted, name
    gray = imageio.load_image(tmp_path / "I16.png").pixels
    assert abs(int(gray[0, 0, 0]) - int(base[0, 0, 0])) <= 1


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    Image.fromarray(arr, "RGBA").save(tmp_path / "t.png")
    assert (imageio.load_image(tmp_path / "t.png").pixels == 255).all()


def test_exif_orientation(tmp_path):
    im = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    im.save(tmp_path / "r.jpg", exif=exif)
    assert imageio.load_image(tmp_path / "r.jpg").pixels.shape == (20, 10, 3)


def test_unreadable_inputs(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(VqcImageError, match="not an image"):
        imageio.load_image(tmp_path / "bad.png")
    with pytest.raises(VqcImageError, match="no such file"):
        imageio.load_image(tmp_path / "missing.png")
    with pytest.raises(VqcImageError, match="directory"):
        imageio.load_image(tmp_path)
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(VqcImageError):
        imageio.load_image(tmp_path / "trunc.png")


def test_pixel_limit_checked_before_decoding(tmp_path):
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(VqcImageError, match="limit"):
        imageio.load_image(tmp_path / "big.png", max_pixels=5000)


def test_pad_to_multiple():
    img = np.arange(5 * 3 * 3, dtype=np.uint8).reshape(5, 3, 3)
    out = imageio.pad_to_multiple(img, 16)
    assert out.shape == (16, 16, 3)
    assert np.array_equal(out[:5, :3], img)
    assert imageio.pad_to_multiple(np.zeros((1, 1, 3), np.uint8), 16).shape == (16, 16, 3)


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    p = tmp_path / "x.bin"
    imageio.atomic_write_bytes(p, b"abc")
    assert p.read_bytes() == b"abc"
    with pytest.raises(VqcImageError):
        imageio.save_image(np.zeros((4, 4, 3), np.uint8), tmp_path / "nodir" / "x.png")
    imageio.save_image(np.zeros((4, 4, 3), np.uint8), tmp_path / "y.jpg")
    assert Image.open(tmp_path / "y.jpg").format == "JPEG"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.bin", "y.jpg"]


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    (tmp_path / "old.png").write_bytes(b"previous")
    real_write = imageio.os.write
    calls = {"n": 0}

    def full(fd, data):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(imageio.os, "write", full)
    with pytest.raises(VqcImageError, match="No space left") as e:
        imageio.save_image(np.zeros((600, 600, 3), np.uint8), tmp_path / "old.png")
    assert "\n" not in str(e.value)
    assert (tmp_path / "old.png").read_bytes() == b"previous"  # the old file is untouched
    assert sorted(f.name for f in tmp_path.iterdir()) == ["old.png"]


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_signal_mid_write_leaves_no_file_and_no_litter(tmp_path, sig):
    """A writer killed half-way (SIGKILL: no cleanup code runs at all) leaves the folder as it was."""
    import signal
    import subprocess
    import sys
    import textwrap

    child = textwrap.dedent(f"""
        import os, signal, sys, time
        from vqcodec import imageio
        # Ctrl-C's usual handler, even when this test runs in the background (where the shell
        # hands SIGINT down ignored and Python then installs no KeyboardInterrupt handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        real = os.write
        def slow(fd, data):
            n = real(fd, data)
            print("mid", flush=True)
            time.sleep(60)
            return n
        imageio.os.write = slow
        imageio._CHUNK = 1024
        imageio.atomic_write_bytes({str(tmp_path / "out.vqc")!r}, b"x" * 10000)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"mid"
    proc.send_signal(getattr(signal, sig))
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert not (tmp_path / "out.vqc").exists()  # never a partial output
    if sig == "SIGINT" or imageio._TMPFILE_WORKS:
        assert list(tmp_path.iterdir()) == []  # cleaned up by the writer, or never named
    imageio.atomic_write_bytes(tmp_path / "next.vqc", b"ok")  # the next write sweeps a killed writer's part
    assert [f.name for f in tmp_path.iterdir()] == ["next.vqc"]
