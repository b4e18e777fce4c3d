"""`tune`: the fastest runtime configuration of an IR folder that does not change its outputs.

Each setting is tried alone on top of the folder's current configuration, in interleaved batches through
`bench` (the engine users deploy with), every batch with the current configuration as its own baseline,
so a speed-up is a median of paired ratios. Before any timing, each setting's logits are compared with a
full-precision reference (`probe`), and what the compiled model applied is read back. The settings that
win alone are then combined and confirmed with more repeats; a setting that moves the logits beyond the
tolerance is reported, flagged, and never chosen.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqft_ov.errors import ConfigError, ModelFolderError, SqftError
from sqft_ov.measure.tune.results import TuneResult
from sqft_ov.measure.tune.space import PIPELINE_DEFAULTS, check_properties, default_grid, describe, same_value, split


@dataclass
class TuneConfig:
    device: str = field(default="CPU", metadata={"help": "OpenVINO device."})
    prompt_tokens: int = field(default=32, metadata={"help": "Prompt length in tokens."})
    new_tokens: int = field(default=64, metadata={"help": "Tokens generated per run."})
    repeats: int = field(default=3, metadata={
        "help": "Measured runs per setting (the confirmation run uses twice as many)."})
    warmup: int = field(default=1, metadata={"help": "Uncounted rounds first."})
    budget_minutes: float = field(default=20.0, metadata={
        "help": "Stop timing new settings after this long (the rest are listed as not measured)."})
    # None: twice the current configuration's own difference (or 1 % of |logit|)
    max_logit_diff: float | None = field(default=None, metadata={
        "help": "Flag settings whose logits move more than this from the f32 reference."})
    min_gain: float = field(default=0.03, metadata={  # of the median paired decode ratio
        "help": "A setting is adopted only if it decodes at least 1 + this times faster."})
    grid: dict[str, list[dict[str, str]]] | None = None  # None: space.default_grid()
    batch_size: int = 4  # settings per interleaved bench run (each one a process holding the model)
    probe_tokens: int = 8
    profile: bool = field(default=True, metadata={
        "help": "Per-node profile of one decode step, current and best configuration."})
    profile_steps: int = 8
    bandwidth_gib: float = 1.0

    def __post_init__(self) -> None:
        if self.budget_minutes <= 0:
            raise ConfigError("--budget-minutes must be positive")
        if self.repeats < 2:
            raise ConfigError("--repeats must be at least 2 (a median of paired ratios needs more than one)")
        if self.max_logit_diff is not None and self.max_logit_diff < 0:
            raise ConfigError("--max-logit-diff must be 0 or more")
        if self.min_gain <= -1:
            raise ConfigError("--min-gain must be above -1")
        if self.batch_size < 1 or self.probe_tokens < 1:
            raise ConfigError("--batch-size and --probe-tokens must be at least 1")


def check_ir(ir_dir: str | Path) -> Path:
    from sqft_ov.io.ir import IR_FILE

    from sqft_ov.io.ir import check_ir_files

    ir_dir = Path(ir_dir).expanduser().absolute()
    if not (ir_dir / IR_FILE).is_file():
        raise ModelFolderError(f"{ir_dir} is not an OpenVINO IR folder (no {IR_FILE}): tune an exported model "
                               "(sqft-ov export), or pass --export-grid with a Hugging Face model folder")
    return check_ir_files(ir_dir)


def probe_prompt(ir_dir: Path, length: int) -> list[int]:
    """Token ids of ordinary text (the folder's tokenizer), or deterministic ids where it has none."""
    import numpy as np

    from sqft_ov.io.data import sample_corpus

    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(ir_dir, local_files_only=True)
        ids = tokenizer(" ".join(sample_corpus(32, seed=7)), add_special_tokens=False).input_ids
        if len(ids) >= length:
            return [int(i) for i in ids[:length]]
    except (OSError, ValueError):
        pass
    return [int(i) for i in np.random.default_rng(0).integers(3, 100, length)]


def ratio_summary(entry: dict, metric: str) -> dict | None:
    """Median and quartiles of a bench entry's paired ratios to its baseline."""
    return {k: entry["ratios"][metric][k] for k in ("median", "q1", "q3")} if entry.get("ratios") else None


def in_batches(rows: list[dict], batch_size: int, deadline: float, measure) -> tuple[int, float | None]:
    """`measure(batch, number)` on consecutive batches of `rows` for as long as the budget allows the next one.

    Each batch runs with its own baseline, so it costs len(batch) + 1 models; the previous batch's time per
    model predicts the next. Rows of batches that would overrun are marked not measured; the first batch
    always runs. Returns (batches run, seconds per model of the last one).
    """
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    seconds_per_model = None
    for number, batch in enumerate(batches, 1):
        if seconds_per_model is not None and time.monotonic() + seconds_per_model * (len(batch) + 1) > deadline:
            for row in (r for later in batches[number - 1:] for r in later):
                row["error"] = "not measured: --budget-minutes ran out"
            return number - 1, seconds_per_model
        mark = time.monotonic()
        measure(batch, number)
        seconds_per_model = (time.monotonic() - mark) / (len(batch) + 1)
    return len(batches), seconds_per_model


def _flag_logits(row: dict, tolerance: float) -> None:
    if row["max_logit_diff"] > tolerance:
        row["flags"].append(f"outputs change: max |Δlogit| {row['max_logit_diff']:.3g} > tolerance {tolerance:.3g}")


def _measure(ir_dir: Path, settings: list[dict], config: TuneConfig, probe, repeats: int,
             on_progress) -> tuple[dict, list[dict]]:
    """One interleaved bench run: the current configuration first, then `settings` (rows, filled in place)."""
    from sqft_ov.measure.bench.runner import BenchConfig, BenchModel, bench

    models = [BenchModel(ir_dir, label="current")] + [BenchModel(ir_dir, label=row["setting_text"],
                                                                 properties=row["setting"]) for row in settings]
    report = bench(models, BenchConfig(device=config.device, prompt_tokens=config.prompt_tokens,
                                       new_tokens=config.new_tokens, repeats=repeats, warmup=config.warmup,
                                       bandwidth_gib=0, probe=(probe.prompt, config.probe_tokens)), on_progress)
    return report.models[0], report.models[1:]


def _fill_speed(row: dict, entry: dict, current: dict, batch: int) -> None:
    from sqft_ov.measure.tune.probe import matching_prefix

    row["batch"] = batch
    if not entry["ok"]:
        row["error"] = entry["error"]
        return
    row["decode_tokens_per_s"] = entry["stats"]["decode_tokens_per_s"]["median"]
    row["prefill_tokens_per_s"] = entry["stats"]["prefill_tokens_per_s"]["median"]
    row["current_decode_tokens_per_s"] = current["stats"]["decode_tokens_per_s"]["median"] if current["ok"] else None
    row["decode_ratio"] = ratio_summary(entry, "decode_tokens_per_s")
    row["prefill_ratio"] = ratio_summary(entry, "prefill_tokens_per_s")
    if entry.get("probe_tokens") is not None and current.get("probe_tokens") is not None:
        row["tokens_as_current"] = matching_prefix(entry["probe_tokens"], current["probe_tokens"])


def tune(ir_dir: str | Path, config: TuneConfig | None = None, on_progress=None) -> TuneResult:
    """Measure every setting of the grid against the folder's current configuration; return the report.

    `on_progress(done, total, label)` follows the logit probes (`probing outputs`) and each bench run."""
    from sqft_ov.io.ir import IR_FILE
    from sqft_ov.io.runtime import check_device, read_runtime_config
    from sqft_ov.measure.bench.machine import machine_context
    from sqft_ov.measure.bench.runner import package_versions
    from sqft_ov.measure.tune.probe import REFERENCE, probe_setting, reference_probe

    config = config or TuneConfig()
    ir_dir = check_ir(ir_dir)
    check_device(config.device)
    start = time.monotonic()
    deadline = start + config.budget_minutes * 60
    grid = config.grid if config.grid is not None else default_grid(config.device)
    current_config = read_runtime_config(ir_dir)
    for setting in [current_config] + [s for dimension in grid.values() for s in dimension]:
        check_properties(setting, config.device)
    xml = ir_dir / IR_FILE
    keys = sorted({k for dimension in grid.values() for s in dimension for k in s} | set(current_config))

    probe = reference_probe(xml, probe_prompt(ir_dir, config.prompt_tokens), config.probe_tokens, config.device)
    current_device, current_pipeline = split(current_config)
    current = probe_setting(xml, probe, current_device, config.device, keys)
    applied_current = {**PIPELINE_DEFAULTS, **current_pipeline, **current["applied"]}
    scale = float(abs(probe.logits).max())
    tolerance = config.max_logit_diff if config.max_logit_diff is not None else max(2 * current["max_logit_diff"],
                                                                                    0.01 * scale)
    rows = _probe_grid(xml, probe, grid, current, current_device, applied_current, tolerance, keys, config,
                       on_progress)

    # Speed, in batches; settings the plugin did not apply are not worth a timing.
    to_time = [r for r in rows if r["error"] is None and not any(f.startswith("not applied") for f in r["flags"])]
    current_runs = []

    def measure(batch: list[dict], number: int) -> None:
        current_entry, entries = _measure(ir_dir, batch, config, probe, config.repeats, on_progress)
        if not current_entry["ok"]:
            raise SqftError(f"the current configuration of {ir_dir} does not run: {current_entry['error']}")
        current_runs.append(current_entry["stats"]["decode_tokens_per_s"]["median"])
        for row, entry in zip(batch, entries):
            _fill_speed(row, entry, current_entry, number)
            if row["error"] is None and not split(row["setting"])[0] and row.get("tokens_as_current", 0) < config.probe_tokens:
                row["flags"].append(f"outputs change: genai generates other tokens "
                                    f"({row.get('tokens_as_current', 0)}/{config.probe_tokens} as the current)")

    batches_run, last_seconds_per_model = in_batches(to_time, config.batch_size, deadline, measure)

    best, confirmation = _choose_best(rows, ir_dir, xml, probe, current_device, tolerance, keys, config,
                                      deadline, batches_run, last_seconds_per_model, on_progress)
    rows.sort(key=lambda r: (r["error"] is not None, bool(r["flags"]), -_gain(r)))
    return TuneResult(ir=str(ir_dir), config={**asdict(config), "grid": grid}, machine=machine_context(),
                      versions=package_versions(),
                      current={"runtime_config": current_config, "applied": applied_current,
                               "max_logit_diff": current["max_logit_diff"], "top1_agreement": current["top1_agreement"],
                               "decode_tokens_per_s": current_runs},
                      reference={"properties": REFERENCE, "probe_tokens": probe.tokens, "max_abs_logit": scale},
                      tolerance=tolerance, rows=rows, confirmation=confirmation, best=best,
                      profile=_profiles(xml, current_device, best, config) if config.profile else None,
                      seconds=time.monotonic() - start)


def _probe_grid(xml: Path, probe, grid: dict, current: dict, current_device: dict, applied_current: dict,
                tolerance: float, keys: list[str], config: TuneConfig, on_progress=None) -> list[dict]:
    """One row per setting of the grid (those the current configuration already runs with are skipped):
    its logits against the reference, and whether the compiled model really applied it."""
    from sqft_ov.measure.tune.probe import probe_setting

    rows: list[dict] = []
    total, done = sum(len(settings) for settings in grid.values()), 0
    for dimension, settings in grid.items():
        for setting in settings:
            if on_progress is not None:
                on_progress(done, total, "probing outputs")
            done += 1
            row = {"dimension": dimension, "setting": setting, "setting_text": describe(setting), "flags": [],
                   "error": None}
            if all(same_value(k, v, applied_current.get(k, "?")) for k, v in setting.items()):
                continue  # what the current configuration already runs with
            device_part, pipeline_part = split(setting)
            if device_part:
                try:
                    result = probe_setting(xml, probe, {**current_device, **device_part}, config.device, keys)
                except RuntimeError as exc:
                    row["error"] = str(exc).strip().splitlines()[0]
                    rows.append(row)
                    continue
                row.update({k: v for k, v in result.items() if k != "applied"})
                row["applied"] = {k: result["applied"].get(k, "?") for k in device_part}
                ignored = {k: a for k, a in row["applied"].items() if not same_value(k, device_part[k], a)}
                if ignored:
                    row["flags"].append("not applied: the compiled model runs with "
                                        + ", ".join(f"{k}={a}" for k, a in ignored.items()))
            else:  # genai-only: the compiled graph is the current one; genai's tokens are compared below
                row.update({k: v for k, v in current.items() if k != "applied"})
                row["applied"] = dict(pipeline_part)
            _flag_logits(row, tolerance)
            rows.append(row)
    if on_progress is not None:
        on_progress(total, total, "probing outputs")
    return rows


def _gain(row: dict) -> float:
    return row["decode_ratio"]["median"] if row.get("decode_ratio") else 0.0


def _choose_best(rows: list[dict], ir_dir: Path, xml: Path, probe, current_device: dict, tolerance: float,
                 keys: list[str], config: TuneConfig, deadline: float, batches_run: int,
                 last_seconds_per_model: float | None, on_progress=None) -> tuple[dict, dict | None]:
    """The best setting per dimension, their combination, and a confirmation run with twice the repeats."""
    from sqft_ov.measure.tune.probe import probe_setting

    ok = [r for r in rows if r["error"] is None and not r["flags"] and r.get("decode_ratio")]
    winners: dict[str, dict] = {}
    for row in ok:
        if _gain(row) >= 1 + config.min_gain and _gain(row) > _gain(winners.get(row["dimension"], {})):
            winners[row["dimension"]] = row
    best: dict = {"setting": {}, "setting_text": "(current)", "reason": "no setting beat the current configuration by "
                  f"{config.min_gain:.0%} or more without changing outputs"}
    confirmation = None
    if winners:
        ranked = sorted(winners.values(), key=_gain, reverse=True)
        candidates = [ranked[0]]
        if len(ranked) > 1:
            combined = {k: v for row in ranked for k, v in row["setting"].items()}
            row = {"dimension": "combined", "setting": combined, "setting_text": describe(combined), "flags": [],
                   "error": None}
            result = probe_setting(xml, probe, {**current_device, **split(combined)[0]}, config.device, keys)
            row.update({k: v for k, v in result.items() if k != "applied"})
            _flag_logits(row, tolerance)
            if not row["flags"]:
                candidates.append(row)
        confirm = [{**c, "flags": list(c["flags"])} for c in candidates]
        if time.monotonic() + (last_seconds_per_model or 0) * (len(confirm) + 1) * 2 <= deadline + 60:
            current_entry, entries = _measure(ir_dir, confirm, config, probe, 2 * config.repeats, on_progress)
            for row, entry in zip(confirm, entries):
                _fill_speed(row, entry, current_entry, batches_run + 1)
            confirmation = {"current_decode_tokens_per_s": current_entry["stats"]["decode_tokens_per_s"]["median"],
                            "rows": confirm}
            confirmed = [r for r in confirm if r["error"] is None and _gain(r) >= 1 + config.min_gain]
            if confirmed:
                top = max(confirmed, key=_gain)
                best = {**top, "reason": f"confirmed with {2 * config.repeats} more repeats"}
            else:
                best["reason"] = "the settings that won alone did not hold up in the confirmation run"
        else:
            best = {**ranked[0], "reason": "best alone (no budget left to confirm)"}

    return best, confirmation


def _profiles(xml: Path, current_device: dict[str, str], best: dict, config: TuneConfig) -> dict:
    """PERF_COUNT profiles of one decode step, current and best, against the bandwidth measured now."""
    from sqft_ov.measure.bench.machine import read_bandwidth
    from sqft_ov.measure.tune.profile import profile_decode_step

    passes = read_bandwidth(config.bandwidth_gib) if config.bandwidth_gib > 0 else []
    bandwidth = max(passes) if passes else None
    out = {"bandwidth_passes_gb_per_s": passes, "bandwidth_gb_per_s": bandwidth}
    best_device = {**current_device, **split(best["setting"])[0]}
    for name, properties in (("current", current_device), ("best", best_device)):
        if name == "best" and best_device == current_device:
            out["best"] = "same compiled graph as current"
            continue
        out[name] = profile_decode_step(xml, properties, device=config.device, prompt_tokens=config.prompt_tokens,
                                        steps=config.profile_steps, bandwidth_gb_s=bandwidth)
    return out


def apply(ir_dir: str | Path, setting: dict[str, str], device: str = "CPU") -> dict:
    """Write `setting` into the folder's runtime configuration (runtime_config.json and the IR's rt_info).

    Returns the folder's configuration, which of its properties a plain loader (no properties passed)
    already runs with, read back from a compiled model, and the exact loader arguments the rest need
    (sqft-ov's own loaders pass them from runtime_config.json).
    """
    import openvino as ov

    from sqft_ov.io.ir import IR_FILE
    from sqft_ov.io.runtime import loader_arguments, read_runtime_config, write_runtime_config
    from sqft_ov.measure.tune.space import read_back

    ir_dir = check_ir(ir_dir)
    check_properties(setting, device)
    if setting:
        write_runtime_config(ir_dir, setting)
    written = read_runtime_config(ir_dir)
    device_part, _ = split(written)
    plain = read_back(ov.Core().compile_model(ir_dir / IR_FILE, device), device_part)
    applied = {k: same_value(k, v, plain.get(k, "?")) for k, v in device_part.items()}
    return {"runtime_config": written, "plain_loaders_apply": applied,
            "pass_to_loaders": loader_arguments(written, device, from_ir=[k for k, ok in applied.items() if ok])}
