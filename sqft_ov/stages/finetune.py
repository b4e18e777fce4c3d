"""Stage 3: fine-tune adapters that can be merged later (LoRA, SparsePEFT, QA-SparsePEFT, with NLS).

* `lora`: PEFT LoRA on the base as it is (SQFT's baseline); with `int4` the base weights are first snapped
  to NNCF's INT4 grid and frozen (the QLoRA-style baseline). Merging it fills the base's zeros.
* `sparsepeft`: PEFT LoRA whose update is multiplied by the base weight's non-zero mask.
* `qa-sparsepeft`: NNCF INT4 fake-quantized LoRA with the mask inside the quantizer:
  fake_quant(W + mask * B A), so the merged model is one sparse INT4 model.
* `nls`: elastic ranks, one per decoder block, sampled every step (see `sqft_ov.adapters.nls`).
* elastic widths (LoNAS / EFTNAS, `mlp_widths` / `head_widths` / `search_space`): the base's MLP widths and
  KV groups are sampled with the ranks, so every sub-network of the space is trained (`adapters.elastic`).

Training runs through Hugging Face `Trainer`, so `accelerate launch` runs the same code on several
processes. OUTPUT is small and self-describing: `sqft_adapter.json` (method, base path and fingerprint,
quantization, ranks, data), the trainable tensors in safetensors (for lora also a standard PEFT adapter; for
sparsepeft PEFT's files too, typed so that plain PEFT refuses them and points to `sqft-ov merge`, since it
would merge the update unmasked), the loss log and, with NLS, the sampled configurations and their losses.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sqft_ov.adapters.adapted import Adapted
from sqft_ov.adapters.config import ADAPTER_CONFIG, TRAINABLE, FinetuneConfig
from sqft_ov.errors import SqftError

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "rich_progress_callback"]


def _trainer_class():
    from safetensors.torch import load_file, save_file
    from transformers import Trainer

    class SqftTrainer(Trainer):
        """Checkpoints hold only the trainable tensors; NLS losses are recorded per step."""

        def __init__(self, *args, adapted: Adapted, sampler=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.adapted, self.sampler = adapted, sampler

        def create_optimizer(self, model=None):
            """QA-SparsePEFT: the INT4 ranges in a parameter group of their own, at the config's `grid_lr`."""
            if self.optimizer is None and self.adapted.qa:
                grid = [p for n, p in self.adapted.params.items() if not n.endswith(("lora_A", "lora_B"))]
                adapters = [p for n, p in self.adapted.params.items() if n.endswith(("lora_A", "lora_B"))]
                optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
                self.optimizer = optimizer_cls([{"params": adapters},
                                                {"params": grid, "lr": self.adapted.config.grid_lr}], **kwargs)
            return super().create_optimizer(model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.sampler is not None and model.training:
                loss = result[0] if return_outputs else result
                self.sampler.record(float(loss.detach()))
            return result

        def _save(self, output_dir=None, state_dict=None):
            output_dir = output_dir or self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            save_file(self.adapted.state(), os.path.join(output_dir, TRAINABLE))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            path = os.path.join(resume_from_checkpoint, TRAINABLE)
            if not os.path.isfile(path):
                raise SqftError(f"checkpoint {resume_from_checkpoint} has no {TRAINABLE}")
            self.adapted.load_state(load_file(path))
            if self.sampler is not None:
                self.sampler.load(resume_from_checkpoint)

    return SqftTrainer


def _run_dir(output: Path) -> Path:
    """Checkpoints live beside OUTPUT until training ends, so a killed run can --resume."""
    return output.parent / f".{output.name}.run"


def _latest_checkpoint(run_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None


@dataclass
class FinetuneResult:
    output: Path
    train_loss: list[float]
    eval_loss: float | None
    steps: int


def _step_timer():
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


def _divergence_guard(adapted: Adapted):
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


def rich_progress_callback(label: str = "finetune", progress=None):
    """A rich progress bar with the running loss, on the main process only: a task in `progress` if
    given (a caller's live display), else a bar of its own."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar, self.own = None, progress is None
            if state.is_world_process_zero:
                self.bar = progress or Progress(
                    TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    transient=True)
                if self.own:
                    self.bar.start()
                self.task = self.bar.add_task(label, total=state.max_steps, completed=state.global_step, loss="-")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.update(self.task, completed=state.global_step, loss=f"{logs['loss']:.4f}",
                                description=f"{label} (loss {logs['loss']:.3f})")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.stop() if self.own else self.bar.remove_task(self.task)

    return RichProgress()


def _record(config: FinetuneConfig, model_dir, data, adapted: Adapted, steps: int, world_size: int,
            eval_loss: float | None, train_loss: list[float], step_seconds: list[float]) -> dict:
    """`sqft_adapter.json`: everything `load_adapted` needs to rebuild the model, and how it was trained."""
    from sqft_ov import __version__
    from sqft_ov.io.checkpoint import model_fingerprint
    from sqft_ov.io.data import data_source

    return {
        "sqft_ov_version": __version__, "method": config.method, "nls": config.nls,
        "rank": config.max_rank, "rank_space": list(config.rank_space) if config.nls else [config.rank],
        "lora_alpha": config.alpha, "lora_dropout": config.lora_dropout,
        "target_modules": list(adapted.config.target_modules),  # all-linear: the names it resolved to
        "quantization": ({"bits": 4, "sym": config.int4 == "sym", "group_size": config.group_size}
                         if config.int4 else None),
        "base": str(Path(model_dir).absolute()), "base_fingerprint": model_fingerprint(model_dir),
        "data": data_source(data), "data_format": asdict(config.data_format),
        "eval_split": config.eval_split, "seed": config.seed, "adapted_weights": adapted.adapted_weights,
        "widths": adapted.widths.space.to_dict() if adapted.widths is not None else None,
        "lr": config.lr, "range_lr": config.grid_lr if adapted.qa else None, "batch_size": config.batch_size,
        "grad_accum": config.grad_accum, "steps": steps, "world_size": world_size, "eval_loss": eval_loss,
        "step_seconds": step_seconds, "train_loss": train_loss,
    }


def _write_peft(adapted: Adapted, folder: Path) -> None:
    """adapter_config.json + adapter_model.safetensors (PEFT's): a standard LoRA folder for lora; for sparsepeft
    typed so that plain PEFT refuses it, since it would merge the update unmasked and refill the zeros."""
    if adapted.qa:
        return
    adapted.model.save_pretrained(folder)
    if adapted.config.method == "sparsepeft":
        from sqft_ov.adapters.sparse_lora import refuse_plain_peft

        refuse_plain_peft(folder)


def finetune(model_dir: str | Path, data: str | Path, output: str | Path, config: FinetuneConfig,
             resume: bool = False, overwrite: bool = False, show_progress: bool = False,
             callbacks: list | None = None, progress=None) -> FinetuneResult:
    """Train adapters on `data` and write them to OUTPUT (atomically, on the main process).

    `show_progress` draws a bar of its own; `progress` (a rich Progress) gets a task in the caller's display.
    """
    from transformers import TrainingArguments, set_seed

    from sqft_ov.adapters.elastic import SPACE_FILE, resolve_space
    from sqft_ov.adapters.nls import HISTORY, RankSampler, blocks_of
    from sqft_ov.io.checkpoint import check_model_dir, load_causal_lm
    from sqft_ov.io.output import atomic_output, check_output
    from sqft_ov.io.sft_data import ResponseCollator, build_datasets

    output = check_output(output, overwrite, inputs=(model_dir, data))
    model_dir = check_model_dir(model_dir)  # a Hub ID or .gguf: the local folder the record names as base
    run_dir = _run_dir(output)
    checkpoint = _latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        raise SqftError(f"--resume: no checkpoint in {run_dir} (a run writes them every --save-steps steps)")
    if not resume and run_dir.exists() and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        shutil.rmtree(run_dir)  # a fresh run: stale checkpoints of another one must not be resumed
    set_seed(config.seed)
    base, tokenizer = load_causal_lm(model_dir, config.trust_remote_code, dtype=torch.float32)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_set, eval_set = build_datasets(data, tokenizer, config.data_format, config.eval_split, config.seed)
    space = resolve_space(config, base.config)
    adapted = Adapted.build(base, config, space=space)

    sampler = None
    if config.nls or space is not None:
        blocks = blocks_of(adapted.adapted_weights)
        sampler = RankSampler(blocks, config.rank_space if config.nls else (config.rank,), config.seed,
                              adapted.set_ranks if config.nls else None, space,
                              adapted.set_widths if space is not None else None)
    args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr, num_train_epochs=config.epochs, max_steps=config.max_steps, seed=config.seed,
        data_seed=config.seed, logging_steps=1, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=2, report_to=[], remove_unused_columns=False, dataloader_num_workers=0,
        disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        eval_strategy="no", prediction_loss_only=True, ddp_find_unused_parameters=False,
        lr_scheduler_type="linear", warmup_steps=0, logging_nan_inf_filter=False)  # a NaN loss must show
    from transformers.trainer_callback import PrinterCallback

    timer = _step_timer()
    extra = [timer, _divergence_guard(adapted)] + ([sampler] if sampler else [])
    if show_progress or progress is not None:
        extra.append(rich_progress_callback(f"finetune {output.name}", progress))
    trainer = _trainer_class()(model=adapted.model, args=args, train_dataset=train_set,
                               data_collator=ResponseCollator(tokenizer.pad_token_id), adapted=adapted,
                               sampler=sampler, callbacks=extra + list(callbacks or []))
    trainer.remove_callback(PrinterCallback)  # the loss goes to the progress bar and loss_log.json instead
    trainer.train(resume_from_checkpoint=checkpoint)
    eval_loss = trainer.evaluate(eval_set)["eval_loss"] if eval_set is not None else None
    train_loss = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    if trainer.is_world_process_zero():
        from safetensors.torch import save_file

        with atomic_output(output, overwrite) as tmp:
            record = _record(config, model_dir, data, adapted, trainer.state.global_step, args.world_size,
                             eval_loss, train_loss, timer.seconds)
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(record, indent=2))
            (tmp / "loss_log.json").write_text(json.dumps(trainer.state.log_history, indent=2))
            save_file(adapted.state(), tmp / TRAINABLE)
            _write_peft(adapted, tmp)
            tokenizer.save_pretrained(tmp)
            if sampler is not None:
                (tmp / HISTORY).write_text(json.dumps(sampler.history, indent=2))
            if space is not None:
                (tmp / SPACE_FILE).write_text(json.dumps(space.to_dict(), indent=2))
        shutil.rmtree(run_dir, ignore_errors=True)
    return FinetuneResult(output, train_loss, eval_loss, trainer.state.global_step)


