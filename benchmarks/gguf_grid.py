"""What NNCF's INT4 grid does to a model whose weights already sit on a Q4_1 grid (SmolLM2 from its GGUF file).

    python benchmarks/gguf_grid.py [--model smollm2] [--group-sizes 32 128] [--sym] [--seed 0]
                                   [--out benchmarks/results/gguf-grid-smollm2.json]

The example model's weights are a Q4_1 GGUF file dequantized to float: each block of 32 values of a row is
`d * q + m` with q in 0..15 (d, m fp16). Every INT4 row of the quickstart re-quantizes them onto NNCF's grid,
whose zero point is an integer (asym) or zero (sym), so the two grids do not line up. For each group size this
exports the model data-free to INT4 with `export` (NNCF; a layer the group size does not divide gets the
largest power of two that does, as the quickstart's rows) and reports the relative RMS error of every
decoder linear's IR values against the folder's, sqrt(sum err^2 / sum w^2), over all decoder weights and per
weight (median, max).

The reference row says whether that is worse than quantizing a model that was never quantized: the same
weights with the Q4_1 rounding undone by a uniform dither of +-d/2 per block (what the float weights looked
like before Q4_1, up to the rounding's distribution), exported and measured the same way. The script also checks
that the folder's weights are on a Q4_1 grid (at most 16 distinct values per block of 32). Deterministic
(no timing): the JSON records the machine only for provenance.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sqft_ov import ExportConfig, export
from sqft_ov.io.gguf import resolve_model
from sqft_ov.io.ir import iter_ir_weights
from sqft_ov.measure.bench.machine import machine_context

DECODER_LINEAR = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")
Q4_1_BLOCK = 32


def decoder_weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors |= {k: v.float() for k, v in load_file(file).items() if DECODER_LINEAR.match(k)}
    return tensors


def on_q4_1_grid(weights: dict[str, torch.Tensor]) -> float:
    """Share of 32-value blocks with at most 16 distinct values (a Q4_1 block has exactly that many levels)."""
    blocks = on_grid = 0
    for w in weights.values():
        b = w.reshape(-1, Q4_1_BLOCK)
        distinct = (b.sort(dim=1).values.diff(dim=1) != 0).sum(dim=1) + 1
        blocks += b.shape[0]
        on_grid += int((distinct <= 16).sum())
    return on_grid / blocks


def dithered(weights: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Each value moved uniformly within +-d/2 of its Q4_1 level (d = the block's step, (max - min) / 15)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in weights.items():
        b = w.reshape(-1, Q4_1_BLOCK)
        step = (b.max(dim=1, keepdim=True).values - b.min(dim=1, keepdim=True).values) / 15
        noise = (torch.rand(b.shape, generator=gen) - 0.5) * step
        out[name] = (b + noise).reshape(w.shape)
    return out


def int4_error(folder: Path, source: dict[str, torch.Tensor], group_size: int, sym: bool, work: Path) -> dict:
    """Export FOLDER data-free to INT4 and compare every decoder linear of the IR with SOURCE."""
    ir = work / f"ir-g{group_size}-{'sym' if sym else 'asym'}"
    report = export(folder, ir, ExportConfig(weight_format="int4", group_size=group_size, sym=sym,
                                                 group_size_fallback="adjust"))  # 576-wide layers at g128: 64
    per_weight, err2, ref2 = {}, 0.0, 0.0
    for w in iter_ir_weights(ir):
        if w.name in source:
            ref = source[w.name].double().numpy()
            e2 = float(((w.values.astype(np.float64) - ref) ** 2).sum())
            r2 = float((ref ** 2).sum())
            per_weight[w.name] = (e2 / r2) ** 0.5
            err2, ref2 = err2 + e2, ref2 + r2
    if len(per_weight) != len(source):
        raise RuntimeError(f"{len(source) - len(per_weight)} decoder weights not found in {ir}")
    values = sorted(per_weight.values())
    shutil.rmtree(ir)
    return {"relative_rms": (err2 / ref2) ** 0.5, "per_weight_median": values[len(values) // 2],
            "per_weight_max": values[-1], "weight_count": len(values),
            "group_sizes_used": report.settings.get("group_sizes")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--sym", action="store_true", help="NNCF's symmetric grid (default: asym, the quickstart's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the reference's dither")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gguf-grid-smollm2.json"))
    args = parser.parse_args()

    folder = resolve_model(args.model)
    weights = decoder_weights(folder)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reference = work / "dithered"
        shutil.copytree(folder, reference)
        noisy = dithered(weights, args.seed)
        for file in sorted(reference.glob("*.safetensors")):
            tensors = load_file(file)
            tensors |= {k: noisy[k].to(tensors[k].dtype) for k in tensors if k in noisy}
            save_file(tensors, file, metadata={"format": "pt"})
        for label, source_folder, source in (("Q4_1 weights (the example model)", folder, weights),
                                             ("reference: Q4_1 rounding undone by a +-d/2 dither", reference,
                                              decoder_weights(reference))):
            for g in args.group_sizes:
                row = {"weights": label, "group_size": g, "sym": args.sym,
                       **int4_error(source_folder, source, g, args.sym, work)}
                rows.append(row)
                print(f"{label:52s} g{g:<4d} relative RMS {row['relative_rms']:.2%} (per weight median "
                      f"{row['per_weight_median']:.2%}, max {row['per_weight_max']:.2%})", flush=True)
    share = on_q4_1_grid(weights)
    print(f"blocks of {Q4_1_BLOCK} with <= 16 distinct values (on a Q4_1 grid): {share:.2%}")
    result = {"model": str(args.model), "folder": str(folder), "q4_1_block_share": share, "rows": rows,
              "machine": machine_context(), "command": " ".join(["python", *map(str, sys.argv)])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
