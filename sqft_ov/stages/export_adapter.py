"""Stage 5, unmerged: a finetune OUTPUT as the base model's IR + a LoRA adapter openvino_genai applies at runtime.

This is how genai deploys many task adapters on one base: OUT is the base folder exported exactly as `export`
exports it (an adapter trained on an INT4 base: on that grid's sym / group size, which reproduces the snapped
base it was trained on), plus `adapter/adapter_model.safetensors` (see `sqft_ov.io.ir_adapter` for the names and
the alpha convention) and `runtime_adapter` in sqft_export.json. Only updates genai computes exactly are
exported: a plain LoRA (also one trained on an INT4 base), with NLS at the chosen sub-adapter's ranks (the first
r rows of A / columns of B, scaled by lora_alpha / r_max as in training and merge). SparsePEFT's masked update,
QA-SparsePEFT's fake-quantized merge and elastic widths are refused before anything is written: merge them,
then export the merged folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sqft_ov.errors import AdapterMismatchError, ConfigError, ExportIntegrityError
from sqft_ov.io.ir_adapter import ADAPTER_DIR, ADAPTER_FILE, TENSOR_PREFIX
from sqft_ov.stages.export import ExportConfig, ExportReport, export

PEFT_ADAPTER_NAME = "default"  # PEFT's name for the one adapter sqft-ov trains (in sqft_trainable's keys)


def refusal(record: dict, adapter_dir: Path) -> str | None:
    """Why this adapter cannot be a runtime adapter (one line), or None when it can."""
    from sqft_ov.adapters.methods import method_for

    method = method_for(record["method"])
    why = method.runtime
    if why is None and record.get("widths"):
        why = "its elastic widths cut the base's matrices"
    if why is None:
        return None
    return (f"{adapter_dir} is a {method.name} adapter and genai cannot apply it at runtime exactly ({why}): "
            f"merge it, then export the merged folder (sqft-ov merge {adapter_dir} MERGED; sqft-ov export MERGED IR)")


def _base_config(config: ExportConfig, record: dict) -> ExportConfig:
    """The base's export settings: an adapter trained on an INT4 base gets that grid's sym / group size."""
    quant = record["quantization"]
    if quant is None:
        return config
    grid = f"INT4 {'sym' if quant['sym'] else 'asym'}, group size {quant['group_size']}"
    why = f"the adapter was trained on the base snapped to {grid}, and its IR must be that base"
    if config.weight_format != "int4":
        raise ConfigError(f"{why}: export with --weight-format int4 (the default), not {config.weight_format}")
    if config.sym is not None and config.sym != quant["sym"]:
        raise ConfigError(f"{why}: drop --{'sym' if config.sym else 'asym'}")
    if config.group_size not in (None, quant["group_size"]):
        raise ConfigError(f"{why}: drop --group-size {config.group_size}")
    if config.all_layers:
        raise ConfigError(f"{why} (INT8 embeddings and lm_head): drop --all-layers")
    moved = [flag for flag, given in (
        ("--dataset", config.calibration), ("--ratio", config.ratio != 1), ("--awq", config.awq),
        ("--scale-estimation", config.scale_estimation), ("--gptq", config.gptq),
        ("--lora-correction", config.lora_correction), ("--backup-precision", config.backup_precision is not None),
        ("--sensitivity-metric", config.sensitivity_metric is not None)) if given]
    if moved:
        raise ConfigError(f"{why}, quantized data-free: drop {', '.join(moved)}")
    return dataclasses.replace(config, sym=quant["sym"], group_size=quant["group_size"])


def _ranks(record: dict, sub_adapter) -> tuple[dict[str, int], list[int] | None]:
    """The rank of each adapted weight: the record's rank, or with NLS the sub-adapter's per block (default: the
    largest), as `activate` sets them for merge."""
    from sqft_ov.adapters.nls import blocks_of, expand, load_sub_adapter

    weights = record["adapted_weights"]
    if not record["nls"]:
        if sub_adapter is not None:
            raise ConfigError("the adapter was trained without --nls: --sub-adapter does not apply")
        return {w: record["rank"] for w in weights}, None
    blocks = blocks_of(weights)
    rank_space = list(record["rank_space"])
    ranks = (load_sub_adapter(sub_adapter, rank_space, len(blocks)) if sub_adapter is not None
             else [max(rank_space)] * len(blocks))
    return expand(dict(zip(blocks, ranks)), blocks), ranks


def runtime_tensors(adapter_dir: Path, record: dict, sub_adapter=None) -> tuple[dict, dict]:
    """(genai adapter tensors, what the record says of them): per adapted weight A[:r] and B[:, :r] * lora_alpha / r_max
    in float32, under PEFT's saved names."""
    import torch
    from safetensors.torch import load_file

    from sqft_ov.adapters.config import TRAINABLE

    trained = load_file(adapter_dir / TRAINABLE)
    scaling = float(record["lora_alpha"]) / record["rank"]  # PEFT's lora_alpha / r (r: the largest rank)
    ranks, block_ranks = _ranks(record, sub_adapter)
    out = {}
    for weight, rank in ranks.items():
        stem = TENSOR_PREFIX + weight.removesuffix(".weight")
        names = [f"{stem}.lora_{part}.{PEFT_ADAPTER_NAME}.weight" for part in "AB"]
        missing = [n for n in names if n not in trained]
        if missing:
            raise AdapterMismatchError(f"{adapter_dir / TRAINABLE} lacks {missing[0]}, which its record's "
                                       "adapted_weights name: the files come from different runs")
        a, b = (trained[n].to(torch.float32) for n in names)
        out[f"{stem}.lora_A.weight"] = a[:rank].contiguous()
        out[f"{stem}.lora_B.weight"] = (b[:, :rank] * scaling).contiguous()
    info = {"peft_scaling": scaling, "scaling_in_lora_B": True, "rank": record["rank"], "ranks": block_ranks,
            "layers": len(ranks)}
    return out, info


def _check_matched(ir_dir: Path, tensors: dict) -> None:
    """Every adapted layer must be one MatMul genai will find by name (it warns only, on stderr, otherwise)."""
    import openvino as ov

    names = [op.get_friendly_name() for op in ov.Core().read_model(ir_dir / "openvino_model.xml").get_ordered_ops()
             if op.get_type_name() == "MatMul"]
    for key in tensors:
        if key.endswith(".lora_A.weight"):
            layer = key.removeprefix(TENSOR_PREFIX).removesuffix(".lora_A.weight")
            found = [n for n in names if layer in n or layer in n.replace(".", "_")]  # genai's own test
            if len(found) != 1:
                raise ExportIntegrityError(f"adapted layer {layer} matches {len(found)} MatMuls of the base IR, not "
                                           "one: genai would not apply the adapter there; please report this")


def export_adapter(adapter_dir: str | Path, output: str | Path, config: ExportConfig | None = None,
                   sub_adapter: str | Path | None = None, base: str | Path | None = None,
                   overwrite: bool = False) -> ExportReport:
    """OUTPUT = the base's IR (as `export` writes it) + `adapter/adapter_model.safetensors` for openvino_genai,
    recorded in sqft_export.json (`runtime_adapter`: the file, the alpha to pass, the base); atomically.

    `sub_adapter`: an NLS adapter's CONFIG.json from search (default: the largest ranks); `base`: the base folder
    if it moved since training. Adapters genai cannot apply exactly are refused: merge, then export."""
    from safetensors.torch import save_file

    from sqft_ov.adapters.adapted import read_record
    from sqft_ov.adapters.config import TRAINABLE
    from sqft_ov.io.checkpoint import check_model_dir, model_fingerprint
    from sqft_ov.io.output import check_output

    adapter_dir = Path(adapter_dir).expanduser().absolute()
    record = read_record(adapter_dir)
    reason = refusal(record, adapter_dir)
    if reason is not None:
        raise ConfigError(reason)
    if config is not None and config.fuse_projections:
        raise ConfigError("--fuse-projections: genai applies a runtime adapter to the MatMuls it names, which a fused "
                          "IR merges: drop the flag, or merge the adapter and export the merged model")
    config = _base_config(config or ExportConfig(), record)
    check_output(output, overwrite, inputs=(adapter_dir, base, sub_adapter))
    if not (adapter_dir / TRAINABLE).is_file():
        raise AdapterMismatchError(f"{adapter_dir} has no {TRAINABLE} (the trained tensors): copy the whole folder")
    tensors, info = runtime_tensors(adapter_dir, record, sub_adapter)
    base = check_model_dir(base if base is not None else record["base"])
    if model_fingerprint(base) != record["base_fingerprint"]:
        raise AdapterMismatchError(f"the base model in {base} is not the one the adapter was trained on "
                                   "(fingerprint differs): pass the original base with --base")

    def write_adapter(folder: Path) -> dict:
        _check_matched(folder, tensors)
        (folder / ADAPTER_DIR).mkdir()
        save_file(tensors, folder / ADAPTER_DIR / ADAPTER_FILE, metadata={"format": "pt"})
        return {"file": f"{ADAPTER_DIR}/{ADAPTER_FILE}", "alpha": 1.0, "base_ir": ".", "base": str(base),
                "adapter": str(adapter_dir), "method": record["method"], "nls": record["nls"],
                "sub_adapter": str(Path(sub_adapter).absolute()) if isinstance(sub_adapter, (str, Path)) else None,
                "tensor_name_prefix": TENSOR_PREFIX, **info}

    # the IR serves the adapter: its tokenizer keeps or drops the chat template as the adapter was trained (as
    # load_adapted reads it; older records: known only where the template was asked for)
    templated = record.get("chat_template_applied", True if record["data_format"].get("chat_template") else None)
    return export(base, output, config, overwrite, after=write_adapter, trained_chat=templated)
