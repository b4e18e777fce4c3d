"""Decode through openvino_genai: a sparse model's `export --sparse-format` IRs against its dense INT4 IR.

On a TinyLlama-1.1B-shaped model (random bf16 weights), built locally and magnitude-pruned to 50 % and 70 %
(magnitude, not Wanda: which weights are zero does not change what a kernel reads; Wanda would add calibration
passes over 1.1B parameters here):
  * the dense INT4 IR `sqft-ov export` writes by default (asym, group 128), of the 70 % model (a dense kernel reads
    the same bytes whatever the zeros): the baseline;
  * `sqft-ov export --sparse-format bitmask-int8` and `bitmask-int4` of each sparse model.
All run through `sqft-ov bench` (genai, interleaved rounds, one process per model, paired ratios to the
baseline); its JSON and markdown go to benchmarks/results/sparse-decode-<cpu>.{json,md}. The goal of issue 33:
70 % sparse >= 1.3x the dense INT4 IR's decode speed, 50 % >= 1.1x.

    python benchmarks/sparse_decode.py            # ~40 min on 2 cores the first time (building), ~10 after
    python benchmarks/sparse_decode.py --small    # the same steps on a small shape, a quick check
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import cli, cpu_slug, measure
from export import SMALL, TINYLLAMA

ROOT = Path(__file__).resolve().parents[1]
SPARSITIES = (0.5, 0.7)
FORMATS = ("bitmask-int8", "bitmask-int4")


def build(work: Path, shape: dict) -> list[Path]:
    """The IRs, baseline first; each built once and reused by later runs (delete WORK to rebuild)."""
    base = work / "base"
    if not base.exists():
        print("building the model ...", flush=True)
        measure(cli("tiny-model", base, *[f"--{k.replace('_', '-')}={v}" for k, v in shape.items()]))
    irs = []
    for sparsity in SPARSITIES:
        sparse = work / f"sparse-{sparsity:.0%}".replace("%", "")
        if not sparse.exists():
            print(f"sparsify (magnitude {sparsity:.0%}) ...", flush=True)
            measure(cli("sparsify", base, sparse, "--method", "magnitude", "--ratio", sparsity))
        targets = [(fmt, work / f"ir-{sparse.name}-{fmt}") for fmt in FORMATS]
        if sparsity == max(SPARSITIES):
            targets.insert(0, ("dense-int4", work / f"ir-{sparse.name}-dense-int4"))
        for fmt, ir in targets:
            if not ir.exists():
                print(f"export {ir.name} ...", flush=True)
                extra = [] if fmt == "dense-int4" else ["--sparse-format", fmt]
                print(f"  {measure(cli('export', sparse, ir, *extra))}", flush=True)
            irs.append(ir)
    baseline = next(ir for ir in irs if ir.name.endswith("dense-int4"))
    return [baseline] + [ir for ir in irs if ir != baseline]


def main() -> None:
    from sqft_ov.measure.bench.machine import machine_context

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a small shape: a quick check of the steps")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    shape_name = "small" if args.small else "tinyllama-1.1b-shape"
    work = args.work or ROOT / "benchmarks" / "work" / f"sparse-decode-{shape_name}"
    work.mkdir(parents=True, exist_ok=True)
    irs = build(work, SMALL if args.small else TINYLLAMA)
    cpu = cpu_slug(machine_context()["cpu"])
    stem = ROOT / "benchmarks" / "results" / f"sparse-decode-{shape_name}-{cpu}"
    print("bench ...", flush=True)
    measure(cli("bench", *irs, "--new-tokens", args.new_tokens, "--prompt-tokens", 32, "--repeats", args.repeats,
                "--json", f"{stem}.json", "--markdown", f"{stem}.md", "--overwrite"))  # a rerun replaces them
    print(Path(f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
