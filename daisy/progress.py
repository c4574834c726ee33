"""One progress style for every long job: rich bars on a terminal, plain lines in a log.

Where the console is not a terminal (output redirected to a file, a pipe, a CI log), rich draws nothing
until the end, so a long job looks dead. There `progress()` instead prints a plain line per visible task
when it starts, each time another `share` of it is done (but not more often than every `min_gap`
seconds), at least every `every` seconds while it advances, and when it finishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class _Logged:
    share: float = -1.0  # the share done at the last line
    completed: float = -1.0  # the steps done at the last line
    time: float = 0.0  # when that line was printed


class LoggingProgress(Progress):
    """rich's Progress that, on a console that is not a terminal, prints plain progress lines instead."""

    def __init__(self, *columns, share: float = 0.1, every: float = 60.0, min_gap: float = 2.0, **kwargs):
        super().__init__(*columns, **kwargs)
        self.plain = not self.disable and (not self.console.is_terminal or self.console.is_dumb_terminal)
        if self.plain:
            self.disable = True  # no live display, nor rich's final render of the bars
        self.share, self.every, self.min_gap = share, every, min_gap
        self._logged: dict[TaskID, _Logged] = {}

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._log(task_id, start=True)
        return task_id

    def reset(self, task_id: TaskID, **kwargs) -> None:
        super().reset(task_id, **kwargs)
        self._log(task_id, start=True)

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._log(task_id, start="description" in kwargs and kwargs["description"] is not None)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def _step(self, share: float) -> int:
        """Which `share`-sized step of the task `share` lies in (the 1e-9: 0.3 / 0.1 is 2.9999999999999996)."""
        return math.floor(share / self.share + 1e-9)

    def _log(self, task_id: TaskID, start: bool = False) -> None:
        if not self.plain:
            return
        with self._lock:
            task = self._tasks[task_id]
            if not task.visible:
                return
            now = self.get_time()
            last = _Logged() if start else self._logged.setdefault(task_id, _Logged(time=now))
            done = task.total is not None and task.completed >= task.total
            share = task.completed / task.total if task.total else 0.0
            due = (
                start
                or (done and last.share < 1.0)
                or (self._step(share) > self._step(last.share) and now - last.time >= self.min_gap)
                or (now - last.time >= self.every and task.completed > last.completed)
            )
            if not due:
                return
            self._logged[task_id] = _Logged(share, task.completed, now)
            total = "?" if task.total is None else f"{task.total:g}"
            line = f"{task.description}: {task.completed:g}/{total}"
            if task.total:
                line += f" ({100 * share:.0f} %)"
            if done:
                line += f", done in {_clock(task.elapsed)}"
            elif task.completed:
                line += f", {_clock(task.elapsed)} elapsed, {_clock(task.time_remaining)} left"
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def progress(**kwargs) -> LoggingProgress:
    """Bars for `with progress() as bar: task = bar.add_task(...); bar.advance(task)`; keyword arguments
    go to rich's Progress (`disable`, `console`, ...) and to LoggingProgress (`share`, `every`, `min_gap`)."""
    return LoggingProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        **kwargs,
    )
