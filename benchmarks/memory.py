"""Peak memory and step time of fine-tuning per method and memory setting, and what a 7-8B model would need.

Each run is `sqft_ov.finetune` in a process of its own on a locally built, 50 %-sparse (magnitude) Llama-shaped
model with random weights (memory and time do not depend on the values), on generated arithmetic data. It
records two peaks of the process's resident memory (VmHWM): *setup* (loading the base, NNCF's INT4 wrapping and
its SVD initialisation of the adapters) and *train* (the optimizer steps alone: the peak is reset after setup
through /proc/self/clear_refs), and the median step time after the first step.

The memory model fitted per (method, setting) over every shape and sequence length measured is
    train peak = a + b * parameters + c * tokens per step * layers * hidden size
(least squares), and the script prints its prediction for the Llama-3-8B and Mistral-7B shapes. These are
CPU resident-set figures: a GPU run adds its own allocator and kernel workspaces, so the prediction is a
floor for one GPU, not a guarantee.

    python benchmarks/memory.py            # 135M (SmolLM2) and 1.1B (TinyLlama) shapes, ~40 min on 2 cores
    python benchmarks/memory.py --small    # a quick check that it all runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import apples_sft_rows, cli, measure

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "smollm2-135m": dict(arch="llama", layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, vocab=49152),
    "tinyllama-1.1b": dict(arch="llama", layers=22, hidden=2048, intermediate=5632, heads=32, kv_heads=4, vocab=32000),
}
SMALL = {"small": dict(arch="llama", layers=2, hidden=256, intermediate=512, heads=4, kv_heads=2, vocab=1024)}
# Predicted only (parameters, layers, hidden size) -- the paper's models
TARGETS = {"llama-3-8b": (8_030_261_248, 32, 4096), "mistral-7b": (7_241_732_096, 32, 4096)}
METHODS = {
    "lora": dict(method="lora", rank=16),
    "sparsepeft": dict(method="sparsepeft", rank=16),
    "qa-sparsepeft": dict(method="qa-sparsepeft", rank=16),
    "qa-sparsepeft+nls": dict(method="qa-sparsepeft", nls=True, rank_space=(16, 12, 8)),
}
SETTINGS = {
    "fp32": dict(precision="fp32"),
    "bf16": dict(precision="bf16"),
    "bf16+ckpt": dict(precision="bf16", gradient_checkpointing=True),
}


def worker(spec: dict) -> None:
    """One finetune run in this process; prints its measurements as JSON on the last line."""
    import time

    from transformers import TrainerCallback

    from sqft_ov import FinetuneConfig, SFTFormat, finetune

    def hwm_mib() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/self/status")

    marks: dict[str, float] = {}

    class Peaks(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks["setup_peak_mib"] = hwm_mib()
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak: what follows is training alone
            marks["train_start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            marks["train_peak_mib"] = hwm_mib()

    data = _packed_data(spec["model"], spec["seq_len"], Path(spec["out"]).with_suffix(".jsonl"))
    config = FinetuneConfig(**spec["config"], data_format=SFTFormat(max_length=spec["seq_len"]),
                            max_steps=spec["steps"], batch_size=spec["batch_size"], eval_split=0, save_steps=10_000,
                            group_size=64)
    result = finetune(spec["model"], data, spec["out"], config, overwrite=True, callbacks=[Peaks()])
    steps = json.loads((Path(spec["out"]) / "sqft_adapter.json").read_text())["step_seconds"]
    print(json.dumps({**marks, "step_seconds": statistics.median(steps[1:]), "first_step_seconds": steps[0],
                      "steps": result.steps}))


def _packed_data(model: str, seq_len: int, path: Path) -> Path:
    """Arithmetic problems packed into prompts that fill `seq_len` tokens of this model's tokenizer with the
    last problem's answer as the response, so every step trains on full-length sequences."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    rows, packed, text = apples_sft_rows(4096), [], ""
    previous = rows[0]  # the problem whose answer ends the prompt being packed
    for row in rows:
        candidate = f"{text} {row['prompt']}".strip()
        if len(tokenizer(candidate + " " + row["response"])["input_ids"]) >= seq_len - 2:
            packed.append({"prompt": text, "response": previous["response"]})
            candidate = row["prompt"]
        text, previous = candidate, row
        if len(packed) == 64:
            break
    path.write_text("\n".join(json.dumps(r) for r in packed) + "\n")
    return path


def run(spec: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        raise RuntimeError(f"{spec['name']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def params_of(shape: dict) -> int:
    h, i, v, layers = shape["hidden"], shape["intermediate"], shape["vocab"], shape["layers"]
    kv = h // shape["heads"] * shape["kv_heads"]
    return layers * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + 2 * v * h + h  # untied embeddings


def fit(points: list[tuple[float, float, float]]) -> tuple[float, float, float] | None:
    """Least squares of peak = a + b * params + c * (tokens * layers * hidden) over (params, act, peak)."""
    import numpy as np

    if len({(p, a) for p, a, _ in points}) < 3:
        return None
    x = np.array([[1.0, p, a] for p, a, _ in points])
    y = np.array([peak for _, _, peak in points])
    return tuple(float(v) for v in np.linalg.lstsq(x, y, rcond=None)[0])


def memory_model(runs: list[dict], batch_size: int) -> dict:
    """The fitted train-peak model per method and setting (where >= 3 distinct points), printed with its
    predictions for the TARGETS at `batch_size` x 512 tokens."""
    print(f"\nmemory model per method and setting (train peak, GiB), predicted at batch {batch_size} x 512 tokens:")
    model = {}
    for method in METHODS:
        for setting in SETTINGS:
            mine = [r for r in runs if r["method"] == method and r["setting"] == setting]
            coef = fit([(r["params"], r["tokens_per_step"] * r["layers"] * r["hidden"], r["train_peak_mib"] / 1024)
                        for r in mine])
            if coef is None:
                continue
            a, b, c = coef
            predicted = {t: a + b * p + c * batch_size * 512 * layers * hidden for t, (p, layers, hidden) in TARGETS.items()}
            model[f"{method} {setting}"] = {"intercept_gib": a, "gib_per_billion_params": b * 1e9,
                                            "gib_per_million_token_layer_hidden": c * 1e6, "predicted_gib": predicted,
                                            "points": len(mine)}
            print(f"  {method:18s} {setting:10s} {a:6.2f} + {b * 1e9:5.2f}/B params + {c * 1e6:6.3f}/M tok*L*H"
                  f"  -> " + "  ".join(f"{t} {g:6.1f}" for t, g in predicted.items()))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "memory")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--fit", help="Comma-separated result files: fit one memory model over all their runs.")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-lens", default="128,256", help="Sequence lengths measured on the smallest shape.")
    parser.add_argument("--methods", default=",".join(METHODS), help="Methods measured on the smaller shapes.")
    parser.add_argument("--shapes", default=None, help="Shapes to measure (default: all of them).")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="Memory settings measured.")
    parser.add_argument("--large-methods", default="qa-sparsepeft+nls",
                        help="Methods also measured on the largest shape (each run there pays NNCF's SVD init).")
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.fit:  # one model over several result files (shapes measured in separate runs)
        files = [json.loads(Path(f).read_text()) for f in args.fit.split(",")]
        runs = [r for f in files for r in f["runs"]]
        out = {"sources": args.fit.split(","), "machine": files[0]["machine"],
               "model": memory_model(runs, files[0]["batch_size"])}
        target = ROOT / "benchmarks" / "results" / "memory-model.json"
        target.write_text(json.dumps(out, indent=2) + "\n")
        return print(f"written {target}")
    shapes = SMALL if args.small else {n: SHAPES[n] for n in (args.shapes.split(",") if args.shapes else SHAPES)}
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    seq_lens = [int(s) for s in args.seq_lens.split(",")]
    from sqft_ov.measure.bench.machine import machine_context

    names = list(shapes)
    target = ROOT / "benchmarks" / "results" / f"memory-{'small' if args.small else '-'.join(names)}.json"
    results = {"machine": machine_context(), "steps": args.steps, "batch_size": args.batch_size, "runs": []}
    if target.is_file():  # runs measured before (other methods or settings) stay, unless measured again now
        earlier = json.loads(target.read_text())
        if earlier.get("machine", {}).get("cpu") == results["machine"].get("cpu"):
            results["runs"] = earlier["runs"]
    for name in names:
        shape = shapes[name]
        base, sparse = work / f"{name}-base", work / f"{name}-sparse"
        if not sparse.exists():
            measure(cli("tiny-model", base, *[f"--{k.replace('_', '-')}={v}" for k, v in shape.items()],
                        "--max-positions=2048", "--overwrite"))
            measure(cli("sparsify", base, sparse, "--method", "magnitude", "--overwrite"))
        largest = name == "tinyllama-1.1b"
        methods = args.large_methods.split(",") if largest else args.methods.split(",")
        for seq_len in ([seq_lens[0]] if largest else seq_lens):
            for method in methods:
                for setting in args.settings.split(","):
                    spec = {"name": f"{name} {method} {setting} seq {seq_len}", "model": str(sparse),
                            "out": str(work / "adapter"), "steps": args.steps,
                            "batch_size": args.batch_size, "seq_len": seq_len,
                            "config": {**METHODS[method], **SETTINGS[setting]}}
                    measured = run(spec)
                    row = {"shape": name, "params": params_of(shape), "layers": shape["layers"],
                           "hidden": shape["hidden"], "method": method, "setting": setting, "seq_len": seq_len,
                           "tokens_per_step": args.batch_size * seq_len, **measured}
                    key = (name, method, setting, seq_len)
                    results["runs"] = [r for r in results["runs"]
                                       if (r["shape"], r["method"], r["setting"], r["seq_len"]) != key] + [row]
                    target.write_text(json.dumps(results, indent=2) + "\n")  # a stopped run keeps what it measured
                    print(f"{spec['name']:48s} setup peak {row['setup_peak_mib']:7.0f} MiB  train peak "
                          f"{row['train_peak_mib']:7.0f} MiB  step {row['step_seconds']:6.2f} s", flush=True)

    results["model"] = memory_model(results["runs"], args.batch_size)
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {target}")


if __name__ == "__main__":
    main()
