"""The trained INT4 grid of a model merged by QA-SparsePEFT: carried by the merged model, saved beside it.

The merged weights already lie on the grid QA-SparsePEFT trained (per-group ranges or scales, group size,
sym/asym). `merge_model` hangs that grid on the model it returns (`model.sqft_int4_grid`, an `Int4Grid`), so
`export_model` writes exactly those INT4 codes instead of re-quantizing the weights onto a grid of its own;
on disk it is `sqft_int4_grid.safetensors` + `.json` beside the weights, read back by `load_causal_lm`'s
callers through `Int4Grid.read`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GRID = "sqft_int4_grid"
ATTRIBUTE = GRID  # the merged model's attribute holding its Int4Grid


@dataclass
class Int4Grid:
    """One INT4 grid: symmetric or not, its group size, and the quantizer tensors per weight name."""

    sym: bool
    group_size: int
    tensors: dict[str, dict[str, torch.Tensor]]

    @property
    def weights(self) -> list[str]:
        return sorted(self.tensors)

    def settings(self) -> dict:
        return {"bits": 4, "sym": self.sym, "group_size": self.group_size, "weights": self.weights}

    def save(self, folder: str | Path) -> None:
        """Quantizer tensors per weight (`weight::tensor` keys) and the grid's settings."""
        from safetensors.torch import save_file

        folder = Path(folder)
        save_file({f"{w}::{k}": v.contiguous() for w, g in self.tensors.items() for k, v in g.items()},
                  folder / f"{GRID}.safetensors")
        (folder / f"{GRID}.json").write_text(json.dumps(self.settings(), indent=2))

    @classmethod
    def read(cls, model_dir: str | Path) -> Int4Grid | None:
        """The grid saved in a merged folder, or None (a folder without one)."""
        from safetensors.torch import load_file

        from sqft_ov.errors import ModelFolderError

        model_dir = Path(model_dir)
        halves = [model_dir / f"{GRID}.json", model_dir / f"{GRID}.safetensors"]
        present = [h.is_file() for h in halves]
        if not any(present):
            return None
        if not all(present):
            missing = halves[present.index(False)].name
            raise ModelFolderError(f"{model_dir} holds half of a trained INT4 grid: {missing} is missing; merge the "
                                   "adapter again (exporting without it would re-quantize the weights off their "
                                   "trained grid)")
        try:
            meta = json.loads(halves[0].read_text())
            sym, group_size = meta["sym"], int(meta["group_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFolderError(f"{halves[0]} is not a valid grid description ({exc}): merge the adapter "
                                   "again") from None
        if group_size == 0 or not isinstance(sym, bool):
            raise ModelFolderError(f"{halves[0]}: group size {group_size} / sym {sym!r} are not a valid INT4 "
                                   "grid; merge the adapter again")
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in load_file(model_dir / f"{GRID}.safetensors").items():
            weight, tensor = key.split("::")
            tensors.setdefault(weight, {})[tensor] = value
        return cls(sym, group_size, tensors)


def grid_of(model) -> Int4Grid | None:
    """The INT4 grid a merged model carries (None: a float model)."""
    return getattr(model, ATTRIBUTE, None)


def carry_grid(model, grid: Int4Grid | None) -> None:
    """Hang `grid` on the model (plain attribute: not a parameter, not in its state dict)."""
    if grid is not None:
        object.__setattr__(model, ATTRIBUTE, grid)

