"""Does unstructured sparsity buy decode speed on a CPU without AMX? A bitmask sparse GEMV against OpenVINO.

The experiment of issue 33, step 1: one decoder MLP's shapes at 1B scale (up 2048 -> 8192, down 8192 ->
2048), chained as 12 layers (6 up/down pairs) so that the weights are well over 3x the last-level cache,
one token (GEMV), 2 threads. Variants, all on the same random weights magnitude-pruned per row:

* OpenVINO dense INT4 (sym, group 64) and INT8 (per channel) — NNCF `compress_weights` on a one-chain IR,
  the CPU plugin's defaults (its own FullyConnected kernels): the baseline, INT4 g64;
* `sparse_gemv.cpp` (AVX2, built here with g++): bitmask + packed INT8 values (per-row scale) and bitmask +
  packed INT4 values (per-row, group-64 scales), at 50 / 60 / 70 % sparsity.

Each variant's output is checked against numpy on its own dequantized weights first. Then rounds: every
variant in a rotated order, `--calls` chain calls each (median per round); per round, each variant's time is
divided by dense INT4's of the same round. Printed and written to
`benchmarks/results/sparse-kernel-<cpu>.json`: medians and min-max over rounds, bytes per weight, and the
go / no-go rule of the issue (some sparse format >= 1.2x faster than dense INT4 at <= 70 % sparsity).

    python benchmarks/sparse_kernel/run.py              # ~3 min on 2 cores
    python benchmarks/sparse_kernel/run.py --pairs 1    # two layers: the weights fit in the cache
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHAPES = [(8192, 2048), (2048, 8192)]  # (N out, K in): MLP up, then down
SPARSITIES = (0.5, 0.6, 0.7)
CONTROL = 0.0  # the same kernel on unpruned weights: what the kernel itself is worth, without sparsity


def build(work: Path) -> ctypes.CDLL:
    lib = work / "libsparse_gemv.so"
    source = HERE / "sparse_gemv.cpp"
    if not lib.exists() or lib.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["g++", "-O3", "-fopenmp", "-shared", "-fPIC", "-Wno-psabi", "-o", str(lib), str(source)],
                       check=True)
    dll = ctypes.CDLL(str(lib))
    if not dll.has_avx2():
        raise SystemExit("this CPU has no AVX2 + FMA: the kernel needs them")
    return dll


def prune_rows(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the smallest |w| of every row (unstructured, per output channel, as Wanda's comparison group)."""
    k = int(round(w.shape[1] * sparsity))
    if k == 0:
        return w
    cut = np.partition(np.abs(w), k - 1, axis=1)[:, k - 1:k]
    return np.where(np.abs(w) > cut, w, 0.0).astype(np.float32)


class SparseLayer:
    """Bitmask + packed values of one pruned weight, and the dense float weight those values stand for."""

    def __init__(self, w: np.ndarray, bits: int):
        n, k = w.shape
        mask = w != 0
        if bits == 8:
            scales = np.abs(w).max(axis=1) / 127
            q = np.clip(np.round(w / scales[:, None]), -127, 127).astype(np.int8)
            self.dequantized = q.astype(np.float32) * scales[:, None]
            rows = [q[i][mask[i]].tobytes() for i in range(n)]
        else:
            groups = w.reshape(n, k // 64, 64)
            scales = (np.abs(groups).max(axis=2) / 7).reshape(n, k // 64)
            scales[scales == 0] = 1.0
            q = np.clip(np.round(groups / scales[..., None]), -8, 7).astype(np.int8).reshape(n, k)
            self.dequantized = (q.reshape(n, k // 64, 64) * scales[..., None]).reshape(n, k).astype(np.float32)
            rows = []
            for i in range(n):
                nib = (q[i][mask[i]] & 0x0F).astype(np.uint8)
                if len(nib) % 2:
                    nib = np.append(nib, 0)
                rows.append((nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes())
        self.dequantized[~mask] = 0.0
        self.mask = np.packbits(mask, axis=1, bitorder="little")
        self.offsets = np.cumsum([0] + [len(r) for r in rows[:-1]]).astype(np.int64)
        self.values = np.frombuffer(b"".join(rows) + bytes(16), dtype=np.uint8).copy()  # padded: loads over-read
        self.scales = np.ascontiguousarray(scales, dtype=np.float32)
        self.n, self.k, self.bits = n, k, bits

    @property
    def nbytes(self) -> int:
        return self.mask.nbytes + self.values.nbytes + self.scales.nbytes + self.offsets.nbytes


KINDS = {"INT8": (8, 0), "INT8 int-dot": (8, 2), "INT4": (4, 1)}  # name -> (value bits, the kernel's `kind`)


def quantize_groups(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x -> INT8 per group of 64 and the groups' scales, as `quantize_x` in the kernel (round half to even)."""
    groups = x.reshape(-1, 64).astype(np.float32)
    scales = np.abs(groups).max(axis=1) / np.float32(127)
    scales[scales == 0] = 1.0
    return np.round(groups / scales[:, None]).astype(np.int64), scales.astype(np.float64)


def layer_reference(layer: SparseLayer, x: np.ndarray, integer: bool) -> np.ndarray:
    """What the kernel should compute from its own input `x`, in float64."""
    if not integer:
        return layer.dequantized.astype(np.float64) @ x.astype(np.float64)
    q, sx = quantize_groups(x)
    w = np.round(layer.dequantized / layer.scales[:, None]).astype(np.int64).reshape(layer.n, -1, 64)
    return layer.scales.astype(np.float64) * (np.einsum("ngk,gk->ng", w, q).astype(np.float64) @ sx)


class SparseChain:
    def __init__(self, dll: ctypes.CDLL, layers: list[SparseLayer], threads: int, kind: int):
        self.dll, self.layers, self.threads, self.kind = dll, layers, threads, kind
        self.xs = [np.zeros(layers[0].k, np.float32)] + [np.zeros(layer.n, np.float32) for layer in layers]
        ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
        count = len(layers)
        self.args = [
            ctypes.c_int(kind), ctypes.c_int(count),
            (ctypes.c_void_p * count)(*[ptr(layer.mask) for layer in layers]),
            (ctypes.c_void_p * count)(*[ptr(layer.values) for layer in layers]),
            (ctypes.c_void_p * count)(*[ptr(layer.offsets) for layer in layers]),
            (ctypes.c_void_p * count)(*[ptr(layer.scales) for layer in layers]),
            (ctypes.c_void_p * (count + 1))(*[ptr(x) for x in self.xs]),
            (ctypes.c_int * count)(*[layer.n for layer in layers]), (ctypes.c_int * count)(*[layer.k for layer in layers]),
            ctypes.c_int(threads)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.xs[0][:] = x
        self.dll.chain(*self.args)
        return self.xs[-1]

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)


def dense_chain(weights: list[np.ndarray], mode: str, threads: int):
    """One IR: x -> MatMul(W1^T) -> ... (no activations: they cost the same in every variant), compressed by
    NNCF as optimum-intel's export does, compiled with the CPU plugin's defaults."""
    import nncf
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, weights[0].shape[1]], np.float32, name="x")
    y = x
    for w in weights:
        y = ops.matmul(y, ops.constant(w), transpose_a=False, transpose_b=True)
    model = ov.Model([y], [x], "chain")
    if mode == "int4":
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=64, ratio=1.0,
                                      all_layers=True)
    else:
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    size = sum(op.get_byte_size() for op in model.get_ops() if op.get_type_name() == "Constant")
    return (lambda v: request.infer({0: v[None]})[0][0]), size


def last_level_cache_bytes() -> int:
    caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"))
    size = (caches[-1] / "size").read_text().strip() if caches else "0K"
    return int(size[:-1]) * {"K": 1024, "M": 1 << 20}[size[-1]]


def checked_sparse_chain(dll, pruned: list[np.ndarray], bits: int, kind: int, threads: int, x) -> tuple:
    """The packed chain and its largest relative error against numpy, each layer from its own input (so
    roundings cannot compound); stops the run if the kernel is wrong."""
    chain = SparseChain(dll, [SparseLayer(w, bits) for w in pruned], threads, kind)
    chain(x)
    error = 0.0
    for i, layer in enumerate(chain.layers):
        reference = layer_reference(layer, chain.xs[i], integer=kind == 2)
        error = max(error, float(np.abs(chain.xs[i + 1] - reference).max() / np.abs(reference).max()))
        layer.dequantized = None  # checked: free it (a float copy of every weight)
    if error > 1e-4:
        raise SystemExit(f"bitmask INT{bits} kind {kind}: the kernel disagrees with numpy (relative error {error:.2e})")
    return chain, error


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
    print(f"\n{'variant':24s} {'ms/token':>9s} {'min-max':>13s} {'x dense INT4':>13s} {'min-max':>11s} "
          f"{'bits/w':>7s} {'GB/s':>6s}")
    for name, row in rows.items():
        print(f"{name:24s} {row['ms_median']:9.2f} {row['ms_min']:6.2f}-{row['ms_max']:<6.2f} "
              f"{row['speedup_vs_dense_int4_median']:13.2f} {row['speedup_min']:5.2f}-{row['speedup_max']:<5.2f} "
              f"{row['bits_per_weight']:7.2f} {row['weight_gb_per_s']:6.1f}")
    speedup = {n: r["speedup_vs_dense_int4_median"] for n, r in rows.items()}
    best = max((n for n in rows if n.startswith("bitmask") and not n.endswith(f" {CONTROL:.0%}")), key=speedup.get)
    control = speedup[best.rsplit(" ", 1)[0] + f" {CONTROL:.0%}"]
    verdict = (f"{'GO' if speedup[best] >= 1.2 else 'NO-GO'}: the best sparse format, {best}, runs at "
               f"{speedup[best]:.2f}x dense INT4 (rule: >= 1.2x at <= 70 %); the same kernel on unpruned weights: "
               f"{control:.2f}x, so sparsity itself buys {speedup[best] / control:.2f}x")
    print(verdict)
    return rows, verdict


def main() -> None:
    from sqft_ov.measure.bench.machine import machine_context, read_bandwidth

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6, help="up/down pairs in the chain")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "sparse-kernel")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dll = build(args.work)
    rng = np.random.default_rng(0)
    shapes = SHAPES * args.pairs
    dense = [rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[1]) for shape in shapes]
    x = rng.standard_normal(shapes[0][1]).astype(np.float32)

    variants, sizes, errors = {}, {}, {}
    for mode in ("INT4", "INT8"):
        name = f"OpenVINO dense {mode}"
        variants[name], sizes[name] = dense_chain([prune_rows(w, 0.5) for w in dense], mode.lower(), args.threads)
    for sparsity in (CONTROL, *SPARSITIES):
        pruned = [prune_rows(w, sparsity) for w in dense]
        for label, (bits, kind) in KINDS.items():
            name = f"bitmask {label} {sparsity:.0%}"
            variants[name], errors[name] = checked_sparse_chain(dll, pruned, bits, kind, args.threads, x)
            sizes[name] = variants[name].nbytes
    cache = last_level_cache_bytes()
    bandwidth = read_bandwidth(1.0, threads=args.threads)  # what the weights could stream at, at most
    print(f"{len(shapes)} layers of {shapes[0][0]}x{shapes[0][1]}, {args.threads} threads; last-level cache "
          f"{cache / 2**20:.0f} MiB; dense INT4 weights {sizes['OpenVINO dense INT4'] / 2**20:.0f} MiB "
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
              "variants": rows, "verdict": verdict, "go": verdict.startswith("GO"), "machine": machine,
              "openvino_properties": "CPU plugin defaults, INFERENCE_NUM_THREADS"}
    shape = "" if args.pairs == 6 else f"-{args.pairs}-pairs"  # --pairs 1: the weights fit in the cache
    target = ROOT / "benchmarks" / "results" / f"sparse-kernel-{machine['cpu'].lower().replace(' ', '-')}{shape}.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {target}")


if __name__ == "__main__":
    main()
