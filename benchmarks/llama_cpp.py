"""SmolLM2-135M decoding: sqft-ov's INT4 IR in openvino_genai against llama.cpp on the same weights, same run.

    python benchmarks/llama_cpp.py [--rounds 8] [--repeats 3] [--prompt-tokens 32] [--new-tokens 64] [--threads 2]
                                   [--llama-cpp-source SDIST_OR_DIR]
                                   [--out benchmarks/results/llama-cpp-smollm2-<cpu>.json]

What it does (issue 31, item 3; ~10 min on 2 cores the first time, building llama.cpp, ~3 min after):
  * builds llama.cpp's `llama-bench` and `llama-quantize` once into benchmarks/work/llama.cpp, from the
    `llama-cpp-python` source package (`pip download --no-binary`) or a source you give; llama.cpp is never a
    dependency of sqft-ov. CMake with GGML_NATIVE, the build llama.cpp's README recommends for a CPU;
  * the GGUFs: the example model as shipped (Q4_1, tied token_embd Q8_0) and requantized to Q4_0
    (`llama-quantize --allow-requantize`, as a llama.cpp user would get it);
  * the IRs of the same GGUF through `sqft_ov.export`: the default (`--weight-format int4`: asym, group 128
    adjusted to 64 where 576 does not divide, INT8 tied lm_head, q/k/v and gate/up fused), the same without
    fusion (`--no-fuse-projections`, the default before it) and group 32 sym (Q4_0's block and symmetry);
  * R rounds, each: `sqft_ov.bench` of the IRs (genai, one process per IR, 1 warm-up + REPEATS runs), then
    `llama-bench -p 0 -n NEW -d PROMPT -r REPEATS -t THREADS` of each GGUF (decode of NEW tokens after a context
    of PROMPT tokens, what bench times). A round's figure is the median of its repeats; ratios are paired per
    round against llama.cpp's Q4_0 (median, min-max over rounds);
  * where a decode step of the default and the unfused IR goes: genai's time per token, the bare stateful graph's
    step (default properties, no PERF_COUNT) and OpenVINO's per-node profile (PERF_COUNT), FullyConnected nodes
    apart. The IR folders are reused by later runs: delete them after changing the export.
The goal (issue 31): the default IR >= 0.8x llama.cpp Q4_0. The JSON records the CPU, versions and commands.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from common import cpu_slug

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work"
BUILD = WORK / "llama.cpp"
GOAL = 0.8
IR_EXPORTS = {  # label -> export options beyond --weight-format int4
    "int4-default": {},
    "int4-unfused": {"fuse_projections": False},  # the default before projection fusion
    "int4-g32-sym": {"group_size": 32, "sym": True},  # Q4_0's block and symmetry
}
PROFILED = ("int4-default", "int4-unfused")
LLAMA_CPP_BUILD: dict = {}  # what llama-bench reports of itself (commit, CPU), for the JSON
PROJECTION = re.compile(r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|lm_head)")


def llama_cpp_tools(source: Path | None) -> dict[str, Path]:
    """llama-bench and llama-quantize, built once (delete benchmarks/work/llama.cpp to rebuild)."""
    bin_dir = BUILD / "build" / "bin"
    tools = {name: bin_dir / name for name in ("llama-bench", "llama-quantize")}
    if all(p.is_file() for p in tools.values()):
        return tools
    BUILD.mkdir(parents=True, exist_ok=True)
    if source is None:
        print("downloading the llama-cpp-python source package ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "llama-cpp-python", "-d", str(BUILD)], check=True)
        source = next(BUILD.glob("llama_cpp_python-*.tar.gz"))
    if source.is_file():
        with tarfile.open(source) as tar:
            tar.extractall(BUILD, filter="data")
        source = next(BUILD.glob("llama_cpp_python-*/vendor/llama.cpp"))
    print(f"building llama.cpp from {source} ...", flush=True)
    subprocess.run(["cmake", "-S", str(source), "-B", str(BUILD / "build"), "-DCMAKE_BUILD_TYPE=Release",
                    "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(BUILD / "build"), "-j", "2", "--target", *tools], check=True,
                   stdout=subprocess.DEVNULL)
    return tools


def ggufs(tools: dict[str, Path], work: Path) -> dict[str, Path]:
    from sqft_ov.io.examples import fetch_example

    shipped = Path(fetch_example("smollm2"))
    q4_0 = work / "smollm2-Q4_0.gguf"
    if not q4_0.is_file():
        tmp = q4_0.with_suffix(".partial")
        subprocess.run([str(tools["llama-quantize"]), "--allow-requantize", str(shipped), str(tmp), "Q4_0", "2"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tmp.rename(q4_0)
    return {"llama.cpp-Q4_0": q4_0, "llama.cpp-Q4_1 (shipped)": shipped}


def irs(work: Path) -> dict[str, Path]:
    from sqft_ov import ExportConfig, export

    out = {}
    for label, options in IR_EXPORTS.items():
        out[label] = work / label
        if not out[label].exists():
            print(f"exporting {label} ...", flush=True)
            export("smollm2", out[label], ExportConfig(weight_format="int4", **options))
    return out


def llama_bench(tool: Path, gguf: Path, args) -> list[float]:
    """Decode tok/s of each of llama-bench's repetitions (it warms up first)."""
    run = subprocess.run([str(tool), "-m", str(gguf), "-p", "0", "-n", str(args.new_tokens), "-d",
                          str(args.prompt_tokens), "-r", str(args.repeats), "-t", str(args.threads), "-o", "json"],
                         check=True, capture_output=True, text=True)
    (record,) = json.loads(run.stdout)
    LLAMA_CPP_BUILD.update({k: record.get(k) for k in ("build_commit", "build_number", "cpu_info", "type_k")})
    return [float(x) for x in record["samples_ts"]]


def bare_step_ms(xml: Path, prompt_tokens: int, steps: int = 32) -> float:
    """Median wall time of one decode step of the bare stateful graph, default properties, no PERF_COUNT."""
    import openvino as ov

    from sqft_ov.measure.tune.probe import _feed

    request = ov.Core().compile_model(str(xml), "CPU").create_infer_request()
    compiled = request.get_compiled_model()
    request.infer(_feed(compiled, list(range(10, 10 + prompt_tokens)), 0))
    walls = []
    for step in range(steps + 2):
        start = time.perf_counter()
        request.infer(_feed(compiled, [11 + step], prompt_tokens + step))
        walls.append((time.perf_counter() - start) * 1e3)
    return float(np.median(walls[2:]))


def step_profile(xml: Path, args, genai_tokens_per_s: float) -> dict:
    """One decode step: genai's time per token beside the bare graph's step and OpenVINO's per-node profile."""
    from sqft_ov.measure.tune.profile import profile_decode_step

    profile = profile_decode_step(xml, {"INFERENCE_NUM_THREADS": str(args.threads)}, prompt_tokens=args.prompt_tokens,
                                  steps=16)
    kinds: dict[str, list[dict]] = {}
    for layer in profile["fully_connected_layers"]:  # a fused node's name lists its parts
        kinds.setdefault("+".join(PROJECTION.findall(layer["name"])) or layer["name"], []).append(layer)
    per_kind = {kind: {"nodes": len(layers), "mean_us": 1e3 * statistics.mean(x["ms"] for x in layers),
                       "weight_bytes": layers[0]["weight_bytes"]} for kind, layers in kinds.items()}
    return {"genai_ms_per_token": 1e3 / genai_tokens_per_s, "bare_graph_step_ms": bare_step_ms(xml, args.prompt_tokens),
            "nodes_ms": profile["graph_ms"], "fully_connected": profile["fully_connected"],
            "fully_connected_by_projection": per_kind, "by_node_type": profile["by_node_type"][:8]}


def compare(tools, models: dict[str, Path], engines: dict[str, Path], args) -> dict[str, list[float]]:
    """Per engine, the median decode tok/s of each round (rounds interleave every engine)."""
    from sqft_ov import BenchConfig, BenchModel, bench

    config = BenchConfig(prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=args.repeats,
                         warmup=1, bandwidth_gib=0, properties={"INFERENCE_NUM_THREADS": str(args.threads)})
    per_round: dict[str, list[float]] = {label: [] for label in [*engines, *models]}
    for r in range(args.rounds):
        result = bench([BenchModel(path, label=label) for label, path in engines.items()], config)
        for entry in result.models:
            if not entry["ok"]:
                raise RuntimeError(f"{entry['label']}: {entry['error']}")
            per_round[entry["label"]].append(statistics.median(run["decode_tokens_per_s"] for run in entry["runs"]))
        for label, gguf in models.items():
            per_round[label].append(statistics.median(llama_bench(tools["llama-bench"], gguf, args)))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in per_round.items()),
              flush=True)
    return per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-cpp-source", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from sqft_ov.measure.bench.machine import machine_context
    from sqft_ov.measure.bench.runner import package_versions

    work = WORK / "smollm2-decode"
    work.mkdir(parents=True, exist_ok=True)
    tools = llama_cpp_tools(args.llama_cpp_source)
    models, engines = ggufs(tools, work), irs(work)
    machine = machine_context()
    per_round = compare(tools, models, engines, args)
    baseline = per_round["llama.cpp-Q4_0"]
    rows = []
    for label, values in per_round.items():
        ratios = [v / b for v, b in zip(values, baseline)]
        rows.append({"engine": label, "decode_tokens_per_s": values, "median": statistics.median(values),
                     "ratio_to_q4_0": {"per_round": ratios, "median": statistics.median(ratios),
                                       "min": min(ratios), "max": max(ratios)}})
    steps = {label: step_profile(engines[label] / "openvino_model.xml", args,
                                 next(r["median"] for r in rows if r["engine"] == label)) for label in PROFILED}
    default_ratio = next(r["ratio_to_q4_0"]["median"] for r in rows if r["engine"] == "int4-default")
    llama_cpp = {"folder": str(BUILD / "build"), **LLAMA_CPP_BUILD,
                 "sources": sorted(p.name for p in BUILD.glob("llama_cpp_python-*"))}
    report = {"command": "python benchmarks/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "machine": machine, "versions": package_versions(), "llama_cpp_build": llama_cpp,
              "settings": vars(args) | {"llama_cpp_source": str(args.llama_cpp_source), "out": str(args.out)},
              "rows": rows,
              "goal": {"default_ir_to_q4_0": GOAL, "measured": default_ratio, "met": default_ratio >= GOAL},
              "decode_step": steps}
    out = args.out or ROOT / "benchmarks" / "results" / f"llama-cpp-smollm2-{cpu_slug(machine['cpu'])}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    for row in rows:
        r = row["ratio_to_q4_0"]
        print(f"{row['engine']:28s} {row['median']:7.1f} tok/s  x Q4_0 {r['median']:.2f} "
              f"({r['min']:.2f}-{r['max']:.2f})")
    for label, step in steps.items():
        fc = step["fully_connected"]
        print(f"{label}: genai {step['genai_ms_per_token']:.2f} ms/token; bare graph step "
              f"{step['bare_graph_step_ms']:.2f} ms, its nodes {step['nodes_ms']:.2f} ms, of which {fc['count']} "
              f"FullyConnected {fc['ms']:.2f} ms")
        print("  " + ", ".join(f"{kind} {k['nodes']} x {k['mean_us']:.1f} us ({k['weight_bytes'] / 1e3:.0f} kB)"
                               for kind, k in step["fully_connected_by_projection"].items()))
    print(f"goal >= {GOAL}: {'met' if default_ratio >= GOAL else 'missed'} ({default_ratio:.2f}); wrote {out}")


if __name__ == "__main__":
    main()
