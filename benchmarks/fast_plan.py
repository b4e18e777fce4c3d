"""Where `quickstart --fast` learns: LoRA's accuracy against fine-tuning steps, per foundation model.

The fast plan once trained 40 steps and sat on a cliff: LoRA scored 0-7.5 % on one CPU and enough to pass on
others. This measures the curve the plan's step count is chosen from: the quickstart's task (train problems
as the fast plan writes them, 200 held-out test problems), its Wanda 50 % base, LoRA as the recipe trains it
(rank 16, SQFT's five targets, batch 16, lr 3e-3, linear decay), exact match in PyTorch. Each foundation
model is pretrained (and cached) on this machine, as users' are; `--foundation-steps 250` is the weaker
model the fast plan used to pretrain. PyTorch's kernel path is the environment's (`ATEN_CPU_CAPABILITY`),
recorded with the CPU.

    python benchmarks/fast_plan.py                                   # full foundation, 40..240 steps
    python benchmarks/fast_plan.py --foundation-steps 250 --steps 200 --name weak-foundation
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from sqft_ov import EvalConfig, FinetuneConfig, SFTFormat, evaluate, finetune
    from sqft_ov.quickstart.arithmetic import pretraining_text, write_task
    from sqft_ov.quickstart.comparison import QuickstartPlan
    from sqft_ov.quickstart.foundation import FoundationConfig, foundation_model
    from sqft_ov.measure.bench.machine import machine_context
    from sqft_ov.stages.sparsify import SparsityConfig, sparsify_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[40, 80, 120, 200, 240])
    parser.add_argument("--foundation-steps", type=int, default=FoundationConfig().steps)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--name", default="full-foundation")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "fast-plan")
    args = parser.parse_args()

    plan = QuickstartPlan.make(fast=True)
    config = replace(FoundationConfig(), steps=args.foundation_steps)
    work = args.work / args.name  # its own sparse base: another cache or kernel path pretrains another model
    work.mkdir(parents=True, exist_ok=True)
    base = foundation_model(config)
    task = write_task(work / "task", plan.train_examples, args.test)
    sparse = work / "sparse-wanda50"
    if not sparse.is_dir():
        (work / "calibration.txt").write_text("\n".join(pretraining_text(256, seed=1)) + "\n")
        sparsify_folder(base, sparse, SparsityConfig("wanda", 0.5), work / "calibration.txt",
                        num_samples=plan.calibration[0], seq_len=plan.calibration[1])
    scoring = EvalConfig(data_format=SFTFormat(), loss=False)
    bases = {name: evaluate(path, task["test"], scoring).exact_match for name, path in (("dense", base),
                                                                                       ("wanda", sparse))}
    print(f"{args.name}: foundation {config.key} ({config.steps} pretraining steps), dense {bases['dense']:.1%}, "
          f"Wanda 50 % {bases['wanda']:.1%} on {args.test} problems", flush=True)
    runs = []
    for steps in args.steps:
        for seed in args.seeds:
            adapter_config = FinetuneConfig(method="lora", rank=16, max_steps=steps, lr=3e-3, batch_size=plan.batch_size,
                                            eval_split=0.05, data_format=SFTFormat(), seed=seed, save_steps=10_000)
            t = time.perf_counter()
            trained = finetune(sparse, task["train"], work / f"lora-{steps}-{seed}", adapter_config, overwrite=True)
            seconds = time.perf_counter() - t
            accuracy = evaluate(sparse, task["test"], replace(scoring, adapter=trained.output)).exact_match
            runs.append({"steps": steps, "seed": seed, "accuracy": accuracy, "train_seconds": round(seconds, 1),
                         "final_train_loss": trained.train_loss[-1], "eval_loss": trained.eval_loss,
                         "points_over_dense": round(100 * (accuracy - bases["dense"]), 1)})
            print(f"  LoRA {steps:4d} steps, seed {seed}: {accuracy:6.1%} ({runs[-1]['points_over_dense']:+.1f} points "
                  f"over the dense base), loss {trained.train_loss[-1]:.3f}, {seconds:.0f} s", flush=True)

    results = {"name": args.name, "foundation": {"key": config.key, "pretraining_steps": config.steps},
               "train_examples": plan.train_examples, "test_examples": args.test, "bases": bases, "runs": runs,
               "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY") or "default for this CPU",
               "machine": machine_context()}
    target = ROOT / "benchmarks" / "results" / f"fast-plan-{args.name}.json"
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {target}")


if __name__ == "__main__":
    main()
