"""Stage 3: fine-tune adapters that can be merged later (LoRA, SparsePEFT, QA-SparsePEFT, with NLS).

* `lora`: PEFT LoRA on the base as it is (SQFT's baseline); with `int4` the base weights are first snapped
  to NNCF's INT4 grid and frozen (the QLoRA-style baseline). Merging it fills the base's zeros.
* `sparsepeft`: PEFT LoRA whose update is multiplied by the base weight's non-zero mask.
* `qa-sparsepeft`: NNCF INT4 fake-quantized LoRA with the mask inside the quantizer:
  fake_quant(W + mask * B A), so the merged model is one sparse INT4 model.
* `nls`: elastic ranks, one per decoder block, sampled every step (see `sqft_ov.nls`).

Training runs through Hugging Face `Trainer`, so `accelerate launch` runs the same code on several
processes. OUTPUT is small and self-describing: `sqft_adapter.json` (method, base path and fingerprint,
quantization, ranks, data), the trainable tensors in safetensors (a standard PEFT adapter for lora and
sparsepeft), the loss log and, with NLS, the sampled configurations and their losses.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sqft_ov.errors import SqftError
from sqft_ov.sft_data import SFTFormat

METHODS = ("lora", "sparsepeft", "qa-sparsepeft")
ADAPTER_CONFIG = "sqft_adapter.json"
TRAINABLE = "sqft_trainable.safetensors"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")


@dataclass
class FinetuneConfig:
    method: str = "sparsepeft"
    rank: int = 16
    nls: bool = False
    rank_space: tuple[int, ...] = (32, 24, 16)
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    int4: str | None = None  # "sym" | "asym": the INT4 grid (qa-sparsepeft: required; lora: QLoRA-style base)
    group_size: int = 64
    lora_alpha: float | None = None  # default: 2 x the (maximum) rank
    data_format: SFTFormat = field(default_factory=SFTFormat)
    epochs: float = 1.0
    max_steps: int = -1
    lr: float = 3e-4
    batch_size: int = 4
    grad_accum: int = 1
    seed: int = 42
    eval_split: float = 0.1
    save_steps: int = 50
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        from sqft_ov.nls import check_rank_space

        if self.method not in METHODS:
            raise SqftError(f"unknown --method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.int4 not in (None, "sym", "asym"):
            raise SqftError(f"INT4 grid must be sym or asym, got {self.int4!r}")
        if self.method == "qa-sparsepeft" and self.int4 is None:
            self.int4 = "asym"
        if self.method == "sparsepeft" and self.int4 is not None:
            raise SqftError("sparsepeft trains on the float base: use --method qa-sparsepeft for an INT4 base")
        if self.nls:
            self.rank_space = check_rank_space(tuple(self.rank_space))
        elif self.rank < 1:
            raise SqftError(f"--rank must be positive, got {self.rank}")
        if not self.target_modules:
            raise SqftError("--target-modules needs at least one module name")

    @property
    def max_rank(self) -> int:
        return max(self.rank_space) if self.nls else self.rank

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.max_rank


def _check_targets(model, config: FinetuneConfig) -> dict[str, torch.nn.Linear]:
    from sqft_ov.sparsify import decoder_linears

    linears = decoder_linears(model)
    targets = {n: m for n, m in linears.items() if n.rsplit(".", 1)[-1] in config.target_modules}
    found = {n.rsplit(".", 1)[-1] for n in targets}
    missing = [t for t in config.target_modules if t not in found]
    if missing:
        names = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise SqftError(f"--target-modules {', '.join(missing)} not found in the model: its linear layers are "
                        f"{', '.join(names)}")
    smallest = min(min(m.in_features, m.out_features) for m in targets.values())
    if config.max_rank > smallest:
        raise SqftError(f"rank {config.max_rank} is larger than a target layer (smallest dimension {smallest}): "
                        "choose a smaller --rank / --rank-space")
    return targets


def _snap_to_int4(model, sym: bool, group_size: int) -> None:
    """QLoRA-style baseline: replace the base weights by their NNCF INT4 round-to-nearest values."""
    import nncf

    mode = nncf.CompressWeightsMode.INT4_SYM if sym else nncf.CompressWeightsMode.INT4_ASYM
    example = {"input_ids": torch.ones(1, 8, dtype=torch.long)}
    try:
        compressed = nncf.compress_weights(model, mode=mode, group_size=group_size, dataset=nncf.Dataset([example]))
    except nncf.errors.InvalidGroupSizeError as exc:
        raise SqftError(f"--group-size {group_size} does not divide every layer: choose a divisor") from exc
    nncf.strip(compressed, do_copy=False, strip_format=nncf.StripFormat.IN_PLACE, example_input=example)


class Adapted:
    """A base model with trainable adapters of one method: the handle search, merge and training use."""

    def __init__(self, model, config: FinetuneConfig):
        self.model, self.config = model, config
        self.qa = config.method == "qa-sparsepeft"
        if self.qa:
            from sqft_ov.qa_lora import lora_quantizers, trainable_tensors

            names = [n for n in lora_quantizers(model) if n.rsplit(".", 2)[-2] in config.target_modules]
            self.params = trainable_tensors(model, set(config.target_modules))
        else:
            from sqft_ov.sparse_lora import peft_lora_layers

            self.layers = peft_lora_layers(model)
            names = list(self.layers)
            self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.adapted_weights = sorted(names)

    @classmethod
    def build(cls, base, config: FinetuneConfig, init_adapters: bool = True) -> "Adapted":
        """`init_adapters=False`: the caller loads trained tensors next (NNCF's own init costs minutes)."""
        _check_targets(base, config)
        base.requires_grad_(False)
        if config.method == "qa-sparsepeft":
            from sqft_ov.qa_lora import compress_with_lora, lora_quantizers, trainable_tensors

            model = compress_with_lora(base, config.int4 == "sym", config.group_size, config.max_rank, config.nls,
                                       masked=True, init_adapters=init_adapters)
            model.requires_grad_(False)
            for param in trainable_tensors(model, set(config.target_modules)).values():
                param.requires_grad_(True)
            with torch.no_grad():  # NNCF gives every INT4 linear an adapter; the untrained ones must add nothing
                for name, quantizer in lora_quantizers(model).items():
                    if name.rsplit(".", 2)[-2] not in config.target_modules:
                        quantizer.lora_A.zero_()
                        quantizer.lora_B.zero_()
            return cls(model, config)
        from peft import LoraConfig, get_peft_model

        from sqft_ov.sparse_lora import make_elastic, peft_lora_layers

        if config.method == "lora" and config.int4:
            _snap_to_int4(base, config.int4 == "sym", config.group_size)
        peft_config = LoraConfig(r=config.max_rank, lora_alpha=config.alpha, lora_dropout=0.0,
                                 target_modules=list(config.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(base, peft_config)
        if config.method == "sparsepeft" or config.nls:
            make_elastic(peft_lora_layers(model), masked=config.method == "sparsepeft")
        return cls(model, config)

    def set_ranks(self, ranks_by_weight: dict[str, int]) -> None:
        if self.qa:
            from sqft_ov.qa_lora import set_ranks

            set_ranks(self.model, ranks_by_weight)
        else:
            from sqft_ov.sparse_lora import set_ranks

            set_ranks(self.layers, ranks_by_weight)

    def state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.params.items()}

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = set(self.params) - set(tensors)
        unexpected = set(tensors) - set(self.params)
        if missing or unexpected:
            example = sorted(missing or unexpected)[0]
            raise SqftError(f"the adapter does not match this model ({len(missing)} tensors missing, "
                            f"{len(unexpected)} unexpected, e.g. {example})")
        for name, param in self.params.items():
            if tensors[name].shape != param.shape:
                raise SqftError(f"adapter tensor {name} has shape {tuple(tensors[name].shape)}, the model expects "
                                f"{tuple(param.shape)}")
            param.copy_(tensors[name])


def _trainer_class():
    from safetensors.torch import load_file, save_file
    from transformers import Trainer

    class SqftTrainer(Trainer):
        """Checkpoints hold only the trainable tensors; NLS losses are recorded per step."""

        def __init__(self, *args, adapted: Adapted, sampler=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.adapted, self.sampler = adapted, sampler

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

    class StepTimer(TrainerCallback):
        """Wall seconds of each optimizer step (the first one includes one-off costs such as kernel loading)."""

        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()


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


def finetune(model_dir: str | Path, data: str | Path, output: str | Path, config: FinetuneConfig,
             resume: bool = False, overwrite: bool = False, show_progress: bool = False,
             callbacks: list | None = None, progress=None) -> FinetuneResult:
    """Train adapters on `data` and write them to OUTPUT (atomically, on the main process).

    `show_progress` draws a bar of its own; `progress` (a rich Progress) gets a task in the caller's display.
    """
    from transformers import TrainingArguments, set_seed

    from sqft_ov import __version__
    from sqft_ov.loading import load_causal_lm, model_fingerprint
    from sqft_ov.nls import HISTORY, RankSampler, blocks_of
    from sqft_ov.output import atomic_output, check_output
    from sqft_ov.sft_data import ResponseCollator, build_datasets

    output = check_output(output, overwrite)
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
    adapted = Adapted.build(base, config)

    sampler = None
    if config.nls:
        blocks = blocks_of(adapted.adapted_weights)
        sampler = RankSampler(blocks, config.rank_space, config.seed, adapted.set_ranks)
    args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr, num_train_epochs=config.epochs, max_steps=config.max_steps, seed=config.seed,
        data_seed=config.seed, logging_steps=1, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=2, report_to=[], remove_unused_columns=False, dataloader_num_workers=0,
        disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        eval_strategy="no", prediction_loss_only=True, ddp_find_unused_parameters=False,
        lr_scheduler_type="linear", warmup_steps=0)
    from transformers.trainer_callback import PrinterCallback

    timer = _step_timer()
    extra = [timer] + ([sampler] if sampler else [])
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
            record = {
                "sqft_ov_version": __version__, "method": config.method, "nls": config.nls,
                "rank": config.max_rank, "rank_space": list(config.rank_space) if config.nls else [config.rank],
                "lora_alpha": config.alpha, "target_modules": list(config.target_modules),
                "quantization": ({"bits": 4, "sym": config.int4 == "sym", "group_size": config.group_size}
                                 if config.int4 else None),
                "base": str(Path(model_dir).absolute()), "base_fingerprint": model_fingerprint(model_dir),
                "data": str(Path(data).absolute()), "data_format": asdict(config.data_format),
                "eval_split": config.eval_split, "seed": config.seed, "adapted_weights": adapted.adapted_weights,
                "steps": trainer.state.global_step, "world_size": args.world_size, "eval_loss": eval_loss,
                "step_seconds": timer.seconds,
                "train_loss": train_loss,
            }
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(record, indent=2))
            (tmp / "loss_log.json").write_text(json.dumps(trainer.state.log_history, indent=2))
            save_file(adapted.state(), tmp / TRAINABLE)
            if not adapted.qa:
                adapted.model.save_pretrained(tmp)  # adapter_config.json + adapter_model.safetensors (PEFT)
            tokenizer.save_pretrained(tmp)
            if sampler is not None:
                (tmp / HISTORY).write_text(json.dumps(sampler.history, indent=2))
        shutil.rmtree(run_dir, ignore_errors=True)
    return FinetuneResult(output, train_loss, eval_loss, trainer.state.global_step)


def load_adapted(adapter_dir: str | Path, base: str | Path | None = None, check_fingerprint: bool = True,
                 dtype: torch.dtype = torch.float32):
    """Rebuild the trained model from an OUTPUT folder: base + method structure + trained tensors."""
    from safetensors.torch import load_file

    from sqft_ov.loading import load_causal_lm, model_fingerprint

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise SqftError(f"{adapter_dir} is not a sqft-ov finetune output (no {ADAPTER_CONFIG})")
    record = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    base = Path(base or record["base"])
    if check_fingerprint and model_fingerprint(base) != record["base_fingerprint"]:
        raise SqftError(f"the base model in {base} is not the one the adapter was trained on (fingerprint "
                        "differs): pass the original base")
    quant = record["quantization"] or {}
    config = FinetuneConfig(method=record["method"], rank=record["rank"], nls=record["nls"],
                            rank_space=tuple(record["rank_space"]), target_modules=tuple(record["target_modules"]),
                            int4=("sym" if quant.get("sym") else "asym") if quant else None,
                            group_size=quant.get("group_size", 64), lora_alpha=record["lora_alpha"],
                            data_format=SFTFormat(**record["data_format"]), eval_split=record["eval_split"],
                            seed=record["seed"])
    model, tokenizer = load_causal_lm(base, dtype=dtype)
    adapted = Adapted.build(model, config, init_adapters=False)
    adapted.load_state(load_file(adapter_dir / TRAINABLE))
    adapted.model.eval()
    return adapted, tokenizer, record


def apply_sub_adapter(adapted: Adapted, record: dict, sub_adapter: str | Path | None) -> list[int] | None:
    """Activate an NLS sub-adapter (CONFIG.json from search; default: the largest ranks); ranks per block."""
    from sqft_ov.nls import blocks_of, expand
    from sqft_ov.search import load_sub_adapter

    if not record["nls"]:
        if sub_adapter is not None:
            raise SqftError("the adapter was trained without --nls: --sub-adapter does not apply")
        return None
    blocks = blocks_of(adapted.adapted_weights)
    ranks = (load_sub_adapter(sub_adapter, record["rank_space"], len(blocks)) if sub_adapter
             else [max(record["rank_space"])] * len(blocks))
    adapted.set_ranks(expand(dict(zip(blocks, ranks)), blocks))
    return ranks


def load_for_inference(model_dir: str | Path, adapter: str | Path | None = None, dtype="auto",
                       sub_adapter: str | Path | None = None, allow_qa: bool = True):
    """(model, tokenizer) to generate with in PyTorch: a Hugging Face folder, optionally with an adapter.

    sqft-ov finetune outputs that need their own forward (sparsepeft's mask, NLS ranks, qa-sparsepeft's
    fake quantization) are rebuilt with `load_adapted`; any other adapter folder is loaded with PEFT.
    `allow_qa=False` refuses qa-sparsepeft adapters, whose trained form is a simulation, not a deployment.
    """
    from sqft_ov.loading import load_causal_lm

    adapter = Path(adapter) if adapter else None
    if adapter is not None and (adapter / ADAPTER_CONFIG).is_file():
        record = json.loads((adapter / ADAPTER_CONFIG).read_text())
        if record["method"] == "qa-sparsepeft" and not allow_qa:
            raise SqftError(f"{adapter} is a qa-sparsepeft adapter: its trained form is NNCF fake quantization, not "
                            "a deployment; merge it (sqft-ov merge) and use the exported IR")
        if record["method"] != "lora" or record["nls"]:
            torch_dtype = torch.float32 if dtype == "auto" else dtype
            adapted, tokenizer, _ = load_adapted(adapter, base=model_dir, dtype=torch_dtype)
            apply_sub_adapter(adapted, record, sub_adapter)
            return adapted.model, tokenizer
    if sub_adapter is not None:
        raise SqftError("--sub-adapter needs an NLS adapter written by sqft-ov finetune --nls")
    model, tokenizer = load_causal_lm(model_dir, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        if not (adapter / "adapter_config.json").is_file():
            raise SqftError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
        try:
            model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
        except Exception as exc:
            raise SqftError(f"adapter {adapter} does not fit the model in {model_dir}: "
                            f"{str(exc).strip().splitlines()[-1]}") from exc
        model.eval()
    return model, tokenizer
