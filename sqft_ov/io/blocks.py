"""Decoder blocks seen as widths: MLP channels and attention KV groups, permuted, sliced and recorded.

A block's width is its MLP intermediate size and its number of KV groups (one key/value head and the query
heads that share it, so grouped-query attention stays valid whatever is removed). Llama, Mistral and Qwen2
name their projections q/k/v/o_proj and gate/up/down_proj; Phi-3 fuses qkv_proj and gate_up_proj — both
layouts are handled here, nothing else is.

A model whose blocks were cut to different widths records them in its config.json under
`sqft_layer_widths`; `load_causal_lm` rebuilds such a folder with `shrink` (plain transformers cannot, as
its configs hold one width for all blocks).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from sqft_ov.errors import ModelFolderError, SqftError

WIDTHS_KEY = "sqft_layer_widths"


@dataclass(frozen=True)
class BlockWidth:
    mlp: int  # MLP intermediate channels
    kv_groups: int  # key/value heads; the block keeps kv_groups * group query heads


@dataclass
class Shape:
    """What the widths of a model are measured against (from its config)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.heads // self.kv_heads

    @classmethod
    def of(cls, config) -> "Shape":
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size, heads, kv, head_dim)

    def full(self) -> list[BlockWidth]:
        return [BlockWidth(self.intermediate, self.kv_heads)] * self.layers


def layer_widths(config) -> list[BlockWidth]:
    """The widths a config describes: its own per-block record, else the full widths everywhere."""
    recorded = getattr(config, WIDTHS_KEY, None)
    if recorded:
        return [BlockWidth(**w) for w in recorded]
    return Shape.of(config).full()


def decoder_layers(model) -> list[nn.Module]:
    """The decoder blocks of a (possibly PEFT-wrapped) causal LM."""
    for candidate in (model, getattr(model, "base_model", None)):
        while candidate is not None:
            layers = getattr(candidate, "layers", None)
            if isinstance(layers, nn.ModuleList):
                return list(layers)
            candidate = getattr(candidate, "model", None)
    raise ModelFolderError("cannot find the decoder blocks (model.layers): elastic widths support Llama, Mistral, "
                           "Qwen2 and Phi-3 decoders")


def _linear(module) -> nn.Linear:
    """The plain nn.Linear of a projection, unwrapping a PEFT LoRA layer."""
    return getattr(module, "base_layer", module)


def projections(layer) -> dict[str, nn.Module]:
    """The block's projections by role; fused Phi-3 layers appear as qkv / gate_up."""
    attn, mlp = layer.self_attn, layer.mlp
    out = {"o": attn.o_proj, "down": mlp.down_proj}
    if hasattr(attn, "qkv_proj"):
        out["qkv"] = attn.qkv_proj
    elif all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj")):
        out |= {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}
    else:
        raise ModelFolderError(f"unsupported attention {type(attn).__name__}: elastic widths need q/k/v_proj or "
                               "qkv_proj")
    if hasattr(mlp, "gate_up_proj"):
        out["gate_up"] = mlp.gate_up_proj
    elif hasattr(mlp, "gate_proj") and hasattr(mlp, "up_proj"):
        out |= {"gate": mlp.gate_proj, "up": mlp.up_proj}
    else:
        raise ModelFolderError(f"unsupported MLP {type(mlp).__name__}: elastic widths need gate/up/down_proj")
    return out


def row_index(shape: Shape, role: str, channels: torch.Tensor, groups: torch.Tensor,
              width: BlockWidth | None = None) -> torch.Tensor | None:
    """Output rows of projection `role` that belong to the given MLP channels / KV groups (in that order).

    `width` is the block's current width (needed for the fused layers' offsets); None means full.
    """
    width = width or BlockWidth(shape.intermediate, shape.kv_heads)
    d, g = shape.head_dim, shape.group
    heads = _heads(shape, groups)

    def rows(units: torch.Tensor, size: int, offset: int = 0) -> torch.Tensor:
        return (offset + units[:, None] * size + torch.arange(size)).flatten()

    if role in ("gate", "up"):
        return channels
    if role == "gate_up":
        return torch.cat([channels, width.mlp + channels])
    if role == "q":
        return rows(heads, d)
    if role in ("k", "v"):
        return rows(groups, d)
    if role == "qkv":
        q_size, kv_size = width.kv_groups * g * d, width.kv_groups * d
        return torch.cat([rows(heads, d), rows(groups, d, q_size), rows(groups, d, q_size + kv_size)])
    return None  # o, down: sliced along their input


def input_index(shape: Shape, role: str, channels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor | None:
    """Input columns of o_proj / down_proj that belong to the given KV groups / MLP channels."""
    if role == "down":
        return channels
    if role == "o":
        return (_heads(shape, groups)[:, None] * shape.head_dim + torch.arange(shape.head_dim)).flatten()
    return None


def _heads(shape: Shape, groups: torch.Tensor) -> torch.Tensor:
    """The query heads of each KV group, in the groups' order."""
    return (groups[:, None] * shape.group + torch.arange(shape.group)).flatten()


@torch.no_grad()
def select(layer, shape: Shape, channels: torch.Tensor, groups: torch.Tensor, width: BlockWidth | None = None) -> None:
    """Keep only the given MLP channels and KV groups of a block, in the given order (permute or slice).

    A permutation leaves the block's function unchanged; a prefix of an importance order is a sub-network.
    """
    for role, module in projections(layer).items():
        linear = _linear(module)
        rows = row_index(shape, role, channels, groups, width)
        if rows is not None:
            linear.weight = nn.Parameter(linear.weight[rows].clone(), requires_grad=linear.weight.requires_grad)
            if linear.bias is not None:
                linear.bias = nn.Parameter(linear.bias[rows].clone(), requires_grad=linear.bias.requires_grad)
            linear.out_features = len(rows)
        cols = input_index(shape, role, channels, groups)
        if cols is not None:
            linear.weight = nn.Parameter(linear.weight[:, cols].clone(), requires_grad=linear.weight.requires_grad)
            linear.in_features = len(cols)
    kept = BlockWidth(len(channels), len(groups))
    _set_attention_heads(layer.self_attn, shape, kept)


def _set_attention_heads(attn, shape: Shape, width: BlockWidth) -> None:
    """Attention modules that read head counts from their config (Phi-3) get a per-block copy of it."""
    heads, kv = width.kv_groups * shape.group, width.kv_groups
    if hasattr(attn, "num_key_value_heads"):
        attn.num_key_value_heads = kv
    if hasattr(attn, "num_heads"):
        attn.num_heads = heads
    if getattr(attn, "config", None) is not None and (heads, kv) != (shape.heads, shape.kv_heads):
        attn.config = copy.copy(attn.config)
        attn.config.num_attention_heads, attn.config.num_key_value_heads = heads, kv


def check_widths(shape: Shape, widths: list[BlockWidth], where: str) -> None:
    if len(widths) != shape.layers:
        raise SqftError(f"{where} has widths for {len(widths)} decoder blocks but the model has {shape.layers}")
    for i, w in enumerate(widths):
        if not 1 <= w.mlp <= shape.intermediate:
            raise SqftError(f"{where}: block {i} MLP width {w.mlp} is outside 1..{shape.intermediate} (the model's)")
        if not 1 <= w.kv_groups <= shape.kv_heads:
            raise SqftError(f"{where}: block {i} keeps {w.kv_groups} KV groups; the model has 1..{shape.kv_heads}")


def shrink(model, widths: list[BlockWidth]) -> None:
    """Cut every block to the prefix widths given (channels are assumed in importance order) and record them."""
    config = model.config
    shape = Shape.of(config)
    check_widths(shape, widths, "the sub-network")
    current = layer_widths(config)
    for layer, now, w in zip(decoder_layers(model), current, widths):
        if w != now:
            select(layer, shape, torch.arange(w.mlp), torch.arange(w.kv_groups), now)
    if any(w != BlockWidth(shape.intermediate, shape.kv_heads) for w in widths):
        setattr(config, WIDTHS_KEY, [asdict(w) for w in widths])


def decoder_weights(widths: list[BlockWidth], shape: Shape) -> int:
    """Weights of the decoder's linear layers at these widths (what decode reads per token, embeddings aside)."""
    per_group = 2 * shape.hidden * shape.head_dim * (shape.group + 1)  # q and o of its heads, its k and v
    return sum(3 * shape.hidden * w.mlp + per_group * w.kv_groups for w in widths)


def decoder_share(widths: list[BlockWidth], shape: Shape) -> float:
    """Decoder linear weights of a sub-network as a share of the full model's."""
    return decoder_weights(widths, shape) / decoder_weights(shape.full(), shape)
