"""Every example in the docs runs: each fenced Python block of README.md and docs/usage.md, and each
command of the README's Tour, on small generated photos with the shipped default model.

Why: a reader copies these first, and an example that fails (a renamed argument, a flag that
moved) costs more trust than a missing one. The blocks run as written, in a folder that holds the
files they name (``photo.png``, ``photo.jpg``, ``photos/``); the Tour's commands run in order in one
folder, as a reader would type them, skipping only what needs hardware or a service the test
machine lacks (a GPU, a running Dask cluster), with the reason in the skip.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO, make_image

DOCS = ("README.md", "docs/usage.md")
PHOTO_HW = (64, 96)
OUTPUT_FILE = re.compile(r"""(?:save|save_image|write_bytes)\((?:[^()]*?,\s*)?["']([\w./-]+\.(?:png|jpg|vqc))["']""")
"""String literals a block saves to (``x.save("a.png")``, ``save_image(p, "b.png")``): checked after it runs."""


def fenced_blocks(text: str, language: str) -> list[tuple[int, str]]:
    """(first line number, code) of every ```language fenced block of a markdown text."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if current is None and line.strip() == f"```{language}":
            current, start = [], number + 1
        elif current is not None and line.strip() == "```":
            blocks.append((start, "\n".join(current) + "\n"))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def tour_commands() -> list[list[str]]:
    """The ``vqc ...`` lines of the README's Tour section (its first ```sh block), as argv lists."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Tour", 1)[1].split("\n## ", 1)[0]
    _, block = fenced_blocks(section, "sh")[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("vqc ")]


def make_photos(folder: Path) -> None:
    """The files the examples name: photo.png, photo.jpg and photos/ with two PNGs."""
    h, w = PHOTO_HW
    Image.fromarray(make_image(h, w, seed=1)).save(folder / "photo.png")
    Image.fromarray(make_image(h, w, seed=2)).save(folder / "photo.jpg", quality=90)
    (folder / "photos").mkdir()
    for seed in (3, 4):
        Image.fromarray(make_image(h, w, seed=seed)).save(folder / "photos" / f"shot{seed}.png")


PYTHON_BLOCKS = [
    pytest.param(doc, code, id=f"{doc}:{line}") for doc in DOCS for line, code in fenced_blocks((REPO / doc).read_text(), "python")
]  # fmt: skip


def test_the_docs_have_examples_to_run():
    assert sum(p.values[0] == "README.md" for p in PYTHON_BLOCKS) >= 1
    assert sum(p.values[0] == "docs/usage.md" for p in PYTHON_BLOCKS) >= 8
    commands = tour_commands()
    assert len(commands) >= 10 and all(argv[0] == "vqc" for argv in commands)


@pytest.mark.parametrize("doc,code", PYTHON_BLOCKS)
def test_python_example_runs(doc, code, tmp_path, monkeypatch):
    make_photos(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VQC_MODELS", raising=False)  # the shipped models, as a reader has them
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{doc} example", "exec"), {"__name__": "__docs_example__"})  # noqa: S102
    if "print(" in code:
        assert out.getvalue().strip(), "the example prints nothing"
    for name in OUTPUT_FILE.findall(code):
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 0, f"{name} was not written"
        if path.suffix in (".png", ".jpg"):
            assert Image.open(path).size[0] > 0
        else:
            assert path.read_bytes()[:3] == b"VQC"


@pytest.fixture(scope="module")
def tour_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tour")
    make_photos(folder)
    return folder


@pytest.mark.parametrize("argv", tour_commands(), ids=lambda argv: " ".join(argv[1:]))
def test_tour_command_runs(argv, tour_dir, monkeypatch, capsys):
    """The Tour's commands in order, in one folder (later ones read what earlier ones wrote)."""
    if any(a.startswith("cuda") for a in argv) and not _has_cuda():
        pytest.skip("needs a CUDA GPU (--device cuda); this machine has none")
    if "--address" in argv:
        pytest.skip("needs a running Dask cluster at the given --address; the local-cluster line runs instead")
    if argv[1] == "bulk":
        pytest.importorskip("dask.distributed", reason="vqc bulk needs the cluster extra")
    from vqcodec.cli import main

    monkeypatch.chdir(tour_dir)
    monkeypatch.delenv("VQC_MODELS", raising=False)
    code = main(argv[1:])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    if "-o" in argv:
        target = tour_dir / argv[argv.index("-o") + 1]
        assert target.exists(), f"{target.name} was not written"
        if target.is_dir():
            assert sorted(p.suffix for p in target.iterdir()) == [".vqc", ".vqc"]
        elif target.suffix == ".png":
            assert Image.open(target).size == PHOTO_HW[::-1]
            assert np.asarray(Image.open(target)).std() > 0  # a picture, not a blank
        else:
            assert target.read_bytes()[:3] == b"VQC"
    elif argv[1] == "bulk":
        assert sorted(p.name for p in (tour_dir / argv[4]).glob("*.vqc")) == ["shot3.vqc", "shot4.vqc"]
    else:
        assert (captured.out + captured.err).strip(), "the command printed nothing"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
