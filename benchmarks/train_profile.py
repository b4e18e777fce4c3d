"""Where one fine-tuning step's time goes, per method: torch.profiler over a step, grouped by what the work is for.

Builds the method's trainable model with the public API (`Adapted.build`), runs a few AdamW steps on one fixed
batch of random tokens (so every method sees the same shapes), then profiles one step and sorts the operators'
own CPU time into:
- `base mm`: the layers' forward and input-gradient products (what LoRA runs too),
- `weight grad`: `gᵀx` products whose result is a whole weight (SparsePEFT's mask and QA-SparsePEFT's ranges need
  them; LoRA never forms one),
- `rank-r mm`: B·A, its gradients and LoRA's x·Aᵀ·Bᵀ paths,
- `elementwise`: the compiled loops (fake quantization, masked merge),
- `other`: everything else (attention, norms, the optimizer, the hooks' small operators).

    python benchmarks/train_profile.py benchmarks/work/train-llama-150m/sparse --seq-len 48
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

METHODS = {"lora": dict(method="lora", rank=16), "sparsepeft": dict(method="sparsepeft", rank=16),
           "qa-sparsepeft": dict(method="qa-sparsepeft", rank=16),
           "qa-sparsepeft+nls": dict(method="qa-sparsepeft", nls=True, rank_space=(16, 12, 8))}


def category(event, tokens: int, rank: int, weights: set[tuple[int, int]]) -> str:
    name = event.key
    if "CompiledFxGraph" in name:
        return "elementwise"
    if name not in ("aten::mm", "aten::addmm", "aten::bmm"):
        return "other"
    shapes = [tuple(s) for s in event.input_shapes if s]
    if any(rank in s or max(s) <= rank for s in shapes):
        return "rank-r mm"
    if len(shapes) >= 2 and (shapes[0][0], shapes[1][-1]) in weights and shapes[0][1] == tokens:
        return "weight grad"
    return "base mm"


def profile(model_dir: str, method: str, seq_len: int, batch: int, steps: int) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from sqft_ov.adapters.adapted import Adapted
    from sqft_ov.adapters.config import FinetuneConfig
    from sqft_ov.io.checkpoint import load_causal_lm

    model, _ = load_causal_lm(model_dir)
    weights = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    config = FinetuneConfig(group_size=64, **METHODS[method])
    torch.manual_seed(0)
    adapted = Adapted.build(model, config)
    adapted.model.train()
    optimizer = torch.optim.AdamW(list(adapted.params.values()), lr=1e-4)
    tokens = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))

    def step():
        adapted.model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    totals: dict[str, float] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        key = category(event, batch * seq_len, config.max_rank, weights)
        totals[key] = totals.get(key, 0.0) + event.self_cpu_time_total / 1e6
    return {"step_seconds": statistics.median(seconds[1:]), "profiled_seconds": totals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model folder (e.g. the sparse model benchmarks/train.py builds)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seq-len", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps before the profiled one")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    results = {m: profile(args.model, m, args.seq_len, args.batch_size, args.steps) for m in args.methods.split(",")}
    kinds = ["base mm", "weight grad", "rank-r mm", "elementwise", "other"]
    print(f"{args.batch_size} x {args.seq_len} tokens per step; seconds of operator CPU time in one profiled step")
    print(f"  {'method':18s} {'step s':>7s} " + " ".join(f"{k:>11s}" for k in kinds))
    for method, r in results.items():
        print(f"  {method:18s} {r['step_seconds']:7.3f} "
              + " ".join(f"{r['profiled_seconds'].get(k, 0.0):11.3f}" for k in kinds))
    if args.out:
        from sqft_ov.measure.bench.machine import machine_context

        args.out.write_text(json.dumps({"model": args.model, "seq_len": args.seq_len, "batch_size": args.batch_size,
                                        "methods": results, "machine": machine_context()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
