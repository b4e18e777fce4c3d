"""Does unstructured sparsity buy decode speed on a CPU without AMX? A bitmask sparse GEMV against OpenVINO.

The experiment of issue 33, step 1: one decoder MLP's shapes at 1B scale (up 2048 -> 8192, down 8192 ->
2048), chained as up/down pairs, by default as many as make the dense INT4 weights at least 3x the
last-level cache (at least 6 pairs), one token (GEMV), 2 threads. Variants, all on the same random weights
magnitude-pruned per row:

* OpenVINO dense INT4 (sym, group 64) and INT8 (per channel) — NNCF `compress_weights` on a one-chain IR,
  the CPU plugin's defaults (its own FullyConnected kernels): the baseline, INT4 g64;
* `sparse_gemv.cpp` (built here with g++): bitmask + packed INT8 values (per-row scale) and bitmask +
  packed INT4 values (per-row, group-64 scales), at 50 / 60 / 70 % sparsity and, as a control, 0 %; float
  math or integer math ("int-dot": the input quantized to INT8 per group of 64, as OpenVINO's dynamic
  quantization does); AVX2 kernels everywhere and AVX-512 kernels (vpexpandb + vpdpbusd) where the CPU has
  AVX512_VBMI, AVX512_VBMI2 and AVX512_VNNI, chosen at run time.

Each layer of each variant is checked against numpy on its own dequantized weights first. Then rounds: every
variant in a rotated order, `--calls` chain calls each (median per round); per round, each variant's time is
divided by dense INT4's of the same round. Printed and written to
`benchmarks/results/sparse-kernel-<cpu>.json`: medians and min-max over rounds, bytes per weight, and the
go / no-go rule of the issue (some sparse format >= 1.2x faster than dense INT4 at <= 70 % sparsity).

    python benchmarks/sparse_kernel/run.py              # 3-15 min on 2 cores (grows with the cache)
    python benchmarks/sparse_kernel/run.py --pairs 1    # two layers: the weights fit in the cache
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import re
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from sqft_ov.io.sparse_fc.pack import pack, quantize_input, reference

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHAPES = [(8192, 2048), (2048, 8192)]  # (N out, K in): MLP up, then down
SPARSITIES = (0.5, 0.6, 0.7)
CONTROL = 0.0  # the same kernel on unpruned weights: what the kernel itself is worth, without sparsity


def build(work: Path) -> tuple[ctypes.CDLL, list[str]]:
    """The kernels' library and the instruction sets this CPU runs them with."""
    lib = work / "libsparse_gemv.so"
    source = HERE / "sparse_gemv.cpp"
    if not lib.exists() or lib.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["g++", "-O3", "-fopenmp", "-shared", "-fPIC", "-Wno-psabi", "-o", str(lib), str(source)],
                       check=True)
    dll = ctypes.CDLL(str(lib))
    if not dll.has_avx2():
        raise SystemExit("this CPU has no AVX2 + FMA: the kernel needs them")
    return dll, ["AVX2"] + (["AVX-512"] if dll.has_avx512() else [])


def prune_rows(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the smallest |w| of every row (unstructured, per output channel, as Wanda's comparison group)."""
    k = int(round(w.shape[1] * sparsity))
    if k == 0:
        return w
    cut = np.partition(np.abs(w), k - 1, axis=1)[:, k - 1:k]
    return np.where(np.abs(w) > cut, w, 0.0).astype(np.float32)


class Layer:
    """One pruned weight packed as the package's SparseFullyConnected op stores it (`sqft_ov.io.sparse_fc.pack`),
    with its scales as float32 (the op's f16 scales, which the CPU plugin hands over as f32) for the C kernels."""

    def __init__(self, w: np.ndarray, bits: int):
        self.packed = pack(w, bits)
        self.scales = self.packed.scales.astype(np.float32)
        self.n, self.k = self.packed.shape

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes  # as stored: f16 scales


KINDS = {"INT8": (8, 0, ("AVX2", "AVX-512")), "INT8 int-dot": (8, 2, ("AVX2", "AVX-512")),
         "INT4": (4, 1, ("AVX2", "AVX-512")), "INT4 int-dot": (4, 3, ("AVX-512",))}
ISA_CODES = {"AVX2": 0, "AVX-512": 1}


def layer_references(layer: Layer, x: np.ndarray, rows: slice) -> dict[bool, np.ndarray]:
    """What the float (False) and the integer (True) kernels should compute from `x` for `rows`, in float64;
    the integer one as the package's `reference`, on those rows only (numpy is slow on whole layers)."""
    codes = layer.packed.codes()[rows].astype(np.int64)
    scales = layer.scales[rows].astype(np.float64)
    scales = scales[:, None] if layer.packed.bits == 8 else scales  # per row, or per row and block of 64
    blocks = codes.reshape(codes.shape[0], -1, 64)
    weights = (blocks * scales[..., None]).reshape(codes.shape)
    q, sx = quantize_input(x)
    integer = (np.einsum("ngk,gk->ng", blocks, q).astype(np.float64) * sx * scales).sum(axis=1)
    return {False: weights @ x.astype(np.float64), True: integer}


class SparseChain:
    def __init__(self, dll: ctypes.CDLL, layers: list[Layer], threads: int, kind: int, isa: str):
        self.dll, self.layers, self.threads, self.kind = dll, layers, threads, kind
        self.xs = [np.zeros(layers[0].k, np.float32)] + [np.zeros(layer.n, np.float32) for layer in layers]
        ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
        count = len(layers)
        self.args = [
            ctypes.c_int(kind), ctypes.c_int(ISA_CODES[isa]), ctypes.c_int(count),
            (ctypes.c_void_p * count)(*[ptr(layer.packed.mask) for layer in layers]),
            (ctypes.c_void_p * count)(*[ptr(layer.packed.values) for layer in layers]),
            (ctypes.c_void_p * count)(*[ptr(layer.packed.offsets) for layer in layers]),
            (ctypes.c_void_p * count)(*[ptr(layer.scales) for layer in layers]),
            (ctypes.c_void_p * (count + 1))(*[ptr(x) for x in self.xs]),
            (ctypes.c_int * count)(*[layer.n for layer in layers]), (ctypes.c_int * count)(*[layer.k for layer in layers]),
            ctypes.c_int(threads)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.xs[0][:] = x
        if self.dll.chain(*self.args) != 0:
            raise SystemExit(f"the kernel library has no kind {self.kind} for this instruction set")
        return self.xs[-1]

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)


def layer_weight(index: int, shape: tuple[int, int]) -> np.ndarray:
    """Layer `index`'s dense float weight, the same on every call (so no variant needs them all in memory)."""
    return np.random.default_rng([0, index]).standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[1]))


def dense_chain(shapes: list[tuple[int, int]], mode: str, threads: int):
    """One IR: x -> MatMul(W1^T) -> ... (no activations: they cost the same in every variant) on the 50 %-pruned
    weights, compressed by NNCF as optimum-intel's export does, compiled with the CPU plugin's defaults."""
    import nncf
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, shapes[0][1]], np.float32, name="x")
    y = x
    for i, shape in enumerate(shapes):
        y = ops.matmul(y, ops.constant(prune_rows(layer_weight(i, shape), 0.5)), transpose_a=False, transpose_b=True)
    model = ov.Model([y], [x], "chain")
    if mode == "int4":
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=64, ratio=1.0,
                                      all_layers=True)
    else:
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    size = sum(op.get_byte_size() for op in model.get_ops() if op.get_type_name() == "Constant")
    properties = {}
    for name in ("INFERENCE_PRECISION_HINT", "DYNAMIC_QUANTIZATION_GROUP_SIZE", "INFERENCE_NUM_THREADS"):
        try:
            properties[name] = str(compiled.get_property(name))
        except RuntimeError:  # a property this OpenVINO does not report
            pass
    return (lambda v: request.infer({0: v[None]})[0][0]), size, properties


def extension_chain(layers: list[Layer], threads: int):
    """One IR of SparseFullyConnected nodes over the packed layers (the extension a sparse export deploys),
    compiled with the CPU plugin's defaults; checked against the package's reference on the first layer."""
    import openvino as ov
    import openvino.opset13 as ops

    from sqft_ov.io.sparse_fc.op import sparse_fully_connected, with_extension

    x = ops.parameter([1, layers[0].k], np.float32, name="x")
    y = x.output(0)
    for layer in layers:
        y = sparse_fully_connected(y, layer.packed).output(0)
    compiled = with_extension(ov.Core()).compile_model(ov.Model([y], [x], "sparse-chain"), "CPU",
                                                      {"INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    first = ov.Model([sparse_fully_connected(x.output(0), layers[0].packed).output(0)], [x], "first")
    probe = np.random.default_rng(2).standard_normal((1, layers[0].k)).astype(np.float32)
    got = with_extension(ov.Core()).compile_model(first, "CPU")({0: probe})[0]
    expected = reference(layers[0].packed, probe)
    error = float(np.abs(got - expected).max() / np.abs(expected).max())
    return (lambda v: request.infer({0: v[None]})[0][0]), error


def last_level_cache_bytes() -> int:
    caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"))
    size = (caches[-1] / "size").read_text().strip() if caches else "0K"
    return int(size[:-1]) * {"K": 1024, "M": 1 << 20}[size[-1]]


def sparse_variants(dll, isas: list[str], shapes: list, sparsity: float, threads: int) -> tuple[dict, dict, dict]:
    """Every kind x instruction set at one sparsity, as chains over the same packed layers; each layer is checked
    against numpy with every kernel that reads it, on a random input of its own, before its codes are freed.
    Returns the chains, each one's largest relative error and its layers; stops the run if a kernel is wrong."""
    rng = np.random.default_rng(1)
    layers: dict[int, list[Layer]] = {8: [], 4: []}
    names = {f"bitmask {label} {isa} {sparsity:.0%}": (bits, kind, isa)
             for label, (bits, kind, kernels) in KINDS.items() for isa in isas if isa in kernels}
    errors = dict.fromkeys(names, 0.0)
    for i, shape in enumerate(shapes):
        w = prune_rows(layer_weight(i, shape), sparsity)
        for bits in layers:
            layer = Layer(w, bits)
            x = rng.standard_normal(layer.k).astype(np.float32)
            rows = slice(i % 16, None, 16)  # every 16th row (a different sixteenth per layer): numpy is slow
            expected = layer_references(layer, x, rows)
            for name, (b, kind, isa) in names.items():
                if b == bits:
                    y = SparseChain(dll, [layer], threads, kind, isa)(x)[rows]
                    reference = expected[kind >= 2]
                    error = float(np.abs(y - reference).max() / np.abs(reference).max())
                    errors[name] = max(errors[name], error)
            layers[bits].append(layer)
    for name, error in errors.items():
        if error > 1e-4:
            raise SystemExit(f"{name}: the kernel disagrees with numpy (relative error {error:.2e})")
    chains = {name: SparseChain(dll, layers[bits], threads, kind, isa) for name, (bits, kind, isa) in names.items()}
    used = {name: layers[bits] for name, (bits, _, _) in names.items()}
    if sparsity > 0:  # the same packed weights through OpenVINO, as SparseFullyConnected nodes
        for bits, label in ((8, "INT8"), (4, "INT4")):
            name = f"OpenVINO SparseFC {label} {sparsity:.0%}"
            chains[name], errors[name] = extension_chain(layers[bits], threads)
            used[name] = layers[bits]
            if errors[name] > 1e-4:
                raise SystemExit(f"{name}: the extension disagrees with numpy (relative error {errors[name]:.2e})")
    return chains, errors, used


def time_rounds(variants: dict, x, rounds: int, calls: int) -> dict[str, list[float]]:
    """Per round, every variant in a rotated order: the median of `calls` calls after one warm call."""
    names = list(variants)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            variants[name](x)
            times = []
            for _ in range(calls):
                t = time.perf_counter()
                variants[name](x)
                times.append(time.perf_counter() - t)
            seconds[name].append(statistics.median(times))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {1e3 * seconds[n][-1]:.2f} ms" for n in names), flush=True)
    return seconds


def summarize(seconds: dict[str, list[float]], sizes: dict[str, int], errors: dict, weights: int) -> tuple[dict, str]:
    """Rows of ratios to dense INT4 (round by round), the table, and the go / no-go line."""
    base = seconds["OpenVINO dense INT4"]
    rows = {}
    for name, times in seconds.items():
        speedups = [b / s for b, s in zip(base, times)]
        rows[name] = {"ms_median": 1e3 * statistics.median(times), "ms_min": 1e3 * min(times),
                      "ms_max": 1e3 * max(times), "speedup_vs_dense_int4_median": statistics.median(speedups),
                      "speedup_min": min(speedups), "speedup_max": max(speedups),
                      "bits_per_weight": 8 * sizes[name] / weights,
                      "weight_gb_per_s": sizes[name] / statistics.median(times) / 1e9,
                      "max_relative_error_vs_numpy": errors.get(name)}
    print(f"\n{'variant':33s} {'ms/token':>9s} {'min-max':>13s} {'x dense INT4':>13s} {'min-max':>11s} "
          f"{'bits/w':>7s} {'GB/s':>6s}")
    for name, row in rows.items():
        print(f"{name:33s} {row['ms_median']:9.2f} {row['ms_min']:6.2f}-{row['ms_max']:<6.2f} "
              f"{row['speedup_vs_dense_int4_median']:13.2f} {row['speedup_min']:5.2f}-{row['speedup_max']:<5.2f} "
              f"{row['bits_per_weight']:7.2f} {row['weight_gb_per_s']:6.1f}")
    speedup = {n: r["speedup_vs_dense_int4_median"] for n, r in rows.items()}
    best = max((n for n in rows if n.startswith("bitmask") and not n.endswith(f" {CONTROL:.0%}")), key=speedup.get)
    control = speedup[best.rsplit(" ", 1)[0] + f" {CONTROL:.0%}"]
    verdict = (f"{'GO' if speedup[best] >= 1.2 else 'NO-GO'}: the best sparse format, {best}, runs at "
               f"{speedup[best]:.2f}x dense INT4 (rule: >= 1.2x at <= 70 %); the same kernel on unpruned weights: "
               f"{control:.2f}x, so sparsity itself buys {speedup[best] / control:.2f}x")
    extension = [n for n in rows if n.startswith("OpenVINO SparseFC")]
    if extension:
        through = max(extension, key=speedup.get)
        verdict += (f"; through OpenVINO as SparseFullyConnected nodes, the best, {through}, runs at "
                    f"{speedup[through]:.2f}x dense INT4")
    print(verdict)
    return rows, verdict


def main() -> None:
    from sqft_ov.measure.bench.machine import machine_context, read_bandwidth

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=None,
                        help="up/down pairs in the chain (default: dense INT4 >= 3x the last-level cache, >= 6)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "sparse-kernel")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dll, isas = build(args.work)
    cache = last_level_cache_bytes()
    int4_bytes_per_pair = sum(n * k for n, k in SHAPES) * 4.25 / 8
    pairs = args.pairs or max(6, math.ceil(3 * cache / int4_bytes_per_pair))
    shapes = SHAPES * pairs
    x = np.random.default_rng(0).standard_normal(shapes[0][1]).astype(np.float32)

    variants, sizes, errors, properties = {}, {}, {}, {}
    for mode in ("INT4", "INT8"):
        name = f"OpenVINO dense {mode}"
        variants[name], sizes[name], properties[name] = dense_chain(shapes, mode.lower(), args.threads)
        print(f"{name}: compiled ({properties[name]})", flush=True)
    for sparsity in (CONTROL, *SPARSITIES):
        chains, checked, packed = sparse_variants(dll, isas, shapes, sparsity, args.threads)
        variants.update(chains)
        errors.update(checked)
        sizes.update({name: sum(layer.nbytes for layer in layers) for name, layers in packed.items()})
        print(f"{sparsity:.0%}: packed and checked", flush=True)
    bandwidth = read_bandwidth(1.0, threads=args.threads)  # what the weights could stream at, at most
    print(f"{len(shapes)} layers of {shapes[0][0]}x{shapes[0][1]}, {args.threads} threads, kernels: {', '.join(isas)}; "
          f"last-level cache {cache / 2**20:.0f} MiB; dense INT4 weights {sizes['OpenVINO dense INT4'] / 2**20:.0f} MiB "
          f"({sizes['OpenVINO dense INT4'] / cache:.1f}x the cache); kernel vs numpy max relative error "
          f"{max(errors.values()):.1e}; {args.threads}-thread read of 1 GiB: {statistics.median(bandwidth):.1f} GB/s "
          f"(min {min(bandwidth):.1f}, max {max(bandwidth):.1f})", flush=True)

    seconds = time_rounds(variants, x, args.rounds, args.calls)
    rows, verdict = summarize(seconds, sizes, errors, weights=sum(a * b for a, b in shapes))
    machine = machine_context()
    machine["flags"] = sorted({"avx2", "fma", "avx512f", "avx512_vbmi2", "avx512_vnni", "avx_vnni", "amx_tile"}
                              & set(Path("/proc/cpuinfo").read_text().split()))
    result = {"layers": len(shapes), "shapes": shapes, "threads": args.threads, "rounds": args.rounds,
              "calls_per_round": args.calls, "last_level_cache_bytes": cache, "read_gb_per_s": bandwidth,
              "kernels": isas, "variants": rows, "verdict": verdict, "go": verdict.startswith("GO"),
              "machine": machine, "openvino_properties": properties}
    shape = "" if args.pairs is None else f"-{args.pairs}-pairs"  # --pairs 1: the weights fit in the cache
    cpu = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\((r|tm)\)", "", machine["cpu"].lower())).strip("-")
    target = ROOT / "benchmarks" / "results" / f"sparse-kernel-{cpu}{shape}.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {target}")


if __name__ == "__main__":
    main()
