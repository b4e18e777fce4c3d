"""QA-SparsePEFT's weight, fake_quant(W + M * (B A)), as one autograd function that keeps nothing weight-sized.

Written as NNCF composes it (`W + (B @ A) * mask`, then `QuantizeAsymmetricTorch`), autograd keeps, for every
linear weight until backward, the merged weight, the fake-quantized weight (the linear layer's saved operand) and
a float mask buffer beside the weights. A QA step cost 2.8x the time and 2.2x the peak memory of a LoRA step
(`benchmarks/train.py`). Here:
- the mask is `W != 0`, read from the frozen weight itself (exactly the base's non-zero pattern: W never trains);
- forward computes the fake-quantized weight without recording and saves only the adapters and the per-group
  ranges (W is a parameter: saving it costs nothing);
- backward recomputes W + M * (B A) (one rank-r matmul) and applies NNCF's straight-through gradients — the
  formulas of `nncf.torch.quantization.reference.ReferenceQuantize`, op for op, so that the trained tensors are
  the ones NNCF's composition gives (tests/test_fused_adapters.py holds that composition and compares);
- under `recompute_weights_in_backward` the linear layer keeps the weight's recipe instead of the weight, and
  backward rebuilds it once for both backwards (the linear's and ours);
- each elementwise part is one `torch.compile`d loop (as NNCF compiles its reference), eager where compiling
  fails (no C++ compiler): same formulas either way.
What stays above a LoRA step is the method's own: the weight-sized gradient of the merged weight (one more
matmul per layer, which the ranges' and the masked update's gradients need) and the elementwise passes.
"""

from __future__ import annotations

import torch

from sqft_ov.adapters.sparse_lora import CompiledOnFirstCall


def _fake_quant(x: torch.Tensor, low: torch.Tensor, range_: torch.Tensor, levels: int) -> torch.Tensor:
    """NNCF's ReferenceQuantize.forward: x clipped to [low, low + range] and rounded onto `levels` steps."""
    scale = (levels - 1) / range_
    out = x.clip(min=low, max=low + range_)
    zero_point = (-low * scale).round()
    out = out - low
    out = out * scale
    out = out - zero_point
    out = out.round()
    return out / scale


def _merged(weight: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """W + M * update with M = (W != 0), in W's dtype (M = 0: W itself, a zero)."""
    return torch.where(weight != 0, weight + update, weight).to(weight.dtype)


def _forward(weight, update, low, range_, levels: int) -> torch.Tensor:
    """The fake-quantized merged weight, in the grouped shape [out, groups, group size]."""
    return _fake_quant(_merged(weight, update).float(), low, range_, levels).to(weight.dtype)


def _backward(grad, weight, update, low, range_, levels: int, level_low: int, level_high: int):
    """NNCF's ReferenceQuantize.backward at x = W + M * update: (grad of the update, of low, of range)."""
    x = _merged(weight, update)
    mask_hi = (x > low + range_).to(x.dtype)
    mask_lo = (x < low).to(x.dtype)
    mask_in = 1 - mask_hi - mask_lo
    range_sign = torch.sign(range_)
    err = (_fake_quant(x, low, range_, levels) - x) * torch.reciprocal(range_ * range_sign)
    grad_range = (grad * (err * mask_in + range_sign * (level_low / level_high) * mask_lo + mask_hi)).sum(
        -1, keepdim=True)
    grad_low = (grad * (mask_hi + mask_lo)).sum(-1, keepdim=True)
    grad_update = torch.where(weight != 0, grad * mask_in, 0).to(update.dtype)  # autograd's cast, in the same loop
    return grad_update, grad_low, grad_range


_forward_kernel = CompiledOnFirstCall(_forward)
_backward_kernel = CompiledOnFirstCall(_backward)


class _Recipe:
    """What a fake-quantized weight is computed from (all small, or the frozen W itself): backward rebuilds the
    weight from it instead of autograd keeping it, for the linear layer's backward and for ours."""

    def __init__(self, weight, lora_a, lora_b, low, range_, grouped: tuple[int, ...], levels: int):
        self.weight, self.lora_a, self.lora_b, self.low, self.range_ = weight, lora_a, lora_b, low, range_
        self.grouped, self.levels, self._update = grouped, levels, None

    def update(self, keep: bool = False) -> torch.Tensor:
        """B @ A: the one made for the linear layer's backward is kept for ours, which runs right after it."""
        update, self._update = self._update, None
        if update is None:
            update = self.lora_b @ self.lora_a
        if keep:
            self._update = update
        return update

    def quantized(self, keep_update: bool = False) -> torch.Tensor:
        update = self.update(keep_update)
        out = _forward_kernel(self.weight.reshape(self.grouped), update.reshape(self.grouped), self.low, self.range_,
                              self.levels)
        return out.reshape(self.weight.shape)


class MaskedLoraFakeQuant(torch.autograd.Function):
    """fake_quant(W + (W != 0) * (B @ A)) on the grid (low, range) per group; gradients for A, B, low, range."""

    @staticmethod
    def forward(ctx, weight, lora_a, lora_b, low, range_, grouped: tuple[int, ...], levels: int, level_low: int,
                level_high: int):
        recipe = _Recipe(weight, lora_a, lora_b, low, range_, grouped, levels)
        out = recipe.quantized()
        root = out if out._base is None else out._base  # what views of `out` (the linear's saved .t()) point to
        root._sqft_recipe = recipe  # read by `_pack` (under `recompute_weights_in_backward`)
        ctx.save_for_backward(weight, lora_a, lora_b, low, range_)
        ctx.recipe, ctx.level_low, ctx.level_high = recipe, level_low, level_high
        return out

    @staticmethod
    def backward(ctx, grad):
        weight, lora_a, lora_b, low, range_ = ctx.saved_tensors
        grouped = ctx.recipe.grouped
        update = ctx.recipe.update()
        grad_update, grad_low, grad_range = _backward_kernel(
            grad.reshape(grouped), weight.reshape(grouped), update.reshape(grouped), low, range_, ctx.recipe.levels,
            ctx.level_low, ctx.level_high)
        grad_update = grad_update.reshape(update.shape)
        need = ctx.needs_input_grad
        grad_a = lora_b.t().mm(grad_update) if need[1] else None  # autograd's mm backward, same operands
        grad_b = grad_update.mm(lora_a.t()) if need[2] else None
        return (None, grad_a, grad_b, grad_low.float() if need[3] else None, grad_range.float() if need[4] else None,
                None, None, None, None)


class _Packed:
    """A saved view of a fake-quantized weight, kept as its recipe and the view's geometry."""

    def __init__(self, recipe: _Recipe, view: torch.Tensor):
        self.recipe, self.geometry = recipe, (view.size(), view.stride(), view.storage_offset())


def _pack(tensor: torch.Tensor):
    for candidate in (tensor, tensor._base):  # linear layers save the weight's transpose, a view of it
        recipe = getattr(candidate, "_sqft_recipe", None)
        if recipe is not None:
            return _Packed(recipe, tensor)
    return tensor


def _unpack(saved):
    if isinstance(saved, _Packed):
        return saved.recipe.quantized(keep_update=True).as_strided(*saved.geometry)
    return saved


def recompute_weights_in_backward(model: torch.nn.Module) -> None:
    """While `model` runs forward, tensors autograd saves that are (views of) fake-quantized weights are saved as
    their recipe and rebuilt in backward: one weight-sized tensor per linear layer less to keep (the linear's
    saved weight), for one more elementwise pass. Anything else is saved as usual; inside gradient-checkpointed
    blocks checkpointing's own hooks apply instead."""
    stack = []

    def enter(module, args):
        stack.append(torch.autograd.graph.saved_tensors_hooks(_pack, _unpack))
        stack[-1].__enter__()

    def leave(module, args, output):
        if stack:
            stack.pop().__exit__(None, None, None)

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)


def masked_asymmetric(weight, grouped, lora_a, lora_b, low, range_, level_low, level_high, levels):
    """Asymmetric INT4: `low`, `range_` are the tuned range (NNCF's TuneRange output); grads flow to both."""
    return MaskedLoraFakeQuant.apply(weight, lora_a, lora_b, low, range_, tuple(grouped), levels, level_low,
                                     level_high)


def masked_symmetric(weight, grouped, lora_a, lora_b, scale, level_low, level_high, levels):
    """Symmetric INT4 on `scale` (NNCF's QuantizeSymmetricTorch: the range's gradient is the scale's)."""
    low = torch.where(scale > 0, -scale, -scale / level_low * level_high)
    range_ = torch.abs((2 + 1 / level_low) * scale)
    return MaskedLoraFakeQuant.apply(weight, lora_a, lora_b, low.detach(), _RangeAsScale.apply(range_, scale),
                                     tuple(grouped), levels, level_low, level_high)


class _RangeAsScale(torch.autograd.Function):
    """range (a function of scale) whose gradient goes to `scale` unchanged, as NNCF's symmetric backward does."""

    @staticmethod
    def forward(ctx, range_, scale):
        return range_.detach()

    @staticmethod
    def backward(ctx, grad):
        return None, grad
