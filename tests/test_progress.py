"""Progress is plain calls, `on_progress(done, total, label)`: the library makes them, the CLI draws them with rich."""

from __future__ import annotations

import io
from types import SimpleNamespace


def test_cli_draws_one_bar_per_label_and_drops_finished_ones():
    from rich.console import Console

    from sqft_ov.cli.progress import RichProgress, progress_display

    display = progress_display(Console(file=io.StringIO()))
    on_progress = RichProgress(display)
    on_progress(0, 3, "eval a")
    on_progress(1, 3, "eval a")
    on_progress(0, None, "probing outputs")  # length not known yet: a spinner
    assert [(t.description, t.completed, t.total) for t in display.tasks] == [
        ("eval a", 1, 3), ("probing outputs", 0, None)]
    on_progress(3, 3, "eval a")
    assert [t.description for t in display.tasks] == ["probing outputs"]
    on_progress(1, 2, "eval a")  # a label used again after it finished: a new bar
    assert [t.description for t in display.tasks] == ["probing outputs", "eval a"]


def test_finetune_reports_optimizer_steps_on_the_main_process_only():
    from sqft_ov.stages.finetune import progress_callback

    calls = []
    callback = progress_callback(lambda *args: calls.append(args), "finetune x")
    main = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=4)
    callback.on_train_begin(None, main, None)
    main.global_step = 2
    callback.on_step_end(None, main, None)
    callback.on_train_end(None, main, None)  # stopped early or not: the bar is finished
    other = SimpleNamespace(is_world_process_zero=False, global_step=2, max_steps=4)
    callback.on_step_end(None, other, None)
    assert calls == [(0, 4, "finetune x"), (2, 4, "finetune x"), (4, 4, "finetune x")]
