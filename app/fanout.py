"""Many engine requests at once: each prompt of a /v1/completions call is its own job in the scheduler.

The engine's calls block, so each request waits in a thread of its own; the scheduler sees them all
together (one batch of 32 prompts runs as 32 sequences and shares their prefixes). The first
failure, or the client going away, cancels the others.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

from app.engine.types import GenerationRequest, GenerationResult, StreamPiece

# Threads one HTTP request may hold waiting on its jobs (prompts beyond this wait their turn).
MAX_THREADS_PER_REQUEST = 64


def _either(a: threading.Event, probe: Callable[[], bool] | None) -> Callable[[], bool]:
    return lambda: a.is_set() or (probe is not None and probe())


def generate_all(
    engine: Any, reqs: Sequence[GenerationRequest], *, is_disconnected: Callable[[], bool] | None = None
) -> list[GenerationResult]:
    """Results in the order of reqs; raises the first error (the other jobs are cancelled)."""
    if len(reqs) == 1:
        return [engine.generate(reqs[0], is_disconnected=is_disconnected)]
    failed = threading.Event()
    first: list[BaseException] = []  # the failure that cancelled the rest
    lock = threading.Lock()
    gone = _either(failed, is_disconnected)

    def one(req: GenerationRequest) -> GenerationResult | None:
        if failed.is_set():
            return None  # not started: another job failed
        try:
            return engine.generate(req, is_disconnected=gone)
        except BaseException as exc:
            with lock:
                if not failed.is_set():
                    first.append(exc)
                    failed.set()
            raise

    with ThreadPoolExecutor(max_workers=min(len(reqs), MAX_THREADS_PER_REQUEST), thread_name_prefix="fanout") as pool:
        futures = [pool.submit(one, r) for r in reqs]
        for f in futures:
            f.exception()  # waits for every job
    if first:
        raise first[0]
    return [f.result() for f in futures]


_END = object()


def stream_all(
    engine: Any, reqs: Sequence[GenerationRequest], *, is_disconnected: Callable[[], bool] | None = None
) -> Iterator[tuple[int, StreamPiece | GenerationResult | BaseException]]:
    """Start every request (errors in any of them raise here, before anything is sent), then return
    an iterator of (request number, StreamPiece | GenerationResult | exception) as they come.
    Closing the iterator cancels whatever still runs."""
    stop = threading.Event()
    gone = _either(stop, is_disconnected)
    events: queue.SimpleQueue = queue.SimpleQueue()
    started: list[BaseException | None] = [None] * len(reqs)
    ready = threading.Semaphore(0)

    def work(i: int, req: GenerationRequest) -> None:
        try:
            it = engine.stream(req, is_disconnected=gone)
        except BaseException as exc:  # noqa: BLE001 - handed to the view
            started[i] = exc
            ready.release()
            events.put((i, _END))
            return
        ready.release()
        try:
            for item in it:
                events.put((i, item))
        except BaseException as exc:  # noqa: BLE001 - handed to the view
            events.put((i, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            events.put((i, _END))

    for i, req in enumerate(reqs):
        threading.Thread(target=work, args=(i, req), name=f"stream-{i}", daemon=True).start()
    for _ in reqs:
        ready.acquire()
    first = next((e for e in started if e is not None), None)
    if first is not None:
        stop.set()  # the others cancel at their next poll
        raise first
    return _merge(events, len(reqs), stop)


def _merge(events: queue.SimpleQueue, n: int, stop: threading.Event):
    open_ = n
    try:
        while open_:
            i, item = events.get()
            if item is _END:
                open_ -= 1
                continue
            yield i, item
    finally:
        stop.set()
