"""Does saving memory change what is learned? QA-SparsePEFT + NLS trained in float32 and with the base in bf16 +
gradient checkpointing, on the quickstart's task, several seeds, scored on held-out test problems.

Same recipe, plan and data as `sqft-ov quickstart --fast` (its Wanda 50 % base of the embedded foundation
model, 200 steps, the plan's learning rate and group size); the only change is `--bf16
--gradient-checkpointing`. Each run ends as the recipe ends: sub-adapter search, merge on the trained INT4
grid, INT4 IR, exact match in OpenVINO. No hyperparameter is chosen here, so the test problems are scored
once per run. The difference is reported per seed (paired: same seed, same problems) and as a hierarchical
bootstrap interval (seeds, then test problems, resampled: sqft_ov.measure.intervals).

    python benchmarks/precision.py                 # 3 seeds, ~5 min on a 2-core Xeon
    python benchmarks/precision.py --seeds 42 43 44 45 46 47 48 49 50 51 \
        --out benchmarks/results/precision-qa-sparsepeft-nls-10seeds.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"fp32": {}, "bf16+ckpt": {"bf16": True, "gradient_checkpointing": True}}


def main() -> None:
    import numpy as np

    from sqft_ov.measure.bench.machine import machine_context
    from sqft_ov.measure.intervals import interval
    from sqft_ov.quickstart.arithmetic import pretraining_text, write_task
    from sqft_ov.quickstart.comparison import QuickstartPlan, bootstrap_means
    from sqft_ov.quickstart.foundation import FoundationConfig, foundation_model
    from sqft_ov.recipes import qa_sparsepeft
    from sqft_ov.stages.sparsify import SparsityConfig, sparsify_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "precision")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "precision-qa-sparsepeft-nls.json")
    args = parser.parse_args()

    plan = QuickstartPlan.make(fast=True)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    base = foundation_model(FoundationConfig())
    write_task(work / "task", plan.train_examples, args.test)
    sparse = work / "sparse-wanda50"
    if not sparse.is_dir():
        (work / "calibration.txt").write_text("\n".join(pretraining_text(256, seed=1)) + "\n")
        sparsify_folder(base, sparse, SparsityConfig("wanda", 0.5), work / "calibration.txt",
                        num_samples=plan.calibration[0], seq_len=plan.calibration[1])
    options = {"nls": True, **({} if plan.qa_lr is None else {"lr": plan.qa_lr}),
               **({} if plan.qa_group_size is None else {"group_size": plan.qa_group_size})}
    runs: dict[str, list] = {name: [] for name in SETTINGS}
    seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for seed in args.seeds:
        for name, setting in SETTINGS.items():
            t = time.perf_counter()
            made = qa_sparsepeft.recipe(model=sparse, data=work / "task", out=work / f"{name}-seed{seed}",
                                        steps=plan.steps, batch_size=plan.batch_size,
                                        chat_template=plan.chat_template, overwrite=True, seed=seed, **options,
                                        **setting)
            seconds[name].append(time.perf_counter() - t)
            runs[name].append(made[0])
            print(f"seed {seed} {name:10s} {made[0].accuracy:6.1%}  ({seconds[name][-1]:.0f} s)", flush=True)

    accuracy = {name: [r.accuracy for r in rows] for name, rows in runs.items()}
    per_seed = [b - a for a, b in zip(accuracy["fp32"], accuracy["bf16+ckpt"])]
    draws = bootstrap_means(runs["bf16+ckpt"], "bf16+ckpt") - bootstrap_means(runs["fp32"], "fp32")
    difference_ci = interval(draws)  # seeds and problems resampled (hierarchical bootstrap)
    results = {"plan": {"steps": plan.steps, "batch_size": plan.batch_size, "lr": options.get("lr"),
                        "group_size": options.get("group_size"), "train_examples": plan.train_examples},
               "test_examples": args.test, "seeds": args.seeds, "accuracy": accuracy, "seconds": seconds,
               "difference_per_seed": per_seed, "difference_mean": float(np.mean(per_seed)),
               "difference_ci95_seeds_and_problems": difference_ci,
               "machine": machine_context(), "command": "python benchmarks/precision.py " + " ".join(sys.argv[1:])}
    print(f"\nQA-SparsePEFT + NLS, {len(args.seeds)} seeds x {args.test} test problems")
    for name in SETTINGS:
        print(f"  {name:10s} mean {np.mean(accuracy[name]):6.1%}  seeds " +
              " ".join(f"{a:.1%}" for a in accuracy[name]) + f"  train+merge+export+eval {np.mean(seconds[name]):.0f} s")
    print(f"  bf16+ckpt - fp32: mean {100 * np.mean(per_seed):+.1f} points, per seed "
          + " ".join(f"{100 * d:+.1f}" for d in per_seed)
          + f"; interval (seeds and problems) {100 * difference_ci[0]:+.1f} to {100 * difference_ci[1]:+.1f}")
    target = args.out
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {target}")


if __name__ == "__main__":
    main()
