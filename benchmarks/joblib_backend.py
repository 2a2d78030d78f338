"""joblib on fanout against joblib on loky: ``python benchmarks/joblib_backend.py [--quick]``.

``Parallel(n_jobs=2)`` over N trivial calls (``delayed(inc)(i)``), once with
``backend="fanout"`` (``import fanout.joblib``) and once with joblib's default, loky;
"warm": each backend's workers run a first call before the timed ones (a ``Parallel``
kept open as a context manager, whose workers joblib reuses). Each backend runs once per
repeat, in an order that rotates; medians of tasks/s and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import joblib
from bench_tasks import inc

import fanout.joblib  # noqa: F401 - registers the backend "fanout"

WORKERS = 2


def rate(backend: str, n: int, made: bool) -> float:
    """Calls per second through ``Parallel``; ``made``: the calls made before the timer
    (what the backend costs), else by the idiom's generator (``delayed(f)(x)`` copies
    ``f``'s metadata each time: a cost of the caller's, the same on every backend)."""
    call = joblib.delayed(inc)
    calls = [call(i) for i in range(n)] if made else None
    with joblib.Parallel(n_jobs=WORKERS, backend=backend) as parallel:
        parallel(joblib.delayed(inc)(i) for i in range(1000))  # warm: workers up
        began = time.perf_counter()
        out = parallel(calls if calls is not None else (joblib.delayed(inc)(i) for i in range(n)))
        seconds = time.perf_counter() - began
    assert out[-1] == n, out[-1]
    return n / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 calls, one repeat")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    sizes = [20_000] if args.quick else [20_000, 200_000]
    repeats = 1 if args.quick else 5
    ways: dict[str, Callable[[int, bool], float]] = {
        "fanout": lambda n, made: rate("fanout", n, made),
        "loky": lambda n, made: rate("loky", n, made),
    }
    lines = [
        f"Python {sys.version.split()[0]}, joblib {joblib.__version__}, n_jobs={WORKERS},"
        f" trivial calls, warm; medians of {repeats}.",
        "",
        '| calls | made | `backend="fanout"` tasks/s | loky tasks/s | fanout ÷ loky |',
        "|---:|---|---:|---:|---:|",
    ]
    for n, made in [(n, made) for n in sizes for made in (True, False)]:
        found: dict[str, list[float]] = {name: [] for name in ways}
        names = list(ways)
        for repeat in range(repeats):
            for name in names[repeat % 2 :] + names[: repeat % 2]:
                found[name].append(ways[name](n, made))
                print(f"  .. {n:,} {name}: {found[name][-1]:,.0f}/s", file=sys.stderr, flush=True)
        ours, theirs = statistics.median(found["fanout"]), statistics.median(found["loky"])
        how = "before the timer" if made else "by the generator"
        lines.append(f"| {n:,} | {how} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
