"""`bench`: models side by side, interleaved, each in its own process, reported with honest statistics.

Round r runs every model once (A B C, A B C, ...), so slow drifts of a shared machine hit all of them
alike; the first `warmup` rounds are not counted. Every model gets a prompt of the same length that starts
at a different token each round (genai caches prompt prefixes), greedy decoding, and exactly `new_tokens`
new tokens (EOS ignored).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from sqft_ov.errors import ConfigError
from sqft_ov.measure.bench.machine import machine_context, read_bandwidth
from sqft_ov.measure.bench.stats import paired_ratios, summarize

METRICS = ("ttft_s", "tpot_s", "decode_tokens_per_s", "prefill_tokens_per_s", "total_s")
RATIO_METRICS = ("decode_tokens_per_s", "prefill_tokens_per_s")  # higher is better: ratio > 1 = faster
TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class BenchModel:
    """A model to benchmark: an IR folder, or a Hugging Face folder (+ optional PEFT / sqft-ov adapter)."""

    path: Path
    adapter: Path | None = None
    label: str | None = None
    sub_adapter: Path | None = None  # NLS adapters: the CONFIG.json search chose (default: the largest ranks)
    properties: dict[str, str] = field(default_factory=dict)  # this model's OpenVINO / genai properties (IR only)

    def __post_init__(self) -> None:
        from sqft_ov.io.hub import download_model, is_hub_model

        name = Path(self.path).name
        hub = is_hub_model(self.path)  # a Hub ID runs from its downloaded snapshot, labelled by its name
        self.path = download_model(self.path) if hub else Path(self.path).expanduser().absolute()
        self.adapter = Path(self.adapter).expanduser().absolute() if self.adapter else None
        self.sub_adapter = Path(self.sub_adapter).expanduser().absolute() if self.sub_adapter else None
        self.properties = {k: str(v) for k, v in self.properties.items()}
        if self.label is None:
            self.label = (name if hub else self.path.name) + (f"+{self.adapter.name}" if self.adapter else "")


@dataclass
class BenchConfig:
    device: str = field(default="CPU", metadata={"help": "OpenVINO device for IR models: CPU, GPU, AUTO ..."})
    prompt_tokens: int = field(default=32, metadata={"help": "Prompt length in tokens (a different prompt each run)."})
    new_tokens: int = field(default=128, metadata={"help": "Tokens generated per run (greedy, EOS ignored)."})
    repeats: int = field(default=8, metadata={"help": "Measured runs per model, interleaved across models."})
    warmup: int = field(default=1, metadata={"help": "Uncounted rounds first."})
    baseline: int = field(default=1, metadata={"help": "Position of the baseline among MODELS, counting from 1."})
    sparse_rate: float | None = field(default=None, metadata={
        "help": "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE for IR models."})
    properties: dict[str, str] = field(default_factory=dict)  # OpenVINO / genai properties for IR models
    torch_dtype: str = field(default="auto", metadata={  # TORCH_DTYPES, or the checkpoint's dtype
        "help": "PyTorch models: auto (the checkpoint's) | float32 | bfloat16 | float16."})
    bandwidth_gib: float = field(default=1.0, metadata={
        "help": "Buffer of the memory read-bandwidth test (GiB); 0 skips it."})
    no_adapter: bool = field(default=False, metadata={
        "help": "IR models with a runtime LoRA adapter (adapter/): benchmark the bare base without it."})
    probe: tuple[list[int], int] | None = None  # (prompt ids, n): each model's greedy tokens, reported at the end

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "new_tokens", "repeats"):
            if getattr(self, name) < 1 + (name == "new_tokens"):
                raise ConfigError(f"--{name.replace('_', '-')} must be at least {1 + (name == 'new_tokens')}")
        if self.warmup < 0:
            raise ConfigError("--warmup must be 0 or more")
        if self.sparse_rate is not None and not 0.0 <= self.sparse_rate <= 1.0:
            raise ConfigError(f"--sparse-rate must be within [0, 1], got {self.sparse_rate}")
        if self.torch_dtype not in TORCH_DTYPES:
            raise ConfigError(f"--torch-dtype must be one of {', '.join(TORCH_DTYPES)}")

    def ir_properties(self) -> dict[str, str]:
        from sqft_ov.io.runtime import SPARSE_RATE

        extra = {SPARSE_RATE: str(self.sparse_rate)} if self.sparse_rate is not None else {}
        return {**{k: str(v) for k, v in self.properties.items()}, **extra}


@dataclass
class BenchResult:
    """What `bench` measured; `to_dict()` is the JSON report (`sqft-ov bench --json`), field for field.

    `models` holds one entry per model, in the order given: `label`, `ok`, `error`, `runs` and, for a model
    that ran, `stats` (median / quartiles per metric), `ratios` (paired, to the baseline), sizes and kernels.
    """

    config: dict
    machine: dict
    versions: dict[str, str]
    started: str
    bandwidth: dict | None  # the memory read test's passes and their summary; None when skipped
    baseline: str  # label of the baseline model
    models: list[dict]
    finished: str

    @property
    def failed(self) -> list[dict]:
        return [m for m in self.models if not m["ok"]]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Worker:
    """The parent's handle on one model's process (sqft_ov.measure.bench.worker)."""

    def __init__(self, model: BenchModel, config: BenchConfig):
        spec = {"path": str(model.path), "adapter": str(model.adapter) if model.adapter else None,
                "sub_adapter": str(model.sub_adapter) if model.sub_adapter else None,
                "device": config.device, "properties": {**config.ir_properties(), **model.properties},
                "torch_dtype": config.torch_dtype, "no_adapter": config.no_adapter,
                "prompt_tokens": config.prompt_tokens, "new_tokens": config.new_tokens,
                "runs": config.warmup + config.repeats}
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "sqft_ov.measure.bench.worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)

    def ask(self, command: dict | None = None) -> dict:
        if command is not None:
            try:
                self.proc.stdin.write(json.dumps(command) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
        line = self.proc.stdout.readline()
        if line:
            return json.loads(line)
        code = self.proc.wait()
        self.log.seek(0)
        tail = [x for x in self.log.read().splitlines() if x.strip()][-1:]
        return {"ok": False, "error": f"the model's process died (exit code {code})" + (f": {tail[0]}" if tail else "")}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _derive(raw: dict, prompt_tokens: int) -> dict:
    tpot = raw["decode_s"] / raw["decode_steps"]
    return {**raw, "prompt_tokens": prompt_tokens, "tpot_s": tpot, "decode_tokens_per_s": 1.0 / tpot,
            "prefill_tokens_per_s": prompt_tokens / raw["ttft_s"]}


def _check_folders(models: list[BenchModel]) -> None:
    """A missing folder or file is the user's to fix before minutes of benchmarking, not a failed row."""
    from sqft_ov.io.checkpoint import check_model_dir
    from sqft_ov.io.ir import IR_FILE, check_ir_files

    for model in models:
        if (Path(model.path) / IR_FILE).is_file():
            check_ir_files(model.path)
        else:
            check_model_dir(model.path)


def bench(models: list[BenchModel], config: BenchConfig, on_progress=None) -> BenchResult:
    """Benchmark `models` and return the report; failed models carry an `error`.

    `on_progress(done, total, label)` follows each model (label `bench LABEL`): its load, then each run."""
    from sqft_ov.io.runtime import check_device

    if not models:
        raise ConfigError("give at least one MODEL folder")
    if not 1 <= config.baseline <= len(models):
        raise ConfigError(f"--baseline {config.baseline} is not a model position: choose 1 to {len(models)}")
    check_device(config.device)
    _check_folders(models)
    labels = [m.label for m in models]
    for i, model in enumerate(models):  # same folder twice (e.g. with different adapters): keep labels apart
        if labels.count(model.label) > 1:
            model.label = f"{model.label} #{i + 1}"

    report: dict = {"config": {**asdict(config), "ir_properties": config.ir_properties()},
                    "machine": machine_context(), "versions": package_versions(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    bandwidth = read_bandwidth(config.bandwidth_gib) if config.bandwidth_gib > 0 else []
    entries = [{"label": m.label, "path": str(m.path), "adapter": str(m.adapter) if m.adapter else None,
                "properties": {**config.ir_properties(), **m.properties}, "error": None, "runs": []} for m in models]
    workers: list[_Worker | None] = [None] * len(models)
    rounds = config.warmup + config.repeats
    steps = 1 + rounds  # per model: its load, then one run per round

    def advance(i: int, done: int) -> None:
        if on_progress is not None:
            on_progress(done if workers[i] is not None else steps, steps, f"bench {models[i].label}")

    try:
        for i, model in enumerate(models):  # one after the other: a load is timed on an otherwise idle machine
            if on_progress is not None:
                on_progress(0, steps, f"bench {model.label}")
            workers[i] = _Worker(model, config)
            reply = workers[i].ask()
            if reply.pop("ok"):
                entries[i].update(reply)
            else:
                entries[i]["error"] = reply["error"]
                workers[i].close()
                workers[i] = None
            advance(i, 1)
        for r in range(rounds):
            for i, worker in enumerate(workers):
                if worker is not None:
                    reply = worker.ask({"cmd": "run", "index": r})
                    if reply.pop("ok") and reply["new_tokens"] == config.new_tokens:
                        if r >= config.warmup:
                            entries[i]["runs"].append(_derive(reply, config.prompt_tokens))
                    else:
                        entries[i]["error"] = reply.get("error") or (
                            f"generated {reply['new_tokens']} tokens instead of {config.new_tokens}")
                        entries[i]["runs"] = []
                        worker.close()
                        workers[i] = None
                    advance(i, 2 + r)
        for i, worker in enumerate(workers):
            if worker is not None:
                reply = worker.ask({"cmd": "finish", "probe": config.probe})
                if reply.pop("ok"):
                    entries[i].update(reply)
                else:
                    entries[i]["error"] = reply["error"]
                    entries[i]["runs"] = []
    finally:
        for worker in workers:
            if worker is not None:
                worker.close()
    if config.bandwidth_gib > 0:
        bandwidth += read_bandwidth(config.bandwidth_gib)
    report["machine"]["load_average_start"] = report["machine"].pop("load_average")
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    report["bandwidth"] = ({"passes_gb_per_s": bandwidth, **summarize(bandwidth)} if bandwidth else None)
    report["baseline"] = models[config.baseline - 1].label
    report["models"] = [_summarize_entry(e, entries[config.baseline - 1], report["bandwidth"]) for e in entries]
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return BenchResult(**report)


def _summarize_entry(entry: dict, baseline: dict, bandwidth: dict | None) -> dict:
    entry["ok"] = entry["error"] is None
    if not entry["ok"]:
        return entry
    runs = entry["runs"]
    entry["stats"] = {m: summarize([run[m] for run in runs]) for m in METRICS}
    entry["ratios"] = None
    if baseline["error"] is None:
        entry["ratios"] = {}
        for metric in RATIO_METRICS:
            per_repeat = paired_ratios([run[metric] for run in runs], [run[metric] for run in baseline["runs"]])
            entry["ratios"][metric] = {"per_repeat": per_repeat, **summarize(per_repeat)}
    gb_per_s = entry["weight_bytes_per_token"] * entry["stats"]["decode_tokens_per_s"]["median"] / 1e9
    entry["weight_gb_per_s"] = gb_per_s
    entry["bandwidth_share"] = gb_per_s / bandwidth["max"] if bandwidth else None
    primitives = entry.get("fc_primitives")
    entry["sparse_decompression_engaged"] = (any("sparse" in p for p in primitives) if primitives else None)
    return entry


def package_versions() -> dict[str, str]:
    """Installed versions of what a measurement depends on (bench, tune and latency reports record them)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("sqft-ov", "openvino", "openvino-genai", "nncf", "optimum-intel", "torch", "transformers", "peft"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out
