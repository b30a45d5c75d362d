"""Replay the fuzz seeds and every saved finding through the fuzz harness's target."""

import importlib.util
from pathlib import Path

import pytest

from .conftest import REPO

HARNESS = REPO / "fuzz" / "fuzz_decode.py"
INPUTS = sorted((REPO / "fuzz" / "seeds").glob("*")) + sorted(
    p for p in (REPO / "tests" / "regressions").glob("*") if p.suffix != ".md"
)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("fuzz_decode", HARNESS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_target(mod.build_model(tmp_path_factory.mktemp("fuzz") / "fuzz-tiny"))


def test_there_are_seeds():
    assert len(INPUTS) >= 20


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: p.name)
def test_replay(target, path: Path):
    target(path.read_bytes())  # an image or a one-line VqcError; anything else fails here


def test_seeds_are_real_files_of_the_harness_model(tmp_path):
    """The seeds must decode with the harness's model, or the fuzzer would never get past the id check."""
    spec = importlib.util.spec_from_file_location("fuzz_decode", HARNESS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from vqcodec import codec

    bundle = mod.build_model(tmp_path / "fuzz-tiny")
    for name in ("raw-v1-k16-static", "raw-v1-k32-context", "raw-v2-k64-p8-lossy"):
        out, _ = codec.decode_with_report((REPO / "fuzz" / "seeds" / name).read_bytes()[1:], bundle)
        assert out.ndim == 3
