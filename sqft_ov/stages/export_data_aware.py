"""Data-aware INT4 for export, under optimum-cli's option names: what NNCF's `compress_weights` takes beyond the
data-free call (`awq`, `scale_estimation`, `gptq`, `lora_correction`, `ratio`, `backup_mode`, `sensitivity_metric`,
a `dataset` of the IR's own inputs), the rules that refuse what cannot work before any conversion, and what the
export record says about it.

The calibration data are the stateful IR's real inputs for a prefill from an empty KV cache (`input_ids`,
`attention_mask`, `position_ids`, `beam_idx`): what optimum-intel's `OVCalibrationDatasetBuilder` collects by
running `generate(max_new_tokens=1)` on an `OVModelForCausalLM` (tests/test_export_data_aware.py checks they are
equal), built here without compiling the model. optimum-intel marks each of its samples with NNCF's reset-state
key; these carry none, so NNCF's OpenVINO engine resets the KV cache before every sample by default, and NNCF
3.4's GPTQ, which feeds samples to stateless sub-graphs and fails on that key, works on them.

Plain standard library at import: `ExportConfig` (hence `sqft-ov --help`) imports the checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from sqft_ov.errors import ConfigError, SqftError

# NNCF's BackupMode and SensitivityMetric values that apply to INT4 (tests check them against the installed NNCF)
BACKUP_PRECISIONS = ("int8_asym", "int8_sym", "none")
SENSITIVITY_METRICS = ("weight_quantization_error", "hessian_input_activation", "mean_activation_variance",
                       "max_activation_variance", "mean_activation_magnitude")
DATA_FREE_METRIC = "weight_quantization_error"
ALGORITHMS = ("awq", "scale_estimation", "gptq", "lora_correction")  # ExportConfig fields, NNCF's keyword names
PREFILL_INPUTS = {"input_ids", "attention_mask", "position_ids", "beam_idx"}  # optimum-intel's stateful LLM IR


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(config) -> list[str]:
    """The INT4-only compression options set away from their defaults, as flags."""
    names = [a for a in ALGORITHMS if getattr(config, a)]
    names += [n for n in ("backup_precision", "sensitivity_metric") if getattr(config, n) is not None]
    return [flag(n) for n in names] + (["--ratio"] if config.ratio != 1 else [])


def check_data_aware(config) -> None:
    """Refuse what NNCF would refuse, or silently ignore, before anything is converted (ExportConfig.__post_init__).

    Mirrors NNCF 3.4's rules for the OpenVINO backend: `nncf.quantization.algorithms.weight_compression.algorithm.
    check_user_compression_configuration` (INT8 modes take no ratio, dataset, algorithm, backup mode or sensitivity
    metric; 0 <= ratio <= 1; subset_size > 0; a sensitivity metric other than weight_quantization_error needs a
    dataset) and the OpenVINO branch of `nncf.quantization.quantize_model.compress_weights` (scale estimation, GPTQ
    and LoRA correction need a dataset; GPTQ and LoRA correction exclude each other). Stricter than NNCF: AWQ also
    needs --dataset (NNCF's data-free AWQ is not offered), and options that would do nothing are refused.
    """
    if config.backup_precision is not None and config.backup_precision not in BACKUP_PRECISIONS:
        raise ConfigError(f"unknown --backup-precision {config.backup_precision!r}: choose "
                          f"{', '.join(BACKUP_PRECISIONS)}")
    if config.sensitivity_metric is not None and config.sensitivity_metric not in SENSITIVITY_METRICS:
        raise ConfigError(f"unknown --sensitivity-metric {config.sensitivity_metric!r}: choose "
                          f"{', '.join(SENSITIVITY_METRICS)}")
    if not 0 <= config.ratio <= 1:
        raise ConfigError(f"--ratio must be between 0 and 1, got {config.ratio}")
    if config.num_samples < 1 or config.seq_len < 2:
        raise ConfigError("--num-samples must be >= 1 and --seq-len >= 2")
    given = _given(config)
    if config.weight_format != "int4":
        if given:
            int8 = config.weight_format == "int8"
            why = " (NNCF's INT8 modes quantize every layer per channel, data-free)" if int8 else ""
            raise ConfigError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --weight-format int4 "
                              f"only{why}")
        if config.calibration and config.weight_format != "int8-w8a8":
            raise ConfigError(f"--dataset is used by --weight-format int8-w8a8 and int4 (data-aware) only, not "
                              f"{config.weight_format}: drop it")
        return
    algorithms = [flag(a) for a in ALGORITHMS if getattr(config, a)]
    if algorithms and not config.calibration:
        raise ConfigError(f"{', '.join(algorithms)} {'needs' if len(algorithms) == 1 else 'need'} calibration "
                          "data: pass --dataset FILE")
    if config.gptq and config.lora_correction:
        raise ConfigError("--gptq and --lora-correction exclude each other (NNCF refuses them together): choose one")
    metric = config.sensitivity_metric
    if metric is not None and config.ratio == 1:
        raise ConfigError("--sensitivity-metric ranks the layers --ratio leaves at --backup-precision: with --ratio 1 "
                          "every layer is INT4 and it does nothing; pass --ratio below 1 or drop it")
    if metric not in (None, DATA_FREE_METRIC) and not config.calibration:
        raise ConfigError(f"--sensitivity-metric {metric} measures activations: pass --dataset FILE (or use "
                          f"{DATA_FREE_METRIC})")
    if config.calibration and not algorithms and config.ratio == 1:
        raise ConfigError("--dataset with --weight-format int4 is used by --awq, --scale-estimation, --gptq, "
                          "--lora-correction or a --ratio below 1: add one, or drop --dataset")


def check_on_grid(config) -> None:
    """A model merged onto a trained INT4 grid keeps its INT4 codes as they are: nothing may re-quantize them."""
    given = _given(config) + (["--dataset"] if config.calibration else [])
    if given:
        raise ConfigError(f"this model was merged onto a trained INT4 grid, whose codes are written as they are: "
                          f"{', '.join(given)} would re-quantize them; drop {'it' if len(given) == 1 else 'them'}")


def is_data_aware(config) -> bool:
    return config.weight_format == "int4" and bool(config.calibration)


def calibration_texts(config) -> list[str] | None:
    """The calibration texts, read before any conversion (a bad file fails early); None without --dataset."""
    from sqft_ov.io.data import load_texts

    return load_texts(config.calibration, config.text_fields) if config.calibration else None


def calibration_chunks(tokenizer, texts: Sequence[str], config) -> list:
    """Up to --num-samples sequences of --seq-len tokens cut from the calibration texts (as int8-w8a8's)."""
    from sqft_ov.io.data import token_chunks

    return token_chunks(tokenizer, texts, config.num_samples, config.seq_len)


def prefill_inputs(model, chunks: Sequence) -> list[dict]:
    """The IR's inputs for a prefill of each token chunk (`[1, n]` tensors) from an empty KV cache."""
    import numpy as np

    names = [port.get_any_name() for port in model.inputs]
    if "input_ids" not in names or set(names) - PREFILL_INPUTS:
        raise SqftError(f"data-aware INT4 fills the inputs {', '.join(sorted(PREFILL_INPUTS))} of a stateful LLM IR; "
                        f"this IR has {', '.join(names)}: export it without --dataset")
    samples = []
    for chunk in chunks:
        ids = chunk.numpy().astype(np.int64)
        sample = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                  "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
                  "beam_idx": np.arange(ids.shape[0], dtype=np.int64)}  # as optimum-intel's collected inputs
        samples.append({k: v for k, v in sample.items() if k in names})
    return samples


def compression_arguments(config, model, chunks: Sequence | None) -> tuple[dict, dict]:
    """(nncf.compress_weights keyword arguments beyond mode / group size, the settings that record them) for INT4."""
    import nncf

    kwargs: dict = {"ratio": config.ratio}
    # NNCF's default backup mode for INT4 is int8_asym
    settings: dict = {"ratio": config.ratio, "backup_precision": config.backup_precision or "int8_asym"}
    if config.backup_precision is not None:
        kwargs["backup_mode"] = nncf.BackupMode(config.backup_precision)
    if config.ratio < 1:  # NNCF's default metric: activation-based with data, weight error without
        metric = config.sensitivity_metric or ("max_activation_variance" if chunks else DATA_FREE_METRIC)
        settings["sensitivity_metric"] = metric
        if config.sensitivity_metric is not None:
            kwargs["sensitivity_metric"] = nncf.SensitivityMetric(config.sensitivity_metric)
    if chunks:
        samples = prefill_inputs(model, chunks)
        kwargs |= {"dataset": nncf.Dataset(samples), "subset_size": len(samples)}
        kwargs |= {a: True for a in ALGORITHMS if getattr(config, a)}
        settings |= {a: bool(getattr(config, a)) for a in ALGORITHMS}
        settings |= {"calibration": _source(config.calibration), "calibration_samples": len(samples),
                     "calibration_tokens": int(chunks[0].shape[1])}
    return kwargs, settings


def _source(path) -> str:
    from sqft_ov.io.data import data_source

    return data_source(path)


def lost_zeros_hint(config) -> str:
    """Why source zeros may have become nonzero under this export's settings (empty if nothing explains it)."""
    if is_data_aware(config) and config.gptq:
        return ("--gptq compensates each column's quantization error in the weights not yet quantized, which moves "
                "zeros: export a sparse model without --gptq")
    return ""


SPARSE_SOURCE = 0.01  # a source with more exact zeros than this share is sparse (a dense one has a few by chance)


def dense_branches_conflict(config, weights: dict[str, dict]) -> str:
    """Why this export would deploy a sparse source densely (empty if it does not): LoRA correction adds dense
    low-rank branches beside each layer, so W + B A has no zeros even though the zero check of W passes."""
    zeros, numel = sum(w["source_zeros"] for w in weights.values()), sum(w["numel"] for w in weights.values())
    if not (is_data_aware(config) and config.lora_correction) or zeros <= SPARSE_SOURCE * numel:
        return ""
    return (f"--lora-correction adds dense low-rank branches beside the layers, so this sparse model ({zeros / numel:.1%}"
            " zeros) would run dense: export it without --lora-correction")


def quantize_w8a8(ir_dir: Path, chunks: list, config) -> dict:
    """int8-w8a8: optimum-intel's static quantization (`OVQuantizer`) of the IR in `ir_dir`, calibrated on `chunks`."""
    import shutil

    from datasets import Dataset
    from optimum.intel import OVConfig, OVModelForCausalLM, OVQuantizationConfig, OVQuantizer

    rows = Dataset.from_dict({"input_ids": [c[0].tolist() for c in chunks],
                              "attention_mask": [[1] * c.shape[1] for c in chunks]})
    model = OVModelForCausalLM.from_pretrained(ir_dir, compile=False, trust_remote_code=config.trust_remote_code)
    qconfig = OVQuantizationConfig(bits=8, sym=True, num_samples=len(chunks))
    side = ir_dir / ".w8a8"  # the loaded IR is memory-mapped: writing over it in place crashes (SIGBUS)
    OVQuantizer(model).quantize(calibration_dataset=rows, ov_config=OVConfig(quantization_config=qconfig),
                                save_directory=side)
    del model
    for name in ("openvino_model.xml", "openvino_model.bin", "openvino_config.json"):
        (side / name).replace(ir_dir / name)
    shutil.rmtree(side)
    return {"calibration": str(Path(config.calibration).absolute()), "calibration_samples": len(chunks)}
