"""``vqc bulk``: encode/decode on a Dask LocalCluster of 2 worker processes (shared by the module).

Tiny generated images and the shipped default model; every output is compared byte for byte with
what ``vqc encode`` / ``vqc decode`` (or the Python API) writes for the same input and options.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import vqcodec
from vqcodec import bulk
from vqcodec.cli import main
from vqcodec.imageio import encode_image

from .conftest import make_image


@pytest.fixture(scope="module")
def client():
    """One LocalCluster for the module (starting one costs seconds): 2 processes, 1 thread each."""
    dd = pytest.importorskip("dask.distributed")
    pytest.importorskip("pyarrow")
    mp = pytest.MonkeyPatch()
    mp.setenv("VQC_THREADS", "1")  # the workers inherit it: one torch thread each
    try:
        with (
            dd.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.ERROR) as cluster,
            dd.Client(cluster) as c,
        ):  # fmt: skip
            yield c
    finally:
        mp.undo()


def photos(folder, n, seed=0, h=64, w=96):
    """n small photos in a tree (every other one in a subfolder); returns their paths."""
    paths = []
    for i in range(n):
        sub = folder / ("a" if i % 2 else "") / ("b" if i % 4 == 3 else "")
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"im{i}.png"
        Image.fromarray(make_image(h, w, seed=seed + i)).save(p)
        paths.append(p)
    return paths


def run(capsys, *args):
    code = main(list(map(str, args)))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def stats(client) -> dict:
    return client.run(bulk.worker_stats)


def wait_idle(client, timeout=60.0) -> None:
    """Until no worker runs a chunk (an interrupted job's chunks finish on their own)."""
    end = time.time() + timeout
    while any(s["busy"] for s in stats(client).values()):
        assert time.time() < end, "workers still busy"
        time.sleep(0.1)


def fingerprint(folder) -> dict:
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*.vqc")}


@pytest.mark.parametrize(
    "options",
    [
        ["-k", "16"],
        ["--max-bytes", "40"],
        ["-k", "32", "--packets", "4", "--parity", "1"],
    ],
)
def test_bulk_encode_is_vqc_encode_and_goes_on_after_a_bad_image(client, tmp_path, capsys, options):
    src = tmp_path / "src"
    paths = photos(src, 4)
    (src / "a" / "broken.png").write_bytes(b"not a png")
    (src / "notes.txt").write_text("ignored: not an image suffix")
    dst = tmp_path / "out"
    code, _, err = run(capsys, "bulk", "encode", src, dst, "--address", client.scheduler.address, "--chunk", 2,
                       *options)  # fmt: skip
    assert code == 1, err  # one image failed, the others were written
    assert err.count("vqc: error:") == 1 and "a/broken.png: not an image Pillow can read" in err
    assert "Traceback" not in err and "mean bpp" in err
    failures = json.loads((dst / bulk.FAILURES_JSON).read_text())
    assert [f["key"] for f in failures] == ["a/broken.png"]
    assert (dst / bulk.FAILURES_TXT).read_text().startswith("a/broken.png: ")
    for p in paths:
        rel = p.relative_to(src).with_suffix(".vqc")
        ref = tmp_path / "ref.vqc"
        assert run(capsys, "encode", p, "-o", ref, "-q", *options)[0] == 0
        assert (dst / rel).read_bytes() == ref.read_bytes(), rel
    if options[0] == "--max-bytes":  # and the Python API (codec.encode_within) agrees
        assert (dst / "im0.vqc").read_bytes() == vqcodec.encode(paths[0], max_bytes=40)
    if options == ["-k", "16"]:
        assert (dst / "im0.vqc").read_bytes() == vqcodec.encode(paths[0], codebook=16)
        # the model was loaded once per worker, not once per image
        assert all(s["model_loads"] == 1 for s in stats(client).values() if s["encoded"])
    assert not [f for f in dst.rglob(".*")]  # no temporary file left behind


def test_parquet_round_trip(client, tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    images = {f"k/{i}.jpg" if i else "top.png": make_image(48, 64, seed=10 + i) for i in range(3)}
    rows = []
    for key, px in images.items():
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG")
        rows.append((key, buf.getvalue()))
    rows.append(("bad", b"\x89PNG broken"))
    table = pa.table({"key": [k for k, _ in rows], "image": [b for _, b in rows]})
    pq.write_table(table, tmp_path / "in.parquet")
    dst = tmp_path / "out.parquet"
    report = bulk.encode(str(tmp_path / "in.parquet"), str(dst), bulk.EncodeSettings(codebook=64), client=client,
                         chunk=2)  # fmt: skip
    assert report.done == 3 and [f.key for f in report.failures] == ["bad"]
    out = pq.read_table(dst).to_pylist()  # a dataset folder of parts reads as one table (_failures.* skipped)
    assert sorted(r["key"] for r in out) == sorted(images)
    for r in out:
        assert r["vqc"] == vqcodec.encode(images[r["key"]], codebook=64)
        assert (r["K"], r["bytes"], r["model_id"]) == (64, len(r["vqc"]), vqcodec.load_model().manifest["model_id"])
        assert r["bpp"] == pytest.approx(len(r["vqc"]) * 8 / (48 * 64))
    parts = sorted(p.name for p in dst.glob("part-*.parquet"))
    again = bulk.encode(str(tmp_path / "in.parquet"), str(dst), bulk.EncodeSettings(codebook=64), client=client,
                        chunk=2)  # fmt: skip
    assert (again.done, again.skipped, len(again.failures)) == (0, 3, 1)  # only the bad row was tried again
    assert sorted(p.name for p in dst.glob("part-*.parquet")) == parts
    with pytest.raises(vqcodec.VqcUsageError, match="other options"):  # never mixed into one table
        bulk.encode(str(tmp_path / "in.parquet"), str(dst), bulk.EncodeSettings(codebook=16), client=client)

    back = bulk.decode(str(dst), str(tmp_path / "png.parquet"), client=client)
    assert back.done == 3 and not back.failures
    for r in pq.read_table(tmp_path / "png.parquet").to_pylist():
        vqc = next(o["vqc"] for o in out if o["key"] == r["key"])
        want = encode_image(np.asarray(vqcodec.decode(vqc)), "PNG")  # as `vqc decode` writes it
        assert r["image"] == want and (r["width"], r["height"]) == (64, 48)
    code, _, err = run(capsys, "bulk", "decode", dst, tmp_path / "png", "--address", client.scheduler.address, "-q")
    assert code == 0, err
    assert sorted(p.relative_to(tmp_path / "png").as_posix() for p in (tmp_path / "png").rglob("*.png")) == [
        "k/1.png", "k/2.png", "top.png"]  # fmt: skip
    ref = tmp_path / "ref.png"
    (tmp_path / "k1.vqc").write_bytes(next(o["vqc"] for o in out if o["key"] == "k/1.jpg"))
    assert run(capsys, "decode", tmp_path / "k1.vqc", "-o", ref, "-q")[0] == 0
    assert (tmp_path / "png" / "k" / "1.png").read_bytes() == ref.read_bytes()


def test_unsafe_parquet_keys_fail_alone(client, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    buf = io.BytesIO()
    Image.fromarray(make_image(48, 64)).save(buf, format="PNG")
    keys = ["../escape.png", "/abs.png", "fine.png"]
    pq.write_table(pa.table({"key": keys, "image": [buf.getvalue()] * 3}), tmp_path / "in.parquet")
    report = bulk.encode(str(tmp_path / "in.parquet"), str(tmp_path / "out"), client=client)
    assert report.done == 1 and sorted(f.key for f in report.failures) == ["../escape.png", "/abs.png"]
    assert [p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".vqc"] == ["fine.vqc"]
    assert not (tmp_path / "escape.vqc").exists()
    assert np.asarray(vqcodec.decode((tmp_path / "out" / "fine.vqc").read_bytes())).shape == (48, 64, 3)


def test_usage_errors_are_one_line(client, tmp_path, capsys):
    photos(tmp_path / "src", 1)
    addr = client.scheduler.address
    cases = [
        (["bulk", "encode", tmp_path / "src", tmp_path / "o", "--address", addr, "-k", 100], 2, "choose one of 8"),
        (["bulk", "encode", tmp_path / "nothing", tmp_path / "o"], 2, "no such file, folder or parquet"),
        (["bulk", "encode", tmp_path / "src", tmp_path / "o", "--address", addr, "--workers", 3], 2, "--workers"),
        (["bulk", "encode", tmp_path / "src", tmp_path / "o", "--engine", "ray"], 2, "unknown engine"),
        (["bulk", "encode", tmp_path / "src", tmp_path / "o", "--parity", 2], 2, "--packets"),
        (["bulk", "decode", tmp_path / "src", tmp_path / "o", "--format", "nope"], 2, "unknown image format"),
    ]
    for argv, want, needle in cases:
        code, _, err = run(capsys, *argv)
        assert code == want and needle in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_missing_extra_is_one_line(tmp_path):
    """Without dask (made unimportable in a fresh process): one line naming the extra, exit 1."""
    photos(tmp_path / "src", 1)
    code = ("import sys; sys.modules.update(dict.fromkeys(['dask', 'dask.distributed', 'distributed'])); "
            "from vqcodec.cli import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, "bulk", "encode", str(tmp_path / "src"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == "vqc: error: vqc bulk needs the cluster extra: pip install 'vqcodec[cluster]'"
    assert not (tmp_path / "out").exists()


def test_help_imports_neither_dask_nor_torch():
    code = ("import sys; from vqcodec.cli import main; main(['bulk', 'encode', '--help']); "
            "assert not {'distributed', 'torch'} & set(sys.modules), sorted(sys.modules)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "vqc bulk encode photos/ archive/" in proc.stdout


class Stop(Exception):
    pass


def test_interrupted_job_resumes_where_it_stopped(client, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out"
    paths = photos(src, 6, seed=30)

    def stop(s: bulk.Snapshot) -> None:
        if s.chunks_done >= 2:
            raise Stop  # as Ctrl-C would, between two results

    with pytest.raises(Stop):
        bulk.encode(str(src), str(dst), bulk.EncodeSettings(codebook=16), client=client, chunk=1, progress=stop)
    wait_idle(client)  # chunks still running when it stopped finish on the workers; their results are dropped
    first = fingerprint(dst)
    assert 2 <= len(first) < 6
    encoded = sum(s["encoded"] for s in stats(client).values())
    damaged = sorted(first)[0]  # a damaged output is not "done": it is encoded again
    data = (dst / damaged).read_bytes()
    (dst / damaged).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    first.pop(damaged)
    report = bulk.encode(str(src), str(dst), bulk.EncodeSettings(codebook=16), client=client, chunk=1)
    todo = 6 - len(first)
    assert (report.done, report.skipped, len(report.failures)) == (todo, len(first), 0)
    assert sum(s["encoded"] for s in stats(client).values()) - encoded == todo  # only what was missing
    after = fingerprint(dst)
    assert {k: after[k] for k in first} == first  # the finished ones untouched
    for p in paths:
        assert (dst / p.relative_to(src).with_suffix(".vqc")).read_bytes() == vqcodec.encode(p, codebook=16)
    assert not [f for f in dst.rglob(".*")]


def test_killed_worker_loses_nothing_and_a_rerun_redoes_nothing(client, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out"
    paths = photos(src, 6, seed=20)
    pids = client.run(os.getpid)
    killed: list[int] = []

    def kill_a_busy_worker(s: bulk.Snapshot) -> None:
        """After the first chunk is written, SIGKILL a worker that is running one."""
        if killed or s.chunks_done < 1:
            return
        busy = [addr for addr, keys in client.processing().items() if keys and addr in pids]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(pids[busy[0]])

    report = bulk.encode(str(src), str(dst), bulk.EncodeSettings(codebook=16), client=client, chunk=1,
                         progress=kill_a_busy_worker)  # fmt: skip
    assert killed, "no worker was busy after the first chunk"
    assert report.done == 6 and not report.failures  # the dead worker's chunks ran elsewhere
    for p in paths:
        assert (dst / p.relative_to(src).with_suffix(".vqc")).read_bytes() == vqcodec.encode(p, codebook=16)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it
    wait_idle(client)
    before, encoded = fingerprint(dst), sum(s["encoded"] for s in stats(client).values())
    again = bulk.encode(str(src), str(dst), bulk.EncodeSettings(codebook=16), client=client, chunk=1)
    assert (again.done, again.skipped, len(again.failures)) == (0, 6, 0)
    assert sum(s["encoded"] for s in stats(client).values()) == encoded  # nothing encoded twice
    assert fingerprint(dst) == before  # same inodes, same mtimes: not rewritten


class KeysOnly:
    """A sink that keeps nothing (the test looks at the report)."""

    def write(self, outcomes, meta):
        return [o.key for o in outcomes]


def test_an_image_that_kills_its_worker_fails_alone(client, tmp_path):
    """A chunk whose worker keeps dying is re-run one image per task; only the culprit fails."""

    def chunk(items, topic=None, chunk_id=0):  # a local function: sent to the workers by value
        if any(key == "poison" for key, _ in items):
            os._exit(1)  # as a segfault or the OOM killer would
        return [bulk.Outcome(key, True, b"x", width=1, height=1) for key, _ in items]

    scheduler = client.cluster.scheduler
    allowed, scheduler.allowed_failures = scheduler.allowed_failures, 0  # give up after one death, not four
    try:
        report = bulk.Report("test")
        chunks = iter([[("a", b""), ("poison", b""), ("b", b"")], [("c", b"")]])
        bulk._drive(bulk.Cluster(client), chunks, chunk, (), 4, KeysOnly(), {}, report, [], None, None)
    finally:
        scheduler.allowed_failures = allowed
    assert sorted(report.written) == ["a", "b", "c"]
    assert [f.key for f in report.failures] == ["poison"] and "worker died" in report.failures[0].error
    client.wait_for_workers(2, timeout=60)


def test_own_local_cluster_starts_workers_with_the_codec_malloc_settings():
    """A ``vqc bulk`` without --address starts its workers with glibc thresholds that keep large
    activations on the heap (Dask's own MALLOC_TRIM_THRESHOLD_=65536 cost an encode 30 %)."""
    pytest.importorskip("dask.distributed")
    cluster = bulk.Cluster(workers=1)
    try:
        env = cluster.get().run(lambda: {k: os.environ.get(k) for k in bulk.WORKER_MALLOC})
    finally:
        cluster.close()
    assert list(env.values()) == [bulk.WORKER_MALLOC]
