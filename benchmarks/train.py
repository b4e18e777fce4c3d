"""Fine-tuning cost of each adapter method: step time and peak memory, as ratios to plain PEFT LoRA.

One model (a locally built Llama, or `--model`, Wanda 50 %), one data set (generated arithmetic problems), one command
per method run in its own process (`sqft-ov finetune`), the methods repeated in alternating order. Step
time is the median optimizer step after the first (which carries one-off costs such as NNCF loading its
C++ kernels; it is reported separately); peak RSS is the process tree's ru_maxrss. Goals (issues 3, 31): qa-sparsepeft
(+ NLS) <= 1.5x LoRA step time and <= 1.3x its peak memory; `train_profile.py` shows where a step goes.

    python benchmarks/train.py                  # ~150M-parameter Llama, ~10 min on 2 cores
    python benchmarks/train.py --model smollm2  # a real model (any folder, .gguf, Hub ID or example name)
    python benchmarks/train.py --small          # a quick check that it all runs
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
from pathlib import Path

from common import apples_sft_rows, cli, measure

ROOT = Path(__file__).resolve().parents[1]
MEDIUM = dict(arch="llama", layers=8, hidden=1024, intermediate=2816, heads=16, kv_heads=4, vocab=8192)
SMALL = dict(arch="llama", layers=2, hidden=256, intermediate=512, heads=4, kv_heads=2, vocab=1024)
METHODS = {
    "lora": ["--method", "lora", "--rank", "16"],
    "sparsepeft": ["--method", "sparsepeft", "--rank", "16"],
    "qa-sparsepeft": ["--method", "qa-sparsepeft", "--rank", "16"],
    "qa-sparsepeft+nls": ["--method", "qa-sparsepeft", "--nls", "--rank-space", "16,12,8"],
    "sparsepeft+nls": ["--method", "sparsepeft", "--nls", "--rank-space", "16,12,8"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--model", help="a real model to sparsify and train instead of the built Llama")
    args = parser.parse_args()
    shape, name = (SMALL, "small") if args.small else (MEDIUM, "llama-150m")
    if args.model:
        shape, name = None, Path(args.model).name.split(".")[0].lower()
    work = args.work / f"train-{name}"
    work.mkdir(parents=True, exist_ok=True)
    base, sparse, data, calibration = work / "base", work / "sparse", work / "sft.jsonl", work / "calib.txt"
    rows = apples_sft_rows(256)
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    calibration.write_text("\n".join(r["prompt"] + " " + r["response"] for r in rows) + "\n")
    if not sparse.exists():
        if args.model:
            base = args.model
        else:
            measure(cli("tiny-model", base, *[f"--{k.replace('_', '-')}={v}" for k, v in shape.items()], "--overwrite"))
        measure(cli("sparsify", base, sparse, "--method", "wanda", "--dataset", calibration, "--num-samples", 16,
                "--seq-len", 128, "--overwrite"))

    common = ["--max-steps", args.steps, "--batch-size", 4, "--max-length", 128, "--eval-split", 0, "--save-steps",
              10_000, "--group-size", 64, "--overwrite"]
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    for r in range(args.repeats):
        for method in (list(METHODS) if r % 2 == 0 else list(reversed(METHODS))):
            out = work / f"adapter-{method}"
            measured = measure(cli("finetune", sparse, data, out, *METHODS[method], *common))
            steps = json.loads((out / "sqft_adapter.json").read_text())["step_seconds"]
            measured["step_seconds"] = statistics.median(steps[1:])  # the first step carries one-off costs
            measured["first_step_seconds"] = steps[0]
            runs[method].append(measured)
            print(f"repeat {r} {method:18s} step {measured['step_seconds']:.3f} s (first {steps[0]:.2f} s)  "
                  f"peak {measured['peak_rss_mib']:.0f} MiB",
                  flush=True)
            shutil.rmtree(out, ignore_errors=True)

    results = {"model": args.model or name, "shape": shape, "steps": args.steps, "batch_size": 4, "max_length": 128,
               "repeats": args.repeats, "methods": {},
               "command": " ".join(["python", *sys.argv])}
    for method, measured in runs.items():
        ratios_t = [m["step_seconds"] / l["step_seconds"] for m, l in zip(measured, runs["lora"])]
        ratios_m = [m["peak_rss_mib"] / l["peak_rss_mib"] for m, l in zip(measured, runs["lora"])]
        results["methods"][method] = {
            "runs": measured, "step_seconds": statistics.median(m["step_seconds"] for m in measured),
            "peak_rss_mib": statistics.median(m["peak_rss_mib"] for m in measured),
            "step_time_vs_lora": statistics.median(ratios_t), "peak_memory_vs_lora": statistics.median(ratios_m)}
    print(f"\n{name}: {args.steps} steps of batch 4 x 128 tokens, medians of {args.repeats} alternating repeats")
    print(f"  {'method':18s} {'step s':>8s} {'x LoRA':>7s} {'peak MiB':>9s} {'x LoRA':>7s}")
    for method, m in results["methods"].items():
        print(f"  {method:18s} {m['step_seconds']:8.3f} {m['step_time_vs_lora']:7.2f} {m['peak_rss_mib']:9.0f} "
              f"{m['peak_memory_vs_lora']:7.2f}")
    results["benchmark_process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from sqft_ov.measure.bench.machine import machine_context  # imported after the runs: this process stays small
    from sqft_ov.measure.bench.runner import package_versions

    results["machine"], results["versions"] = machine_context(), package_versions()
    target = ROOT / "benchmarks" / "results" / f"train-{name}.json"
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {target}")


if __name__ == "__main__":
    main()
