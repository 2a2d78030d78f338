"""Where ``fanout report`` reads a run from: a journal (``--journal``), JSON lines of
``fanout run --json`` results (a file, or ``-`` for stdin), or a durable run by its id.

Whatever is not results is an InputError naming the line, before anything is written. A
run by id is collected with ``keep``: making its report leaves the run's results in Redis
for ``fanout results`` (or another report) to collect.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import msgspec

from fanout.errors import InputError
from fanout.journal import FORMAT, HEADER_BYTES
from fanout.reporting.pack import UNKNOWN, Packer

RUN_ID = re.compile(r"[0-9a-f]{32}")  # a run's id: a uuid4 in hex
_GIVE = "give a journal (--journal), the output of fanout run --json, or a run's id"


def is_run_id(source: str) -> bool:
    """Whether ``source`` names a run rather than a file (a file by that name wins)."""
    return bool(RUN_ID.fullmatch(source)) and not Path(source).exists()


def read_file(packer: Packer, source: str) -> str:
    """Every result in the file ``source`` (``-``: stdin) into ``packer``; the title the
    file gives (a journal's target). An InputError for what is not results."""
    label = "standard input" if source == "-" else source
    if source == "-":
        return _read(packer, sys.stdin.buffer, label)
    try:
        with open(source, "rb") as stream:
            return _read(packer, stream, label)
    except FileNotFoundError:
        raise InputError(f"no file {source} (and it is not a run id): {_GIVE}") from None
    except IsADirectoryError:
        raise InputError(f"{source} is a directory: {_GIVE}") from None
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror}") from None


def _read(packer: Packer, stream: IO[bytes], label: str) -> str:
    first, blank = stream.readline(HEADER_BYTES), 0
    while first and not first.strip():  # leading blank lines hold nothing
        first, blank = stream.readline(HEADER_BYTES), blank + 1
    if not first:
        raise InputError(f"{label} is empty: there are no results to draw; {_GIVE}")
    head = _json(first)
    title = ""
    if isinstance(head, dict) and "fanout_journal" in head:
        if head["fanout_journal"] != FORMAT:
            raise InputError(f"{label} is a fanout journal of format {head['fanout_journal']},"
                             f" not {FORMAT}: a newer fanout wrote it")  # fmt: skip
        title = str(head.get("target", ""))
    elif _result(head) is None:
        raise InputError(f"{label} holds no fanout results: its first line is neither a"
                         f" journal's nor a result of fanout run --json; {_GIVE}")  # fmt: skip
    else:
        packer.add(head)
    for number, line in enumerate(stream, blank + 2):
        if not line.strip():
            continue
        record = _result(_json(line))
        if record is None:
            if not line.endswith(b"\n"):
                break  # the last line, cut short by a crash: as the journal does
            raise InputError(f"line {number} of {label} is not a fanout result; {_GIVE}")
        packer.add(record)
    if not len(packer):
        raise InputError(f"{label} holds no results yet: there is nothing to draw")
    return title


def _json(line: bytes) -> Any:
    try:
        return msgspec.json.decode(line)
    except ValueError:  # not JSON (as msgspec reads it: no NaN), or not UTF-8
        pass
    try:
        return json.loads(line)
    except ValueError:
        return None


def _result(record: Any) -> Mapping[str, Any] | None:
    """``record`` if it has what a drawn result needs (the ``--json`` shape), else None."""
    if not isinstance(record, dict):
        return None
    worker = record.get("worker")
    numbers = (record.get("started_at"), record.get("finished_at"))
    if (
        isinstance(record.get("index"), int)
        and isinstance(record.get("ok"), bool)
        and isinstance(worker, dict)
        and isinstance(worker.get("name"), str)
        and isinstance(worker.get("pid"), int)
        and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in numbers)
        and (record.get("error") is None or isinstance(record["error"], dict))
    ):
        return record
    return None


def collect_run(
    packer: Packer, run_id: str, redis_url: str | None, queue: str | None, wait: bool
) -> str:
    """Run ``run_id``'s results into ``packer``, with its inputs where Redis still has
    them, leaving the run to be collected again (``keep``); its title. ``wait``: until
    every task has its result, else those finished now."""
    from fanout.api import Fanout

    options: dict[str, Any] = {"keep": True}
    if redis_url:
        options["redis_url"] = redis_url
    if queue:
        options["queue"] = queue
    with Fanout("rq", 0, **options) as fo:
        status = fo.backend.run_status(run_id)  # UnknownRun, before anything is read
        inputs: dict[int, Any] = {}
        results: Iterator[Any] = fo.attach(run_id, wait, False, inputs)
        for result in results:
            packer.add(result, inputs.pop(result.index, UNKNOWN))
    if not len(packer):
        raise InputError(f"run {run_id} has no finished task yet: there is nothing to draw"
                         " (leave out --no-wait to wait for its results)")  # fmt: skip
    return f"run {run_id}: {status.get('target', '')}"
