"""Where one decode step's time goes: OpenVINO's per-node counters (PERF_COUNT) of the compiled graph.

Decode of an LLM is a chain of matrix-vector products, so each FullyConnected should take about its
weight bytes divided by the memory bandwidth: `x_bandwidth` (measured time / bandwidth time) says how
far a layer is from that floor. The graph is the bare stateful model (SDPA attention, what genai runs
with ATTENTION_BACKEND=SDPA); the step's wall time next to the sum of node times shows the overhead of
the runtime outside the nodes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sqft_ov.measure.tune.probe import _feed


def _fc_weight_bytes(compiled) -> dict[str, int]:
    """Bytes of the constant inputs (weights, scales, zero points) of each FullyConnected of the runtime graph."""
    out = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        if not op.get_rt_info()["layerType"].astype(str).startswith("FullyConnected"):
            continue
        total = 0
        for port in range(1, op.get_input_size()):
            shape = op.input(port).get_partial_shape()
            if shape.is_static and len(shape) and op.input(port).get_element_type().is_static():
                total += int(np.prod([d.get_length() for d in shape])) * op.input(port).get_element_type().bitwidth // 8
        out[op.get_friendly_name()] = total
    return out


def profile_decode_step(xml: str | Path, properties: dict[str, str], *, device: str = "CPU", prompt_tokens: int = 32,
                        steps: int = 8, bandwidth_gb_s: float | None = None) -> dict:
    """Mean per-node times of `steps` decode steps after a prompt, grouped by node type; FCs against bandwidth."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), device, {**properties, "PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    prompt = list(range(10, 10 + prompt_tokens))
    # The plugin reports each node's *mean* time over every inference of the request, the prompt included,
    # in whole microseconds: totals after the prompt and one warm-up step are subtracted from totals after
    # `steps` more, which leaves the decode steps alone.
    request.infer(_feed(compiled, prompt, 0))
    request.infer(_feed(compiled, [11], prompt_tokens))  # the first one-token step picks its kernels
    before = {info.node_name: info.real_time.total_seconds() * 2 for info in request.get_profiling_info()}
    walls = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        request.infer(_feed(compiled, [11 + step], prompt_tokens + step))
        walls.append((time.perf_counter() - start) * 1e3)
    node_ms, kinds = {}, {}
    for info in request.get_profiling_info():
        if info.status != info.Status.EXECUTED:
            continue
        total = info.real_time.total_seconds() * (steps + 2) - before.get(info.node_name, 0.0)
        node_ms[info.node_name] = max(0.0, total / steps * 1e3)
        kinds[info.node_name] = (info.node_type, info.exec_type)
    graph_ms = sum(node_ms.values())
    step_ms = float(np.median(walls))
    by_type: dict[tuple[str, str], dict] = {}
    for name, ms in node_ms.items():
        row = by_type.setdefault(kinds[name], {"node_type": kinds[name][0], "exec_type": kinds[name][1], "count": 0, "ms": 0.0})
        row["count"] += 1
        row["ms"] += ms
    types = sorted(by_type.values(), key=lambda r: -r["ms"])
    for row in types:
        row["share"] = row["ms"] / graph_ms if graph_ms else 0.0

    weights = _fc_weight_bytes(compiled)
    fcs = []
    for name, nbytes in weights.items():
        if name not in node_ms:
            continue
        ms = node_ms[name]
        row = {"name": name, "exec_type": kinds[name][1], "weight_bytes": nbytes, "ms": ms,
               "gb_per_s": nbytes / ms / 1e6 if ms else None}
        if bandwidth_gb_s:
            row["bandwidth_ms"] = nbytes / bandwidth_gb_s / 1e6
            row["x_bandwidth"] = ms / row["bandwidth_ms"] if row["bandwidth_ms"] else None
        fcs.append(row)
    fc_ms = sum(r["ms"] for r in fcs)
    fc_bytes = sum(r["weight_bytes"] for r in fcs)
    summary = {"count": len(fcs), "ms": fc_ms, "share_of_graph": fc_ms / graph_ms if graph_ms else 0.0,
               "weight_bytes": fc_bytes, "gb_per_s": fc_bytes / fc_ms / 1e6 if fc_ms else None}
    if bandwidth_gb_s:
        summary["bandwidth_ms"] = fc_bytes / bandwidth_gb_s / 1e6
        summary["x_bandwidth"] = fc_ms / summary["bandwidth_ms"] if summary["bandwidth_ms"] else None
    return {"properties": properties, "prompt_tokens": prompt_tokens, "steps": steps, "step_ms": step_ms,
            "graph_ms": graph_ms, "outside_graph_ms": step_ms - graph_ms, "bandwidth_gb_per_s": bandwidth_gb_s,
            "by_node_type": types, "fully_connected": summary,
            "fully_connected_layers": sorted(fcs, key=lambda r: -(r.get("x_bandwidth") or r["ms"]))}
