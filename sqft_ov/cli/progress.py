"""The library reports progress as plain calls, `on_progress(done, total, label)`; this draws them with rich.

One bar per label: the first call with a label adds its task, later calls move it, and a call with
`done >= total` (a finished task) removes it. `total` may be None or 0 when the length is not known
yet (the bar spins until a later call gives one).
"""

from __future__ import annotations

from contextlib import contextmanager

from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


def progress_display(console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


class RichProgress:
    """A callable `on_progress(done, total, label)` over a rich `Progress` display (one task per label)."""

    def __init__(self, display: Progress):
        self.display = display
        self.console = display.console
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, done: int, total: int | None, label: str) -> None:
        total = total or None
        task = self.tasks.get(label)
        if task is None:
            task = self.tasks[label] = self.display.add_task(label, total=total, completed=done)
        else:
            self.display.update(task, total=total, completed=done)
        if total is not None and done >= total:
            self.display.remove_task(self.tasks.pop(label))


@contextmanager
def rich_progress(console):
    """`with rich_progress(err_console) as on_progress: verb(..., on_progress=on_progress)`."""
    with progress_display(console) as display:
        yield RichProgress(display)
