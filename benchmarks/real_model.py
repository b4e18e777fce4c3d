"""The real model's costs: Wanda against a plain forward pass, and eval throughput, on SmolLM2-135M-Instruct.

    python benchmarks/real_model.py [--model smollm2] [--samples 128] [--seq-len 512] [--rounds 2]
                                    [--eval-problems 100] [--eval-rounds 2] [--finetuned QUICKSTART_OUT]
                                    [--part all|wanda|eval]
                                    [--out benchmarks/results/real-model-timings.json]

Goals (issue 13): Wanda over N x T calibration tokens <= 2x one plain forward pass over the same tokens
(both batched the same way, in one process, interleaved over rounds: the ratio is taken per round); eval
throughput >= 5 problems/s through OpenVINO (the INT4 IR) and >= 1 problem/s in PyTorch (float32), chat
template on, greedy, the downstream arithmetic task — the median of `--eval-rounds` rounds that interleave
the models, with its min-max. Eval runs twice per model: exact match only (what the
recipes and quickstart run) and with the teacher-forced response loss (`sqft-ov eval`'s default). The base
model answers at length (up to 64 new tokens); `--finetuned` adds the deployed models of a
`sqft-ov quickstart --model` run, which answer briefly: its QA-SparsePEFT INT4 IR through OpenVINO and its
unmerged LoRA adapter in PyTorch. `--part` runs one half; the JSON keeps the other half's last results.
Nothing else heavy may run meanwhile.
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
from sqft_ov.measure.bench.machine import machine_context
from sqft_ov.stages.sparsify import WANDA_BATCH, _batches


@torch.no_grad()
def plain_forward(model, samples: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for batch in _batches(samples, WANDA_BATCH):
        model(input_ids=batch, use_cache=False)
    return time.perf_counter() - start


def eval_run(label: str, engine: str, path: Path, extra: dict, loss: bool, data: Path) -> dict:
    report = evaluate(path, data, EvalConfig(data_format=SFTFormat(chat_template=True), loss=loss, **extra))
    rate = report.examples / (report.seconds - report.load_seconds)  # loading/compiling is a one-off cost
    print(f"eval {label} ({engine}, {'with' if loss else 'no'} loss): {rate:.2f} problems/s "
          f"({report.examples} in {report.seconds - report.load_seconds:.1f} s after {report.load_seconds:.1f} s "
          f"loading), exact match {report.exact_match:.1%}", flush=True)
    return {"problems": report.examples, "seconds": report.seconds, "load_seconds": report.load_seconds,
            "problems_per_s": rate, "problems_per_s_with_load": report.examples / report.seconds,
            "exact_match": report.exact_match, "no_answer": report.no_answer,
            "mean_generated_chars": sum(len(s["generated"]) for s in report.samples) / max(1, len(report.samples))}


def eval_summary(label: str, engine: str, loss: bool, rounds: list[dict]) -> dict:
    """One model's rounds: the median rate against the goal, with its min-max."""
    rates = [r["problems_per_s"] for r in rounds]
    goal = 5 if engine == "openvino" else 1
    median = statistics.median(rates)
    return {"model": label, "engine": engine, "loss": loss, "problems": rounds[0]["problems"],
            "problems_per_s": median, "problems_per_s_min": min(rates), "problems_per_s_max": max(rates),
            "goal_problems_per_s": goal, "goal_met": median >= goal, "exact_match": rounds[0]["exact_match"],
            "mean_generated_chars": rounds[0]["mean_generated_chars"], "rounds": rounds}


def wanda_part(folder: Path, args: argparse.Namespace) -> dict:
    """Wanda against a plain forward pass over the same calibration tokens, interleaved over rounds."""
    model, tokenizer = load_causal_lm(folder, dtype=torch.float32)
    samples = token_chunks(tokenizer, pretraining_text(4000, seed=5), args.samples, args.seq_len)
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
    ratios = [r["ratio"] for r in rounds]
    median = statistics.median(ratios)
    return {"calibration": {"samples": len(samples), "seq_len": args.seq_len,
                            "tokens": sum(s.shape[1] for s in samples), "batch": WANDA_BATCH},
            "rounds": rounds, "wanda_over_forward": {"median": median, "min": min(ratios), "max": max(ratios),
                                                     "goal": 2.0, "goal_met": median <= 2.0}}


def eval_part(folder: Path, args: argparse.Namespace) -> list[dict]:
    """Eval throughput of the base (INT4 IR, PyTorch) and, with --finetuned, of two deployed models."""
    with tempfile.TemporaryDirectory(prefix="sqft-real-") as tmp:
        tmp = Path(tmp)
        task = write_task(tmp / "task", train=10, test=args.eval_problems)
        ir = export(folder, tmp / "ir", ExportConfig(weight_format="int4", group_size_fallback="adjust")).output
        models = [("base INT4 IR", "openvino", ir, {}), ("base", "pytorch", folder, {})]
        if args.finetuned is not None:
            q = args.finetuned
            models += [("QA-SparsePEFT INT4 IR", "openvino", q / "qa-sparsepeft" / "ir", {}),
                       ("Wanda base + LoRA adapter", "pytorch", q / "sparse-wanda50",
                        {"adapter": q / "lora" / "adapter"})]
        runs = [(label, engine, path, extra, loss) for label, engine, path, extra in models for loss in (False, True)]
        measured: dict[int, list[dict]] = {k: [] for k in range(len(runs))}
        for _ in range(args.eval_rounds):  # rounds interleave the models: a slow spell of the machine hits all
            for k, (label, engine, path, extra, loss) in enumerate(runs):
                measured[k].append(eval_run(label, engine, path, extra, loss, task["test"]))
        return [eval_summary(label, engine, loss, measured[k]) for k, (label, engine, _, _, loss) in enumerate(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--eval-problems", type=int, default=100)
    parser.add_argument("--eval-rounds", type=int, default=2)
    parser.add_argument("--finetuned", type=Path, help="a `sqft-ov quickstart --model` output folder")
    parser.add_argument("--part", choices=("all", "wanda", "eval"), default="all")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "real-model-timings.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    t = time.perf_counter()
    folder = resolve_model(args.model)
    result = json.loads(args.out.read_text()) if args.part != "all" and args.out.is_file() else {}
    result.update({"model": str(args.model), "folder": str(folder), "first_resolve_seconds": time.perf_counter() - t})
    if args.part in ("all", "wanda"):
        result["wanda"] = {**wanda_part(folder, args), "machine": machine_context()}
    if args.part in ("all", "eval"):
        evals = eval_part(folder, args)
        result["eval"] = {"runs": evals, "machine": machine_context(),
                          "goals": [f"{e['model']} ({e['engine']}, {'with' if e['loss'] else 'no'} loss): "
                                    f"{e['problems_per_s']:.2f}/s (median; {e['problems_per_s_min']:.2f}-"
                                    f"{e['problems_per_s_max']:.2f}), goal {e['goal_problems_per_s']}/s "
                                    f"{'met' if e['goal_met'] else 'MISSED'}" for e in evals]}
    result["torch_threads"] = torch.get_num_threads()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"wanda_over_forward": result.get("wanda", {}).get("wanda_over_forward"),
                      "eval": result.get("eval", {}).get("goals")}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
