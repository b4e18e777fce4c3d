"""Elastic base widths (LoNAS / EFTNAS): a per-block search space of MLP widths and KV groups, and the masks
that make the super-network compute any sub-network of it.

Channels and KV groups are assumed in importance order (`sqft_ov.stages.importance` reorders them), so a
width w means "the first w": zeroing the inputs of o_proj (per head) and down_proj (per channel) beyond w
gives exactly the function of the block cut to w (`sqft_ov.io.blocks.shrink`), adapters included, since
the removed heads and channels feed nothing else. Training therefore needs no sliced copies of the weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from sqft_ov.errors import ConfigError, SqftError
from sqft_ov.io.blocks import BlockWidth, Shape, decoder_layers, projections

SPACE_FILE = "search_space.json"


def parse_widths(text: str | tuple | list, flag: str) -> tuple[float, ...]:
    """'1.0 0.75 0.5' -> (1.0, 0.75, 0.5): fractions in (0, 1] or absolute sizes (whole numbers above 1)."""
    items = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    try:
        values = tuple(float(v) for v in items)
    except ValueError:
        raise ConfigError(f"{flag} takes numbers, e.g. {flag} 1.0 0.75 0.5; got {text!r}") from None
    for v in values:
        if not v > 0 or (v > 1 and v != int(v)):
            raise ConfigError(f"{flag} {v:g} is outside (0, 1]: give fractions of the layer, or whole sizes")
    return values


@dataclass
class WidthSpace:
    """Per decoder block: the MLP widths and KV-group counts a sub-network may take (largest first)."""

    mlp: list[list[int]]
    kv_groups: list[list[int]]

    @property
    def blocks(self) -> int:
        return len(self.mlp)

    def largest(self) -> list[BlockWidth]:
        return [BlockWidth(m[0], k[0]) for m, k in zip(self.mlp, self.kv_groups)]

    def smallest(self) -> list[BlockWidth]:
        return [BlockWidth(m[-1], k[-1]) for m, k in zip(self.mlp, self.kv_groups)]

    def median(self) -> list[BlockWidth]:
        return [BlockWidth(m[len(m) // 2], k[len(k) // 2]) for m, k in zip(self.mlp, self.kv_groups)]

    def contains(self, widths: list[BlockWidth]) -> bool:
        return len(widths) == self.blocks and all(
            w.mlp in m and w.kv_groups in k for w, m, k in zip(widths, self.mlp, self.kv_groups))

    def to_dict(self) -> dict:
        return {"blocks": [{"mlp": m, "kv_groups": k} for m, k in zip(self.mlp, self.kv_groups)]}

    @classmethod
    def from_dict(cls, data: dict, shape: Shape, where: str) -> "WidthSpace":
        """A space read from JSON, checked against the model it is meant for."""
        try:
            blocks = data["blocks"]
            mlp = [sorted({int(v) for v in b["mlp"]}, reverse=True) for b in blocks]
            kv = [sorted({int(v) for v in b["kv_groups"]}, reverse=True) for b in blocks]
        except (KeyError, TypeError, ValueError):
            raise SqftError(f"{where} is not a search space: expected {{\"blocks\": [{{\"mlp\": [...], "
                            "\"kv_groups\": [...]}, ...]}") from None
        if len(blocks) != shape.layers:
            raise SqftError(f"{where} describes {len(blocks)} decoder blocks but the model has {shape.layers}")
        for i, (m, k) in enumerate(zip(mlp, kv)):
            if not m or not k:
                raise SqftError(f"{where}: block {i} has an empty list of widths")
            if m[0] > shape.intermediate or m[-1] < 1:
                raise SqftError(f"{where}: block {i} MLP width {m[0] if m[0] > shape.intermediate else m[-1]} does "
                                f"not fit the model's MLP of {shape.intermediate} channels")
            if k[0] > shape.kv_heads or k[-1] < 1:
                raise SqftError(f"{where}: block {i} KV groups {k[0] if k[0] > shape.kv_heads else k[-1]} do not fit "
                                f"the model's {shape.kv_heads} KV heads")
        return cls(mlp, kv)

    @classmethod
    def load(cls, path: str | Path, shape: Shape) -> "WidthSpace":
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text())
        except OSError:
            raise SqftError(f"search space {path} cannot be read: pass the {SPACE_FILE} that importance wrote") from None
        except ValueError as exc:
            raise SqftError(f"search space {path} is not valid JSON ({exc})") from None
        return cls.from_dict(data, shape, str(path))

    @classmethod
    def uniform(cls, shape: Shape, mlp_widths: tuple[float, ...], head_widths: tuple[float, ...],
                multiple: int = 32) -> "WidthSpace":
        """The same choices in every block, from fractions (MLP rounded to `multiple` channels) or sizes."""
        mlp = sorted({_mlp_size(v, shape, multiple) for v in mlp_widths or (1.0,)}, reverse=True)
        kv = sorted({_kv_groups(v, shape) for v in head_widths or (1.0,)}, reverse=True)
        return cls([mlp] * shape.layers, [kv] * shape.layers)


def _mlp_size(value: float, shape: Shape, multiple: int) -> int:
    if value > 1:
        if value > shape.intermediate:
            raise ConfigError(f"--mlp-widths {value:g} is larger than the layer ({shape.intermediate} channels)")
        return int(value)
    size = round(value * shape.intermediate / multiple) * multiple if shape.intermediate % multiple == 0 \
        else round(value * shape.intermediate)
    return max(size, min(multiple, shape.intermediate), 1)


def _kv_groups(value: float, shape: Shape) -> int:
    if value > 1:
        if value > shape.heads:
            raise ConfigError(f"--head-widths {value:g} is larger than the layer ({shape.heads} heads)")
        if value % shape.group:
            raise ConfigError(f"--head-widths {value:g} heads breaks grouped-query attention: the model has "
                              f"{shape.group} query heads per KV head, so heads go in multiples of {shape.group}")
        return int(value) // shape.group
    groups = round(value * shape.kv_heads)
    if groups < 1 or abs(value - groups / shape.kv_heads) > 0.01:  # 0.67 stands for 2/3
        raise ConfigError(f"--head-widths {value:g} breaks grouped-query attention: {shape.heads} heads in "
                          f"{shape.kv_heads} KV groups allow the fractions "
                          f"{', '.join(f'{k / shape.kv_heads:.2f}' for k in range(shape.kv_heads, 0, -1))}")
    return groups


def resolve_space(config, model_config) -> WidthSpace | None:
    """The width space a FinetuneConfig asks for, on the model it will train (None: widths fixed)."""
    shape = Shape.of(model_config)
    if config.search_space:
        return WidthSpace.load(config.search_space, shape)
    if config.mlp_widths or config.head_widths:
        return WidthSpace.uniform(shape, config.mlp_widths, config.head_widths)
    return None


def width_multiple(group_size: int) -> int:
    """Channel counts that INT4 groups of `group_size` tile and SIMD tiles of 32 keep whole (-1: per channel)."""
    return 32 if group_size == -1 else math.lcm(32, group_size)


def fit_mlp_widths(shape: Shape, widths: tuple[float, ...], group_size: int) -> tuple[int, ...]:
    """MLP widths as channel counts an INT4 export with `group_size` can tile: fractions rounded to
    width_multiple(group_size) channels (a cut down_proj's input is its width)."""
    sizes = tuple(sorted({_mlp_size(v, shape, width_multiple(group_size)) for v in widths or (1.0,)}, reverse=True))
    check_space_fits(WidthSpace([list(sizes)] * shape.layers, [[shape.kv_heads]] * shape.layers), shape, group_size)
    return sizes


def check_space_fits(space: WidthSpace, shape: Shape, group_size: int) -> None:
    """Fail before training when a sub-network's cut layer would not be a whole number of INT4 groups."""
    if group_size == -1:
        return
    for i, (mlp, kv) in enumerate(zip(space.mlp, space.kv_groups)):
        for width in mlp:
            if width % group_size:
                raise ConfigError(f"MLP width {width} (block {i}, of {shape.intermediate} channels) is not a multiple "
                                  f"of --group-size {group_size}, so its INT4 export would fail: give widths in "
                                  f"multiples of {width_multiple(group_size)} channels, or a smaller --group-size")
        for groups in kv:
            size = groups * shape.group * shape.head_dim
            if size % group_size:
                raise ConfigError(f"{groups} KV groups (block {i}) leave o_proj an input of {size}, not a multiple of "
                                  f"--group-size {group_size}: choose other --head-widths or a smaller --group-size")


class ElasticWidths:
    """Forward pre-hooks on each block's o_proj and down_proj that zero the heads and channels beyond the
    active widths (a PEFT LoRA wrapper is hooked as a whole, so the adapter sees the same inputs)."""

    def __init__(self, model, space: WidthSpace):
        self.shape = Shape.of(model.config)
        self.space = space
        self.active: list[BlockWidth] = space.largest()
        self._masks: list[dict[str, torch.Tensor | None]] = []
        self._handles = []
        for i, layer in enumerate(decoder_layers(model)):
            proj = projections(layer)
            self._masks.append({"o": None, "down": None})
            for role in ("o", "down"):
                self._handles.append(proj[role].register_forward_pre_hook(self._hook(i, role)))
        self.set(self.active)

    def remove(self) -> None:
        """Take the hooks off (before the model is cut to the active widths)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, block: int, role: str):
        def mask_input(module, args):
            mask = self._masks[block][role]
            if mask is None:
                return None
            return (args[0] * mask.to(args[0]),) + tuple(args[1:])  # the input's dtype and device

        return mask_input

    def set(self, widths: list[BlockWidth]) -> None:
        s = self.shape
        for masks, w in zip(self._masks, widths):
            heads = w.kv_groups * s.group
            masks["o"] = None if heads == s.heads else (torch.arange(s.heads * s.head_dim) < heads * s.head_dim).float()
            masks["down"] = None if w.mlp == s.intermediate else (torch.arange(s.intermediate) < w.mlp).float()
        self.active = list(widths)
