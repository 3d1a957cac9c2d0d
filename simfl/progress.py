"""How a run reports its progress: a live bar per stage on a terminal, plain timed lines elsewhere, or nothing.

A `Progress` is passed where a `say(str)` callable is expected: calling it starts a stage ("phase I: training
ae5 on 90 clients x 1 epochs"); `count(done, total, unit)` advances the stage ("12/90 clients trained").

    live   (stderr is a terminal) one rich progress bar for the current stage, with counts, elapsed time and ETA;
           the stages already begun stay above it as timed lines
    plain  (stderr is a file or pipe) one line per stage, "  [mm:ss.s] stage", and a count line at most every
           `every_s` seconds
    quiet  (--quiet) nothing
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

__all__ = ["Progress", "make_progress", "progress_printer", "PLAIN_EVERY_S"]

Mode = Literal["live", "plain", "quiet"]
PLAIN_EVERY_S = 30.0


def _stamp(seconds: float) -> str:
    return f"[{int(seconds // 60):02d}:{seconds % 60:04.1f}]"


class Progress:
    """Stage reporting for one run (see the module docstring); use it as a context manager or `close()` it."""

    def __init__(self, mode: Mode = "plain", stream: TextIO | None = None, every_s: float = PLAIN_EVERY_S,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.mode: Mode = mode
        self.stream = stream
        self.every_s = every_s
        self._clock = clock
        self._start = clock()
        self._last_count = self._start
        self._bars: Any = None  # rich.progress.Progress while live
        self._task: Any = None

    # -- the say(str) convention
    def __call__(self, stage: str) -> None:
        """Start a stage (ends the previous one)."""
        if self.mode == "quiet":
            return
        line = f"  {_stamp(self._clock() - self._start)} {stage}"
        if self.mode == "plain":
            self._write(line)
            return
        bars = self._live()
        if self._task is not None:
            bars.remove_task(self._task)
        bars.console.print(line, highlight=False, markup=False)
        self._task = bars.add_task(stage, total=None, counts="")

    def count(self, done: int, total: int, unit: str) -> None:
        """`done` of `total` `unit` of the current stage are finished."""
        if self.mode == "live" and self._task is not None:
            self._bars.update(self._task, completed=done, total=total, counts=f"{done}/{total} {unit}")
        elif self.mode == "plain":
            now = self._clock()
            if done < total and now - self._last_count >= self.every_s:
                self._last_count = now
                self._write(f"  {_stamp(now - self._start)}   ... {done}/{total} {unit}")

    def close(self) -> None:
        """Stop the live display (the terminal is left with the timed stage lines)."""
        if self._bars is not None:
            self._bars.stop()
            self._bars = self._task = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- output
    def _write(self, line: str) -> None:
        stream = self.stream or sys.stderr
        print(line, file=stream, flush=True)

    def _live(self) -> Any:
        if self._bars is None:
            from rich.console import Console
            from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            console = Console(file=self.stream or sys.stderr)
            self._bars = RichProgress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(), _eta_column(), console=console, transient=True,
            )
            self._bars.start()
        return self._bars


def _eta_column() -> Any:
    """'ETA h:mm:ss' once a stage has counts (rich's own column shows nothing or '-:--:--' before)."""
    from rich.progress import TimeRemainingColumn
    from rich.text import Text

    class Eta(TimeRemainingColumn):
        def render(self, task: Any) -> Text:
            return Text("ETA ") + super().render(task) if task.total is not None else Text("")

    return Eta()


def make_progress(quiet: bool = False, stream: TextIO | None = None) -> Progress:
    """Nothing with `quiet`; a live display when `stream` (default stderr) is a terminal; plain lines otherwise."""
    if quiet:
        return Progress("quiet", stream)
    stream = stream or sys.stderr
    is_tty = getattr(stream, "isatty", None)
    return Progress("live" if is_tty is not None and is_tty() else "plain", stream)


def progress_printer(enabled: bool) -> Progress:
    """Plain timed lines on stdout, or nothing: the sweep's point-by-point log (stdout, as it always was)."""
    return Progress("plain" if enabled else "quiet", sys.stdout)
