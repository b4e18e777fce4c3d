"""Importance (EFTNAS): score every MLP channel and KV group, reorder the model, derive a search space.

A unit's first-order importance is sum |W * dL/dW| over the weights it owns (its rows of gate/up and q/k/v,
its columns of down and o), accumulated over batches of the task's data (the response tokens' loss), as in
Taylor / movement pruning. Each block's channels and KV groups are then permuted so that the most important
come first — the model's function is unchanged — and a smaller width is always a prefix of a larger one.

The search space is derived from the scores: per block, the smallest width whose units hold `keep` of the
block's importance is the lower boundary, and `choices` widths are spread between it and the full width.
OUTPUT is the reordered model (Hugging Face layout) with `search_space.json` (edit it if you like; finetune
reads it with --search-space) and `importance.json` (the scores, in the new order).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sqft_ov.adapters.elastic import SPACE_FILE, WidthSpace
from sqft_ov.errors import ConfigError
from sqft_ov.io.blocks import Shape, decoder_layers, projections, select
from sqft_ov.io.sft_data import SFTFormat

SCORES_FILE = "importance.json"


@dataclass
class ImportanceConfig:
    keep: float = field(default=0.9, metadata={  # EFTNAS's boundary
        "help": "Share of a block's MLP importance its smallest width keeps (the space's lower boundary)."})
    keep_heads: float = field(default=0.9, metadata={"help": "The same for its KV groups (attention heads)."})
    choices: int = field(default=3, metadata={  # from the full width down to the boundary
        "help": "MLP widths per block in the derived search space."})
    multiple: int = field(default=32, metadata={  # INT4 groups and SIMD tiles stay whole
        "help": "MLP widths are multiples of this."})
    num_samples: int = field(default=64, metadata={"help": "Training examples whose gradients are accumulated."})
    batch_size: int = field(default=8, metadata={"help": "Examples per backward pass."})
    data_format: SFTFormat = field(default_factory=SFTFormat)
    seed: int = 42

    def __post_init__(self) -> None:
        for flag, value in (("--keep", self.keep), ("--keep-heads", self.keep_heads)):
            if not 0 < value <= 1:
                raise ConfigError(f"{flag} must be in (0, 1], got {value}")
        for flag, value in (("--choices", self.choices), ("--multiple", self.multiple),
                            ("--num-samples", self.num_samples), ("--batch-size", self.batch_size)):
            if value < 1:
                raise ConfigError(f"{flag} must be positive, got {value}")


@dataclass
class ImportanceReport:
    output: Path
    space: WidthSpace
    samples: int
    mlp_scores: list[list[float]]  # per block, per channel, in the new (descending) order
    head_scores: list[list[float]]  # per block, per KV group


def unit_scores(layer, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(per MLP channel, per KV group) sums of |W * grad| of a block whose weights hold gradients."""
    mlp = torch.zeros(shape.intermediate)
    kv = torch.zeros(shape.kv_heads)
    q_size, kv_size = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    for role, module in projections(layer).items():
        weight = getattr(module, "base_layer", module).weight
        if weight.grad is None:
            continue
        saliency = (weight.detach() * weight.grad).abs().float()
        rows, cols = saliency.sum(1), saliency.sum(0)
        if role in ("gate", "up"):
            mlp += rows
        elif role == "gate_up":
            mlp += rows[:shape.intermediate] + rows[shape.intermediate:]
        elif role == "down":
            mlp += cols
        elif role in ("q", "k", "v"):  # rows grouped by KV group: its query heads, or its key / value head
            kv += rows.view(shape.kv_heads, -1).sum(1)
        elif role == "qkv":
            kv += rows[:q_size].view(shape.kv_heads, -1).sum(1)
            kv += rows[q_size:q_size + kv_size].view(shape.kv_heads, -1).sum(1)
            kv += rows[q_size + kv_size:].view(shape.kv_heads, -1).sum(1)
        elif role == "o":
            kv += cols.view(shape.kv_heads, -1).sum(1)
    return mlp, kv


def boundary(sorted_scores: torch.Tensor, keep: float) -> int:
    """The fewest leading units whose scores sum to `keep` of the total."""
    total = float(sorted_scores.sum())
    if total <= 0:
        return len(sorted_scores)
    cumulative = torch.cumsum(sorted_scores, 0) / total
    return int(torch.searchsorted(cumulative, torch.tensor(keep - 1e-9)).item()) + 1


def derive_space(mlp_scores: list[torch.Tensor], kv_scores: list[torch.Tensor], shape: Shape,
                 config: ImportanceConfig) -> WidthSpace:
    """Per block: MLP widths from full down to the `keep` boundary; KV groups from full down to theirs."""
    mlp_space, kv_space = [], []
    step = config.multiple if shape.intermediate % config.multiple == 0 else 1
    for mlp, kv in zip(mlp_scores, kv_scores):
        low = boundary(mlp, config.keep)
        low = min(shape.intermediate, max(step, -(-low // step) * step))  # rounded up to whole multiples
        widths = {shape.intermediate, low}
        for i in range(1, config.choices - 1):
            size = shape.intermediate - (shape.intermediate - low) * i / (config.choices - 1)
            widths.add(min(shape.intermediate, max(low, round(size / step) * step)))
        mlp_space.append(sorted(widths, reverse=True)[:config.choices] if config.choices > 1 else [shape.intermediate])
        kv_low = boundary(kv, config.keep_heads)
        kv_space.append(list(range(shape.kv_heads, kv_low - 1, -1)))
    return WidthSpace(mlp_space, kv_space)


def importance(model_dir: str | Path, data: str | Path, output: str | Path, config: ImportanceConfig | None = None,
               overwrite: bool = False, trust_remote_code: bool = False) -> ImportanceReport:
    """Score, reorder and derive the search space; OUTPUT appears only when all of it succeeded."""
    from sqft_ov.io.checkpoint import check_model_dir, checkpoint_dtype, load_causal_lm
    from sqft_ov.io.output import atomic_output, check_output
    from sqft_ov.io.sft_data import ResponseCollator, build_datasets

    config = config or ImportanceConfig()
    model_dir = check_model_dir(model_dir)
    output = check_output(output, overwrite, inputs=(model_dir, data))
    model, tokenizer = load_causal_lm(model_dir, trust_remote_code, dtype=torch.float32)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    shape = Shape.of(model.config)
    layers = decoder_layers(model)
    train, _ = build_datasets(data, tokenizer, config.data_format, 0.0, config.seed)
    rows = list(train)[:config.num_samples]
    collate = ResponseCollator(tokenizer.pad_token_id)

    model.requires_grad_(False)
    for layer in layers:
        for module in projections(layer).values():
            module.weight.requires_grad_(True)
    mlp_scores = [torch.zeros(shape.intermediate) for _ in layers]
    kv_scores = [torch.zeros(shape.kv_heads) for _ in layers]
    for i in range(0, len(rows), config.batch_size):
        model.zero_grad(set_to_none=True)
        model(**collate(rows[i:i + config.batch_size])).loss.backward()
        for layer, mlp, kv in zip(layers, mlp_scores, kv_scores):
            m, k = unit_scores(layer, shape)
            mlp += m
            kv += k
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)

    sorted_mlp, sorted_kv = [], []
    for layer, mlp, kv in zip(layers, mlp_scores, kv_scores):
        mlp_order = torch.argsort(mlp, descending=True, stable=True)
        kv_order = torch.argsort(kv, descending=True, stable=True)
        select(layer, shape, mlp_order, kv_order)
        sorted_mlp.append(mlp[mlp_order])
        sorted_kv.append(kv[kv_order])
    space = derive_space(sorted_mlp, sorted_kv, shape, config)

    with atomic_output(output, overwrite) as tmp:
        model.to(checkpoint_dtype(model_dir))
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name in ("sparsity.json",):  # a permutation moves zeros, it does not change how many each weight has
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        (tmp / SPACE_FILE).write_text(json.dumps(space.to_dict(), indent=2))
        scores = {"source": str(model_dir), "samples": len(rows), "keep": config.keep, "keep_heads": config.keep_heads,
                  "blocks": [{"mlp": m.tolist(), "kv_groups": k.tolist()} for m, k in zip(sorted_mlp, sorted_kv)]}
        (tmp / SCORES_FILE).write_text(json.dumps(scores))
    return ImportanceReport(output, space, len(rows), [m.tolist() for m in sorted_mlp], [k.tolist() for k in sorted_kv])
