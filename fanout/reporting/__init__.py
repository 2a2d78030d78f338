"""The run, as a picture: :func:`report` writes one self-contained HTML file, a lane per
process (host, name, pid) and a bar per task from its start to its finish, coloured by
how it ended, with the run's figures above it (docs/report.md shows how to read it).

::

    results → Packer (pack.py): columns of numbers, texts once each, cut short
            → page.render: page.html + report.css + report.js + the data as JSON
            → page.write: a temporary file renamed over the path

The page fetches nothing: it opens from a file, offline, in any current browser. Its
script draws on a canvas and computes the figures itself (``report.js``); 100,000 tasks
make a file of about 8 MB, ready in a browser in about half a second
(docs/benchmarks.md).

``fanout report`` (``sources.py``) reads the same from a journal, from ``--json`` lines
or from a durable run; ``fanout run --report`` packs the results as they come.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fanout.models import TaskResult
from fanout.reporting import page
from fanout.reporting.pack import UNKNOWN, Packer


def report(
    results: Iterable[TaskResult | Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    inputs: Sequence[Any] | Mapping[int, Any] | None = None,
    title: str = "",
) -> Path:
    """Write the report of ``results`` to ``path`` (HTML) and return the path.

    ``results``: TaskResults, or their ``to_dict()`` / ``fanout run --json`` records
    (each index once; when one comes twice, the last wins). ``inputs``: each task's
    input, by index (the list given to ``run``, or a mapping), shown beside its result.
    ``title``: a heading, e.g. the target. The file is written whole or not at all; a
    path that cannot be written raises :class:`~fanout.InputError` before any result is
    read.
    """
    page.writable(path)
    packer = Packer()
    if isinstance(inputs, Mapping):
        given: Mapping[int, Any] = inputs
        for result in results:
            packer.add(result, given.get(_index(result), UNKNOWN))
    elif inputs is not None:
        items = inputs
        for result in results:
            index = _index(result)
            packer.add(result, items[index] if 0 <= index < len(items) else UNKNOWN)
    else:
        for result in results:
            packer.add(result)
    return page.write(page.render(packer.data(title)), path)


def _index(result: TaskResult | Mapping[str, Any]) -> int:
    return int(result["index"] if isinstance(result, Mapping) else result.index)


__all__ = ["Packer", "report"]
