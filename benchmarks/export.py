"""Wall time and peak memory of `sqft-ov sparsify` and `sqft-ov export` on a TinyLlama-1.1B-shaped model.

The model has TinyLlama-1.1B's shape (22 layers, hidden 2048, MLP 5632, 32 heads / 4 KV heads, vocab
32000, bf16) with random weights, built locally. Export is compared with `optimum-cli export openvino`
on the same (Wanda 50 %) model in the same run, the two tools interleaved per repeat; each command runs in
its own process and its peak RSS is that process tree's ru_maxrss (os.wait4). Reported: medians and the
median of the per-repeat ratios ours / optimum-cli (goal: <= 1.2 for time and memory).

    python benchmarks/export.py                # full run (~20 min on 2 cores), JSON to benchmarks/results/
    python benchmarks/export.py --small        # same steps on a small shape, a smoke run in ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
from pathlib import Path

from common import cli, measure

ROOT = Path(__file__).resolve().parents[1]
TINYLLAMA = dict(arch="llama", layers=22, hidden=2048, intermediate=5632, heads=32, kv_heads=4, vocab=32000,
                 max_positions=2048, dtype="bfloat16")
SMALL = dict(arch="llama", layers=4, hidden=256, intermediate=512, heads=4, kv_heads=2, vocab=2048,
             max_positions=512, dtype="bfloat16")


def optimum(*args) -> list[str]:
    exe = Path(sys.executable).with_name("optimum-cli")
    return [str(exe), "export", "openvino", *map(str, args)]


EXPORTS = {
    "fp16": (["--weight-format", "fp16"], ["--weight-format", "fp16"]),
    "int8": (["--weight-format", "int8", "--asym"], ["--weight-format", "int8"]),
    "int4": (["--weight-format", "int4", "--asym", "--group-size", "128"],
             ["--weight-format", "int4", "--group-size", "128", "--ratio", "1.0"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="small shape: a quick check that it all runs")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip-sparsify", action="store_true",
                        help="reuse the sparse models and sparsify figures of the previous run (export only)")
    args = parser.parse_args()
    shape = SMALL if args.small else TINYLLAMA
    name = "small" if args.small else "tinyllama-1.1b-shape"
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    base, calibration = work / "base", work / "calibration.txt"

    sys.path.insert(0, str(ROOT))
    from sqft_ov.quickstart.tiny import sample_corpus  # light: torch is imported only by the commands measured

    if not base.exists():
        # Built in a child process: a child's ru_maxrss starts from its parent's RSS at fork, so this
        # process must stay small for the peak-memory figures of the commands below to be their own.
        print(f"building {name} model ...", flush=True)
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in shape.items()]
        measure(cli("tiny-model", base, *flags))
    calibration.write_text("\n".join(sample_corpus(2000, seed=3)) + "\n")

    results: dict = {"model": name, "shape": shape, "repeats": args.repeats, "sparsify": {}, "export": {},
                     "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                 "python": platform.python_version()}}
    target = args.json or ROOT / "benchmarks" / "results" / f"export-{name}.json"
    if args.skip_sparsify:
        results["sparsify"] = json.loads(target.read_text())["sparsify"]
    for method, extra in (("wanda", ["--dataset", calibration, "--num-samples", 16, "--seq-len", 256]),
                          ("magnitude", [])):
        if args.skip_sparsify:
            break
        out = work / f"sparse-{method}"
        print(f"sparsify {method} ...", flush=True)
        results["sparsify"][method] = measure(cli("sparsify", base, out, "--method", method, *extra, "--overwrite"))
        print(f"  {results['sparsify'][method]}", flush=True)
    sparse = work / "sparse-wanda"

    for fmt, (ours_flags, theirs_flags) in EXPORTS.items():
        runs = []
        for r in range(args.repeats):
            pair = {}
            for tool in (("ours", "optimum-cli") if r % 2 == 0 else ("optimum-cli", "ours")):
                out = work / f"ir-{fmt}-{tool}"
                shutil.rmtree(out, ignore_errors=True)
                cmd = (cli("export", sparse, out, *ours_flags) if tool == "ours" else
                       optimum("-m", sparse, "--task", "text-generation-with-past", *theirs_flags, out))
                pair[tool] = measure(cmd)
            pair["time_ratio"] = pair["ours"]["seconds"] / pair["optimum-cli"]["seconds"]
            pair["memory_ratio"] = pair["ours"]["peak_rss_mib"] / pair["optimum-cli"]["peak_rss_mib"]
            print(f"export {fmt} repeat {r}: {json.dumps(pair)}", flush=True)
            runs.append(pair)
        ours_zeros = json.loads((work / f"ir-{fmt}-ours" / "sqft_export.json").read_text())
        results["export"][fmt] = {
            "runs": runs,
            "ours_seconds": statistics.median(p["ours"]["seconds"] for p in runs),
            "optimum_seconds": statistics.median(p["optimum-cli"]["seconds"] for p in runs),
            "ours_peak_rss_mib": statistics.median(p["ours"]["peak_rss_mib"] for p in runs),
            "optimum_peak_rss_mib": statistics.median(p["optimum-cli"]["peak_rss_mib"] for p in runs),
            "time_ratio_median": statistics.median(p["time_ratio"] for p in runs),
            "memory_ratio_median": statistics.median(p["memory_ratio"] for p in runs),
            "ir_bytes_ours": sum(f.stat().st_size for f in (work / f"ir-{fmt}-ours").glob("openvino_model.*")),
            "ir_bytes_optimum": sum(f.stat().st_size for f in (work / f"ir-{fmt}-optimum-cli").glob("openvino_model.*")),
            "source_zeros_kept": f"{sum(w['zeros_kept'] for w in ours_zeros['weights'].values())}/"
                                 f"{sum(w['source_zeros'] for w in ours_zeros['weights'].values())}",
        }

    print(f"\n{name}: sparsify and export, medians over {args.repeats} interleaved repeats")
    for method, m in results["sparsify"].items():
        print(f"  sparsify {method:9s} {m['seconds']:7.1f} s  {m['peak_rss_mib']:7.0f} MiB")
    print(f"  {'export':8s} {'ours s':>8s} {'optimum s':>10s} {'ratio':>6s} {'ours MiB':>9s} {'optimum MiB':>12s} {'ratio':>6s}")
    for fmt, e in results["export"].items():
        print(f"  {fmt:8s} {e['ours_seconds']:8.1f} {e['optimum_seconds']:10.1f} {e['time_ratio_median']:6.2f} "
              f"{e['ours_peak_rss_mib']:9.0f} {e['optimum_peak_rss_mib']:12.0f} {e['memory_ratio_median']:6.2f}")
    results["benchmark_process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {target}")


if __name__ == "__main__":
    main()
