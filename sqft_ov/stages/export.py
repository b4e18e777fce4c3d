"""Stage 5: export a Hugging Face folder to an OpenVINO IR folder that optimum-intel and genai load as is.

The conversion itself is optimum-intel's (`main_export`: stateful model with KV cache, tokenizer and
detokenizer IRs, configs), weight compression is NNCF's (`compress_weights` on the OpenVINO model, the
same step `optimum-cli export openvino` runs) and static W8A8 is optimum-intel's `OVQuantizer`. What this
module adds is the SQFT guarantee, checked on the written IR: every weight that is exactly zero in the
source model is exactly zero after dequantizing the IR's constants. The result, with the settings and the
per-weight sparsity, is recorded in `sqft_export.json` beside the IR (INT4/INT8 IRs also carry the source
and settings in their rt_info).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqft_ov.errors import ConfigError, ExportIntegrityError
from sqft_ov.io.ir import save_over
from sqft_ov.io.output import atomic_output, check_output, kill_point
from sqft_ov.stages.export_groups import (FALLBACKS, describe_plan, grouped_input_sizes, plan_group_sizes,
                                          resolve_fallback)

WEIGHT_FORMATS = ("fp16", "int8", "int4", "int8-w8a8")
DEFAULT_GROUP_SIZE = 128  # INT4 post-training, as optimum-cli and NNCF (a merged QA-SparsePEFT keeps its trained grid)
PROVENANCE = "sqft_export.json"
_OPTIMUM_DTYPE = {"fp16": "fp16", "int8": "int8", "int4": "int4", "int8-w8a8": "int8"}


@dataclass
class ExportConfig:
    weight_format: str = "int4"
    sym: bool | None = None  # default: asymmetric (or the trained grid's, for a merged QA-SparsePEFT folder)
    group_size: int | None = None  # INT4; -1: per output channel; None: DEFAULT_GROUP_SIZE or the trained grid's
    group_size_fallback: str = "auto"  # adjust for the default group size, error for an explicit one
    all_layers: bool = False  # INT4 also for embeddings and lm_head (NNCF keeps them INT8 by default)
    calibration: str | None = None  # int8-w8a8 only
    text_fields: tuple[str, ...] = ()
    num_samples: int = 128
    seq_len: int = 512
    sparse_rate: float | None = None
    device: str | None = None  # compile the IR there once to check that it loads
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.weight_format not in WEIGHT_FORMATS:
            raise ConfigError(f"unknown --weight-format {self.weight_format!r}: choose {', '.join(WEIGHT_FORMATS)}")
        if self.group_size_fallback not in FALLBACKS:
            raise ConfigError(f"unknown --group-size-fallback {self.group_size_fallback!r}: choose "
                              f"{', '.join(FALLBACKS)}")
        if self.group_size is not None and (self.group_size == 0 or self.group_size < -1):
            raise ConfigError(f"--group-size must be positive or -1 (per channel), got {self.group_size}")
        if self.weight_format == "int8-w8a8" and not self.calibration:
            raise ConfigError("--weight-format int8-w8a8 quantizes activations statically: pass --dataset FILE")
        if self.all_layers and self.weight_format != "int4":
            raise ConfigError("--all-layers applies to --weight-format int4 only")
        if self.sparse_rate is not None and not 0 < self.sparse_rate <= 1:
            raise ConfigError(f"--sparse-rate must be in (0, 1], got {self.sparse_rate}")


@dataclass
class ExportReport:
    output: str
    source: str
    settings: dict
    weights: dict[str, dict] = field(default_factory=dict)  # name -> storage, zeros in source / IR, kept
    sparse_decompression: dict = field(default_factory=dict)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase: convert, compress, verify ...

    @property
    def source_zeros(self) -> int:
        return sum(w["source_zeros"] for w in self.weights.values())

    @property
    def zeros_kept(self) -> int:
        return sum(w["zeros_kept"] for w in self.weights.values())

    @property
    def ir_sparsity(self) -> float:
        return sum(w["ir_zeros"] for w in self.weights.values()) / max(1, sum(w["numel"] for w in self.weights.values()))


def _plan_groups(model_dir: Path, config: ExportConfig) -> dict:
    """Fail before the (long) conversion when INT4 groups cannot tile a layer and no fallback applies;
    otherwise the settings saying which layers get which group size."""
    if config.weight_format != "int4":
        return {}
    group_size = config.group_size or DEFAULT_GROUP_SIZE
    fallback = resolve_fallback(config.group_size_fallback, config.group_size is not None)
    sizes = grouped_input_sizes(model_dir, config.all_layers)
    plan = plan_group_sizes(sizes, group_size, fallback, config.group_size is not None)
    return {"group_size_fallback": fallback, "group_sizes": describe_plan(plan, sizes, group_size),
            "group_size_exceptions": plan}


def compress_ir(xml: Path, config: ExportConfig, provenance: dict, into: Path | None = None) -> dict:
    """NNCF weight compression of an uncompressed IR, written over it or `into` another .xml path."""
    import nncf
    import openvino as ov

    if config.weight_format == "int8":
        mode, group = (nncf.CompressWeightsMode.INT8_SYM if config.sym else nncf.CompressWeightsMode.INT8_ASYM), -1
    else:
        mode = nncf.CompressWeightsMode.INT4_SYM if config.sym else nncf.CompressWeightsMode.INT4_ASYM
        group = config.group_size or DEFAULT_GROUP_SIZE
    fallback = resolve_fallback(config.group_size_fallback, config.group_size is not None)
    params = nncf.AdvancedCompressionParameters(group_size_fallback_mode=nncf.GroupSizeFallbackMode(fallback))
    model = ov.Core().read_model(xml)
    try:
        extra = {"all_layers": True} if config.all_layers else {}  # NNCF's INT8 modes refuse the option itself
        model = nncf.compress_weights(model, mode=mode, group_size=group, ratio=1.0, advanced_parameters=params,
                                      **extra)
    except nncf.errors.InvalidGroupSizeError as exc:
        raise ConfigError(f"--group-size {group} does not divide every layer ({str(exc).splitlines()[0]}):"
                          " choose a divisor, or pass --group-size-fallback adjust|ignore") from exc
    settings = {"nncf_mode": mode.value, "group_size": group, "all_layers": config.all_layers}
    # The IR is written here anyway: stamp where it came from into it (rt_info travels with the .xml).
    model.set_rt_info(json.dumps({**provenance, "settings": settings}), ["sqft_ov", "provenance"])
    if into is None:
        save_over(model, xml)
    else:
        ov.save_model(model, into, compress_to_fp16=False)
    return settings


def _quantize_w8a8(ir_dir: Path, model_dir: Path, config: ExportConfig) -> dict:
    from datasets import Dataset
    from optimum.intel import OVConfig, OVModelForCausalLM, OVQuantizationConfig, OVQuantizer
    from transformers import AutoTokenizer

    from sqft_ov.io.data import load_texts, token_chunks

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True,
                                              trust_remote_code=config.trust_remote_code)
    chunks = token_chunks(tokenizer, load_texts(config.calibration, config.text_fields), config.num_samples, config.seq_len)
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


def _check_grid(grid: dict, config: ExportConfig) -> None:
    """A merged QA-SparsePEFT folder already holds INT4 values: refuse anything that would re-quantize them."""
    if config.weight_format != "int4":
        raise ConfigError(f"this model was merged onto a trained INT4 grid: export it with --weight-format int4 "
                          f"(--weight-format {config.weight_format} would re-quantize the merged weights)")
    if config.all_layers:
        raise ConfigError("--all-layers would re-quantize the embeddings and lm_head of a model merged onto a trained "
                          "INT4 grid to a grid it was not trained on: drop --all-layers")
    if config.group_size not in (None, grid["group_size"]):
        raise ConfigError(f"--group-size {config.group_size} conflicts with the trained INT4 grid's group size "
                          f"{grid['group_size']}: drop --group-size")
    if config.sym is not None and config.sym != grid["sym"]:
        raise ConfigError(f"--{'sym' if config.sym else 'asym'} conflicts with the trained INT4 grid "
                          f"({'sym' if grid['sym'] else 'asym'}metric): drop the flag")


def _export_on_grid(model_dir: Path, out: Path, grid: dict, grids: dict, config: ExportConfig) -> dict:
    """Write the merged weights' own INT4 codes: NNCF quantizers set to the saved grid, stripped to packed INT4.

    The weights already lie on the grid, so quantizing them with it reproduces their codes exactly; optimum's
    `export_from_model` then keeps the packed INT4 tensors bit for bit.
    """
    import nncf
    import torch
    from optimum.exporters.openvino.convert import export_from_model, export_tokenizer

    from sqft_ov.adapters.qa_lora import compress_with_lora, load_grid
    from sqft_ov.io.checkpoint import load_causal_lm

    model, tokenizer = load_causal_lm(model_dir, config.trust_remote_code, dtype=torch.float32)
    model = compress_with_lora(model, grid["sym"], grid["group_size"], rank=1, nls=False, masked=False,
                               init_adapters=False)
    load_grid(model, grids)
    example = {"input_ids": torch.ones(1, 8, dtype=torch.long)}
    model = nncf.strip(model, do_copy=False, strip_format=nncf.StripFormat.DQ, example_input=example)
    export_from_model(model, out, task="text-generation-with-past", preprocessors=[tokenizer],
                      trust_remote_code=config.trust_remote_code)
    export_tokenizer(tokenizer, out, task="text-generation-with-past")
    return {"nncf_mode": "int4_sym" if grid["sym"] else "int4_asym", "group_size": grid["group_size"],
            "sym": grid["sym"], "trained_int4_grid": True}


def _convert(model_dir: Path, out: Path, config: ExportConfig, model_config) -> dict:
    """optimum-intel's conversion of a folder (a cut sub-network: of the model sqft-ov loads for it)."""
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    from sqft_ov.io.blocks import WIDTHS_KEY

    if getattr(model_config, WIDTHS_KEY, None):
        return _export_cut(model_dir, out, config)
    # The dtype optimum-cli passes for each format (it decides the loading precision: 16-bit checkpoints stay
    # 16-bit); an explicit OVConfig also stops optimum from silently compressing models of 1e9+ parameters
    # to INT8 when fp16 was asked for.
    main_export(str(model_dir), out, task="text-generation-with-past", convert_tokenizer=True,
                ov_config=OVConfig(dtype=_OPTIMUM_DTYPE[config.weight_format]),
                trust_remote_code=config.trust_remote_code, local_files_only=True)
    return {}


def _cut_export_config(model, tokenizer):
    """optimum-intel's export config for the model, with dummy KV caches of each block's own KV head count.

    optimum traces the model with one KV-cache shape for every block (from config.json); a sub-network whose
    blocks kept different numbers of KV groups needs each block's own (the IR then carries them).
    """
    import optimum.exporters.openvino  # noqa: F401  (registers the OpenVINO export configs)
    from optimum.exporters.tasks import TasksManager

    from sqft_ov.io.blocks import layer_widths

    widths = layer_widths(model.config)
    constructor = TasksManager.get_exporter_config_constructor(model=model, exporter="openvino",
                                                               task="text-generation-with-past",
                                                               library_name="transformers")
    base = constructor.func
    pkv = base.DUMMY_PKV_GENERATOR_CLASS

    class PerBlockPastKeyValues(pkv):
        def generate(self, input_name, framework="pt", int_dtype="int64", float_dtype="fp32"):
            pairs = super().generate(input_name, framework=framework, int_dtype=int_dtype, float_dtype=float_dtype)
            return [(k[:, :w.kv_groups].contiguous(), v[:, :w.kv_groups].contiguous())
                    for (k, v), w in zip(pairs, widths)]

    cut = type(f"Cut{base.__name__}", (base,), {
        "DUMMY_PKV_GENERATOR_CLASS": PerBlockPastKeyValues,
        "DUMMY_INPUT_GENERATOR_CLASSES": tuple(PerBlockPastKeyValues if c is pkv else c
                                               for c in base.DUMMY_INPUT_GENERATOR_CLASSES)})
    return cut(model.config, int_dtype="int64", float_dtype="fp32", preprocessors=[tokenizer], use_past_in_inputs=True,
               **constructor.keywords)


def _export_cut(model_dir: Path, out: Path, config: ExportConfig) -> dict:
    """A sub-network with per-block widths (`sqft_layer_widths`): loaded by sqft-ov, converted by optimum-intel."""
    import torch
    from optimum.exporters.openvino.convert import export_from_model, export_tokenizer
    from optimum.intel import OVConfig

    from sqft_ov.io.checkpoint import load_causal_lm

    model, tokenizer = load_causal_lm(model_dir, config.trust_remote_code, dtype=torch.float32)
    export_from_model(model, out, task="text-generation-with-past", preprocessors=[tokenizer],
                      ov_config=OVConfig(dtype=_OPTIMUM_DTYPE[config.weight_format]),
                      custom_export_configs={"model": _cut_export_config(model, tokenizer)},
                      trust_remote_code=config.trust_remote_code)
    export_tokenizer(tokenizer, out, task="text-generation-with-past")
    return {"per_block_widths": True}


def verify_zeros(ir_dir: Path, model_dir: Path) -> dict[str, dict]:
    """Per weight: zeros in the source, zeros in the dequantized IR, and how many source zeros stayed zero."""
    import torch

    from sqft_ov.io.checkpoint import read_tensor, safetensors_index
    from sqft_ov.io.ir import iter_ir_weights

    index = safetensors_index(model_dir)
    out = {}
    for weight in iter_ir_weights(ir_dir):
        if weight.name not in index:
            continue  # e.g. a tied lm_head: its source is the embedding, checked under that name
        source = read_tensor(index, weight.name)
        if tuple(source.shape) != weight.values.shape:
            raise ExportIntegrityError(f"IR weight {weight.name} has shape {weight.values.shape}, source "
                                       f"{tuple(source.shape)}")
        # Compared in torch, in each side's own dtype: numpy's float16 ops are slow, and no f32 copy is needed.
        source_zero = source == 0
        ir_zero = torch.from_numpy(weight.values) == 0
        out[weight.name] = {"storage": weight.storage, "numel": source.numel(),
                            "source_zeros": int(torch.count_nonzero(source_zero)),
                            "ir_zeros": int(torch.count_nonzero(ir_zero)),
                            "zeros_kept": int(torch.count_nonzero(source_zero & ir_zero))}
    if not out:
        raise ExportIntegrityError(f"found no weights of the source model in the IR {ir_dir}: the export is unusable")
    return out


def _sparse_decompression(ir_dir: Path, config: ExportConfig) -> dict:
    from sqft_ov.io.runtime import SPARSE_RATE, cpu_has_amx, loader_arguments, read_runtime_config, write_runtime_config

    if config.sparse_rate is None:
        return {}
    # Kept in runtime_config.json only: the CPU plugin does not read this property from the IR's rt_info.
    write_runtime_config(ir_dir, {SPARSE_RATE: str(config.sparse_rate)})
    amx = cpu_has_amx()
    reasons = []
    if config.weight_format != "int8-w8a8":
        reasons.append("it needs INT8 weights with INT8 activations (--weight-format int8-w8a8)")
    if not amx:
        reasons.append("this CPU has no AMX")
    return {"property": SPARSE_RATE, "rate": config.sparse_rate, "cpu_has_amx": amx,
            "can_engage_here": not reasons, "why_not": "; ".join(reasons),
            "pass_to_loaders": loader_arguments(read_runtime_config(ir_dir))}


def _check_compiles(ir_dir: Path, device: str) -> dict:
    import openvino as ov

    from sqft_ov.io.runtime import fully_connected_primitives, run_prefill, runtime_properties

    compiled = ov.Core().compile_model(ir_dir / "openvino_model.xml", device, runtime_properties(ir_dir))
    result = {"device": device}
    run_prefill(compiled)
    if device.upper().startswith("CPU"):
        primitives = fully_connected_primitives(compiled)
        result["fully_connected_primitives"] = sorted(set(primitives.values()))
        result["sparse_kernels"] = sum("sparse" in p for p in primitives.values())
    return result


def export(model_dir: str | Path, output: str | Path, config: ExportConfig | None = None,
           overwrite: bool = False) -> ExportReport:
    """Convert, compress, verify and record; OUTPUT appears only when all of it succeeded."""
    import openvino as ov

    from sqft_ov import __version__
    from sqft_ov.io.checkpoint import (check_folder_finite, check_model_dir, load_config, require_safetensors,
                                       require_tokenizer)

    config = config or ExportConfig()
    model_dir = check_model_dir(model_dir)
    model_config = load_config(model_dir, config.trust_remote_code)
    require_safetensors(model_dir)
    require_tokenizer(model_dir)
    check_output(output, overwrite, inputs=(model_dir,))
    check_folder_finite(model_dir)
    if config.device:
        from sqft_ov.io.runtime import check_device

        check_device(config.device)
    from sqft_ov.io.grid import read_grid
    from sqft_ov.io.hub import is_hub_dataset

    trained = read_grid(model_dir)
    groups = {}
    if trained is not None:
        _check_grid(trained[0], config)
    else:
        groups = _plan_groups(model_dir, config)
    if config.calibration and not (Path(config.calibration).expanduser().exists() or is_hub_dataset(config.calibration)):
        raise ConfigError(f"calibration file {config.calibration} does not exist")

    start = time.perf_counter()
    logging_disabled = logging.root.manager.disable  # optimum's conversion re-enables every log level after it
    with atomic_output(output, overwrite) as tmp:
        settings = {"weight_format": config.weight_format}
        phases: dict[str, float] = {}
        mark = time.perf_counter()
        if trained is not None:
            settings |= _export_on_grid(model_dir, tmp, *trained, config)
        else:
            settings |= _convert(model_dir, tmp, config, model_config)
        logging.disable(logging_disabled)
        xml = tmp / "openvino_model.xml"
        if not (tmp / "openvino_tokenizer.xml").is_file():
            raise ExportIntegrityError(f"the tokenizer of {model_dir} could not be converted to OpenVINO: genai needs "
                                       "openvino_tokenizer.xml (check that the folder has tokenizer.json)")
        phases["convert"] = time.perf_counter() - mark
        kill_point("export-converted")
        mark = time.perf_counter()
        if trained is None and config.weight_format in ("int4", "int8"):
            settings |= {"sym": bool(config.sym)}
            provenance = {"sqft_ov_version": __version__, "source": str(model_dir)}
            settings |= compress_ir(xml, config, provenance) | groups
        elif config.weight_format == "int8-w8a8":
            settings |= _quantize_w8a8(tmp, model_dir, config)
        phases["compress"] = time.perf_counter() - mark
        report = ExportReport(output=str(Path(output).absolute()), source=str(model_dir), settings=settings,
                              phases=phases)
        mark = time.perf_counter()
        report.weights = verify_zeros(tmp, model_dir)
        phases["verify_zeros"] = time.perf_counter() - mark
        lost = {k: w["source_zeros"] - w["zeros_kept"] for k, w in report.weights.items()
                if w["zeros_kept"] != w["source_zeros"]}
        if lost:
            raise ExportIntegrityError(f"{sum(lost.values())} source zeros became nonzero in the IR (e.g. "
                                       f"{next(iter(lost))}): "
                                       "the export is not sparsity-preserving; please report this with the command "
                                       "used")
        report.sparse_decompression = _sparse_decompression(tmp, config)
        if config.device:
            report.settings["compiled_on"] = _check_compiles(tmp, config.device)
        report.seconds = time.perf_counter() - start
        (tmp / PROVENANCE).write_text(json.dumps({**asdict(report), "sqft_ov_version": __version__,
                                                  "openvino_version": ov.get_version()}, indent=2))
    return report
