"""The embedded foundation model: a tiny Llama pretrained on synthetic arithmetic word problems.

`quickstart` needs a base model that *knows* something, so that sparsity can cost accuracy and fine-tuning
can buy it back; nothing may be downloaded. This module pretrains one from scratch (through Hugging Face
`Trainer`, like every training in sqft-ov) in a few minutes on two CPU cores and caches it in the user's
cache folder, keyed by its configuration and the corpus version: a second run reuses it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sqft_ov.errors import ConfigError
from sqft_ov.io.cache import cache_dir

CORPUS_VERSION = 1  # bump when sqft_ov.quickstart.arithmetic's foundation distribution changes
RECORD = "sqft_foundation.json"


@dataclass(frozen=True)
class FoundationConfig:
    """The one foundation model of both quickstart plans: `--fast` once pretrained a weaker one (250 steps), from
    which 200 LoRA steps learned nothing (benchmarks/results/fast-plan-weak-foundation.json)."""

    layers: int = 4
    hidden: int = 128
    intermediate: int = 256
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 512
    seq_len: int = 128  # tokens per packed training sequence
    batch_size: int = 32
    steps: int = 1200
    lr: float = 3e-3
    seed: int = 0

    @property
    def key(self) -> str:
        text = json.dumps({**asdict(self), "corpus": CORPUS_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def documents(self) -> int:
        """One pass over fresh problems: ~48 tokens each, so every step sees new text."""
        return self.steps * self.batch_size * self.seq_len // 40 + 1000


def _packed(tokenizer, texts: list[str], seq_len: int):
    """Documents as <bos> text <eos>, concatenated and cut into full sequences (no padding)."""
    from datasets import Dataset

    ids: list[int] = []
    for row in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids += [tokenizer.bos_token_id, *row, tokenizer.eos_token_id]
    chunks = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    return Dataset.from_dict({"input_ids": chunks, "labels": chunks})


def pretrain(output: str | Path, config: FoundationConfig, overwrite: bool = False, on_progress=None) -> Path:
    """Train the foundation model from scratch and write it to OUTPUT (Hugging Face layout, atomically);
    `on_progress(done, total, label)` gets the training steps."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    from sqft_ov.io.output import atomic_output
    from sqft_ov.quickstart.arithmetic import pretraining_text
    from sqft_ov.quickstart.tiny import TinyModelConfig, build_tokenizer, check_config, hf_config
    from sqft_ov.stages.finetune import progress_callback

    shape = TinyModelConfig(arch="llama", layers=config.layers, hidden=config.hidden,
                            intermediate=config.intermediate, heads=config.heads, kv_heads=config.kv_heads,
                            vocab=config.vocab, max_positions=max(512, config.seq_len), seed=config.seed)
    check_config(shape)
    if config.steps < 1 or config.batch_size < 1 or config.seq_len < 16:
        raise ConfigError("foundation steps and batch size must be positive and seq_len at least 16")
    set_seed(config.seed)
    texts = pretraining_text(config.documents, config.seed)
    tokenizer = build_tokenizer(config.vocab, config.seed, corpus=texts[:5000], split_digits=True)
    model = AutoModelForCausalLM.from_config(hf_config(shape, tokenizer), dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    train_set = _packed(tokenizer, texts, config.seq_len)
    with tempfile.TemporaryDirectory(prefix="sqft-foundation-") as run_dir:
        args = TrainingArguments(
            output_dir=run_dir, per_device_train_batch_size=config.batch_size, max_steps=config.steps,
            learning_rate=config.lr, lr_scheduler_type="cosine", warmup_steps=max(1, config.steps // 20),
            weight_decay=0.0, seed=config.seed, data_seed=config.seed, logging_steps=10, save_strategy="no",
            report_to=[], dataloader_num_workers=0, disable_tqdm=True, use_cpu=not torch.cuda.is_available())
        callbacks = [progress_callback(on_progress, "pretrain foundation model")] if on_progress is not None else []
        trainer = Trainer(model=model, args=args, train_dataset=train_set, callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    with atomic_output(output, overwrite) as tmp:
        model.eval().save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps({"config": asdict(config), "corpus_version": CORPUS_VERSION,
                                              "documents": config.documents, "train_loss": losses,
                                              "steps": trainer.state.global_step}, indent=2))
    return Path(output).absolute()


def cached_foundation(config: FoundationConfig, cache: str | Path | None = None) -> Path:
    """Where `config`'s model lives in the cache (whether or not it is there yet)."""
    return Path(cache or cache_dir()).expanduser() / f"foundation-{config.key}"


def foundation_model(config: FoundationConfig | None = None, cache: str | Path | None = None,
                     on_progress=None) -> Path:
    """The cached foundation model for `config`, pretrained first if it is not in the cache yet."""
    config = config or FoundationConfig()
    path = cached_foundation(config, cache)
    if (path / RECORD).is_file():
        return path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return pretrain(path, config, overwrite=path.exists(), on_progress=on_progress)
