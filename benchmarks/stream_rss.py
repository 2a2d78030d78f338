"""Peak RSS of a caller streaming N items through a pool: ``python stream_rss.py METHOD N``.

Run in a fresh process by ``compare.py``, so the peak is this caller's own (the workers
are other processes). On Linux the peak is ``VmHWM``: ``ru_maxrss`` would also count the
memory of the process that forked this one, before it exec'd Python. Prints one JSON
object: ``peak_mb``, ``base_mb`` (after imports and pool start, before streaming) and
``seconds`` (pool start included).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import Pool

from bench_tasks import inc

import fanout

WORKERS = 2
CHUNKSIZE = 256


def peak_mb() -> float:
    try:
        with open("/proc/self/status") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024


def stream_fanout(items: Iterable[int], started: Callable[[], None]) -> Iterator[object]:
    with fanout.Fanout(workers=WORKERS) as fo:
        started()
        yield from fo.map(inc, items, ordered=False)


def stream_imap_unordered(items: Iterable[int], started: Callable[[], None]) -> Iterator[object]:
    with Pool(WORKERS) as pool:
        started()
        yield from pool.imap_unordered(inc, items, chunksize=CHUNKSIZE)


def stream_executor(items: Iterable[int], started: Callable[[], None]) -> Iterator[object]:
    with ProcessPoolExecutor(WORKERS) as executor:
        started()
        yield from executor.map(inc, items, chunksize=CHUNKSIZE)


METHODS = {
    "fanout": stream_fanout,
    "imap_unordered": stream_imap_unordered,
    "executor": stream_executor,
}


def main() -> None:
    method, n = METHODS[sys.argv[1]], int(sys.argv[2])
    base: list[float] = []
    count = 0
    t0 = time.perf_counter()
    for _ in method((i for i in range(n)), lambda: base.append(peak_mb())):
        count += 1
    seconds = time.perf_counter() - t0
    assert count == n, f"{count} results for {n} items"
    print(json.dumps({"peak_mb": peak_mb(), "base_mb": base[0], "seconds": seconds}))


if __name__ == "__main__":
    main()
