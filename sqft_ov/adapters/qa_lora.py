"""QA-SparsePEFT on NNCF's INT4 fake-quantized LoRA: the one module that touches NNCF internals.

NNCF 3.4's `compress_weights(..., compression_format=FQ_LORA | FQ_LORA_NLS)` attaches a quantizer hook to
every linear weight whose forward is `fake_quant(W + B @ A)` with learnable ranges. It has no sparsity
mask: merged, B @ A fills the base's zeros. Here each INT4 LoRA quantizer's class is swapped for a
subclass whose `quantize()` computes `fake_quant(W + mask * (B @ A))`, the mask being the base weight's
non-zero pattern (read from the frozen weight itself: nothing to save or keep), through `qa_fused`'s autograd
function, which stores nothing weight-sized for backward. `nncf.strip` calls `quantize()` too, so merge and
export keep the zeros. It also holds the one other NNCF internal sqft-ov uses,
the magnitude-pruning masks `sparsify` edits (`keep_dense_except`). `check_nncf_internals()` fails loudly if the
pinned NNCF changes what either relies on; no other module imports below NNCF's public facade.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch.overrides import handle_torch_function, has_torch_function_unary

from sqft_ov.adapters.qa_fused import masked_asymmetric, masked_symmetric, recompute_weights_in_backward
from sqft_ov.errors import AdapterMismatchError, ConfigError, NncfInternalsChanged, SqftError

_TESTED_NNCF = "3.4"
# NNCF compiles its fake-quantization C++ extension on first use (~75 s on 2 cores, longer on a busy machine)
# and gives up after 60 s by default; a user's first QA-SparsePEFT run should wait for it instead.
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")


def check_nncf_internals() -> None:
    """Raise if NNCF's LoRA quantizers no longer look the way this module assumes."""
    import inspect

    import nncf
    from nncf.torch.quantization import layers, quantize_functions

    problems = []
    if not nncf.__version__.startswith(_TESTED_NNCF):
        problems.append(f"NNCF {nncf.__version__} (tested with {_TESTED_NNCF}.x)")
    for name in ("AsymmetricLoraQuantizer", "SymmetricLoraQuantizer", "AsymmetricLoraNLSQuantizer",
                 "SymmetricLoraNLSQuantizer"):
        cls = getattr(layers, name, None)
        if cls is None or "quantize" not in cls.__dict__:
            problems.append(f"nncf.torch.quantization.layers.{name}.quantize")
    for name in ("BaseQuantizer", "LoraMixin"):
        if not hasattr(layers, name):
            problems.append(f"nncf.torch.quantization.layers.{name}")
    if not hasattr(quantize_functions, "TuneRange"):
        problems.append("nncf.torch.quantization.quantize_functions.TuneRange")
    problems += _mirrored_formulas_changed()
    from nncf.quantization.algorithms.weight_compression import torch_backend

    if not isinstance(torch_backend.PTWeightCompressionAlgoBackend.__dict__.get("init_lora_adapters"), staticmethod):
        problems.append("PTWeightCompressionAlgoBackend.init_lora_adapters")
    source = inspect.getsource(quantize_functions.asymmetric_quantize_lora)
    if "input_ + B @ A" not in source.replace("(", "").replace(")", ""):
        problems.append("asymmetric_quantize_lora no longer computes fake_quant(W + B @ A)")
    problems += _pruning_problems()
    try:
        from nncf.torch.function_hook.hook_executor_mode import FunctionHookMode
        from nncf.torch.function_hook.wrapper import get_hook_storage  # noqa: F401
    except ImportError:
        problems.append("nncf.torch.function_hook FunctionHookMode / get_hook_storage (gradient checkpointing)")
    else:
        if list(inspect.signature(FunctionHookMode).parameters)[:2] != ["model", "hook_storage"]:
            problems.append("FunctionHookMode(model, hook_storage)")
    if problems:
        raise NncfInternalsChanged("QA-SparsePEFT relies on NNCF internals that changed: " + "; ".join(problems)
                        + f". Install nncf=={_TESTED_NNCF}.* (pinned in pyproject.toml).")


# NNCF's fake-quantization formulas that `qa_fused` mirrors op for op (tests/test_fused_adapters.py compares them):
# the sources they had in the tested NNCF.
_MIRRORED = {"ReferenceQuantize.forward": "d444382e3e10f5b3", "ReferenceQuantize.backward": "8c62360c27b181ad",
             "QuantizeSymmetricTorch.forward": "3ef5ab2a9fadaae1", "QuantizeSymmetricTorch.backward": "175921d485e6554b"}


def _mirrored_formulas_changed() -> list[str]:
    import hashlib
    import inspect

    from nncf.torch.quantization import quantize_functions, reference

    found = {"ReferenceQuantize": getattr(reference, "ReferenceQuantize", None),
             "QuantizeSymmetricTorch": getattr(quantize_functions, "QuantizeSymmetricTorch", None)}
    problems = []
    for qualname, digest in _MIRRORED.items():
        cls, method = qualname.split(".")
        fn = getattr(found[cls], method, None)
        if fn is None or hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16] != digest:
            problems.append(f"{qualname} changed (sqft_ov/adapters/qa_fused.py mirrors its formulas)")
    return problems


def _pruning_problems() -> list[str]:
    """What `keep_dense_except` relies on: `get_pruned_modules` and masks with a boolean `binary_mask` buffer."""
    try:
        from nncf.torch.function_hook.pruning.magnitude import algo, modules
    except ImportError:
        return ["nncf.torch.function_hook.pruning.magnitude.algo"]
    problems = [] if callable(getattr(algo, "get_pruned_modules", None)) else ["magnitude.algo.get_pruned_modules"]
    mask_class = getattr(modules, "UnstructuredPruningMask", None)
    mask = getattr(mask_class((1,)), "binary_mask", None) if mask_class is not None else None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        problems.append("magnitude.modules.UnstructuredPruningMask.binary_mask")
    return problems


def keep_dense_except(pruned, wanted: set[str]) -> None:
    """Before `nncf.strip`: keep every weight NNCF's magnitude pruning proposed dense except `wanted` (NNCF also
    proposes embeddings and lm_head, which SQFT never prunes), by setting their masks to all-true."""
    from nncf.torch.function_hook.pruning.magnitude.algo import get_pruned_modules

    check_nncf_internals()
    masks = get_pruned_modules(pruned)
    missing = wanted - set(masks)
    if missing:
        raise SqftError(f"NNCF did not offer {len(missing)} linear weights for pruning (e.g. {sorted(missing)[0]})")
    for name, hook in masks.items():
        if name not in wanted:
            hook.binary_mask.fill_(True)


def _masked_asymmetric(input_, input_shape, A, B, input_low_, input_range_, level_low, level_high, levels, eps,
                       skip: bool = False):
    from nncf.torch.quantization.quantize_functions import TuneRange

    if has_torch_function_unary(input_):  # NNCF traces through __torch_function__: dispatch like NNCF does
        return handle_torch_function(_masked_asymmetric, (input_,), input_, input_shape, A, B, input_low_,
                                     input_range_, level_low, level_high, levels, eps, skip)
    if skip:
        return input_
    input_low, input_range = TuneRange.apply(input_low_, abs(input_range_) + eps, levels)
    return masked_asymmetric(input_, input_shape, A, B, input_low, input_range, level_low, level_high, levels)


def _masked_symmetric(input_, input_shape, A, B, scale, level_low, level_high, levels, eps, skip: bool = False):
    if has_torch_function_unary(input_):
        return handle_torch_function(_masked_symmetric, (input_,), input_, input_shape, A, B, scale, level_low,
                                     level_high, levels, eps, skip)
    if skip:
        return input_
    scale_safe = torch.where(torch.abs(scale) < eps, eps, scale)
    return masked_symmetric(input_, input_shape, A, B, scale_safe, level_low, level_high, levels)


def _adapters(quantizer) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(quantizer, "get_active_adapters"):  # NLS: the active rank's slice
        return quantizer.get_active_adapters()
    return quantizer.lora_A, quantizer.lora_B


class _MaskedAsymmetric:
    def quantize(self, x, execute_traced_op_as_identity: bool = False):
        self.to(x.device)
        A, B = _adapters(self)
        return _masked_asymmetric(x, self._lspec.weight_shape, A, B, self.input_low,
                                  self.input_range, self.level_low, self.level_high, self.levels, self.eps,
                                  skip=execute_traced_op_as_identity)


class _MaskedSymmetric:
    def quantize(self, x, execute_traced_op_as_identity: bool = False):
        self.to(x.device)
        A, B = _adapters(self)
        return _masked_symmetric(x, self._lspec.weight_shape, A, B, self.scale, self.level_low,
                                 self.level_high, self.levels, self.eps, skip=execute_traced_op_as_identity)


def _masked_class(cls: type) -> type:
    mixin = _MaskedAsymmetric if "Asymmetric" in cls.__name__ else _MaskedSymmetric
    return type(f"Masked{cls.__name__}", (mixin, cls), {})


class _QuantizedOnce:
    """A quantizer none of whose tensors train (NNCF's INT8 embeddings and lm_head beside the INT4 LoRA weights):
    its fake-quantized weight is computed once and reused while neither the weight nor the quantizer changes,
    instead of once per forward."""

    def quantize(self, x, execute_traced_op_as_identity: bool = False):
        if execute_traced_op_as_identity or x.requires_grad or any(p.requires_grad for p in self.parameters()):
            return super().quantize(x, execute_traced_op_as_identity)
        key = (x.data_ptr(), x._version, x.dtype, x.device, tuple(p._version for p in self.parameters()))
        cached = getattr(self, "_sqft_cached", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = self._sqft_cached = (key, super().quantize(x))
        return cached[1]


def lora_quantizers(model) -> dict[str, torch.nn.Module]:
    """Weight name (e.g. model.layers.0.mlp.up_proj.weight) -> its INT4 LoRA quantizer hook."""
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import LoraMixin

    out = {}
    for hook_name, hook in get_hook_storage(model).named_hooks():
        if isinstance(hook, LoraMixin) and hook.num_bits == 4:
            _, op_name, _ = decode_hook_name(hook_name)
            out[op_name] = hook
    return out


@contextlib.contextmanager
def _adapters_left_uninitialised():
    """NNCF initialises every adapter by a full SVD of a random residual (minutes on a 1B model, 2 cores).

    Callers that overwrite the adapters right away (loading a trained adapter, exporting a saved grid)
    skip it: the adapters start at zero instead.
    """
    from nncf.quantization.algorithms.weight_compression.torch_backend import PTWeightCompressionAlgoBackend as backend

    original = backend.__dict__["init_lora_adapters"]

    def zeros(svd_residual: torch.Tensor, rank: int | None = None):
        rank = rank or min(svd_residual.shape)
        return svd_residual.new_zeros(svd_residual.shape[0], rank), svd_residual.new_zeros(rank, svd_residual.shape[1])

    backend.init_lora_adapters = staticmethod(zeros)
    try:
        yield
    finally:
        backend.init_lora_adapters = original


def compress_with_lora(model, sym: bool, group_size: int, rank: int, nls: bool, masked: bool,
                       init_adapters: bool = True):
    """NNCF INT4 fake-quantized LoRA on every linear weight; with `masked`, the SQFT sparsity mask.

    `init_adapters=False` when the adapters are overwritten next (see _adapters_left_uninitialised).
    """
    import nncf

    check_nncf_internals()
    mode = nncf.CompressWeightsMode.INT4_SYM if sym else nncf.CompressWeightsMode.INT4_ASYM
    fmt = nncf.CompressionFormat.FQ_LORA_NLS if nls else nncf.CompressionFormat.FQ_LORA
    example = {"input_ids": torch.ones(1, 8, dtype=torch.long)}
    try:
        with contextlib.nullcontext() if init_adapters else _adapters_left_uninitialised():
            model = nncf.compress_weights(model, mode=mode, group_size=group_size, compression_format=fmt,
                                          dataset=nncf.Dataset([example]),
                                          advanced_parameters=nncf.AdvancedCompressionParameters(lora_adapter_rank=rank))
    except nncf.errors.InvalidGroupSizeError as exc:
        raise ConfigError(f"--group-size {group_size} does not divide every layer: choose a divisor") from exc
    except nncf.ValidationError as exc:
        raise ConfigError(f"{str(exc).splitlines()[0]}: choose a smaller --rank / --rank-space") from exc
    # NNCF initialises A and B so that W + B A offsets the rounding error; with the mask that correction
    # only touches the base's non-zero weights, so it is kept.
    if masked:
        for quantizer in lora_quantizers(model).values():
            quantizer.__class__ = _masked_class(type(quantizer))
        recompute_weights_in_backward(model)
    _quantize_frozen_once(model)
    return model


def _quantize_frozen_once(model) -> None:
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseQuantizer, LoraMixin

    for _, hook in get_hook_storage(model).named_hooks():
        if isinstance(hook, BaseQuantizer) and not isinstance(hook, LoraMixin):
            hook.__class__ = type(f"QuantizedOnce{type(hook).__name__}", (_QuantizedOnce, type(hook)), {})


def recompute_context(model):
    """`context_fn` for torch's non-reentrant checkpointing: the recomputation in backward runs outside the
    model's forward, so NNCF's FunctionHookMode (which applies the weight quantizers) is entered again there."""
    from nncf.torch.function_hook.hook_executor_mode import FunctionHookMode
    from nncf.torch.function_hook.wrapper import get_hook_storage

    check_nncf_internals()
    return lambda: (contextlib.nullcontext(), FunctionHookMode(model, get_hook_storage(model)))


def trainable_tensors(model, targets: set[str] | None) -> dict[str, torch.nn.Parameter]:
    """Adapters of the target weights and the INT4 ranges/scales of all quantized weights, by stable name."""
    out = {}
    for name, quantizer in lora_quantizers(model).items():
        module = name.rsplit(".", 1)[0]
        is_target = targets is None or module.rsplit(".", 1)[-1] in targets
        for pname, param in quantizer.get_trainable_params().items():
            if pname in ("lora_A", "lora_B") and not is_target:
                continue
            out[f"{name}.{pname}"] = param
    return out


def set_ranks(model, ranks_by_weight: dict[str, int]) -> None:
    quantizers = lora_quantizers(model)
    for name, rank in ranks_by_weight.items():
        quantizers[name].set_active_rank(rank)


@torch.no_grad()
def merge_in_place(model) -> dict[str, dict[str, torch.Tensor]]:
    """Write fake_quant(W + mask*B@A) into each weight (on the INT4 grid) and return the grids used.

    The grid is the quantizer's own tensors (input_low/input_range or scale): quantizing the merged weights
    with it again reproduces the same codes, which is how export writes these INT4 values without
    re-quantizing them.
    """
    from nncf.torch.model_graph_manager import get_const_data_by_name

    grids = {}
    for name, quantizer in lora_quantizers(model).items():
        weight = get_const_data_by_name(name, model)
        merged = quantizer.quantize(weight).reshape(weight.shape)
        weight.copy_(merged.to(weight.dtype))
        grids[name] = {k: v.detach().clone() for k, v in quantizer.state_dict().items()
                       if k in ("input_low", "input_range", "scale")}
    return grids


@torch.no_grad()
def load_grid(model, grids: dict[str, dict[str, torch.Tensor]]) -> None:
    """Set quantizer ranges to a saved grid and zero the adapters, so `quantize(W)` snaps W to that grid."""
    quantizers = lora_quantizers(model)
    missing = set(quantizers) - set(grids)
    if missing:
        raise AdapterMismatchError(f"the INT4 grid has no entry for {sorted(missing)[0]}: "
                                   "was the folder merged from this model?")
    for name, quantizer in quantizers.items():
        for key, value in grids[name].items():
            target = getattr(quantizer, key, None)
            if target is None or target.shape != value.shape:
                raise SqftError(f"sqft_int4_grid.safetensors does not fit sqft_int4_grid.json: {name} {key} has shape "
                                f"{tuple(value.shape)}, the grid's settings give "
                                f"{None if target is None else tuple(target.shape)}; merge the adapter again")
            target.copy_(value)
        quantizer.lora_B.zero_()
