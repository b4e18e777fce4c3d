"""SparsePEFT (and elastic ranks for NLS) on PEFT's LoRA layers.

SparsePEFT multiplies the LoRA update by the base weight's non-zero mask, in training and in merge:
    y = x W^T + x (M * (B A))^T * alpha / r
so the merged weight W + M * (B A) * alpha / r is exactly as sparse as W. NLS makes the rank elastic:
only the first r rows of A and columns of B are active, r chosen per layer (see `sqft_ov.adapters.nls`).
The adapter weights stay PEFT's own (`lora_A` / `lora_B`), but a SparsePEFT folder is not a plain PEFT one:
PEFT can only be told about a masked layer in code (a LoRA variant or custom module is not written to
adapter_config.json), so plain `PeftModel.from_pretrained(...).merge_and_unload()` would add the unmasked update
and refill the base's zeros. `refuse_plain_peft` makes PEFT stop instead, naming `sqft-ov merge`.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch
from torch import nn


def peft_lora_layers(model) -> dict[str, nn.Module]:
    """Base-layer weight name (as in the base model's state dict) -> PEFT LoRA Linear wrapping it."""
    from peft.tuners.lora import Linear as LoraLinear

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            clean = name.removeprefix("base_model.model.")
            out[f"{clean}.weight"] = module
    return out


def _elastic_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    result = self.base_layer(x, *args, **kwargs)
    name = self.active_adapters[0]
    rank = self.sqft_rank or self.r[name]
    A = self.lora_A[name].weight[:rank]  # [r, in]
    B = self.lora_B[name].weight[:, :rank]  # [out, r]
    x = self.lora_dropout[name](x.to(A.dtype))
    if self.sqft_mask is None:
        update = (x @ A.T) @ B.T
    else:
        update = x @ ((B @ A) * self.sqft_mask).T
    return result + (update * self.scaling[name]).to(result.dtype)


def make_elastic(layers: dict[str, nn.Module], masked: bool) -> None:
    """Give each PEFT LoRA layer a settable rank (`sqft_rank`, None = full) and, if `masked`, the mask."""
    for layer in layers.values():
        layer.sqft_rank = None
        mask = (layer.base_layer.weight != 0).to(layer.base_layer.weight.dtype) if masked else None
        # Non-persistent: never written to checkpoints; it is re-derived from the base weights on load.
        layer.register_buffer("sqft_mask", mask, persistent=False)
        layer.forward = types.MethodType(_elastic_forward, layer)


def set_ranks(layers: dict[str, nn.Module], ranks_by_weight: dict[str, int]) -> None:
    for name, rank in ranks_by_weight.items():
        layers[name].sqft_rank = rank


@torch.no_grad()
def merged_weight(layer: nn.Module, rank: int | None, masked: bool) -> torch.Tensor:
    """W + (M *) B[:, :r] A[:r] * alpha / r_max, in the base weight's dtype."""
    name = layer.active_adapters[0]
    rank = rank or layer.r[name]
    A = layer.lora_A[name].weight[:rank].float()
    B = layer.lora_B[name].weight[:, :rank].float()
    delta = (B @ A) * layer.scaling[name]
    base = layer.base_layer.weight
    if masked:
        delta = delta * (base != 0)
    return (base.float() + delta).to(base.dtype)


PEFT_CONFIG = "adapter_config.json"
REFUSAL = ("this is a SparsePEFT adapter: its update must be masked by the base's sparsity; merge it with "
           "`sqft-ov merge ADAPTER MERGED` (or sqft_ov.merge) instead of loading it with plain PEFT")


def refuse_plain_peft(folder: Path) -> None:
    """Make plain PEFT (and transformers' `load_adapter`) refuse a SparsePEFT folder with `REFUSAL`.

    PEFT looks the config's `peft_type` up before anything else and echoes an unknown one in its KeyError, so
    the message becomes the type; PEFT's own type stays beside it (`sqft_peft_type`). sqft-ov never reads this
    file for sparsepeft (it rebuilds from sqft_adapter.json), and older folders, still typed LORA, load as before.
    """
    file = folder / PEFT_CONFIG
    config = json.loads(file.read_text())
    config["sqft_peft_type"], config["peft_type"] = config["peft_type"], REFUSAL
    file.write_text(json.dumps(config, indent=2))
    card = folder / "README.md"  # PEFT's model card: tell a reader on the Hub too
    note = f"**SparsePEFT adapter (sqft-ov)**: {REFUSAL}.\n\n"
    card.write_text(note + (card.read_text() if card.is_file() else ""))
