"""The real model's costs: Wanda against a plain forward pass, and eval throughput, on SmolLM2-135M-Instruct.

    python benchmarks/real_model.py [--model smollm2] [--samples 128] [--seq-len 512] [--rounds 2]
                                    [--eval-problems 64] [--out benchmarks/results/real-model-timings.json]

Goals (issue 13): Wanda over N x T calibration tokens <= 2x one plain forward pass over the same tokens
(both batched the same way, in one process, interleaved over rounds: the ratio is taken per round); eval
throughput >= 5 problems/s through OpenVINO (the INT4 IR) and >= 1 problem/s in PyTorch (float32), chat
template on, greedy, the downstream arithmetic task. Nothing else heavy may run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sqft_ov import EvalConfig, ExportConfig, SFTFormat, SparsityConfig, evaluate, export, sparsify
from sqft_ov.io.checkpoint import load_causal_lm
from sqft_ov.io.data import token_chunks
from sqft_ov.io.gguf import resolve_model
from sqft_ov.quickstart.arithmetic import pretraining_text, write_task
from sqft_ov.stages.bench.machine import machine_context
from sqft_ov.stages.sparsify import WANDA_BATCH, _batches


@torch.no_grad()
def plain_forward(model, samples: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for batch in _batches(samples, WANDA_BATCH):
        model(input_ids=batch, use_cache=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--eval-problems", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "real-model-timings.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    t = time.perf_counter()
    folder = resolve_model(args.model)
    resolve_seconds = time.perf_counter() - t
    model, tokenizer = load_causal_lm(folder, dtype=torch.float32)
    samples = token_chunks(tokenizer, pretraining_text(4000, seed=5), args.samples, args.seq_len)
    tokens = sum(s.shape[1] for s in samples)
    rounds = []
    for r in range(args.rounds):
        forward = plain_forward(model, samples)
        fresh, _ = load_causal_lm(folder, dtype=torch.float32)
        start = time.perf_counter()
        _, report = sparsify(fresh, SparsityConfig("wanda", 0.5), samples)
        wanda = time.perf_counter() - start
        del fresh
        rounds.append({"forward_s": forward, "wanda_s": wanda, "ratio": wanda / forward, "sparsity": report.total})
        print(f"round {r + 1}: forward {forward:.1f} s, Wanda {wanda:.1f} s, ratio {wanda / forward:.2f}", flush=True)
    del model

    with tempfile.TemporaryDirectory(prefix="sqft-real-") as tmp:
        tmp = Path(tmp)
        task = write_task(tmp / "task", train=10, test=args.eval_problems)
        ir = export(folder, tmp / "ir", ExportConfig(weight_format="int4", group_size_fallback="adjust")).output
        fmt = SFTFormat(chat_template=True)
        evals = {}
        for engine, path, extra in (("openvino", ir, {}), ("pytorch", folder, {"torch_dtype": "float32"})):
            report = evaluate(path, task["test"], EvalConfig(data_format=fmt, **extra))
            evals[engine] = {"problems": report.examples, "seconds": report.seconds,
                             "problems_per_s": report.examples / report.seconds, "exact_match": report.exact_match,
                             "no_answer": report.no_answer}
            print(f"eval {engine}: {report.examples / report.seconds:.2f} problems/s "
                  f"({report.examples} in {report.seconds:.1f} s), exact match {report.exact_match:.1%}", flush=True)

    ratios = [r["ratio"] for r in rounds]
    result = {
        "model": str(args.model), "folder": str(folder), "first_resolve_seconds": resolve_seconds,
        "calibration": {"samples": len(samples), "seq_len": args.seq_len, "tokens": tokens, "batch": WANDA_BATCH},
        "rounds": rounds, "wanda_over_forward": {"median": statistics.median(ratios), "min": min(ratios),
                                                 "max": max(ratios)},
        "eval": evals,
        "goals": {"wanda_le_2x_forward": statistics.median(ratios) <= 2.0,
                  "eval_openvino_ge_5_per_s": evals["openvino"]["problems_per_s"] >= 5,
                  "eval_pytorch_ge_1_per_s": evals["pytorch"]["problems_per_s"] >= 1},
        "machine": machine_context(), "torch_threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("wanda_over_forward", "goals")}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
