"""Results packed as columns for the report page: one array of numbers per field, every
text once in a table of strings, each text cut short.

A task costs the page about 50 bytes of numbers plus its texts (its input and its value
or error, each at most ``TEXT_CHARS`` characters; all texts together at most
``TEXT_BUDGET`` bytes, cut shorter where they would pass it). The full texts are never
needed: the page shows what a glance can read, and the results themselves (``--json``, a
journal) keep the rest.

Results are added one at a time, so that ``fanout run --report`` keeps numbers, not
result objects, however long its run, and at most ``TEXT_KEPT`` characters of text (the
texts of later tasks then say they were not kept). A result is a ``TaskResult``, read
through its public fields (``usage`` and ``error.cause`` when the records have them), or
its ``to_dict()`` / ``--json`` / journal shape.
"""

from __future__ import annotations

import re
import reprlib
from array import array
from collections.abc import Mapping
from typing import Any

from fanout.errors import Cancelled, JobCanceled, JobStopped, TaskTimeout
from fanout.models import NOT_RUN, TaskResult

TEXT_CHARS = 200  # the most characters of one input, value or error
TEXT_BUDGET = 12 << 20  # the most bytes of text in one page (inputs, values, errors)
TEXT_KEPT = 64 << 20  # the most characters of text kept while results are added
SPENT = "(not kept: a report keeps 64 MB of text at most)"
UNKNOWN: Any = object()  # an input that is not known (a journal does not keep inputs)

# Why each task ended: DESIGN's ``TaskError.cause`` vocabulary, "ok" first. The page
# draws them in this order, so that a failure is never hidden under an ok bar.
CAUSES = (
    "ok", "raised", "timeout", "memory-limit", "oom-killed", "killed", "exited", "lost",
    "cancelled", "not-run",
)  # fmt: skip
_BY_TYPE = {
    TaskTimeout.__name__: "timeout",
    Cancelled.__name__: "cancelled",
    JobCanceled.__name__: "cancelled",
    JobStopped.__name__: "killed",  # `rq stop-job`: ended from outside fanout
}
_SIGNALLED = re.compile(r"\bkilled by signal\b")
_EXITED = re.compile(r"\bexited with code\b")


def _bounded_repr() -> reprlib.Repr:
    shown = reprlib.Repr()
    shown.maxstring = shown.maxother = shown.maxlong = TEXT_CHARS
    shown.maxlist = shown.maxtuple = shown.maxset = shown.maxfrozenset = 20
    shown.maxdict, shown.maxlevel = 10, 3
    return shown


_REPR = _bounded_repr()


def shorten(text: str, limit: int = TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: Any) -> str:
    """A value or input as the page shows it: its repr, bounded in time and length."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a user's __repr__ that raises
        text = f"<{type(value).__name__} object>"
    return shorten(text)


def cause_of(
    ok: bool, error_type: str, message: str, cause: str | None, attempts: int, worker: str
) -> str:
    """Why a task ended: ``error.cause`` when the record has one, else derived from the
    error's type (a lost worker's message says whether a signal or an exit ended it)."""
    if ok:
        return "ok"
    if cause:
        return cause
    if error_type in _BY_TYPE:
        return _BY_TYPE[error_type]
    if error_type == "WorkerLost":
        if _SIGNALLED.search(message):
            return "killed"
        return "exited" if _EXITED.search(message) else "lost"
    if attempts == 0 or worker == NOT_RUN:
        return "not-run"
    return "raised"


class Packer:
    """Results added one by one, given back as the page's columns (:meth:`data`)."""

    def __init__(self) -> None:
        self.index = array("q")
        self.lane = array("l")
        self.start = array("d")  # epoch seconds, as the results give them
        self.end = array("d")
        self.kind = array("b")
        self.attempts = array("l")
        self.text = array("l")  # the value's or the error's text: a string id
        self.input = array("l")  # a string id; -1: not known
        self.cpu = array("d")  # seconds; -1: not known
        self.rss = array("q")  # bytes; -1: not known
        self.kinds: dict[str, int] = {name: code for code, name in enumerate(CAUSES)}
        self.lanes: dict[tuple[str, str, int], int] = {}
        self.strings: dict[str, int] = {}
        self.kept = 0  # characters of text in ``strings``
        self.has_usage = False

    def __len__(self) -> int:
        return len(self.index)

    def add(self, result: TaskResult | Mapping[str, Any], item: Any = UNKNOWN) -> None:
        """One result (a TaskResult, or its ``to_dict()`` / ``--json`` shape) and, when
        known, its input."""
        if isinstance(result, Mapping):
            self._add_record(result, item)
        else:
            self._add_result(result, item)

    def _add_result(self, r: TaskResult, item: Any) -> None:
        e, u, w = r.error, getattr(r, "usage", None), r.worker
        error = None if e is None else (e.type, e.message, getattr(e, "cause", None))
        usage = None if u is None else (getattr(u, "cpu", None), getattr(u, "max_rss", None))
        self._row(r.index, r.ok, r.value, w.host, w.name, w.pid, r.attempts, r.started_at,
                  r.finished_at, item, error, usage)  # fmt: skip

    def _add_record(self, record: Mapping[str, Any], item: Any) -> None:
        e, u, w = record.get("error"), record.get("usage"), record["worker"]
        error = None if not e else (e.get("type", "?"), e.get("message", ""), e.get("cause"))
        usage = None if not u else (u.get("cpu"), u.get("max_rss"))
        self._row(record["index"], record["ok"], record.get("value"), w.get("host", "?"),
                  w.get("name", "?"), w.get("pid", 0), record.get("attempts", 1),
                  record["started_at"], record["finished_at"], item, error, usage)  # fmt: skip

    def _row(
        self,
        index: int,
        ok: bool,
        value: Any,
        host: str,
        name: str,
        pid: int,
        attempts: int,
        started: float,
        finished: float,
        item: Any,
        error: tuple[str, str, str | None] | None,
        usage: tuple[float | None, int | None] | None,
    ) -> None:
        if error is None:
            cause, text = ("ok" if ok else "raised"), shown(value)
        else:
            kind, message, given = error
            cause = cause_of(ok, kind, message, given, attempts, name)
            text = shorten(f"{kind}: {message}" if message else kind)
        self.index.append(int(index))
        self.lane.append(self._lane(str(host), str(name), int(pid)))
        self.start.append(float(started))
        self.end.append(max(float(finished), float(started)))
        self.kind.append(self.kinds.setdefault(str(cause), len(self.kinds)))
        self.attempts.append(int(attempts))
        self.text.append(self._string(text))
        self.input.append(-1 if item is UNKNOWN else self._string(shown(item)))
        cpu, rss = usage or (None, None)
        self.has_usage |= cpu is not None or rss is not None
        self.cpu.append(-1.0 if cpu is None else float(cpu))
        self.rss.append(-1 if rss is None else int(rss))

    def _lane(self, host: str, name: str, pid: int) -> int:
        key = (host, name, pid)
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = len(self.lanes)
        return lane

    def _string(self, text: str) -> int:
        sid = self.strings.get(text)
        if sid is not None:
            return sid
        if self.kept > TEXT_KEPT:  # a long --report run: its memory stays bounded
            text = SPENT
            sid = self.strings.get(text)
            if sid is not None:
                return sid
        self.kept += len(text)
        sid = self.strings[text] = len(self.strings)
        return sid

    def data(self, title: str = "", source: str = "") -> dict[str, Any]:
        """The page's data: columns in index order (one row per index: the last result
        added for it), lanes sorted by host, name and when each began, texts in a table."""
        rows = self._rows()
        t0 = min((self.start[i] for i in rows), default=0.0)
        lane_order = self._lane_order(rows)
        strings, remap = _fit(list(self.strings))
        cols: dict[str, Any] = {
            "index": None if _contiguous(self.index, rows) else [self.index[i] for i in rows],
            "lane": [lane_order[self.lane[i]] for i in rows],
            "start": [round((self.start[i] - t0) * 1e6) for i in rows],  # µs from t0
            "dur": [round((self.end[i] - self.start[i]) * 1e6) for i in rows],
            "kind": [self.kind[i] for i in rows],
            "attempts": [self.attempts[i] for i in rows],
            "text": [remap[self.text[i]] for i in rows],
            "input": [-1 if self.input[i] < 0 else remap[self.input[i]] for i in rows],
        }
        if self.has_usage:
            cols["cpu"] = [-1 if self.cpu[i] < 0 else round(self.cpu[i] * 1e6) for i in rows]
            cols["rss"] = [self.rss[i] for i in rows]
        lanes = sorted(self.lanes, key=self.lanes.__getitem__)
        by_order = sorted(range(len(lanes)), key=lane_order.__getitem__)
        return {
            "format": 1,
            "title": title,
            "source": source,
            "t0": t0,
            "n": len(rows),
            "kinds": list(self.kinds),
            "lanes": [list(lanes[lane]) for lane in by_order],
            "strings": strings,
            "cols": cols,
        }

    def _rows(self) -> list[int]:
        """Row numbers in index order, each index once: its last result wins (a journal
        resumed with --resume-failed holds a failed and a later result for one index)."""
        order = sorted(range(len(self.index)), key=self.index.__getitem__)  # stable
        index = self.index
        return [
            row
            for pos, row in enumerate(order)
            if pos + 1 == len(order) or index[order[pos + 1]] != index[row]
        ]

    def _lane_order(self, rows: list[int]) -> list[int]:
        """Each lane's place: by host, then worker name (worker-2 before worker-10), then
        when it began (a replacement after its namesake); no process's lanes last."""
        first: dict[int, float] = {}
        for row in rows:
            lane, start = self.lane[row], self.start[row]
            if start < first.get(lane, float("inf")):
                first[lane] = start
        keys = sorted(
            self.lanes.items(),
            key=lambda kv: (
                kv[0][1] == NOT_RUN, kv[0][0], _natural(kv[0][1]), first.get(kv[1], 0.0),
                kv[0][2],
            ),
        )  # fmt: skip
        order = [0] * len(keys)
        for place, (_, lane) in enumerate(keys):
            order[lane] = place
        return order


def _natural(name: str) -> tuple[tuple[int, Any], ...]:
    return tuple((1, int(part)) if part.isdigit() else (0, part)
                 for part in re.split(r"(\d+)", name))  # fmt: skip


def _contiguous(index: array[int], rows: list[int]) -> bool:
    return all(index[row] == n for n, row in enumerate(rows))


def _fit(strings: list[str]) -> tuple[list[str], list[int]]:
    """The strings cut so that together they stay within ``TEXT_BUDGET`` bytes (each
    kept whole up to the longest length that allows), with each old id's new id: texts
    that became equal when cut are kept once."""
    sizes = [len(s.encode("utf-8", "replace")) for s in strings]
    if sum(sizes) <= TEXT_BUDGET:
        return strings, list(range(len(strings)))
    low, high = 16, TEXT_CHARS  # the longest cut that fits (16: whatever it costs)
    while low < high:
        mid = (low + high + 1) // 2
        cost = sum(size if len(s) <= mid else len(shorten(s, mid).encode("utf-8", "replace"))
                   for s, size in zip(strings, sizes, strict=True))  # fmt: skip
        low, high = (mid, high) if cost <= TEXT_BUDGET else (low, mid - 1)
    kept: dict[str, int] = {}
    remap = [kept.setdefault(shorten(s, low), len(kept)) for s in strings]
    return list(kept), remap
