"""What ``vqc info`` shows about a .vqc file, without torch.

Reading a header needs only the container layout, so this lives apart from ``codec`` (which
imports torch and the networks): ``vqc info`` then starts in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass

from vqcodec import container, layerfile, layerpackets
from vqcodec.container import Header


@dataclass(frozen=True)
class FileInfo:
    """What ``vqc info`` prints: the header plus sizes."""

    header: Header
    file_bytes: int
    payload_bytes: int
    packets: container.PacketScan | None = None
    layers: layerfile.LayerScan | None = None
    layer_packets: layerpackets.LayerPacketScan | None = None

    @property
    def bpp(self) -> float:
        return self.file_bytes * 8 / (self.header.width * self.header.height)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return _latent_hw(self.header.width, self.header.height, 16)


def _latent_hw(width: int, height: int, stride: int) -> tuple[int, int]:
    """Index-map (rows, columns) of a width x height image: the padded size over the stride."""
    return -(-height // stride), -(-width // stride)


def info(data: bytes) -> FileInfo:
    """Header and sizes of a .vqc file (the checksum is verified; packets and layers are counted)."""
    if container.is_packetized(bytes(data[:4])):
        scan = container.scan_packets(data)
        return FileInfo(scan.header, len(data), sum(len(p) for p in scan.payloads.values()), scan)
    if layerpackets.is_layer_packets(bytes(data[:4])):
        lp = layerpackets.scan(data)
        size = sum(len(p) for layer in lp.layers for p in layer.payloads.values())
        return FileInfo(lp.header, len(data), size, layer_packets=lp)
    if layerfile.is_layered(bytes(data[:4])):
        scan = layerfile.scan_layers(data)
        return FileInfo(scan.header, len(data), sum(len(p) for p in scan.payloads), layers=scan)
    header, payload = container.unpack(data)
    return FileInfo(header, len(data), len(payload))
