"""Decoded pixels do not depend on the number of CPU threads (docs/architecture.md, "Reproducible
decodes"): on the default bf16 path they are bit-identical for 1, 2 and 4 threads; on the fp32 path
(``VQC_FP32=1``, CPUs without native bf16) at most +-1 on at most 0.01 % of the samples."""

import os
import subprocess
import sys

import numpy as np
import pytest

import vqcodec
from vqcodec import zoo
from vqcodec.nets.autoencoder import native_bf16

from .conftest import REPO, make_image

shipped = pytest.mark.skipif(
    not (REPO / "models" / zoo.DEFAULT_MODEL / zoo.MANIFEST).exists(), reason="no shipped bundle"
)

DECODE = "import sys, numpy as np, vqcodec; np.save(sys.argv[2], vqcodec.decode_array(open(sys.argv[1], 'rb').read()))"


def _decode_with_threads(vqc, out, threads: int, fp32: bool) -> np.ndarray:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["VQC_FP32"] = "1" if fp32 else "0"
    subprocess.run([sys.executable, "-c", DECODE, str(vqc), str(out)], check=True, env=env, timeout=300)
    return np.load(out)


@shipped
@pytest.mark.parametrize("fp32", [False, True], ids=["default", "fp32"])
def test_decode_is_the_same_for_1_2_and_4_threads(tmp_path, fp32):
    exact = not fp32 and native_bf16() and vqcodec.load_model().model.config.backbone == "taef2"
    if not fp32 and not exact:
        pytest.skip("the default path is the fp32 one here (no native bf16, or a vqgan-backbone bundle)")
    img = make_image(256, 384, seed=5)
    vqc = tmp_path / "a.vqc"
    vqc.write_bytes(vqcodec.encode(img, 64))
    outs = {t: _decode_with_threads(vqc, tmp_path / f"{t}.npy", t, fp32) for t in (1, 2, 4)}
    for t in (2, 4):
        diff = np.abs(outs[1].astype(int) - outs[t].astype(int))
        if not exact:
            assert diff.max() <= 1 and (diff > 0).mean() <= 1e-4, (t, diff.max(), (diff > 0).mean())
        else:
            assert np.array_equal(outs[1], outs[t]), (t, diff.max(), (diff > 0).mean())
