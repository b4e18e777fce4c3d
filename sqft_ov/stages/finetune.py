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
from sqft_ov.stages.distill import Distiller, load_teacher, teacher_source
from sqft_ov.stages.finetune_callbacks import divergence_guard, progress_callback, step_timer

__all__ = ["FinetuneConfig", "FinetuneResult", "Trained", "finetune", "finetune_model", "progress_callback",
           "save_adapter"]


def _trainer_class():
    from safetensors.torch import load_file, save_file
    from transformers import Trainer

    class SqftTrainer(Trainer):
        """Checkpoints hold only the trainable tensors; NLS losses are recorded per step; a `Distiller` adds its
        teacher's KL to the training loss (sqft_ov/stages/distill.py) and its share to the loss log."""

        def __init__(self, *args, adapted: Adapted, sampler=None, distiller=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.adapted, self.sampler, self.distiller = adapted, sampler, distiller

        def create_optimizer(self, model=None):
            """The method's parameter groups where it has its own (QA-SparsePEFT: the INT4 ranges at `grid_lr`)."""
            groups = self.adapted.method.optimizer_groups(self.adapted) if self.optimizer is None else None
            if groups is not None:
                optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
                self.optimizer = optimizer_cls(groups, **kwargs)
            return super().create_optimizer(model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            if self.sampler is not None and model.training:
                self.sampler.record(float(loss.detach()))  # the task loss: what search's min-loss compares
            if self.distiller is not None and model.training:
                loss = self.distiller.add_to(self, loss, outputs, inputs, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            extra = self.distiller.logged() if self.distiller is not None and "loss" in logs else {}
            super().log({**logs, **extra}, *args, **kwargs)

        def _save(self, output_dir=None, state_dict=None):
            output_dir = output_dir or self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            save_file(self.adapted.state(state_dict), os.path.join(output_dir, TRAINABLE))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            path = os.path.join(resume_from_checkpoint, TRAINABLE)
            if not os.path.isfile(path):
                raise SqftError(f"checkpoint {resume_from_checkpoint} has no {TRAINABLE}")
            self.adapted.load_state(load_file(path))
            if self.sampler is not None:
                self.sampler.load(resume_from_checkpoint)

    return SqftTrainer


def _check_sharding(trainer, resume: bool) -> None:
    """What a launcher asked for must be what runs, and its trained tensors must be readable at the end.

    Accelerate shards (FSDP) only on GPUs / XPUs: on CPUs `accelerate launch --use_fsdp` would silently run
    DDP, each process holding the whole model. A sharded run's trained tensors are read from the state dict
    Trainer gathers (FULL_STATE_DICT); resuming one would need a sharded load, which sqft-ov does not do.
    """
    from sqft_ov.errors import ConfigError

    fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or bool(trainer.args.fsdp)
    if fsdp_asked and not trainer.is_fsdp_enabled:
        raise ConfigError("FSDP was asked for, but Accelerate shards models only on GPUs / XPUs and would run "
                          f"{trainer.args.world_size} unsharded (DDP) processes on {trainer.args.device.type}: "
                          "launch without --use_fsdp for DDP on CPUs, or run on accelerators")
    if trainer.is_fsdp_enabled:
        if "FULL_STATE_DICT" not in str(trainer.accelerator.state.fsdp_plugin.state_dict_type):
            raise ConfigError("FSDP: launch with --fsdp_state_dict_type FULL_STATE_DICT (sqft-ov saves the trained "
                              "tensors from the gathered state dict)")
        if resume:
            raise ConfigError("--resume of an FSDP run is not supported (a sharded load): start the run again")
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if trainer.is_deepspeed_enabled and getattr(plugin, "zero_stage", 0) == 3:
        raise ConfigError("DeepSpeed ZeRO stage 3 partitions the parameters sqft-ov reads its trained tensors "
                          "from: use ZeRO stage 1 or 2, or FSDP with FULL_STATE_DICT")


def _trained_state(trainer, adapted: Adapted) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The trained tensors, and a sharded model's gathered state dict (a collective: every process calls it)."""
    if trainer.is_fsdp_enabled:
        full = trainer.accelerator.get_state_dict(trainer.model)
        return adapted.state(full), full
    return adapted.state(), None


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
    distill_loss: list[float] | None = None  # with a teacher: T^2 x KL per response token, each logged step


def _record(config: FinetuneConfig, model_dir, data, adapted: Adapted, steps: int, world_size: int,
            eval_loss: float | None, train_loss: list[float], step_seconds: list[float], device: str) -> dict:
    """`sqft_adapter.json`: everything `load_adapted` needs to rebuild the model, and how it was trained."""
    from sqft_ov import __version__
    from sqft_ov.io.checkpoint import model_fingerprint
    from sqft_ov.io.data import data_source
    from sqft_ov.io.prompt_format import trained_with_chat_template

    return {
        "sqft_ov_version": __version__, "method": config.method, "nls": config.nls,
        "rank": config.max_rank, "rank_space": list(config.rank_space) if config.nls else [config.rank],
        "lora_alpha": config.alpha, "lora_dropout": config.lora_dropout,
        "target_modules": list(adapted.config.target_modules),  # all-linear: the names it resolved to
        "quantization": ({"bits": 4, "sym": config.int4 == "sym", "group_size": config.group_size}
                         if config.int4 else None),
        "base": str(Path(model_dir).absolute()), "base_fingerprint": model_fingerprint(model_dir),
        "data": data_source(data), "data_format": asdict(config.data_format),
        "chat_template_applied": trained_with_chat_template(adapted.model.config),
        "eval_split": config.eval_split, "seed": config.seed, "adapted_weights": adapted.adapted_weights,
        "widths": adapted.widths.space.to_dict() if adapted.widths is not None else None,
        "precision": config.precision, "gradient_checkpointing": config.gradient_checkpointing, "device": device,
        "lr": config.lr, "range_lr": adapted.method.range_lr(config), "batch_size": config.batch_size,
        "grad_accum": config.grad_accum, "steps": steps, "world_size": world_size, "eval_loss": eval_loss,
        "step_seconds": step_seconds, "train_loss": train_loss,
    }


def _write_peft(adapted: Adapted, folder: Path, gathered: dict | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors (PEFT's): a standard LoRA folder for lora; for sparsepeft
    typed so that plain PEFT refuses it, since it would merge the update unmasked and refill the zeros; none for
    qa-sparsepeft. The method writes them (`gathered`: a sharded run's full state dict)."""
    adapted.method.save(adapted, folder, gathered)


def _training_args(config: FinetuneConfig, run_dir: Path, device: str):
    """Trainer's arguments: the config's schedule, checkpoints every --save-steps, mixed precision, the device."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr, num_train_epochs=config.epochs, max_steps=config.max_steps, seed=config.seed,
        data_seed=config.seed, logging_steps=1, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=2, report_to=[], remove_unused_columns=False, dataloader_num_workers=0,
        disable_tqdm=True, use_cpu=device == "cpu", bf16=config.precision == "bf16", fp16=config.precision == "fp16",
        eval_strategy="no", prediction_loss_only=True, ddp_find_unused_parameters=False,
        lr_scheduler_type="linear", warmup_steps=0, logging_nan_inf_filter=False)  # a NaN loss must show


@dataclass
class Trained:
    """What `finetune_model` hands back: the adapted model after training, and how the training went."""

    adapted: Adapted
    train_loss: list[float]
    eval_loss: float | None
    steps: int
    step_seconds: list[float]
    world_size: int
    device: str  # the torch device type it trained on
    log_history: list[dict]
    tensors: dict[str, torch.Tensor]  # the trained tensors by stable name (gathered from every shard)
    gathered: dict | None = None  # a sharded (FSDP) run's full state dict, for PEFT's files
    nls_history: list | None = None  # the NLS / elastic-width configurations sampled, with their losses
    main_process: bool = True  # whether this process writes outputs (the others of a distributed run do not)
    distillation: dict | None = None  # the teacher (path, kind, fingerprint), distill_weight and temperature


def finetune_model(model, tokenizer, data, config: FinetuneConfig, *, checkpoints: str | Path | None = None,
                   resume_from: str | None = None, callbacks: list | None = None, on_progress=None,
                   label: str = "finetune") -> Trained:
    """Train adapters of `config.method` on a transformers model in memory; `data` is a file, folder, Hub dataset,
    `datasets.Dataset` or list of rows.

    The model is adapted in place (as PEFT's `get_peft_model`) and cast to `config.precision`; `Trained.adapted`
    is what `merge_model` and `search` take. Training is Hugging Face `Trainer`'s, so `accelerate launch` runs it
    on several processes. `checkpoints`: a folder for Trainer's checkpoints every `save_steps` (None: a temporary
    one, removed at the end); `resume_from`: one of them. `on_progress(done, total, label)` gets the steps.
    With `config.teacher` the loss adds the teacher's KL (loaded here; see `sqft_ov.stages.distill`).
    """
    import tempfile

    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    from sqft_ov.adapters.elastic import resolve_space
    from sqft_ov.adapters.nls import RankSampler, blocks_of
    from sqft_ov.io.device import torch_device
    from sqft_ov.io.prompt_format import mark_prompt_format
    from sqft_ov.io.sft_data import ResponseCollator, build_datasets, prompts_templated

    device = torch_device(config.device)
    teacher, distillation = load_teacher(config, model, tokenizer) if config.teacher else (None, None)
    set_seed(config.seed)  # here, not before loading: the same adapters whether the model came from a folder or not
    if config.precision != "fp32":
        model.to(config.torch_dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_set, eval_set = build_datasets(data, tokenizer, config.data_format, config.eval_split, config.seed)
    mark_prompt_format(model.config, prompts_templated(data, config.data_format))  # export reads it (io/prompt_format)
    space = resolve_space(config, model.config)
    adapted = Adapted.build(model, config, space=space)
    if config.gradient_checkpointing:
        adapted.enable_gradient_checkpointing()

    sampler = None
    if config.nls or space is not None:
        blocks = blocks_of(adapted.adapted_weights)
        sampler = RankSampler(blocks, config.rank_space if config.nls else (config.rank,), config.seed,
                              adapted.set_ranks if config.nls else None, space,
                              adapted.set_widths if space is not None else None)
    scratch = None if checkpoints is not None else tempfile.TemporaryDirectory(prefix="sqft-ov-run-")
    args = _training_args(config, Path(checkpoints if checkpoints is not None else scratch.name), device)
    distiller = Distiller(teacher, config.distill_weight, config.temperature).to(args.device) if teacher else None
    timer = step_timer()
    extra = [timer, divergence_guard(adapted)] + ([sampler] if sampler else [])
    if on_progress is not None:
        extra.append(progress_callback(on_progress, label))
    trainer = _trainer_class()(model=adapted.model, args=args, train_dataset=train_set,
                               data_collator=ResponseCollator(tokenizer.pad_token_id), adapted=adapted,
                               sampler=sampler, callbacks=extra + list(callbacks or []), distiller=distiller)
    _check_sharding(trainer, resume_from is not None)
    trainer.remove_callback(PrinterCallback)  # the loss goes to loss_log.json instead (steps: on_progress)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
        eval_loss = trainer.evaluate(eval_set)["eval_loss"] if eval_set is not None else None
    finally:
        if scratch is not None:
            scratch.cleanup()
    tensors, gathered = _trained_state(trainer, adapted)
    return Trained(adapted, [h["loss"] for h in trainer.state.log_history if "loss" in h], eval_loss,
                   trainer.state.global_step, timer.seconds, args.world_size, args.device.type,
                   trainer.state.log_history, tensors, gathered, sampler.history if sampler else None,
                   trainer.is_world_process_zero(), distillation)


def save_adapter(trained: Trained, tokenizer, folder: Path, config: FinetuneConfig, base: str | Path, data) -> None:
    """A finetune OUTPUT folder: `sqft_adapter.json` (naming `base`, a model folder, and its fingerprint), the
    trained tensors, the method's PEFT files, the loss log, the tokenizer and, with NLS, the sampled configurations."""
    from safetensors.torch import save_file

    from sqft_ov.adapters.elastic import SPACE_FILE
    from sqft_ov.adapters.nls import HISTORY

    adapted = trained.adapted
    record = _record(config, base, data, adapted, trained.steps, trained.world_size, trained.eval_loss,
                     trained.train_loss, trained.step_seconds, trained.device)
    record["distillation"] = trained.distillation  # None, or the teacher's path and fingerprint, weight, temperature
    (folder / ADAPTER_CONFIG).write_text(json.dumps(record, indent=2))
    (folder / "loss_log.json").write_text(json.dumps(trained.log_history, indent=2))
    save_file(trained.tensors, folder / TRAINABLE)
    _write_peft(adapted, folder, trained.gathered)
    tokenizer.save_pretrained(folder)
    if trained.nls_history is not None:
        (folder / HISTORY).write_text(json.dumps(trained.nls_history, indent=2))
    if adapted.widths is not None:
        (folder / SPACE_FILE).write_text(json.dumps(adapted.widths.space.to_dict(), indent=2))


def finetune(model_dir: str | Path, data: str | Path, output: str | Path, config: FinetuneConfig,
             resume: bool = False, overwrite: bool = False,
             callbacks: list | None = None, on_progress=None) -> FinetuneResult:
    """`finetune_model` on a model folder (or Hub ID, or .gguf), its adapters written to OUTPUT (atomically, on the
    main process); checkpoints beside OUTPUT until it is written, so a killed run can `resume`.

    `on_progress(done, total, label)` gets the optimizer steps (label `finetune OUTPUT-NAME`).
    """
    from transformers import set_seed

    from sqft_ov.io.checkpoint import check_model_dir, load_causal_lm
    from sqft_ov.io.device import torch_device
    from sqft_ov.io.output import atomic_output, check_output

    output = check_output(output, overwrite, inputs=(model_dir, data, config.teacher))
    model_dir = check_model_dir(model_dir)  # a Hub ID or .gguf: the local folder the record names as base
    if config.teacher:
        teacher_source(config.teacher)  # a bad --teacher fails before the student loads
    run_dir = _run_dir(output)
    checkpoint = _latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        raise SqftError(f"--resume: no checkpoint in {run_dir} (a run writes them every --save-steps steps)")
    if not resume and run_dir.exists() and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        shutil.rmtree(run_dir)  # a fresh run: stale checkpoints of another one must not be resumed
    set_seed(config.seed)  # also before loading: weights a checkpoint lacks are initialised the same every run
    torch_device(config.device)  # before loading: a missing device fails at once
    base, tokenizer = load_causal_lm(model_dir, config.trust_remote_code, dtype=config.torch_dtype)
    trained = finetune_model(base, tokenizer, data, config, checkpoints=run_dir, resume_from=checkpoint,
                             callbacks=callbacks, on_progress=on_progress, label=f"finetune {output.name}")
    if trained.main_process:
        with atomic_output(output, overwrite) as tmp:
            save_adapter(trained, tokenizer, tmp, config, model_dir, data)
        shutil.rmtree(run_dir, ignore_errors=True)
    distill_loss = [h["distill_loss"] for h in trained.log_history if "distill_loss" in h] if config.teacher else None
    return FinetuneResult(output, trained.train_loss, trained.eval_loss, trained.steps, distill_loss)
