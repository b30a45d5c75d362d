import io

import numpy as np
import pytest
from PIL import Image

import vqcodec
import vqcodec.pillow  # noqa: F401  (registers the plugin)
from vqcodec.errors import VqcUsageError
from vqcodec.pillow import register_vqc_opener

from .conftest import make_image


def test_encode_accepts_arrays_pil_and_paths(tiny, tmp_path):
    arr = make_image(40, 56)
    a = vqcodec.encode(arr, 16, tiny)
    assert vqcodec.encode(Image.fromarray(arr), 16, tiny) == a
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert vqcodec.encode(tmp_path / "a.png", 16, tiny) == a
    assert vqcodec.encode(str(tmp_path / "a.png"), 16, tiny) == a
    gray = vqcodec.encode(arr[..., 0], 16, tiny)
    assert vqcodec.decode(gray, tiny).size == (56, 40)
    out = vqcodec.decode(a, tiny)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (56, 40)
    assert vqcodec.decode_array(a, tiny).shape == (40, 56, 3)
    assert vqcodec.info(a).header.codebook_size == 16


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8), 42])
def test_encode_rejects_bad_inputs(tiny, bad):
    with pytest.raises(VqcUsageError):
        vqcodec.encode(bad, 16, tiny)


def test_pillow_plugin_open_and_save(models_env, tiny, tmp_path):
    register_vqc_opener()  # idempotent
    img = Image.fromarray(make_image(48, 80))
    img.save(tmp_path / "x.vqc", codebook=32, model=tiny)
    with Image.open(tmp_path / "x.vqc") as im:
        assert im.format == "VQC" and im.size == (80, 48) and im.mode == "RGB"
        assert im.info["codebook"] == 32
        px = np.asarray(im.convert("RGB"))
    assert px.shape == (48, 80, 3)
    assert np.array_equal(px, vqcodec.decode_array((tmp_path / "x.vqc").read_bytes(), tiny))
    buf = io.BytesIO()
    img.save(buf, format="VQC", codebook=8, model=tiny)
    assert Image.open(io.BytesIO(buf.getvalue())).size == (80, 48)


def test_pillow_refuses_corrupt_header(tmp_path):
    (tmp_path / "bad.vqc").write_bytes(b"VQC\x07garbage")
    with pytest.raises(Exception):  # noqa: B017  Pillow wraps plugin errors as UnidentifiedImageError
        Image.open(tmp_path / "bad.vqc")


def test_encode_max_bytes(tiny):
    from vqcodec.errors import VqcBudgetError, VqcError

    arr = make_image(40, 72)
    sizes = {k: len(vqcodec.encode(arr, k, tiny)) for k in tiny.codebook_sizes}
    for budget in sorted(set(sizes.values())):
        data = vqcodec.encode(arr, model=tiny, max_bytes=budget)
        k = vqcodec.info(data).header.codebook_size
        assert len(data) <= budget and k == max(x for x, n in sizes.items() if n <= budget)
        assert data == vqcodec.encode(arr, k, tiny)
    assert vqcodec.encode(arr, model=tiny, max_bytes=np.int64(10_000)) == vqcodec.encode(arr, 64, tiny)
    smallest = min(sizes.values())
    with pytest.raises(VqcBudgetError) as e:
        vqcodec.encode(arr, model=tiny, max_bytes=smallest - 1)
    assert isinstance(e.value, VqcError) and e.value.exit_code == 1
    assert (e.value.budget, e.value.smallest) == (smallest - 1, smallest)
    assert vqcodec.VqcBudgetError is VqcBudgetError
    for bad in (0, -1, 2.5, "100", True):
        with pytest.raises(VqcUsageError, match="max_bytes"):
            vqcodec.encode(arr, model=tiny, max_bytes=bad)
    with pytest.raises(VqcUsageError, match="not both"):
        vqcodec.encode(arr, 64, tiny, max_bytes=1000)


def test_public_names_resolve_lazily():
    from vqcodec import api, codec, fileinfo, imageio, zoo

    assert vqcodec.encode is api.encode and vqcodec.decode_array is api.decode_array
    assert vqcodec.corrupt is api.corrupt and vqcodec.decode_report is api.decode_report
    assert vqcodec.Decoded is api.Decoded and vqcodec.LossReport is codec.LossReport
    assert vqcodec.info is fileinfo.info is codec.info and vqcodec.FileInfo is codec.FileInfo
    assert vqcodec.Encoded is codec.Encoded and vqcodec.Bundle is zoo.Bundle
    assert vqcodec.load_image is imageio.load_image and vqcodec.available is zoo.available
    assert set(vqcodec.__all__) <= set(dir(vqcodec))
    assert all(getattr(vqcodec, name) is not None for name in vqcodec.__all__)
    from vqcodec import load_model  # from-imports go through the module __getattr__ too

    assert load_model is zoo.load_model
    with pytest.raises(AttributeError, match="no_such_name"):
        vqcodec.no_such_name  # noqa: B018


def test_encode_packets_and_parity_round_trip(tiny):
    arr = make_image(64, 96)
    data = vqcodec.encode(arr, 16, tiny, packets=16, parity=4)
    scan = vqcodec.info(data).packets
    assert scan is not None and (scan.packets, scan.parity) == (16, 4)
    assert vqcodec.encode(arr, 16, tiny, packets="16", parity=4) == data  # "16" as the CLI reads it
    intact = vqcodec.decode_report(data, tiny)
    assert intact.report.packets == 16 and intact.report.received == 16 and intact.report.intact
    plain = vqcodec.decode(vqcodec.encode(arr, 16, tiny, entropy="static"), tiny)
    assert np.array_equal(np.asarray(intact.image), np.asarray(plain))  # same indices, same picture
    sized = vqcodec.info(vqcodec.encode(arr, 16, tiny, packets="16B")).packets  # a size: the count follows
    assert sized is not None and sized.packets >= 1 and sized.parity == 0


def test_corrupt_then_decode_report_names_the_losses(tiny):
    data = vqcodec.encode(make_image(64, 96), 16, tiny, packets=16)
    lossy = vqcodec.corrupt(data, loss=0.4, seed=3)
    assert lossy == vqcodec.corrupt(data, loss=0.4, seed=3) and len(lossy) < len(data)  # seeded
    out = vqcodec.decode_report(lossy, tiny, recover="neighbour")
    assert isinstance(out, vqcodec.Decoded) and isinstance(out.report, vqcodec.LossReport)
    assert out.image.mode == "RGB" and out.image.size == (96, 64)
    rep = out.report
    assert rep.packets == 16 and rep.lost_packets and rep.received == 16 - len(rep.lost_packets)
    assert rep.method == "neighbour" and 0 < rep.missing_positions < rep.positions
    assert f"{rep.received}/16 packets received" in rep.summary()
    assert vqcodec.decode(lossy, tiny, recover="neighbour").size == (96, 64)
    # parity rebuilds what it covers: the report says so and nothing is predicted
    protected = vqcodec.encode(make_image(64, 96), 16, tiny, packets=16, parity=4)
    dropped = vqcodec.corrupt(protected, loss=0.1, seed=0)
    healed = vqcodec.decode_report(dropped, tiny).report
    assert healed.rebuilt and healed.intact and not healed.lost_packets


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"parity": 2}, "give --packets N too"),
        ({"packets": 0}, "--packets takes a count in 1..255"),
        ({"packets": 300}, "--packets takes a count in 1..255"),
        ({"packets": "8B"}, "--packets takes a count"),
        ({"packets": 2.5}, "--packets takes a count"),
        ({"packets": 8, "parity": 99}, "0..63"),
        ({"packets": 250, "parity": 10}, "exceed 255"),
        ({"packets": 8, "parity": 1.5}, "--parity takes a whole number"),
        ({"entropy": "zip"}, "unknown entropy coder"),
    ],
)
def test_bad_packet_options_are_one_line_usage_errors(tiny, kwargs, needle):
    with pytest.raises(VqcUsageError, match=needle) as e:
        vqcodec.encode(make_image(16, 16), 16, tiny, **kwargs)
    assert "\n" not in str(e.value)


def test_bad_channel_and_recovery_options(tiny):
    plain = vqcodec.encode(make_image(32, 32), 16, tiny)
    with pytest.raises(VqcUsageError, match="not packetized"):
        vqcodec.corrupt(plain, loss=0.5)
    packed = vqcodec.encode(make_image(32, 32), 16, tiny, packets=4)
    for kwargs, needle in (({"loss": 1.5}, "--loss"), ({"burst": 0.5}, "--burst"), ({"ber": 2}, "--ber")):
        with pytest.raises(VqcUsageError, match=needle):
            vqcodec.corrupt(packed, **kwargs)
    with pytest.raises(VqcUsageError, match="unknown recovery method"):
        vqcodec.decode_report(packed, tiny, recover="guess")
    assert vqcodec.decode_report(plain, tiny).report.packets == 0  # no packets: an empty report
