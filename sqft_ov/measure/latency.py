"""`latency`: time the decode of an elastic-width super-network's sub-networks once, on this machine, with
OpenVINO, and write the table `search --max-latency` predicts from (`sqft_ov.io.latency_table` says how).

Each measured point is the adapter's base cut to one (MLP width, KV groups) pair in every block (`shrink`, as
`merge` cuts a chosen sub-network) and exported by `export_model` with the settings a deployment would use (an
INT4 QA-SparsePEFT adapter: its trained grid's group size and symmetry). Decode time depends on the shapes and the
export settings, not on the weights' values, so the adapters themselves are not merged. The IRs are then timed
side by side by `bench` (interleaved rounds, one process per IR, greedy decoding, EOS ignored), and the median
time per output token of each is its point.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqft_ov.errors import ConfigError, SqftError
from sqft_ov.io.latency_table import FORMAT, SHAPE_KEYS, VERSION, LatencyTable, measured_pairs, parse_table


@dataclass
class LatencyConfig:
    new_tokens: int = field(default=16, metadata={"help": "Tokens decoded per timed run (greedy, EOS ignored)."})
    prompt_tokens: int = field(default=16, metadata={"help": "Prompt length in tokens before the decoded ones."})
    repeats: int = field(default=3, metadata={"help": (
        "Timed runs per sub-network, interleaved across them (more: a steadier median).")})
    warmup: int = field(default=1, metadata={"help": "Uncounted rounds first."})
    device: str = field(default="CPU", metadata={"help": "OpenVINO device the IRs are timed on."})
    properties: dict[str, str] = field(default_factory=dict)  # OpenVINO / genai properties of the timed IRs
    weight_format: str = field(default="int4", metadata={"help": (
        "Weight format the sub-networks are exported in (as they will be deployed): fp16 | int8 | int4.")})
    group_size: int | None = field(default=None, metadata={"help": (
        "INT4 group size of the export; default: a QA-SparsePEFT adapter's trained one, else export's.")})

    def __post_init__(self) -> None:
        if self.weight_format not in ("fp16", "int8", "int4"):
            raise ConfigError(f"--weight-format {self.weight_format!r}: the latency table exports fp16, int8 or int4")
        for name in ("new_tokens", "prompt_tokens", "repeats"):
            if getattr(self, name) < 1 + (name == "new_tokens"):
                raise ConfigError(f"--{name.replace('_', '-')} must be at least {1 + (name == 'new_tokens')}")
        if self.warmup < 0:
            raise ConfigError("--warmup must be 0 or more")


def _export_config(config: LatencyConfig, record: dict):
    from sqft_ov.stages.export import ExportConfig

    quant = record["quantization"] if record["quantization"] and config.weight_format == "int4" else None
    group = config.group_size if config.group_size is not None else (quant["group_size"] if quant else None)
    return ExportConfig(weight_format=config.weight_format, group_size=group,
                        sym=bool(quant["sym"]) if quant else None)


def _export_points(base: Path, pairs: list[tuple[int, int]], layers: int, export_config, folder: Path,
                   on_progress=None) -> list[Path]:
    """The base cut to each pair in every block, exported as an IR under `folder`."""
    import torch

    from sqft_ov.io.blocks import BlockWidth, shrink
    from sqft_ov.io.checkpoint import load_causal_lm
    from sqft_ov.stages.export import export_model

    model, tokenizer = load_causal_lm(base, dtype=torch.float32)
    irs = []
    for i, (mlp, kv) in enumerate(pairs):
        if on_progress is not None:
            on_progress(i, len(pairs), "export sub-networks")
        cut = copy.deepcopy(model)
        shrink(cut, [BlockWidth(mlp, kv)] * layers)
        irs.append(folder / f"mlp{mlp}-kv{kv}")
        export_model(cut, tokenizer, irs[-1], export_config)
        del cut
    if on_progress is not None:
        on_progress(len(pairs), len(pairs), "export sub-networks")
    return irs


def _time_points(irs: list[Path], config: LatencyConfig, on_progress=None) -> list[dict]:
    """Median and quartiles of ms per decoded token of each IR, timed side by side by `bench`."""
    from sqft_ov.measure.bench.runner import BenchConfig, BenchModel, bench

    bench_config = BenchConfig(device=config.device, prompt_tokens=config.prompt_tokens,
                               new_tokens=config.new_tokens, repeats=config.repeats, warmup=config.warmup,
                               properties=dict(config.properties), bandwidth_gib=0)
    result = bench([BenchModel(ir, label=ir.name) for ir in irs], bench_config, on_progress)
    if result.failed:
        first = result.failed[0]
        raise SqftError(f"timing the sub-network {first['label']} failed: {first['error']}")
    out = []
    for model in result.models:
        stats = model["stats"]["tpot_s"]
        out.append({"ms_per_token": stats["median"] * 1e3,
                    "runs_ms": [run["tpot_s"] * 1e3 for run in model["runs"]],
                    "stats_ms": {k: v * 1e3 for k, v in stats.items() if k != "n"}})
    return out


def measure_latency(adapter_dir: str | Path, table: str | Path, config: LatencyConfig | None = None,
                    base: str | Path | None = None, overwrite: bool = False, on_progress=None) -> LatencyTable:
    """Measure the decode latency table of a finetune OUTPUT folder trained with elastic widths and write it to
    `table` (JSON, atomically; an existing file only with `overwrite`). `base`: the base model, if it moved since
    training. `on_progress(done, total, label)` follows the exports, then each IR's timing."""
    from sqft_ov.adapters.adapted import read_record
    from sqft_ov.adapters.elastic import WidthSpace
    from sqft_ov.io.blocks import Shape
    from sqft_ov.io.checkpoint import check_model_dir, load_config
    from sqft_ov.io.output import check_output_file, write_file_atomic
    from sqft_ov.measure.bench.machine import machine_context
    from sqft_ov.measure.bench.runner import package_versions
    from sqft_ov.io.runtime import check_device

    config = config or LatencyConfig()
    adapter_dir = Path(adapter_dir).expanduser().absolute()
    table = check_output_file(table, overwrite)
    record = read_record(adapter_dir)
    if not record.get("widths"):
        raise ConfigError(f"{adapter_dir} was trained without elastic widths (--mlp-widths / --head-widths / "
                          "--search-space): there are no sub-network widths to time")
    base = check_model_dir(base or record["base"])
    shape = Shape.of(load_config(base))
    space = WidthSpace.from_dict(record["widths"], shape, "the adapter's record")
    check_device(config.device)
    export_config = _export_config(config, record)
    pairs = measured_pairs(space.to_dict())
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    machine = machine_context()
    with tempfile.TemporaryDirectory(prefix="sqft-latency-") as folder:
        irs = _export_points(base, pairs, shape.layers, export_config, Path(folder), on_progress)
        timed = _time_points(irs, config, on_progress)
    data = {"format": FORMAT, "version": VERSION, "adapter": str(adapter_dir), "base": str(base),
            "base_fingerprint": record["base_fingerprint"],
            "shape": {k: getattr(shape, k) for k in SHAPE_KEYS},
            "space": space.to_dict(),
            "prediction": "T(R) + sum over blocks of (T(mlp_i, kv_i) - T(R)) / layers; T: points, R: the largest pair",
            "export": {"weight_format": export_config.weight_format, "group_size": export_config.group_size,
                       "sym": export_config.sym},
            "timing": {"device": config.device, "prompt_tokens": config.prompt_tokens,
                       "new_tokens": config.new_tokens, "repeats": config.repeats, "warmup": config.warmup,
                       "properties": dict(config.properties)},
            "machine": machine, "versions": package_versions(), "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "points": [{"mlp": m, "kv_groups": k, **t} for (m, k), t in zip(pairs, timed)]}
    parsed = parse_table(data, str(table))  # what search will read back
    write_file_atomic(table, json.dumps(data, indent=2) + "\n", overwrite)
    return parsed
