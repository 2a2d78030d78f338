"""What ``fanout run`` does once its options are parsed: make the inputs and the Fanout,
show each result as it comes, and end as the run does (complete, interrupted, detached,
or with nobody left to read its output)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

import typer

from fanout.api import Fanout
from fanout.cli.exitcodes import (
    EXIT_HANGUP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STDOUT_CLOSED,
    EXIT_TERMINATED,
    errors_as_exit_codes,
)
from fanout.cli.inputs import InputSource
from fanout.cli.progress import consume
from fanout.cli.report_view import ReportView
from fanout.cli.views import HumanView, JsonView, StdoutClosed, View
from fanout.errors import FanoutError


@dataclass
class RunSettings:
    """``fanout run``'s options, parsed."""

    target: str
    inputs: tuple[list[str] | None, int | None, int | None, str | None, bool]
    backend: str | None = None
    workers: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the backend's own
    map_options: dict[str, Any] = field(default_factory=dict)  # star, ordered, timeout...
    json_out: bool = False
    tracebacks: bool = False
    progress: bool | None = None
    detach: bool = False
    report: str | None = None  # --report FILE.html


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that cleanup runs as for Ctrl-C."""


class _HungUp(BaseException):
    """SIGHUP: the terminal or SSH session is gone; a run that can go on, goes on."""


def _raise(kind: type[BaseException]) -> Any:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise kind()

    return handler


def execute(settings: RunSettings) -> NoReturn:
    """Run, show, and exit with the code the run calls for."""
    sys.path.insert(0, os.getcwd())  # like `python -m`: targets in the current directory
    fanouts: list[Fanout] = []

    def hung_up(signum: int, frame: FrameType | None) -> None:
        for running in fanouts:
            running.detach()  # before the Fanout closes: a run that can go on, goes on
        raise _HungUp()

    signal.signal(signal.SIGTERM, _raise(_Terminated))
    signal.signal(signal.SIGHUP, hung_up)
    fo: Fanout | None = None
    view: View | None = None
    try:
        with errors_as_exit_codes():
            _check_combinations(settings)
            inputs = InputSource(*settings.inputs)
            fo = Fanout(settings.backend, settings.workers, **settings.options)
            fanouts.append(fo)
            with fo:
                if settings.detach:
                    _detach(fo, settings, inputs)
                view = _view(settings, fo.backend_name)
                keep = not settings.json_out or settings.report is not None
                items = inputs.items(keep=keep, wake=fo.backend.wake)
                results = fo.map(settings.target, items, repeat=inputs.repeat,
                                 **settings.map_options)  # fmt: skip
                _announce(fo)
                show_bar = settings.progress
                show_bar = sys.stderr.isatty() if show_bar is None else show_bar
                try:
                    code = consume(results, view, inputs.taken, inputs.total, show_bar)
                except FanoutError:
                    # Bad input part-way, Redis lost for good: first the tasks that
                    # finished before it, then the one line that says why it ended.
                    view.finish()
                    raise
            view.finish(complete=True)
    except (KeyboardInterrupt, _Terminated) as exc:
        _interrupted(exc, fo, view)
    except _HungUp:
        if isinstance(view, ReportView):
            view.write()
        _hung_up(fo)
    except StdoutClosed:
        # Quietly: nothing more can be shown. No error at exit from flushing it either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(view, ReportView):
            view.write()  # the picture of what finished: a file, not stdout
        raise typer.Exit(EXIT_STDOUT_CLOSED) from None
    raise typer.Exit(code)


def _view(settings: RunSettings, backend: str) -> View:
    """How results are shown: JSON lines or the human view, and packed for the report
    with --report."""
    view: View = JsonView() if settings.json_out else HumanView(backend, settings.tracebacks)
    if settings.report is None:
        return view
    return ReportView(view, settings.report, settings.target, f"fanout run on the {backend}"
                      " backend")  # fmt: skip


def _announce(fo: Fanout) -> None:
    """``run <ID>`` on stderr, once the run exists (on a backend whose runs have ids)."""
    if fo.run_id is not None:
        typer.echo(f"run {fo.run_id}", err=True)


def _check_combinations(settings: RunSettings) -> None:
    """Options that cannot go together, said in the command line's words before anything
    is made or enqueued. What only a caller that sees every result can do, --detach
    cannot."""
    given = settings.map_options
    if given.get("resume") and given.get("journal") is None:
        flag = "--resume-failed" if given["resume"] == "failed" else "--resume"
        raise ValueError(f"{flag} needs --journal PATH: the journal of the run to resume")
    if not settings.detach:
        return
    given = {**given, "report": settings.report}
    later = "collect later with: fanout results RUN_ID --json"
    for flag, key, instead in (
        ("--max-failures", "max_failures", later),
        ("--journal", "journal", later),
        ("--report", "report", "draw it later with: fanout report RUN_ID -o FILE.html"),
    ):
        if given.get(key) is not None:
            raise ValueError(
                f"{flag} needs this process to see every result, and --detach leaves at once:"
                f" leave out --detach (a run left by a closed terminal still goes on), or"
                f" {flag} ({instead})"
            )


def _detach(fo: Fanout, settings: RunSettings, inputs: InputSource) -> NoReturn:
    if not fo.backend.durable_runs:
        raise ValueError(f"--detach needs runs that outlive their caller; the"
                         f" {fo.backend_name} backend has none: use --backend rq")  # fmt: skip
    run_id = fo.submit(settings.target, inputs.items(keep=False), repeat=inputs.repeat,
                       **{k: v for k, v in settings.map_options.items()
                          if k in ("star", "timeout", "retries")})  # fmt: skip
    typer.echo(f"run {run_id}", err=True)
    typer.echo(f"fanout: every input is enqueued; collect the results with: fanout results"
               f" {run_id}", err=True)  # fmt: skip
    raise typer.Exit(EXIT_OK)


def _interrupted(exc: BaseException, fo: Fanout | None, view: View | None) -> NoReturn:
    if view is not None:
        view.finish(interrupted=True)  # what finished before the signal
    note = fo.stop_note if fo is not None else "nothing had started"
    if isinstance(exc, KeyboardInterrupt):
        say_and_exit(f"fanout: interrupted; {note}", EXIT_INTERRUPTED)
    say_and_exit(f"fanout: terminated; {note}", EXIT_TERMINATED)


def _hung_up(fo: Fanout | None) -> NoReturn:
    # Too late to say anything to a closed terminal; the run says where it is instead.
    run_id = fo.run_id if fo is not None else None
    if run_id is None:
        say_and_exit("fanout: hung up; workers stopped", EXIT_HANGUP)
    say_and_exit(f"fanout: hung up; run {run_id} goes on: fanout results {run_id}", EXIT_HANGUP)


def say_and_exit(message: str, code: int) -> NoReturn:
    with contextlib.suppress(OSError):  # the terminal may be gone
        typer.echo(message, err=True)
    raise typer.Exit(code) from None
