"""The adapters' fused layers train what their written-out forms train: QA-SparsePEFT's fake quantization
against NNCF's own composition, SparsePEFT's merged-weight layer against the two-path layer.

The reference is what sqft-ov ran before (NNCF's FQ_LORA quantizer plus the mask):
`QuantizeAsymmetricTorch(W + (B @ A) * mask)` / `QuantizeSymmetricTorch(...)`, autograd keeping the
intermediates. Stated tolerance: one step's weight and gradients are bit-equal except the ranges' gradient, a sum
over each group, which differs in the last float32 place (NNCF's own compiled and eager paths differ there too);
trained for 12 AdamW steps (which turns such differences in near-zero gradients into lr-sized steps), the
losses agree to 1e-5, the ranges to 1 %, the bf16 adapters to a few units in their last place, and at most 0.01 %
of the merged INT4 codes differ, by one step.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FIELDS, train
from safetensors.torch import load_file

from sqft_ov.adapters import qa_fused, qa_lora


def _reference_asymmetric(weight, grouped, A, B, low, range_, level_low, level_high, levels):
    from nncf.torch.quantization.quantize_functions import QuantizeAsymmetricTorch

    merged = (weight + (B @ A) * (weight != 0).to(weight.dtype)).type(weight.dtype)
    return QuantizeAsymmetricTorch.apply(merged, grouped, low, range_, level_low, level_high, levels)


def _reference_symmetric(weight, grouped, A, B, scale, level_low, level_high, levels):
    from nncf.torch.quantization.quantize_functions import QuantizeSymmetricTorch

    merged = (weight + (B @ A) * (weight != 0).to(weight.dtype)).type(weight.dtype)
    return QuantizeSymmetricTorch.apply(merged, grouped, scale, level_low, level_high, levels)


def _one_step(fn, weight, grid, A, B, levels):
    """The fake-quantized weight and the gradients of a linear layer's loss through it."""
    grouped = (weight.shape[0], weight.shape[1] // 64, 64)
    for t in (A, B, *grid):
        t.grad = None
    q = fn(weight, grouped, A[:6], B[:, :6], *grid, *levels)  # an NLS-style active rank: slices of A and B
    x = torch.randn(16, weight.shape[1], generator=torch.Generator().manual_seed(1))
    torch.nn.functional.linear(x, q).square().sum().backward()
    return q.detach(), A.grad, B.grad, *(t.grad for t in grid)


@pytest.mark.parametrize("sym", [False, True])
def test_one_step_equals_nncfs_composition(sym):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 256, generator=gen)
    weight[torch.rand(96, 256, generator=gen) < 0.5] = 0
    A = (torch.randn(8, 256, generator=gen) * 0.1).bfloat16().requires_grad_()  # NNCF's adapters are bf16
    B = (torch.randn(96, 8, generator=gen) * 0.1).bfloat16().requires_grad_()
    groups = weight.reshape(96, 4, 64)
    if sym:
        grid = (groups.abs().amax(-1, keepdim=True) / 8).requires_grad_(),
        levels, ours, theirs = (-8, 7, 16), qa_fused.masked_symmetric, _reference_symmetric
    else:
        grid = groups.amin(-1, keepdim=True).requires_grad_(), (groups.amax(-1, keepdim=True)
                                                                - groups.amin(-1, keepdim=True)).requires_grad_()
        levels, ours, theirs = (0, 15, 16), qa_fused.masked_asymmetric, _reference_asymmetric
    fused, reference = _one_step(ours, weight, grid, A, B, levels), _one_step(theirs, weight, grid, A, B, levels)
    for got, want in zip(fused[:-1], reference[:-1]):  # weight, adapters' grads, (asym) low's grad: bit-equal
        assert torch.equal(got, want)
    torch.testing.assert_close(fused[-1], reference[-1], rtol=1e-6, atol=1e-5)  # the range's: a sum per group
    assert not fused[0][weight == 0].any()  # the base's zeros stay zeros


def _codes(merged_dir):
    """Each merged weight's INT4 integer codes on its own trained grid (asymmetric grids)."""
    from nncf.torch.quantization.quantize_functions import TuneRange

    weights, grid = load_file(merged_dir / "model.safetensors"), load_file(merged_dir / "sqft_int4_grid.safetensors")
    out = {}
    for name, weight in weights.items():
        if f"{name}::input_low" in grid:
            low, range_ = TuneRange.apply(grid[f"{name}::input_low"], grid[f"{name}::input_range"].abs() + 1e-16, 16)
            out[name] = torch.round(weight.reshape(*low.shape[:2], -1) * 15 / range_)
    return out


def test_finetune_trains_what_nncfs_composition_trains(sparse_models, sft_data, tmp_path, monkeypatch):
    from sqft_ov.stages.merge import merge

    settings = dict(method="qa-sparsepeft", int4="asym", rank=8, **FIELDS)
    fused = train(sparse_models["llama"], sft_data, tmp_path / "fused", **settings)
    with monkeypatch.context() as patch:
        patch.setattr(qa_lora, "masked_asymmetric", _reference_asymmetric)
        reference = train(sparse_models["llama"], sft_data, tmp_path / "reference", **settings)

    assert fused.train_loss == pytest.approx(reference.train_loss, rel=1e-5)
    assert fused.eval_loss == pytest.approx(reference.eval_loss, rel=1e-5)
    ours, theirs = (load_file(tmp_path / k / "sqft_trainable.safetensors") for k in ("fused", "reference"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        if ours[name].dtype == torch.float32:  # the grid's ranges
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-2, atol=1e-4, msg=name)
        else:  # bf16 adapters (values ~0.04: one unit in the last place is 2.4e-4)
            torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-3, msg=name)
    for kind in ("fused", "reference"):
        merge(tmp_path / kind, tmp_path / f"merged-{kind}")
    a, b = _codes(tmp_path / "merged-fused"), _codes(tmp_path / "merged-reference")
    differing = sum(int((a[n] != b[n]).sum()) for n in a)
    total = sum(a[n].numel() for n in a)
    assert differing <= 1e-4 * total, f"{differing} of {total} merged INT4 codes differ"
    assert max(float((a[n] - b[n]).abs().max()) for n in a) <= 1
    base = load_file(sparse_models["llama"] / "model.safetensors")
    merged = load_file(tmp_path / "merged-fused" / "model.safetensors")
    for name in a:  # every zero of the sparse base kept
        assert not merged[name][base[name] == 0].any(), name


def test_saved_weights_are_rebuilt_in_backward_with_the_same_gradients():
    """Under `recompute_weights_in_backward`'s hooks the linear layer keeps the weight's recipe, not the weight."""
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(64, 128, generator=gen)
    weight[torch.rand(64, 128, generator=gen) < 0.5] = 0
    A = (torch.randn(4, 128, generator=gen) * 0.1).bfloat16().requires_grad_()
    B = (torch.randn(64, 4, generator=gen) * 0.1).bfloat16().requires_grad_()
    groups = weight.reshape(64, 2, 64)
    low = groups.amin(-1, keepdim=True).requires_grad_()
    range_ = (groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)).requires_grad_()
    x = torch.randn(8, 128, generator=gen, requires_grad=True)
    kept = []

    def pack(tensor):
        kept.append(qa_fused._pack(tensor))
        return kept[-1]

    grads = []
    for hooks in (torch.autograd.graph.saved_tensors_hooks(pack, qa_fused._unpack), torch.enable_grad()):
        for t in (A, B, low, range_, x):
            t.grad = None
        with hooks:
            q = qa_fused.masked_asymmetric(weight, (64, 2, 64), A, B, low, range_, 0, 15, 16)
            y = torch.nn.functional.linear(x, q)
        y.square().sum().backward()
        grads.append([t.grad.clone() for t in (A, B, low, range_, x)])
    assert any(isinstance(k, qa_fused._Packed) for k in kept)
    assert not any(isinstance(k, torch.Tensor) and k.shape == (128, 64) for k in kept)  # no weight-sized copy kept
    for with_recipe, plain in zip(*grads):
        assert torch.equal(with_recipe, plain)


def test_frozen_int8_weights_are_quantized_once_and_again_when_they_change(sparse_models):
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.wrapper import get_hook_storage

    from sqft_ov.adapters.adapted import Adapted
    from sqft_ov.adapters.config import FinetuneConfig
    from sqft_ov.io.checkpoint import load_causal_lm

    model, _ = load_causal_lm(sparse_models["llama"])
    adapted = Adapted.build(model, FinetuneConfig(method="qa-sparsepeft", rank=4), init_adapters=False)
    frozen = {decode_hook_name(n)[1]: h for n, h in get_hook_storage(adapted.model).named_hooks()
              if isinstance(h, qa_lora._QuantizedOnce)}
    assert "model.embed_tokens.weight" in frozen  # NNCF's INT8 quantizers (embeddings, lm_head)
    hook, weight = frozen["model.embed_tokens.weight"], model.get_input_embeddings().weight
    first = hook.quantize(weight)
    assert hook.quantize(weight) is first
    with torch.no_grad():
        weight.mul_(2)
    again = hook.quantize(weight)
    assert again is not first and not torch.equal(again, first)


def test_sparsepeft_merged_weight_layer_equals_the_two_path_layer():
    """SparsePEFT's MaskedMergedLinear against y = x W^T + b + s x (M * B A)^T written out (float rounding apart)."""
    from sqft_ov.adapters import sparse_lora
    from sqft_ov.adapters.sparse_lora import MaskedMergedLinear

    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(48, 80, generator=gen)
    weight[torch.rand(48, 80, generator=gen) < 0.5] = 0
    bias = torch.randn(48, generator=gen)
    x = torch.randn(2, 5, 80, generator=gen)
    A = (torch.randn(8, 80, generator=gen) * 0.1)[:6]  # an NLS active rank
    B = torch.randn(48, 8, generator=gen)[:, :6] * 0.1
    results = []
    for fused in (True, False):
        leaves = [t.clone().requires_grad_() for t in (x, A, B)]
        xs, As, Bs = leaves
        if fused:
            y = MaskedMergedLinear.apply(xs, weight, bias, As, Bs, 2.0)
        else:
            y = torch.nn.functional.linear(xs, weight, bias) + 2.0 * xs @ ((Bs @ As) * (weight != 0)).T
        y.square().sum().backward()
        results.append([y.detach(), *(t.grad for t in leaves)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # float32 sums in another order
    assert not sparse_lora._merged(weight, A, B, 2.0)[weight == 0].any()  # the merged weight keeps the zeros


def test_fused_loops_run_eagerly_where_compiling_fails(monkeypatch):
    from sqft_ov.adapters.sparse_lora import CompiledOnFirstCall

    def broken_compile(fn):
        def run(*args):
            raise RuntimeError("no C++ compiler\\nmore")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    double = CompiledOnFirstCall(lambda x: x * 2)
    with pytest.warns(UserWarning, match="runs uncompiled"):
        assert torch.equal(double(torch.ones(3)), torch.full((3,), 2.0))
    assert torch.equal(double(torch.ones(2)), torch.full((2,), 2.0))  # eager from then on, no second warning
