"""``vqc``: the command line. Thin typer commands over the public API.

Every failure a user can cause ends in one line on stderr and a non-zero exit: 2 for usage
errors (bad flags, unavailable K), 1 for bad data (unreadable image, corrupt .vqc, wrong model).
Outputs are written atomically, so a failed run leaves no partial file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vqcodec.errors import VqcError, VqcUsageError

app = typer.Typer(
    name="vqc",
    help="Extreme-low-bitrate image codec (VQGAN index maps, 0.01-0.1 bpp).\n\n"
    "Examples:\n\n"
    "  vqc encode photo.png -o photo.vqc --codebook 64\n\n"
    "  vqc decode photo.vqc -o photo.out.png\n\n"
    "  vqc info photo.vqc\n\n"
    "  vqc models",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err = Console(stderr=True, soft_wrap=True)
out = Console()


def _status(msg: str, quiet: bool):
    return err.status(msg) if not quiet and err.is_terminal else _Nothing()


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@app.command()
def encode(
    image: Annotated[Path, typer.Argument(help="input image (any format Pillow reads)")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="output .vqc (default: IMAGE.vqc)")] = None,
    codebook: Annotated[int, typer.Option("-k", "--codebook", help="codebook size K: the rate knob")] = 64,
    model: Annotated[str | None, typer.Option("--model", help="model bundle name or folder")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="fixed-width indices, no entropy coding")] = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="refuse larger images")] = 4096 * 4096,
    quiet: Annotated[bool, typer.Option("-q", "--quiet")] = False,
) -> None:
    """Compress IMAGE to a .vqc file.

    Example: vqc encode photo.png -o photo.vqc --codebook 64
    """
    from vqcodec import codec, imageio, zoo
    from vqcodec.container import CodingMode

    output = output or image.with_suffix(".vqc")
    bundle = zoo.load_model(model)
    bundle.codebook(codebook)  # fail early on an unavailable K
    img = imageio.load_image(image, max_pixels)
    with _status(f"encoding {image.name} at K={codebook}", quiet):
        data = codec.encode(img.pixels, codebook, bundle, CodingMode.RAW if raw else CodingMode.STATIC,
                            max_pixels)  # fmt: skip
    imageio.atomic_write_bytes(output, data)
    if not quiet:
        h, w = img.pixels.shape[:2]
        note = f" (converted {img.source_mode} to RGB)" if img.converted else ""
        err.print(f"{image} {w}x{h}{note} -> {output}: {len(data)} bytes, "
                  f"{len(data) * 8 / (w * h):.4f} bpp, K={codebook}, model {bundle.name}", highlight=False)  # fmt: skip


@app.command()
def decode(
    file: Annotated[Path, typer.Argument(help="input .vqc file")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="output image; format from suffix")] = None,
    model: Annotated[str | None, typer.Option("--model", help="model bundle (default: from the file's id)")] = None,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="refuse larger images")] = 4096 * 4096,
    quiet: Annotated[bool, typer.Option("-q", "--quiet")] = False,
) -> None:
    """Decompress a .vqc FILE to an image (PNG unless the suffix says otherwise).

    Example: vqc decode photo.vqc -o photo.out.png
    """
    from vqcodec import codec, imageio

    output = output or file.with_suffix(".png")
    data = _read(file)
    with _status(f"decoding {file.name}", quiet):
        pixels = codec.decode(data, model, max_pixels)
    imageio.save_image(pixels, output)
    if not quiet:
        err.print(f"{file} -> {output}: {pixels.shape[1]}x{pixels.shape[0]}", highlight=False)


@app.command()
def info(file: Annotated[Path, typer.Argument(help="a .vqc file")]) -> None:
    """Show a .vqc file's header: version, model id, size, K, bytes, bpp."""
    from vqcodec import codec, entropy

    fi = codec.info(_read(file))
    h = fi.header
    hh, ww = fi.latent_shape
    n = h.m * hh * ww
    rows = [
        ("format version", str(h.version)),
        ("model id", f"{h.model_id:08x}"),
        ("image size", f"{h.width}x{h.height}"),
        ("codebook size K", str(h.codebook_size)),
        ("indices", f"{n} ({h.m} x {hh} x {ww})"),
        ("coding", h.mode.name.lower()),
        ("file bytes", str(fi.file_bytes)),
        ("payload bytes", str(fi.payload_bytes)),
        ("bits per index", f"{fi.payload_bytes * 8 / max(n, 1):.3f} (uniform {entropy.raw_bits(h.codebook_size)})"),
        ("bpp", f"{fi.bpp:.5f}"),
    ]
    for k, v in rows:
        out.print(f"{k:16s} {v}", highlight=False)


@app.command()
def models() -> None:
    """List the installed model bundles and their codebook sizes."""
    from vqcodec import zoo

    t = Table("name", "model id", "arch", "K", "Kodak LPIPS K=64", "path")
    found = zoo.manifests()
    for folder, m in found:
        s = m.get("scores", {}).get("64", {})
        lp = f"{s['lpips']:.3f}" if "lpips" in s else "-"
        default = " (default)" if m["name"] == zoo.DEFAULT_MODEL else ""
        t.add_row(m["name"] + default, m["model_id"], m["arch"], ",".join(map(str, m["codebook_sizes"])), lp,
                  str(folder))  # fmt: skip
    if not found:
        raise VqcUsageError("no model bundles found (looked in: " + ", ".join(map(str, zoo.search_paths())) + ")")
    out.print(t)


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASSTHROUGH)
def train(ctx: typer.Context) -> None:
    """Train the base autoencoder (options: vqc train --help)."""
    from vqcodec.train import autoencoder

    autoencoder.main(list(ctx.args))


@app.command(context_settings=_PASSTHROUGH)
def export(ctx: typer.Context) -> None:
    """Turn a training checkpoint into a model bundle (options: vqc export --help)."""
    from vqcodec.train import codebooks

    codebooks.main(list(ctx.args))


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > 1 << 30:
            raise VqcError(f"{path}: {size} bytes is too large for a .vqc file")
        return path.read_bytes()
    except FileNotFoundError:
        raise VqcError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise VqcError(f"{path}: is a directory") from None
    except OSError as e:
        raise VqcError(f"{path}: cannot read ({e.strerror})") from None


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn every expected failure into one line + exit code."""
    threads = os.environ.get("VQC_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    try:
        rv = app(args=argv, prog_name="vqc", standalone_mode=False)
        return int(rv) if isinstance(rv, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # typer's click usage errors: bad flags, missing arguments
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help(), err=True)
        else:
            typer.echo(f"vqc: error: {e.format_message()}", err=True)
        return int(getattr(e, "exit_code", 2))
    except typer.Abort:
        typer.echo("vqc: aborted", err=True)
        return 130
    except VqcError as e:
        typer.echo(f"vqc: error: {_one_line(str(e))}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        typer.echo("vqc: interrupted", err=True)
        return 130
    except SystemExit as e:  # argparse in train/export
        return e.code if isinstance(e.code, int) else 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
