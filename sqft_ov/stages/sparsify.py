"""Stage 1: sparsify the decoder's linear weights (Wanda or magnitude; unstructured or N:M).

Only the linear layers inside the decoder blocks are pruned: embeddings, lm_head and norms stay dense,
as in Wanda and SQFT. Unstructured magnitude pruning goes through `nncf.prune` (per-layer threshold, then
stripped in place). NNCF has neither Wanda nor N:M, so those masks are computed here:

* Wanda scores each weight by |W_ij| * ||X_j||_2 (X_j: the j-th input feature over all calibration
  tokens) and prunes the lowest-scoring weights of each output row. Blocks are processed in order and
  each block's calibration input is the output of the already-pruned blocks before it, as in the
  reference implementation.
* N:M keeps the N highest-scoring weights of every M consecutive input weights of a row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sqft_ov.errors import ConfigError, ModelFolderError
from sqft_ov.io.checkpoint import decoder_linears
from sqft_ov.io.output import kill_point

METHODS = ("wanda", "magnitude")


@dataclass
class SparsityConfig:
    method: str = field(default="wanda", metadata={"help": " | ".join(METHODS)})
    ratio: float | None = field(default=None, metadata={  # None: 0.5 (unstructured) or 1 - N/M (N:M)
        "help": "Share of each layer's weights to zero."})
    pattern: str = field(default="unstructured", metadata={"help": "unstructured, or N:M such as 2:4"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown sparsity method {self.method!r}: choose one of {', '.join(METHODS)}")
        nm = self.nm
        if nm is None and self.ratio is None:
            self.ratio = 0.5
        if nm is not None:
            implied = 1 - nm[0] / nm[1]
            if self.ratio is not None and abs(self.ratio - implied) > 1e-9:
                raise ConfigError(f"--ratio {self.ratio} contradicts --pattern {self.pattern} (which prunes "
                                  f"{implied:g}): drop --ratio")
            self.ratio = implied
        if not 0 < self.ratio < 1:
            raise ConfigError(f"--ratio must be strictly between 0 and 1, got {self.ratio}")

    @property
    def nm(self) -> tuple[int, int] | None:
        if self.pattern == "unstructured":
            return None
        try:
            n, m = (int(x) for x in self.pattern.split(":"))
        except ValueError:
            raise ConfigError(f"--pattern must be 'unstructured' or N:M such as 2:4, got {self.pattern!r}") from None
        if not 0 < n < m:
            raise ConfigError(f"--pattern {self.pattern}: N must be at least 1 and smaller than M (e.g. 2:4)")
        return n, m


@dataclass
class SparsityReport:
    """Zeros per pruned weight, counted from the weights themselves after pruning."""

    config: SparsityConfig
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (zeros, total)

    @property
    def total(self) -> float:
        zeros = sum(z for z, _ in self.layers.values())
        return zeros / max(1, sum(n for _, n in self.layers.values()))

    def to_dict(self) -> dict:
        return {"method": self.config.method, "pattern": self.config.pattern, "ratio": self.config.ratio,
                "total_sparsity": self.total,
                "layers": {k: {"zeros": z, "numel": n, "sparsity": z / n} for k, (z, n) in self.layers.items()}}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def prune_mask(scores: torch.Tensor, ratio: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """Keep-mask pruning the lowest `scores` of each output row ([out, in]), or all but N of each M."""
    out_features, in_features = scores.shape
    if nm is not None:
        n, m = nm
        if in_features % m:
            raise ConfigError(f"N:M pattern {n}:{m} needs input sizes divisible by {m}, a layer has {in_features}")
        groups = scores.reshape(out_features, in_features // m, m)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
        return keep.reshape(out_features, in_features)
    k = int(in_features * ratio)
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, scores.argsort(dim=1)[:, :k], False)
    return keep


def wanda_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 from the running sum of squared inputs per input feature."""
    return weight.detach().abs().float() * input_sq_sum.sqrt().float().unsqueeze(0)


def _decoder_blocks(model: nn.Module, linears: dict[str, nn.Linear]) -> nn.ModuleList:
    """The ModuleList of decoder blocks: the one holding the most target linears."""
    targets = set(linears.values())
    best, count = None, 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            c = sum(1 for m in module.modules() if m in targets)
            if c > count:
                best, count = module, c
    if best is None or count != len(targets):
        raise ModelFolderError("cannot find the decoder blocks holding the linear layers: Wanda needs a standard "
                               "Hugging Face decoder (model.layers); use --method magnitude")
    return best


class _StopForward(Exception):
    pass


WANDA_BATCH = 8  # calibration sequences per forward: large enough for efficient matmuls, small in memory


def _batches(samples: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Stack `[1, T]` samples of equal length into `[B, T]` batches (a shorter sample gets its own batch)."""
    batches, current = [], []
    for ids in samples:
        if current and (len(current) == size or ids.shape[1] != current[0].shape[1]):
            batches.append(torch.cat(current))
            current = []
        current.append(ids)
    if current:
        batches.append(torch.cat(current))
    return batches


def _block_inputs(model: nn.Module, first_block: nn.Module, batches: list[torch.Tensor]) -> list[tuple]:
    """(hidden states, keyword arguments) entering the first decoder block, one per batch."""
    captured: list[tuple[torch.Tensor, dict]] = []

    def catch(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, kwargs))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(input_ids=ids, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def _wanda(model: nn.Module, linears: dict[str, nn.Linear], samples: list[torch.Tensor],
           config: SparsityConfig, on_progress=None) -> None:
    """Block by block: input statistics through the dense block, prune it, then its outputs feed the next.

    Two passes per block over batched calibration data, so the whole run costs about two forward passes of
    the decoder; the per-feature sums of squares are kept in float32.
    """
    blocks = _decoder_blocks(model, linears)
    captured = _block_inputs(model, blocks[0], _batches(samples, WANDA_BATCH))
    names = {m: n for n, m in linears.items()}
    for index, block in enumerate(blocks):
        members = {names[m]: m for m in block.modules() if m in names}
        sq_sums = {n: torch.zeros(m.in_features, dtype=torch.float32) for n, m in members.items()}

        def accumulate(name):
            def hook(_module, args):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                sq_sums[name] += torch.linalg.vector_norm(x, dim=0).square()
            return hook

        handles = [m.register_forward_pre_hook(accumulate(n)) for n, m in members.items()]
        try:
            for hidden, kwargs in captured:
                block(hidden, **kwargs)
        finally:
            for h in handles:
                h.remove()
        for name, layer in members.items():
            keep = prune_mask(wanda_scores(layer.weight, sq_sums[name]), config.ratio, config.nm)
            layer.weight.mul_(keep.to(layer.weight.dtype))
        # The next block calibrates on what this *pruned* block outputs.
        outputs = []
        for hidden, kwargs in captured:
            out = block(hidden, **kwargs)
            outputs.append((out[0] if isinstance(out, tuple) else out, kwargs))
        captured = outputs
        kill_point("sparsify-block")
        if on_progress is not None:
            on_progress(index + 1, len(blocks), "Wanda")


def _nncf_magnitude(model: nn.Module, linears: dict[str, nn.Linear], ratio: float) -> nn.Module:
    import nncf

    from sqft_ov.adapters.qa_lora import keep_dense_except  # the module that owns NNCF internals

    example = {"input_ids": torch.ones(1, 8, dtype=torch.long)}
    pruned = nncf.prune(model, nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_LOCAL, ratio=ratio, examples_inputs=example)
    keep_dense_except(pruned, {f"{name}.weight" for name in linears})
    return nncf.strip(pruned, do_copy=False, strip_format=nncf.StripFormat.IN_PLACE)


@torch.no_grad()
def sparsify(model: nn.Module, config: SparsityConfig, calibration: list[torch.Tensor] | None = None,
             on_progress=None) -> tuple[nn.Module, SparsityReport]:
    """Prune `model`'s decoder linears in place; returns the (possibly NNCF-stripped) model and its report.

    `calibration` is a list of `[1, seq_len]` token-id tensors; Wanda needs it, magnitude ignores it.
    """
    linears = decoder_linears(model)
    if config.method == "wanda":
        if not calibration:
            raise ConfigError("Wanda needs calibration data: pass --dataset FILE, or use --method magnitude")
        _wanda(model, linears, calibration, config, on_progress)
    elif config.nm is not None:
        for layer in linears.values():
            layer.weight.mul_(prune_mask(layer.weight.abs().float(), config.ratio, config.nm).to(layer.weight.dtype))
    else:
        model = _nncf_magnitude(model, linears, config.ratio)
        linears = decoder_linears(model)
    report = SparsityReport(config)
    for name, layer in linears.items():
        report.layers[f"{name}.weight"] = (int((layer.weight == 0).sum()), layer.weight.numel())
    return model, report


def sparsify_folder(model_dir: str | Path, output: str | Path, config: SparsityConfig,
                    calibration: str | Path | None = None, text_fields: tuple[str, ...] = (),
                    num_samples: int = 128, seq_len: int = 512, overwrite: bool = False,
                    trust_remote_code: bool = False, on_progress=None) -> SparsityReport:
    """Folder in, folder out: load, sparsify, and write model + tokenizer + sparsity.json atomically."""
    from sqft_ov.io.checkpoint import check_model_dir, load_causal_lm
    from sqft_ov.io.data import data_source, load_texts, token_chunks
    from sqft_ov.io.output import atomic_output, check_output

    check_output(output, overwrite, inputs=(model_dir, calibration))
    if config.method == "wanda" and calibration is None:
        raise ConfigError("Wanda needs calibration data: pass --dataset FILE, or use --method magnitude")
    model_dir = check_model_dir(model_dir)  # a Hub ID or .gguf: its local folder, fetched or converted once
    texts = load_texts(calibration, text_fields) if calibration is not None else None
    model, tokenizer = load_causal_lm(model_dir, trust_remote_code)
    samples = token_chunks(tokenizer, texts, num_samples, seq_len) if texts else None
    model, report = sparsify(model, config, samples, on_progress)
    with atomic_output(output, overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        data = report.to_dict() | {"source": str(model_dir),
                                   "calibration": data_source(calibration) if calibration else None,
                                   "calibration_samples": len(samples) if samples else 0}
        (tmp / "sparsity.json").write_text(json.dumps(data, indent=2))
    return report


def deployed_sparsity(path: str | Path) -> float:
    """Share of zeros among the decoder blocks' 2-D (linear) weights of a model folder or OpenVINO IR.

    Read from the artefact itself: safetensors for a Hugging Face folder, the dequantized constants for an
    IR (so an INT4 weight whose zeros moved off the grid counts as dense). Embeddings and lm_head are
    excluded, as they are never pruned.
    """
    from sqft_ov.io.ir import IR_FILE

    path = Path(path)
    zeros = total = 0
    if (path / IR_FILE).is_file():
        from sqft_ov.io.ir import iter_ir_weights

        for weight in iter_ir_weights(path):
            if ".layers." in weight.name:
                zeros += int((weight.values == 0).sum())
                total += weight.values.size
    else:
        from sqft_ov.io.checkpoint import read_tensor, safetensors_index

        index = safetensors_index(path)
        for name in index:
            if ".layers." in name and name.endswith(".weight"):
                tensor = read_tensor(index, name)
                if tensor.dim() == 2:
                    zeros += int((tensor == 0).sum())
                    total += tensor.numel()
    if not total:
        raise ModelFolderError(f"found no decoder linear weights in {path}")
    return zeros / total
