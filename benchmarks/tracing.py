"""What tracing costs a run: ``python benchmarks/tracing.py [--quick]``.

Trivial tasks (``f(x) = x + 1``) on the local backend with two workers, in a fresh
process per measurement, four ways side by side:

- OpenTelemetry not installed (every import of it blocked, as if absent);
- installed, not used: the program never imports it (fanout does not either);
- imported, no tracer provider and no current span (a library pulled it in): each run
  looks for a context once and carries nothing;
- traced: a tracer provider (the SDK's, its spans dropped by a no-op exporter) and a
  current span: a ``fanout.run`` span and a ``fanout.task`` span per task.

Tasks per second (wall clock), and the CPU time per task of the whole process tree
(caller, workers, start-up and a warm-up run of 2,000 tasks included; steadier than
wall time on a machine others share); medians of the repeats (rotating order), each
beside the first way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from compare import BENCH_DIR

BLOCK = """
import sys
class _NoOtel:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, _NoOtel())
"""
IMPORTED = "import opentelemetry.trace, opentelemetry.propagate\n"
TRACED = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

class _Drop(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(_Drop()))
trace.set_tracer_provider(provider)
"""
MEASURE = """
import contextlib, json, sys, time
import fanout
from bench_tasks import inc
span = contextlib.nullcontext()
if "opentelemetry.trace" in sys.modules and {traced}:
    from opentelemetry import trace
    span = trace.get_tracer("bench").start_as_current_span("bench")
with fanout.Fanout(workers=2) as fo:
    list(fo.map(inc, range(2000)))  # workers started, code warm
    with span:
        t0 = time.perf_counter()
        results = list(fo.map(inc, range({n})))
        seconds = time.perf_counter() - t0
assert len(results) == {n} and all(r.ok for r in results)
print(json.dumps({{"per_second": {n} / seconds}}))
"""
WAYS = {
    "not installed": BLOCK,
    "installed, not imported": "",
    "imported, no provider, no span": IMPORTED,
    "traced (provider, span per task)": TRACED,
}


def measure(prelude: str, n: int, traced: bool) -> tuple[float, float]:
    """Tasks per second, and CPU microseconds per task of the process and its workers."""
    code = prelude + MEASURE.format(n=n, traced=traced)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", code], cwd=BENCH_DIR, capture_output=True,
                         text=True, check=True)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return float(json.loads(out.stdout.splitlines()[-1])["per_second"]), cpu / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks, one repeat")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    n, repeats = (20_000, 1) if args.quick else (100_000, 7)
    names = list(WAYS)
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            found[name].append(measure(WAYS[name], n, name.startswith("traced")))
            rate, cpu = found[name][-1]
            print(f"  .. {name}: {rate:,.0f}/s, {cpu:.2f} us CPU/task", file=sys.stderr,
                  flush=True)  # fmt: skip
    rates = {name: statistics.median(r for r, _ in found[name]) for name in names}
    cpus = {name: statistics.median(c for _, c in found[name]) for name in names}
    base = names[0]
    lines = [
        f"Python {sys.version.split()[0]}, 2 cores, local backend, 2 workers, {n:,} trivial"
        f" tasks per run; median of {repeats}.",
        "",
        "| OpenTelemetry | tasks/s | beside not installed | CPU µs per task |"
        " beside not installed |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        lines.append(f"| {name} | {rates[name]:,.0f} | {rates[name] / rates[base]:.2f} |"
                     f" {cpus[name]:.2f} | {cpus[name] / cpus[base]:.2f} |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
