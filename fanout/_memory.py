"""Memory, as limits and as facts about processes: sizes as users write them, a process's
resident size, and whether the kernel's OOM killer ended one.

Sizes: ``512M``, ``2G``, ``1.5GB``, ``300MiB`` or a number of bytes; K, M, G, T are
powers of 1024 (as ``ps``, ``top`` and cgroups count memory).

The OOM killer: a process it ends dies of SIGKILL, as does one that someone kills, so
the kernel's own count of its kills tells them apart. :class:`OomKills` reads it from
the process's memory cgroup — ``memory.events`` (cgroup v2) or ``memory.oom_control``
(v1), each counting the kills of a process in that cgroup, whether its own limit, an
ancestor's or the whole machine ran out — or, where neither can be read,
``/proc/vmstat`` (every kill on the machine). A SIGKILL death is the OOM killer's when
the count has grown past the kills already put down to earlier deaths.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def parse_size(text: str | int) -> int:
    """Bytes from ``512M``, ``2G``, ``1.5GB``, ``300MiB`` or a number; ValueError
    saying what is expected otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        match = _SIZE.fullmatch(str(text))
        if match is None:
            raise ValueError(f"{text!r} is not a size: give bytes, or a number with K, M, G or T"
                             " (e.g. 512M, 2G)")  # fmt: skip
        size = int(float(match[1]) * _UNITS[match[2].upper()])
    if size <= 0:
        raise ValueError(f"{text!r} is not a size above 0")
    return size


def format_size(size: float) -> str:
    """``1.9 GB``, ``512 MB``, ``800 KB``: a size in words (powers of 1024)."""
    for unit, factor in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= factor:
            value = size / factor
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(size)} B"


def resident(pid: int) -> int | None:
    """The resident size of process ``pid`` in bytes (None: it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as file:
            return int(file.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """The CPU time (user and system) process ``pid`` has used, also once it is dead
    and not yet reaped (None: it is gone). Clock ticks: 10 ms here."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rpartition(b")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return None


def _counter(path: Path, name: str) -> int | None:
    """The value of ``name`` in a file of ``name value`` lines."""
    try:
        text = path.read_text()
    except OSError:
        return None
    match = re.search(rf"^{name} (\d+)$", text, flags=re.M)
    return int(match[1]) if match else None


def _cgroup_counter(pid: int) -> Path | None:
    """The file that counts OOM kills in the memory cgroup of ``pid``, if readable."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":  # v2: the one hierarchy
                root = Path("/sys/fs/cgroup") / path.lstrip("/")
                for candidate in (root / "memory.events.local", root / "memory.events"):
                    if _counter(candidate, "oom_kill") is not None:
                        return candidate
            elif "memory" in controllers.split(","):
                candidate = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.oom_control"
                if _counter(candidate, "oom_kill") is not None:
                    return candidate
    return None


_VMSTAT = Path("/proc/vmstat")


class OomKills:
    """The OOM killer's kills, as counted where a pool's workers live; each SIGKILL
    death asks :meth:`took` whether it was one."""

    def __init__(self) -> None:
        self.counted: dict[Path, int] = {}  # kills already put down to a death, per file
        self.files: dict[int, Path] = {}  # pid -> its counter file

    def watch(self, pid: int) -> None:
        """A new process: note where its kills are counted, and how many there were."""
        path = _cgroup_counter(pid) or _VMSTAT
        self.files[pid] = path
        if path not in self.counted:
            self.counted[path] = _counter(path, "oom_kill") or 0

    def took(self, pid: int) -> bool:
        """Whether the OOM killer ended ``pid`` (dead of SIGKILL): its count grew past
        the kills put down to earlier deaths (this one is then put down to it)."""
        path = self.files.pop(pid, None)
        if path is None:
            return False
        now = _counter(path, "oom_kill")
        if now is None or now <= self.counted[path]:
            return False
        self.counted[path] += 1
        return True

    def forget(self, pid: int) -> None:
        self.files.pop(pid, None)
