"""SparsePEFT (and elastic ranks for NLS) on PEFT's LoRA layers.

SparsePEFT multiplies the LoRA update by the base weight's non-zero mask, in training and in merge:
    y = x W^T + x (M * (B A))^T * alpha / r   (computed as x (W + M * (B A) * alpha / r)^T: `MaskedMergedLinear`)
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


class MaskedMergedLinear(torch.autograd.Function):
    """y = x (W + s * M ⊙ B A)^T + b with M = (W != 0): SparsePEFT's layer as one matmul with the merged weight.

    The layer as two paths (`x W^T + s x (M ⊙ B A)^T`) runs two weight-sized matmuls forward and backward and
    keeps the dense masked update (and a float mask) per layer until backward. Here one matmul runs with the
    merged weight, which backward rebuilds (one rank-r matmul) instead of keeping; what stays above a LoRA
    step is the method's own: the weight-sized gradient that the mask makes necessary. Same result up to float
    rounding (the sum is formed in the weight instead of the output); it is also what the merged model computes.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        ctx.save_for_backward(x, weight, lora_a, lora_b)
        ctx.scaling = scaling
        return torch.nn.functional.linear(x, _merged(weight, lora_a, lora_b, scaling), bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight, lora_a, lora_b = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_x = grad @ _merged(weight, lora_a, lora_b, ctx.scaling) if need[0] else None
        grad_a = grad_b = None
        if need[3] or need[4]:
            flat_grad, flat_x = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
            grad_update = _mask_grad_kernel(weight, flat_grad.t() @ flat_x, ctx.scaling)
            grad_a = lora_b.t() @ grad_update if need[3] else None
            grad_b = grad_update @ lora_a.t() if need[4] else None
        return grad_x, None, None, grad_a, grad_b, None


def _merged(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    return _merge_kernel(weight, lora_b @ lora_a, scaling)


def _merge(weight, update, scaling: float):
    return torch.where(weight != 0, weight + update * scaling, weight)


def _mask_grad(weight, grad, scaling: float):
    return torch.where(weight != 0, grad, 0) * scaling


class CompiledOnFirstCall:
    """`fn` compiled on first call into one loop (eager `torch.where` on a weight is several passes and slow on
    CPUs); eager from the first call compiling fails on (no C++ compiler): the same formulas either way."""

    def __init__(self, fn):
        self.fn, self.compiled = fn, None

    def __call__(self, *args):
        if self.compiled is None:
            self.compiled = torch.compile(self.fn)
        if self.compiled is self.fn:
            return self.fn(*args)
        try:
            return self.compiled(*args)
        except Exception as exc:  # noqa: BLE001 - no compiler, an unsupported platform: run it eagerly
            import warnings

            warnings.warn(f"{self.fn.__name__} runs uncompiled (slower): {str(exc).splitlines()[0]}", stacklevel=2)
            self.compiled = self.fn
            return self.fn(*args)


_merge_kernel = CompiledOnFirstCall(_merge)
_mask_grad_kernel = CompiledOnFirstCall(_mask_grad)


def _elastic_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = self.active_adapters[0]
    rank = self.sqft_rank or self.r[name]
    A = self.lora_A[name].weight[:rank]  # [r, in]
    B = self.lora_B[name].weight[:, :rank]  # [out, r]
    base = self.base_layer
    if (self.sqft_masked and type(base) is nn.Linear and isinstance(self.lora_dropout[name], nn.Identity)
            and base.weight.dtype == A.dtype == x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type)
            and not any(p.requires_grad for p in base.parameters())):
        return MaskedMergedLinear.apply(x, base.weight, base.bias, A, B, self.scaling[name])
    result = base(x, *args, **kwargs)
    x = self.lora_dropout[name](x.to(A.dtype))
    if not self.sqft_masked:
        update = (x @ A.T) @ B.T
    else:  # a half-precision base (the update would round away in it) or dropout: the update as its own path
        update = x @ torch.where(base.weight != 0, B @ A, 0).T
    return result + (update * self.scaling[name]).to(result.dtype)


def make_elastic(layers: dict[str, nn.Module], masked: bool) -> None:
    """Give each PEFT LoRA layer a settable rank (`sqft_rank`, None = full) and, if `masked`, SparsePEFT's mask:
    the base weight's non-zeros, read from the frozen weight itself (nothing stored or saved)."""
    for layer in layers.values():
        layer.sqft_rank = None
        layer.sqft_masked = masked
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
