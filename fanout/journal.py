"""Journal and resume, on every backend: each result appended to a file as it arrives,
and a later run that skips what the journal already holds.

The journal is JSON lines. The first line names it and the target::

    {"fanout_journal": 1, "target": "app.tasks:resize"}

then one line per result: the ``--json`` shape plus ``"fingerprint"``, a hash of the
task's input, so that a resumed run can tell that input ``i`` is still the input the
journal's line ``i`` was made from. A line cut short by a crash is dropped.

Resuming (``resume=True``) skips every index the journal holds and runs the rest;
``resume="failed"`` skips only the ``ok`` ones; a ``Cancelled`` task never ran, and runs
again either way. The inputs up to the journal's last index are read and checked first,
so a changed input stops the run before anything runs. The results cover every index:
the journal's and the new run's together.

A run on a backend whose runs outlive their caller (rq) notes its id in the journal::

    {"fanout_run": "59e73cddabc64015971fc5cb68cb4125", "resume": false}

Its caller killed, that run goes on on its workers: resuming first takes its results
(waiting for those still to come, ``take_over``), so that none of its inputs runs twice.
Those lines have no fingerprint (the inputs were in Redis, not read here).

A journal is never mixed with anything else: a file that is not a fanout journal, or the
journal of another target, is refused (and left as it is), and so is a journal that
holds results when the run does not resume from it (a second line per index would
follow); resume from it, or give another path to start afresh.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

import msgspec
from msgspec.structs import replace

from fanout.errors import Cancelled, IncompleteRun, InputError, UnknownRun
from fanout.models import TaskError, TaskResult, Usage, WorkerInfo

log = logging.getLogger("fanout")

FORMAT = 1
Resume = bool | Literal["failed"]
HEADER_BYTES = 64 << 10  # a journal's first line is short: more is not a journal


def fingerprint(item: Any) -> str:
    """A short hash of an input (its pickle; its repr if it has none)."""
    try:
        data = pickle.dumps(item, 4)
    except Exception:
        data = repr(item).encode()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


_PLAIN = frozenset({int, str, bool, type(None)})  # values JSON holds as they are


def json_record(result: TaskResult) -> dict[str, Any]:
    """The ``--json`` shape of a result; a value JSON cannot hold is given as its repr
    (also a float that is not finite, anywhere in it: JSON has none)."""
    record = result.to_dict()
    value = record["value"]
    kind = type(value)
    if kind in _PLAIN or (kind is float and math.isfinite(value)):
        return record
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        record["value"] = repr(result.value)
    return record


def json_line(record: dict[str, Any]) -> bytes:
    """One JSON line (no newline), encoded by msgspec: UTF-8, compact."""
    try:
        return msgspec.json.encode(record)
    except (msgspec.EncodeError, OverflowError):
        # What msgspec leaves out and json takes: a dict keyed by None, say.
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def result_of(record: dict[str, Any]) -> TaskResult:
    """A journal line back as a TaskResult."""
    error, usage = record.get("error"), record.get("usage")
    return TaskResult(
        record["index"],
        record["ok"],
        record["value"],
        None if error is None else error_of(error),
        WorkerInfo(**record["worker"]),
        record["attempts"],
        record["started_at"],
        record["finished_at"],
        record["duration"],
        record.get("output", ""),
        None if usage is None else Usage(usage["cpu"], usage["max_rss"]),
    )


def error_of(error: dict[str, Any]) -> TaskError:
    """A journal line's error back as a TaskError (a line written before causes has
    none: its cause is None)."""
    return TaskError(error["type"], error["message"], error["traceback"], None,
                     error.get("cause"), error.get("signal"), error.get("exit_code"))  # fmt: skip


class Journal:
    """An open journal: what it held when opened, and the file to append to."""

    def __init__(self, path: str | Path, target: str, resume: Resume = False) -> None:
        self.path = Path(path)
        self.target = target
        self.resume = resume
        # The runs the journal names (their ids), each with where its indexes go.
        self.runs: list[tuple[str, Callable[[int], int]]] = []
        # index -> line, for the indexes to skip
        self.done: dict[int, dict[str, Any]] = self._read(resume) if self._check() else {}
        self.file: BinaryIO = self._open_for_append()

    def _check(self) -> bool:
        """Whether PATH holds results already (it is this target's journal, else an
        InputError); without ``resume`` holding results is refused too."""
        try:
            with self.path.open("rb") as file:
                first = file.readline(HEADER_BYTES)
                more = bool(file.read(1))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise InputError(f"cannot read the journal {self.path}: {exc.strerror}") from None
        if not first:
            return False  # an empty file: it becomes the journal
        if not first.endswith(b"\n"):
            raise self._not_a_journal()
        self._check_header(first)
        if more and not self.resume:
            raise InputError(
                f"the journal {self.path} holds results of {self.target} already: resume"
                " from it (--resume, or resume=True), or give another journal path to start"
                " afresh"
            )
        return more

    def _not_a_journal(self) -> InputError:
        return InputError(
            f"{self.path} is not a fanout journal (its first line says nothing of one); give"
            " a path that is new, or a journal fanout wrote"
        )

    def _read(self, resume: Resume) -> dict[int, dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read the journal {self.path}: {exc.strerror}") from None
        lines = data.split(b"\n")
        complete = lines[:-1]  # the last piece has no newline: cut short, or empty
        latest: dict[int, dict[str, Any]] = {}  # index -> its last line
        for number, line in enumerate(complete[1:], 2):
            try:
                record = msgspec.json.decode(line)
                if "fanout_run" in record:
                    self.runs.append((record["fanout_run"], _positions(latest, record["resume"])))
                    continue
                latest[record["index"]] = record
            except (ValueError, KeyError, TypeError):  # msgspec.DecodeError is a ValueError
                raise InputError(f"line {number} of the journal {self.path} is not a result"
                                 " fanout wrote") from None  # fmt: skip
        return {index: record for index, record in latest.items() if _done(record, resume)}

    def note_run(self, run_id: str) -> None:
        """The run that writes the journal from now on has this id (see ``take_over``)."""
        self.file.write(json_line({"fanout_run": run_id, "resume": self.resume}) + b"\n")
        self.file.flush()

    def take_over(self, attach: Callable[[str], Iterator[TaskResult]]) -> None:
        """If the journal's last run is still on its backend (``attach``: its results by
        its id), its caller was killed and its workers go on: wait for its results and
        journal them, so that none of its inputs runs again. A run that is gone, or whose
        caller died before enqueueing every input, gives what it has."""
        if not self.runs:
            return
        run_id, original = self.runs[-1]
        try:
            results = attach(run_id)
            log.warning("run %s of the journal %s is still in Redis: taking its results"
                        " before running the rest", run_id, self.path)  # fmt: skip
            for result in results:
                result = replace(result, index=original(result.index))
                if result.index in self.done:
                    continue  # journaled by its caller already
                self.write(result, None)
                record = json_record(result)
                if _done(record, self.resume):
                    self.done[result.index] = record
        except (UnknownRun, IncompleteRun):
            pass  # gone (collected, expired), or all it will have: the rest runs now

    def _check_header(self, line: bytes) -> None:
        try:
            header = msgspec.json.decode(line)
            version, target = header["fanout_journal"], header["target"]
        except (ValueError, KeyError, TypeError):
            raise self._not_a_journal() from None
        if version != FORMAT:
            raise InputError(f"{self.path} is a fanout journal of format {version}, not {FORMAT}")
        if target != self.target:
            raise InputError(
                f"{self.path} is the journal of {target}, not of {self.target}; give"
                " another --journal for this target"
            )

    def _open_for_append(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = self.path.open("a+b")
        file.seek(0, 2)
        size = file.tell()
        if size == 0:
            header = {"fanout_journal": FORMAT, "target": self.target}
            file.write(json_line(header) + b"\n")
        else:
            file.seek(0)
            data = file.read()
            cut = data.rfind(b"\n") + 1
            if cut < size:  # a line cut short by a crash: drop it
                file.truncate(cut)
            file.seek(0, 2)
        file.flush()
        return file

    def write(self, result: TaskResult, print_: str | None) -> None:
        record = json_record(result)
        record["fingerprint"] = print_
        self.file.write(json_line(record) + b"\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def journaled(
    journal: Journal,
    items: Iterator[Any],
    ordered: bool,
    run: Callable[[Iterator[Any]], Iterator[TaskResult]],
) -> Iterator[TaskResult]:
    """``run`` on the inputs the journal does not hold, every result appended to it; the
    journal's own results for the others. The inputs up to the journal's last index are
    checked against its fingerprints before anything runs."""
    prints: dict[int, str] = {}  # index -> fingerprint, until its result is written
    positions: list[int] = []  # the original index of each input given to ``run``
    head, skipped = _check(journal, items, prints, positions)
    remapped = bool(skipped)

    def to_run() -> Iterator[Any]:
        yield from head
        index = len(positions) + len(skipped)
        for item in items:
            prints[index] = fingerprint(item)
            if remapped:
                positions.append(index)
            index += 1
            yield item

    def written(results: Iterator[TaskResult]) -> Iterator[TaskResult]:
        for result in results:
            if remapped:
                result = replace(result, index=positions[result.index])
            journal.write(result, prints.pop(result.index, ""))
            yield result

    try:
        fresh = written(run(to_run()))
        if not ordered:
            yield from skipped
            yield from fresh
        else:
            yield from heapq.merge(skipped, fresh, key=lambda r: r.index)
    finally:
        journal.close()


def _check(
    journal: Journal, items: Iterator[Any], prints: dict[int, str], positions: list[int]
) -> tuple[list[Any], list[TaskResult]]:
    """Read the inputs up to the journal's last index: those to run again (with their
    fingerprints noted), and the journal's results for the rest. A changed input is an
    InputError naming its index."""
    head: list[Any] = []
    skipped: list[TaskResult] = []
    last = max(journal.done, default=-1)
    for index in range(last + 1):
        try:
            item = next(items)
        except StopIteration:
            break
        print_ = fingerprint(item)
        record = journal.done.get(index)
        if record is None:
            prints[index] = print_
            positions.append(index)
            head.append(item)
        elif record.get("fingerprint") not in (None, print_):  # None: taken over
            raise InputError(
                f"input {index} differs from the one the journal {journal.path} ran; resume"
                " with the same inputs, or give another --journal"
            )
        else:
            skipped.append(result_of(record))
    return head, skipped


def _done(record: dict[str, Any], resume: Resume) -> bool:
    """Does a resume skip this journal line's index? Its ok ones always, its failed ones
    unless ``resume="failed"``; a cancelled task never ran: never."""
    error = record.get("error") or {}
    return bool(record["ok"] or resume is True) and error.get("type") != Cancelled.__name__


def _positions(latest: dict[int, dict[str, Any]], resume: Resume) -> Callable[[int], int]:
    """Where the indexes of a run that resumed (as ``resume`` says) from the journal as
    it was then go: ``journaled`` gave it the inputs the journal lacked, in order."""
    done = {index for index, record in latest.items() if resume and _done(record, resume)}
    last = max(done, default=-1)
    head = [index for index in range(last + 1) if index not in done]
    return lambda k: head[k] if k < len(head) else last + 1 + k - len(head)
