"""The trained INT4 grid of a folder merged by QA-SparsePEFT: written by merge, read by export.

The merged weights already lie on the grid QA-SparsePEFT trained (per-group ranges or scales, group size,
sym/asym). `sqft_int4_grid.safetensors` + `.json` keep that grid beside them, so export writes exactly
those INT4 codes instead of re-quantizing the weights onto a grid of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GRID = "sqft_int4_grid"


def write_grid(folder: str | Path, grids: dict[str, dict[str, torch.Tensor]], quantization: dict) -> None:
    """Quantizer tensors per weight (`weight::tensor` keys) and the grid's settings."""
    from safetensors.torch import save_file

    folder = Path(folder)
    save_file({f"{w}::{k}": v.contiguous() for w, g in grids.items() for k, v in g.items()},
              folder / f"{GRID}.safetensors")
    (folder / f"{GRID}.json").write_text(json.dumps({"bits": 4, "sym": quantization["sym"],
                                                     "group_size": quantization["group_size"],
                                                     "weights": sorted(grids)}, indent=2))


def read_grid(model_dir: str | Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]] | None:
    """(settings, grids by weight) of a folder merged by qa-sparsepeft, or None."""
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
                               "adapter again (exporting without it would re-quantize the weights off their trained "
                               "grid)")
    try:
        meta = json.loads(halves[0].read_text())
        settings = (meta["sym"], int(meta["group_size"]), meta["weights"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFolderError(f"{halves[0]} is not a valid grid description ({exc}): merge the adapter "
                               "again") from None
    if settings[1] == 0 or not isinstance(settings[0], bool):
        raise ModelFolderError(f"{halves[0]}: group size {settings[1]} / sym {settings[0]!r} are not a valid INT4 "
                               "grid; merge the adapter again")
    grids: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(model_dir / f"{GRID}.safetensors").items():
        weight, tensor = key.split("::")
        grids.setdefault(weight, {})[tensor] = value
    return meta, grids
