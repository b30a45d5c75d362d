"""The engine that runs a bulk job: a Dask client (a running scheduler, or a ``LocalCluster``
started here), the submit-and-collect loop with bounded memory and the handling of workers that die,
and the preflight that asks one worker whether it can run the job at all.

Dask is imported only when a job starts: ``vqc --help`` stays fast, and without the ``cluster``
extra ``vqc bulk`` ends in one line naming it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from vqcodec.bulk.settings import EXTRA_HINT, Failure, Outcome, Report, Snapshot, _one_line
from vqcodec.bulk.worker import encode_chunk
from vqcodec.errors import VqcError, VqcUsageError

ENGINES = ("dask",)

# glibc settings for the workers. Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to
# hand freed memory back to the OS), and setting any malloc threshold turns off glibc's adaptive mmap
# threshold: every activation above 128 KB is then a fresh mmap, zeroed page by page, and freed with
# munmap. The codec allocates tens of MB per layer, so an encode ran 30 % slower in such a worker
# (5.3 s against 4.1 s per Kodak photo, one thread, AMD EPYC AVX2; 3.8 s with these values). Blocks
# up to 32 MB come from the heap and are reused; above 64 MB of free heap top, memory is returned.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "67108864"}

def _dask():
    """``dask.distributed``, or the one-line error that names the extra."""
    try:
        import dask.distributed as dd
    except ImportError:
        raise VqcError(EXTRA_HINT) from None
    return dd


class Cluster:
    """The Dask client of a job, started on first use: ``address`` connects to a running
    scheduler; without it a ``LocalCluster`` of ``workers`` processes with one thread each (the
    codec is CPU-bound Python + torch: processes, not threads, and torch's own threads set by
    ``VQC_THREADS``, one by default)."""

    def __init__(self, client=None, address: str | None = None, workers: int = 2) -> None:
        if workers < 1:
            raise VqcUsageError("--workers must be at least 1")
        self.client, self.address, self.workers = client, address, workers
        self._own: list = []

    def get(self):
        if self.client is not None:
            return self.client
        dd = _dask()
        if self.address:
            try:
                self.client = dd.Client(self.address, timeout="20s")
            except (OSError, TimeoutError) as e:
                raise VqcError(f"cannot reach the Dask scheduler at {self.address} ({_one_line(str(e))})") from None
            self._own = [self.client]
        else:
            import dask

            env = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC}
            # the nanny lets this process's environment override its config (and an earlier nanny in
            # this process left Dask's 65536 there), so both are set while the workers start
            saved = {k: os.environ.get(k) for k in WORKER_MALLOC}
            try:
                os.environ.update(WORKER_MALLOC)
                with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
                    cluster = dd.LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                              dashboard_address=None, silence_logs=logging.CRITICAL)  # fmt: skip
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            self.client = dd.Client(cluster)
            self._own = [self.client, cluster]
        return self.client

    def close(self) -> None:
        for thing in self._own:
            try:
                thing.close()
            except Exception:  # noqa: BLE001 - shutting down: nothing left to save
                pass
        self._own = []

    def threads(self) -> int:
        try:
            return max(1, sum(self.get().nthreads().values()))
        except Exception:  # noqa: BLE001 - workers coming and going: assume one
            return 1


def _is_killed_worker(e: BaseException) -> bool:
    return type(e).__name__ == "KilledWorker"


def _drive(cluster: Cluster, chunks: Iterator[list], fn, args: tuple, total: int, sink, meta: dict,
           report: Report, read_failed: list[Failure], progress: Callable[[Snapshot], None] | None,
           on_failure: Callable[[Failure], None] | None) -> None:  # fmt: skip
    """Submit chunks (a few per worker thread at a time), write each finished one, report.

    A chunk that Dask gives up on because its workers kept dying (``KilledWorker``: a corrupt
    image can crash a decoder library, a huge one can run a worker out of memory) is split into
    suspects, and suspects run one at a time with nothing else in flight: a suspect that kills
    its worker even alone is the culprit and fails; the others, killed beside it, are redone."""
    dd = _dask()
    client = cluster.get()
    encoding = fn is encode_chunk
    topic = f"vqc-bulk-{uuid.uuid4().hex[:10]}"
    seen: dict[int, int] = {}
    lock = threading.Lock()

    def on_event(event) -> None:  # the client's event-loop thread
        msg = event[1]
        with lock:
            seen[msg["chunk"]] = max(seen.get(msg["chunk"], 0), msg["done"])

    client.subscribe_topic(topic, on_event)
    futures: dict[Any, tuple[int, list, bool]] = {}  # future -> (chunk id, items, ran alone)
    suspects: deque[tuple[str, bytes | None]] = deque()
    next_id = chunks_done = finished = 0  # finished: images of completed chunks, ok or failed
    t0 = time.perf_counter()
    threads, threads_at = cluster.threads(), time.perf_counter()
    last_emit = 0.0

    def fail(f: Failure) -> None:
        report.failures.append(f)
        if on_failure:
            on_failure(f)

    def submit(items: list, alone: bool = False) -> None:
        nonlocal next_id
        fut = client.submit(fn, items, *args, topic, next_id, key=f"vqc-bulk-{topic[9:]}-{next_id}", pure=False)
        futures[fut] = (next_id, items, alone)
        next_id += 1

    def emit(force: bool = False) -> None:
        nonlocal last_emit
        now = time.perf_counter()
        if progress is None or (not force and now - last_emit < 0.1):
            return
        last_emit = now
        with lock:
            running = sum(min(seen.get(cid, 0), len(items)) for cid, items, _ in futures.values())
        progress(Snapshot(total, report.skipped, finished + running, len(report.failures), report.bytes_out,
                          now - t0, chunks_done))  # fmt: skip

    exhausted = False
    try:
        while True:
            if time.perf_counter() - threads_at > 5:
                threads, threads_at = cluster.threads(), time.perf_counter()
            if suspects:
                if not futures:
                    submit([suspects.popleft()], alone=True)
            else:
                while not exhausted and len(futures) < 2 * threads + 1:
                    items = next(chunks, None)
                    while read_failed:
                        fail(read_failed.pop(0))
                        finished += 1
                    if items is None:
                        exhausted = True
                    else:
                        submit(items)
            if not futures:
                break
            try:  # back as soon as one chunk is done; every 0.2 s anyway, for the progress display
                dd.wait(list(futures), timeout=0.2, return_when="FIRST_COMPLETED")
            except TimeoutError:
                emit()
                continue
            for fut in [f for f in futures if f.done()]:
                cid, items, alone = futures.pop(fut)
                try:
                    outcomes = fut.result()
                except Exception as e:  # noqa: BLE001 - the chunk as a whole failed on the cluster
                    if _is_killed_worker(e) and not alone:
                        suspects.extend(items)
                        continue
                    why = "its worker died each time it ran, even alone" if _is_killed_worker(e) else _one_line(
                        f"{type(e).__name__}: {e}")  # fmt: skip
                    outcomes = [Outcome(key, False, error=f"{key}: {why}") for key, _ in items]
                fut.release()
                ok = [o for o in outcomes if o.ok]
                report.written += sink.write(ok, meta)
                for o in ok:
                    report.done += 1
                    report.bytes_in += o.in_bytes
                    report.bytes_out += len(o.data)
                    report.bpp_sum += (len(o.data) if encoding else o.in_bytes) * 8 / max(o.width * o.height, 1)
                    report.work_seconds += o.seconds
                for o in outcomes:
                    if not o.ok:
                        fail(Failure(o.key, o.error))
                finished += len(outcomes)
                chunks_done += 1
            emit()
        emit(force=True)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    finally:
        report.run_seconds = time.perf_counter() - t0
        report.workers = threads
        try:
            client.unsubscribe_topic(topic)
        except Exception:  # noqa: BLE001 - the client may already be gone
            pass


def _preflight(cluster: Cluster, fn, settings):
    """Run a preflight on one worker; a worker that cannot run vqcodec at all is one clear error."""
    try:
        result, error, usage = cluster.get().submit(fn, settings, pure=False).result()
    except VqcError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. ModuleNotFoundError on a worker without vqcodec
        raise VqcError(f"the Dask workers cannot run vqcodec ({_one_line(f'{type(e).__name__}: {e}')}); "
                       "install vqcodec and its models on every worker") from None
    if error:
        raise (VqcUsageError if usage else VqcError)(error)
    return result


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """Dask's own log lines (worker restarts, tasks given up) would break the progress display; what
    matters reaches the user as our own one-line failures."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
