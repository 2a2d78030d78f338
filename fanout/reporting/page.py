"""The report's one HTML file: the page (``page.html``), its style (``report.css``) and
its script (``report.js``) read from the package, the data inlined as JSON. Nothing is
fetched when the page opens.

The file is written whole or not at all: into a temporary file beside it, then renamed
over the path.
"""

from __future__ import annotations

import html
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from fanout.errors import InputError

_PARTS = ("page.html", "report.css", "report.js")


def _asset(name: str) -> str:
    return resources.files("fanout.reporting").joinpath(name).read_text("utf-8")


def render(data: dict[str, Any]) -> str:
    """The page for ``data`` (``Packer.data()``), as one string."""
    page, style, script = map(_asset, _PARTS)
    title = "fanout report" + (f": {data['title']}" if data.get("title") else "")
    # "<" never appears raw inside the JSON, so no text of a task can end the script tag.
    payload = msgspec.json.encode(data).decode("utf-8").replace("<", "\\u003c")
    head, rest = page.split("/*STYLE*/")
    middle, tail = rest.split("/*DATA*/")
    between, end = tail.split("/*SCRIPT*/")
    return "".join(
        (head.replace("{{title}}", html.escape(title)), style, middle, payload, between,
         script, end)
    )  # fmt: skip


def writable(path: str | os.PathLike[str]) -> Path:
    """``path``, if a report can be written there (its folder exists and takes files,
    and it is not a folder itself); else an InputError that says why."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise InputError(f"cannot write the report to {target}: it is a directory; give a"
                         " file name, e.g. report.html")  # fmt: skip
    if not folder.is_dir():
        raise InputError(f"cannot write the report to {target}: no directory {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the report to {target}: {folder} is not writable")
    return target


def write(text: str, path: str | os.PathLike[str]) -> Path:
    """``text`` into ``path``, whole or not at all (a temporary file renamed over it)."""
    target = writable(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                     dir=target.parent)  # fmt: skip
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o666 & ~_umask())  # as an ordinary new file
        os.replace(temporary, target)
    except OSError as exc:
        os.unlink(temporary)
        raise InputError(f"cannot write the report to {target}: {exc.strerror}") from None
    except BaseException:
        os.unlink(temporary)
        raise
    return target


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would, for a moment, for
    every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022
