"""Trainer callbacks of `finetune`: step times, a guard that stops a diverged run, progress reports."""

from __future__ import annotations

import torch

from sqft_ov.errors import SqftError


def step_timer():
    import time

    from transformers import TrainerCallback

    from sqft_ov.io.output import kill_point

    class StepTimer(TrainerCallback):
        """Wall seconds of each optimizer step (the first one includes one-off costs such as kernel loading)."""

        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)
            kill_point("finetune-step")

    return StepTimer()


def divergence_guard(adapted):
    import math

    from transformers import TrainerCallback

    class DivergenceGuard(TrainerCallback):
        """Stops training at the first non-finite loss (logged every step, averaged over processes), naming the
        step: a diverged run otherwise trains to the end and fails only at merge, on non-finite weights. The
        trained tensors are checked once more at the end, before anything is written."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise SqftError(f"training diverged: the loss is {loss} at step {state.global_step} of "
                                f"{state.max_steps}; lower --lr (now {args.learning_rate:g}) or check the data")

        def on_train_end(self, args, state, control, **kwargs):
            broken = [name for name, tensor in adapted.state().items() if not torch.isfinite(tensor).all()]
            if broken:
                raise SqftError(f"training diverged: {len(broken)} trained tensors are not finite after step "
                                f"{state.global_step} (first: {broken[0]}); lower --lr (now {args.learning_rate:g})")

    return DivergenceGuard()


def progress_callback(on_progress, label: str = "finetune"):
    """A Trainer callback that reports `on_progress(global_step, max_steps, label)`, on the main process only:
    when training starts (a resumed run starts past 0), after each step, and once more when it ends."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def _report(self, state, final: bool = False) -> None:
            if state.is_world_process_zero:
                on_progress(state.max_steps if final else state.global_step, state.max_steps, label)

        def on_train_begin(self, args, state, control, **kwargs):
            self._report(state)

        def on_step_end(self, args, state, control, **kwargs):
            self._report(state)

        def on_train_end(self, args, state, control, **kwargs):
            self._report(state, final=True)

    return Progress()
