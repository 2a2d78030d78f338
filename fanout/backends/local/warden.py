"""The warden: ends what workers' tasks started when the caller no longer can.

Workers die with their caller (``PR_SET_PDEATHSIG``), but what their tasks started (a
``sleep 300``, a ``multiprocessing.Pool`` left open) would live on, handed to init. The
warden is one small process per caller, forked once, in a session of its own (so no
group kill reaches it), that runs no user code. The caller tells it, over a pipe, the
process group of each worker it starts and of each it has reaped. When the pipe reaches
end-of-file — the caller is gone, SIGKILL included — the warden SIGKILLs every group
it still watches, then exits.

Everything else is the caller's own work: a worker it ends (time-out, cancel, close)
is killed with its whole tree (``_proc.kill_tree``), and a worker that exits at
end-of-file first kills what its tasks left behind (workers are child subreapers, so
orphans of their tasks stay in their tree). A process that a task starts in a session
of its own *and* that outlives its worker is out of reach only when the caller is
SIGKILLed at that moment: docs/reliability.md has the full table.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct

_PGID = struct.Struct("<q")


class Warden:
    """The caller's side: a pipe to the warden process."""

    def __init__(self) -> None:
        read_end, self.fd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the warden
            os.close(self.fd)
            _serve(read_end)
        os.close(read_end)

    def watch(self, pgid: int) -> None:
        self._send(pgid)

    def forget(self, pgid: int) -> None:
        self._send(-pgid)

    def _send(self, value: int) -> None:
        with contextlib.suppress(OSError):
            os.write(self.fd, _PGID.pack(value))


def _serve(fd: int) -> None:
    """The warden process: watch groups until end-of-file, then end them all."""
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(devnull, target)
        # Hold nothing of the caller's: a pipe end kept open here would keep a worker
        # from ever seeing end-of-file.
        os.closerange(3, fd)
        os.closerange(fd + 1, 65536)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the caller's
        watched: set[int] = set()
        buffer = b""
        while chunk := os.read(fd, 4096):
            buffer += chunk
            while len(buffer) >= _PGID.size:
                (value,) = _PGID.unpack_from(buffer)
                buffer = buffer[_PGID.size :]
                if value > 0:
                    watched.add(value)
                else:
                    watched.discard(-value)
        for pgid in watched:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
    finally:
        os._exit(0)


_warden: Warden | None = None


def warden() -> Warden:
    """This process's warden, started on first use."""
    global _warden
    if _warden is None:
        _warden = Warden()
    return _warden


def running() -> Warden | None:
    """This process's warden, if it has one (it lives as long as the process)."""
    return _warden


def _forget_in_child() -> None:
    # A forked child (a worker) is not the caller: it gets a warden of its own if it
    # starts workers itself.
    global _warden
    if _warden is not None:
        with contextlib.suppress(OSError):
            os.close(_warden.fd)
    _warden = None


os.register_at_fork(after_in_child=_forget_in_child)
