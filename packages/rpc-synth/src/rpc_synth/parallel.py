"""Ordered map over worker processes; results come back in input order whatever the worker count."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; nested threads only add contention


def map_ordered(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """Yield ``fn(item)`` for each item, in order, using ``workers`` processes (``workers <= 1``: in-process)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    # Never plain fork: a parent that already ran opencv's thread pool can deadlock its forked children.
    method = "forkserver" if sys.platform.startswith("linux") else "spawn"
    context = multiprocessing.get_context(method)
    chunk = max(1, min(8, len(items) // (workers * 4)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        yield from pool.map(fn, items, chunksize=chunk)
