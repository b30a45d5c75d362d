"""The worker side of a bulk job: the tasks Dask runs (``encode_chunk``, ``decode_chunk`` and the
preflights) and the per-process state they share (the model, loaded once per worker process).
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vqcodec.bulk.settings import DecodeSettings, EncodeSettings, Outcome, _one_line
from vqcodec.errors import VqcError, VqcModelError, VqcUsageError

_LOCK = threading.Lock()
_BUNDLES: dict[str, Any] = {}
_STATS = {"model_loads": 0, "encoded": 0, "decoded": 0, "busy": 0, "chunks": 0}
_READY = False


def _setup() -> None:
    """Once per worker process: ``VQC_THREADS`` torch threads (without it torch keeps what the
    worker was started with: Dask's nanny sets ``OMP_NUM_THREADS=1``, one thread per task)."""
    global _READY
    if _READY:
        return
    threads = os.environ.get("VQC_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))
    _READY = True


def _bundle(model: str | None = None, model_id: int | None = None):
    """The bundle, loaded once per worker process (by name or folder, or by a file's model id):
    loading checks the sha256 of ~25 MB of weights and builds the networks, about 1.5 s, which a
    per-image load would pay 100k times a day."""
    from vqcodec import zoo

    key = model or (f"id:{model_id:08x}" if model_id is not None else zoo.DEFAULT_MODEL)
    with _LOCK:
        if key not in _BUNDLES:
            _BUNDLES[key] = zoo.load_model(model or (zoo.find_by_id(model_id) if model_id is not None else None))
            _STATS["model_loads"] += 1
        return _BUNDLES[key]


def worker_stats() -> dict:
    """This process's counters (``client.run(worker_stats)``: one dict per worker): model loads,
    images encoded and decoded, chunks, and how many chunks are running now."""
    return dict(_STATS, pid=os.getpid())


def _tell(topic: str | None, chunk_id: int, done: int) -> None:
    """Per-image progress to the client (a Dask event: scheduler -> subscribed client)."""
    if topic is None:
        return
    try:
        from distributed import get_worker

        get_worker().log_event(topic, {"chunk": chunk_id, "done": done})
    except (ImportError, ValueError):  # not running on a Dask worker (direct calls, tests)
        pass


def _failed(key: str, e: BaseException) -> Outcome:
    msg = str(e) if isinstance(e, VqcError) else f"{type(e).__name__}: {e}"
    msg = _one_line(msg)
    return Outcome(key, False, error=msg if msg.startswith(f"{key}:") else f"{key}: {msg}")


def _answer(check: Callable[[], Any]) -> tuple[Any, str, bool]:
    """(result, "", False), or (None, error, is a usage error): a preflight returns its error
    rather than raising it, so the worker logs no traceback beside the client's one line."""
    try:
        return check(), "", False
    except VqcError as e:
        return None, _one_line(str(e)), isinstance(e, VqcUsageError)


def preflight_encode(settings: EncodeSettings) -> tuple[Any, str, bool]:
    """On one worker before the job: load the model and check the options against it (an
    unavailable K is one usage error, not one failure per image). Answers (name, model id)."""
    from vqcodec import codec
    from vqcodec import device as devices
    from vqcodec.options import coding_mode

    def check() -> tuple[str, int]:
        _setup()
        bundle = _bundle(settings.model)
        devices.resolve(settings.device)
        forced = coding_mode(settings.entropy)
        if settings.max_bytes is None:
            bundle.codebook(settings.codebook)
        else:
            codec.budget_sizes(bundle, forced)
        if settings.effort != 1:
            from vqcodec import loss_weights

            codec.check_effort_model(bundle, settings.effort)
            loss_weights.lpips_vgg()
        return bundle.name, bundle.model_id

    return _answer(check)


def _run_chunk(items: list[tuple[str, bytes | None]], prepare: Callable[[], Callable[[str, bytes], Outcome]],
               what: str, counter: str, topic: str | None, chunk_id: int) -> list[Outcome]:  # fmt: skip
    """What every task does: ``prepare`` once (a failure there fails every item), then each item
    on its own (a bad one is an ``Outcome`` with its error; the others go on), timed, counted in
    ``_STATS[counter]`` and told to the client."""
    _setup()
    with _LOCK:
        _STATS["busy"] += 1
        _STATS["chunks"] += 1
    try:
        try:
            one = prepare()
        except VqcError as e:
            return [_failed(key, e) for key, _ in items]
        out = []
        for i, (key, data) in enumerate(items):
            t0 = time.perf_counter()
            try:
                if data is None:
                    raise VqcError(f"no {what} bytes (null)")
                outcome = one(key, data)
                outcome.seconds = time.perf_counter() - t0
                out.append(outcome)
                with _LOCK:
                    _STATS[counter] += 1
            except Exception as e:  # noqa: BLE001 - one bad item must not end the chunk
                out.append(_failed(key, e))
            _tell(topic, chunk_id, i + 1)
        return out
    finally:
        with _LOCK:
            _STATS["busy"] -= 1


def encode_chunk(items: list[tuple[str, bytes | None]], settings: EncodeSettings, model_id: int | None,
                 topic: str | None = None, chunk_id: int = 0) -> list[Outcome]:  # fmt: skip
    """Encode (key, image file bytes) pairs: exactly what ``vqc encode`` writes for each (both
    call ``vqcodec.encode``)."""
    from vqcodec import api, fileinfo, imageio
    from vqcodec import device as devices
    from vqcodec.errors import VqcBudgetError

    def prepare() -> Callable[[str, bytes], Outcome]:
        bundle = _bundle(settings.model)
        if model_id is not None and bundle.model_id != model_id:
            raise VqcModelError(f"this worker's model {bundle.name!r} has id {bundle.model_id:08x}, the job's "
                                f"has {model_id:08x}: install the same bundle on every worker")  # fmt: skip
        dev = str(devices.resolve(settings.device))
        codebook = settings.codebook if settings.max_bytes is None else None

        def one(key: str, data: bytes) -> Outcome:
            img = imageio.load_image(io.BytesIO(data), settings.max_pixels, label=key)
            try:
                blob = api.encode(img.pixels, codebook, bundle, entropy=settings.entropy,
                                  packets=settings.packets_spec, parity=settings.parity,
                                  max_bytes=settings.max_bytes, max_pixels=settings.max_pixels, device=dev,
                                  effort=settings.effort)  # fmt: skip
            except VqcBudgetError as e:
                raise VqcError(str(e)) from None
            h, w = img.pixels.shape[:2]
            k = fileinfo.info(blob).header.codebook_size
            return Outcome(key, True, blob, in_bytes=len(data), width=w, height=h, codebook=k,
                           model_id=bundle.model_id)  # fmt: skip

        return one

    return _run_chunk(items, prepare, "image", "encoded", topic, chunk_id)


def preflight_decode(settings: DecodeSettings) -> tuple[Any, str, bool]:
    """On one worker before the job: the recovery method, device and (when named) the model."""
    from vqcodec import device as devices
    from vqcodec import recovery

    def check() -> str:
        _setup()
        if settings.recover != "auto" and settings.recover not in recovery.METHODS:
            raise VqcUsageError(f"unknown recovery method {settings.recover!r}; choose one of auto, "
                                f"{', '.join(recovery.METHODS)}")  # fmt: skip
        devices.resolve(settings.device)
        return _bundle(settings.model).name if settings.model else ""

    return _answer(check)


def _file_model_id(data: bytes) -> int:
    from vqcodec import container

    if container.is_packetized(bytes(data[:4])):
        return container.scan_packets(data).header.model_id
    return container.read_header(data).model_id


def decode_chunk(items: list[tuple[str, bytes | None]], settings: DecodeSettings, topic: str | None = None,
                 chunk_id: int = 0) -> list[Outcome]:  # fmt: skip
    """Decode (key, .vqc bytes) pairs to image file bytes: what ``vqc decode`` writes for each
    (both call ``vqcodec.decode_report``)."""
    from vqcodec import api, imageio
    from vqcodec import device as devices

    def prepare() -> Callable[[str, bytes], Outcome]:
        dev = str(devices.resolve(settings.device))
        fmt = settings.pil_format

        def one(key: str, data: bytes) -> Outcome:
            bundle = _bundle(settings.model) if settings.model else _bundle(model_id=_file_model_id(data))
            image = api.decode_report(data, bundle, recover=settings.recover, max_pixels=settings.max_pixels,
                                      device=dev).image  # fmt: skip
            w, h = image.size
            return Outcome(key, True, imageio.encode_image(np.asarray(image), fmt), in_bytes=len(data), width=w,
                           height=h)  # fmt: skip

        return one

    return _run_chunk(items, prepare, ".vqc", "decoded", topic, chunk_id)
