"""Training checkpoints (``vqc train``'s ``last.ckpt``) as the other training tools read them.

``vqc export`` (``codebooks``) and ``vqc finetune`` both read checkpoints and can keep a run's
discriminator beside the bundle they write (``--save-disc``); ``vqc train --disc-from`` reads it
back (``autoencoder.load_disc``). Both live here so that neither tool imports the other.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vqcodec.zoo import save_fp16


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint's state dict on the CPU, read once (it is ~160 MB with both
    optimizers) for every part taken from it."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_discriminator(disc: dict[str, torch.Tensor], path: Path) -> None:
    """The discriminator of a training checkpoint as fp16 safetensors (5.5 MB instead of the 127 MB
    checkpoint with both optimizers), so a run's adversary survives a machine that does not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_fp16(disc, path)
