"""LoNAS / EFTNAS sub-networks against their full-width super-networks: accuracy, size and paired decode speed.

    python benchmarks/nas.py [--model smollm2|PATH] [--recipes lonas eftnas] [--steps 80] [--train 800]
                             [--test 100] [--max-size 0.7] [--head-widths "1.0 0.67"] [--repeats 8]
                             [--no-chat-template] [--out benchmarks/results/nas-smollm2.json]

On the quickstart's foundation model (a folder under the sqft-ov cache): --model FOLDER --no-chat-template
--head-widths "1.0 0.5" --steps 600 --lr 3e-3 --batch-size 16 --train 2000 --test 200.

Each recipe trains one super-network on the quickstart's arithmetic task (chat template on for a real model),
searches a sub-network within --max-size of the decoder's weights, cuts it out, and exports it and the
full-width model to INT4 (both g64 asym). All IRs are then decoded side by side in one `bench` run (prompts
interleaved, median of --repeats, the first recipe's full-width IR the baseline): the figure of issue 15 is
the paired decode ratio sub-network / full at <= 1 point of accuracy lost. Nothing else heavy may run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sqft_ov.io.gguf import resolve_model
from sqft_ov.quickstart.arithmetic import write_task
from sqft_ov.recipes import eftnas, lonas
from sqft_ov.measure.bench import BenchConfig, BenchModel, bench
from sqft_ov.measure.bench.machine import machine_context


def parameters(folder: Path) -> int:
    """Parameters stored in a Hugging Face folder (a tied lm_head is stored once)."""
    from math import prod

    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(file, framework="pt") as f:
            total += sum(prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--recipes", nargs="+", default=["lonas", "eftnas"], choices=["lonas", "eftnas"])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--max-size", type=float, default=0.7)
    parser.add_argument("--head-widths", default="1.0 0.67")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--no-chat-template", action="store_true", help="A base model without one (the foundation).")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sqft-nas"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/nas-smollm2.json"))
    args = parser.parse_args()

    base = resolve_model(args.model)
    task = write_task(args.work / "task", args.train, args.test)
    common = dict(model=base, data=task["train"].parent, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                  max_size=args.max_size, chat_template=not args.no_chat_template, overwrite=True)
    rows, seconds = [], {}
    for name in args.recipes:
        start = time.perf_counter()
        recipe = {"lonas": lonas.recipe, "eftnas": eftnas.recipe}[name]
        extra = {"head_widths": args.head_widths} if name == "lonas" else {}
        rows += recipe(out=args.work / name, **common, **extra)
        seconds[name] = time.perf_counter() - start
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    models = [BenchModel(r.model, None, r.label) for r in rows]
    baseline = next(i for i, r in enumerate(rows) if "full widths" in r.label) + 1
    report = bench(models, BenchConfig(prompt_tokens=32, new_tokens=64, repeats=args.repeats, warmup=1,
                                       baseline=baseline, bandwidth_gib=0))
    table = []
    for row, entry in zip(rows, report.models):
        chosen = json.loads(((row.model.parent / "sub_network.json")).read_text())
        table.append({"label": row.label, "accuracy": row.accuracy, "decoder_share": chosen["decoder_share"],
                      "parameters": parameters(row.model.parent / "merged"),
                      "widths": chosen["widths"], "ir": str(row.model), "size_mib": entry.get("size_bytes", 0) / 2**20,
                      "weight_bytes_per_token": entry.get("weight_bytes_per_token"),
                      "decode_tokens_per_s": entry["stats"]["decode_tokens_per_s"]["median"] if entry["ok"] else None,
                      "decode_ratio_vs_baseline": entry.get("ratios")})
    result = {"model": str(base), "machine": machine_context(), "settings": vars(args) | {"work": str(args.work),
                                                                                        "out": str(args.out)},
              "recipe_seconds": seconds, "baseline": report.baseline, "table": table, "bench": report.to_dict()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    for t in table:
        print(f"{t['label']:24s} acc {t['accuracy']:.1%}  decoder {t['decoder_share']:.0%}  "
              f"{t['parameters'] / 1e6:.1f} M params  {t['size_mib']:.1f} MiB  "
              f"decode {t['decode_tokens_per_s']} tok/s  ratios {t['decode_ratio_vs_baseline']}")


if __name__ == "__main__":
    main()
