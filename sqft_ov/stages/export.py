"""Stage 5: export a Hugging Face folder to an OpenVINO IR folder that optimum-intel and genai load as is.

The conversion itself is optimum-intel's (`main_export`: stateful model with KV cache, tokenizer and
detokenizer IRs, configs), weight compression is NNCF's (`compress_weights` on the OpenVINO model, the
same step `optimum-cli export openvino` runs: data-free, or data-aware with --dataset, see export_data_aware)
and static W8A8 is optimum-intel's `OVQuantizer`. What this module adds is the SQFT guarantee, checked on
the written IR: every weight that is exactly zero in the source model is exactly zero after dequantizing the
IR's constants. The result, with the settings and the per-weight sparsity, is recorded in `sqft_export.json`
beside the IR (INT4/INT8 IRs also carry the source and settings in their rt_info).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sqft_ov.errors import ConfigError, ExportIntegrityError
from sqft_ov.io.grid import Int4Grid, carry_grid, grid_of
from sqft_ov.io.ir import save_over
from sqft_ov.io.ir_fusion import fuse_ir
from sqft_ov.io.output import atomic_output, check_output, kill_point
from sqft_ov.io.prompt_format import drop_chat_template, should_drop, trained_with_chat_template
from sqft_ov.stages.export_convert import convert_folder, model_converter
from sqft_ov.stages.export_data_aware import (BACKUP_PRECISIONS, SENSITIVITY_METRICS, calibration_chunks,
                                              calibration_texts, check_data_aware, check_on_grid,
                                              compression_arguments, dense_branches_conflict, lost_zeros_hint,
                                              quantize_w8a8)
from sqft_ov.stages.export_sparse import (SPARSE_FORMAT_HELP, check_not_on_grid, check_sparse_format, rewrite_ir,
                                         sparse_decompression)
from sqft_ov.stages.export_groups import (FALLBACKS, describe_plan, grouped_input_sizes, plan_group_sizes,
                                          resolve_fallback)

if TYPE_CHECKING:
    import torch

WEIGHT_FORMATS = ("fp16", "int8", "int4", "int8-w8a8")
DEFAULT_GROUP_SIZE = 128  # INT4 post-training, as optimum-cli and NNCF (a merged QA-SparsePEFT keeps its trained grid)
PROVENANCE = "sqft_export.json"


@dataclass
class ExportConfig:
    weight_format: str = field(default="int4", metadata={"help": " | ".join(WEIGHT_FORMATS)})
    sym: bool | None = field(default=None, metadata={  # None: asymmetric, or a merged QA-SparsePEFT's trained grid
        "help": "Symmetric (no zero point) or asymmetric INT weights."})
    group_size: int | None = field(default=None, metadata={  # None: DEFAULT_GROUP_SIZE or the trained grid's
        "help": "INT4 group size along the input dimension; -1 per channel."})
    group_size_fallback: str = field(default="auto", metadata={"help": (
        "auto | error | adjust | ignore: for layers the group size does not divide. auto: adjust (NNCF: the largest "
        "power of two dividing the layer, at least 32, else INT8) when --group-size is not given, error when it is.")})
    all_layers: bool = field(default=False, metadata={
        "help": "INT4 also for the embeddings and lm_head (default: INT8, as NNCF and optimum-cli)."})
    ratio: float = field(default=1.0, metadata={"help": (
        "int4: share of the layers in INT4, the rest in --backup-precision, ranked by --sensitivity-metric "
        "(NNCF's mixed precision).")})
    backup_precision: str | None = field(default=None, metadata={"help": (
        f"int4: {' | '.join(BACKUP_PRECISIONS)}, for the layers --ratio leaves out and (without --all-layers) the "
        "embeddings and lm_head; none keeps them in floating point.")})
    sensitivity_metric: str | None = field(default=None, metadata={"help": (
        f"int4 with --ratio below 1: how layers are ranked, {' | '.join(SENSITIVITY_METRICS)}.")})
    calibration: str | None = None  # int8-w8a8, data-aware int4
    awq: bool = field(default=False, metadata={
        "help": "int4: AWQ, activation-aware scaling of the weights before quantizing (needs --dataset)."})
    scale_estimation: bool = field(default=False, metadata={
        "help": "int4: scale estimation, INT4 scales that minimize each layer's output error (needs --dataset)."})
    gptq: bool = field(default=False, metadata={"help": (
        "int4: GPTQ, layer-wise error compensation (needs --dataset; it moves weights, so a sparse model fails the "
        "zero check).")})
    lora_correction: bool = field(default=False, metadata={"help": (
        "int4: LoRA correction, low-rank INT8 branches beside the layers that correct their quantization error "
        "(needs --dataset; the branches are dense, so a sparse model's export refuses it).")})
    text_fields: tuple[str, ...] = ()
    num_samples: int = field(default=128, metadata={"help": "Calibration sequences (int8-w8a8, data-aware int4)."})
    seq_len: int = field(default=512, metadata={
        "help": "Tokens per calibration sequence (int8-w8a8, data-aware int4)."})
    sparse_rate: float | None = field(default=None, metadata={
        "help": "Write CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE into the IR's runtime configuration."})
    sparse_format: str | None = field(default=None, metadata={"help": SPARSE_FORMAT_HELP})
    fuse_projections: bool | None = field(default=None, metadata={"help": (
        "One MatMul, split after it, for the projections that read one activation (q/k/v, gate/up): faster CPU "
        "decode, the same products. Default: on, but not with a runtime adapter (genai finds its layers by MatMul "
        "name) or int8-w8a8.")})
    device: str | None = field(default=None, metadata={
        "help": "Compile the IR on this device once to check it (CPU, GPU ...)."})
    chat_template: str = field(default="auto", metadata={"help": (
        "auto | keep | drop: the chat template in the IR's tokenizer, which openvino_genai applies to a string prompt "
        "by default. auto: drop it for a model sqft-ov fine-tuned on plain prompts, keep it otherwise.")})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model folder's own Python code to run."})

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
        should_drop(self.chat_template, None)  # an unknown choice fails here
        if self.sparse_rate is not None and not 0 < self.sparse_rate <= 1:
            raise ConfigError(f"--sparse-rate must be in (0, 1], got {self.sparse_rate}")
        check_data_aware(self)
        check_sparse_format(self)
        if self.fuse_projections and self.weight_format == "int8-w8a8":
            raise ConfigError("--fuse-projections applies to weight-only formats (fp16, int8, int4), not int8-w8a8")


@dataclass
class ExportReport:
    output: str
    source: str
    settings: dict
    weights: dict[str, dict] = field(default_factory=dict)  # name -> storage, zeros in source / IR, kept
    sparse_decompression: dict = field(default_factory=dict)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase: convert, compress, verify ...
    runtime_adapter: dict | None = None  # an adapter genai applies at runtime (adapter/): sqft_ov.stages.export_adapter

    @property
    def source_zeros(self) -> int:
        return sum(w["source_zeros"] for w in self.weights.values())

    @property
    def zeros_kept(self) -> int:
        return sum(w["zeros_kept"] for w in self.weights.values())

    @property
    def ir_sparsity(self) -> float:
        return sum(w["ir_zeros"] for w in self.weights.values()) / max(1, sum(w["numel"] for w in self.weights.values()))


def _plan_groups(sizes: dict[str, int], config: ExportConfig) -> dict:
    """Fail before the (long) conversion when INT4 groups cannot tile a layer and no fallback applies;
    otherwise the settings saying which layers get which group size."""
    if config.weight_format != "int4":
        return {}
    group_size = config.group_size or DEFAULT_GROUP_SIZE
    fallback = resolve_fallback(config.group_size_fallback, config.group_size is not None)
    plan = plan_group_sizes(sizes, group_size, fallback, config.group_size is not None)
    return {"group_size_fallback": fallback, "group_sizes": describe_plan(plan, sizes, group_size),
            "group_size_exceptions": plan}


def compress_ir(xml: Path, config: ExportConfig, provenance: dict, into: Path | None = None,
                chunks: list | None = None) -> dict:
    """NNCF weight compression of an uncompressed IR, written over it or `into` another .xml path; data-aware INT4
    (export_data_aware) calibrates on `chunks`, token sequences fed to the IR as prefills."""
    import nncf
    import openvino as ov

    from sqft_ov.io.sparse_fc.op import core_for

    model = core_for(xml).read_model(xml)
    if config.weight_format == "int8":
        mode, group = (nncf.CompressWeightsMode.INT8_SYM if config.sym else nncf.CompressWeightsMode.INT8_ASYM), -1
        kwargs, recorded = {"ratio": 1.0}, {}
    else:
        mode = nncf.CompressWeightsMode.INT4_SYM if config.sym else nncf.CompressWeightsMode.INT4_ASYM
        group = config.group_size or DEFAULT_GROUP_SIZE
        kwargs, recorded = compression_arguments(config, model, chunks)
    fallback = resolve_fallback(config.group_size_fallback, config.group_size is not None)
    params = nncf.AdvancedCompressionParameters(group_size_fallback_mode=nncf.GroupSizeFallbackMode(fallback))
    try:
        extra = {"all_layers": True} if config.all_layers else {}  # NNCF's INT8 modes refuse the option itself
        model = nncf.compress_weights(model, mode=mode, group_size=group, advanced_parameters=params, **kwargs,
                                      **extra)
    except nncf.errors.InvalidGroupSizeError as exc:
        raise ConfigError(f"--group-size {group} does not divide every layer ({str(exc).splitlines()[0]}):"
                          " choose a divisor, or pass --group-size-fallback adjust|ignore") from exc
    except (nncf.ParameterNotSupportedError, nncf.ValidationError, nncf.UnsupportedModelError) as exc:
        # what export_data_aware's early checks cannot know (e.g. GPTQ on a layer with transposed activations)
        raise ConfigError(f"NNCF refuses this compression of the model: {str(exc).strip().splitlines()[0]}") from exc
    settings = {"nncf_mode": mode.value, "group_size": group, "all_layers": config.all_layers} | recorded
    # The IR is written here anyway: stamp where it came from into it (rt_info travels with the .xml).
    model.set_rt_info(json.dumps({**provenance, "settings": settings}), ["sqft_ov", "provenance"])
    if into is None:
        save_over(model, xml)
    else:
        ov.save_model(model, into, compress_to_fp16=False)
    return settings


def _check_grid(grid: Int4Grid, config: ExportConfig) -> None:
    """A merged QA-SparsePEFT folder already holds INT4 values: refuse anything that would re-quantize them."""
    if config.weight_format != "int4":
        raise ConfigError(f"this model was merged onto a trained INT4 grid: export it with --weight-format int4 "
                          f"(--weight-format {config.weight_format} would re-quantize the merged weights)")
    if config.all_layers:
        raise ConfigError("--all-layers would re-quantize the embeddings and lm_head of a model merged onto a trained "
                          "INT4 grid to a grid it was not trained on: drop --all-layers")
    if config.group_size not in (None, grid.group_size):
        raise ConfigError(f"--group-size {config.group_size} conflicts with the trained INT4 grid's group size "
                          f"{grid.group_size}: drop --group-size")
    if config.sym is not None and config.sym != grid.sym:
        raise ConfigError(f"--{'sym' if config.sym else 'asym'} conflicts with the trained INT4 grid "
                          f"({'sym' if grid.sym else 'asym'}metric): drop the flag")
    check_on_grid(config)
    check_not_on_grid(config)


def folder_zeros(model_dir: Path) -> Callable[[str], "torch.Tensor | None"]:
    """Where each weight of a model folder is exactly zero, read one tensor at a time (None: not in the folder)."""
    from sqft_ov.io.checkpoint import read_tensor, safetensors_index

    index = safetensors_index(model_dir)
    return lambda name: read_tensor(index, name) == 0 if name in index else None


def verify_zeros(ir_dir: Path, source_zeros: Callable[[str], "torch.Tensor | None"]) -> dict[str, dict]:
    """Per weight: zeros in the source, zeros in the dequantized IR, and how many source zeros stayed zero."""
    import torch

    from sqft_ov.io.ir import iter_ir_weights

    out = {}
    for weight in iter_ir_weights(ir_dir):
        source_zero = source_zeros(weight.name)
        if source_zero is None:
            continue  # e.g. a tied lm_head: its source is the embedding, checked under that name
        if tuple(source_zero.shape) != weight.values.shape:
            raise ExportIntegrityError(f"IR weight {weight.name} has shape {weight.values.shape}, source "
                                       f"{tuple(source_zero.shape)}")
        # Compared in torch: numpy's float16 ops are slow.
        ir_zero = torch.from_numpy(weight.values) == 0
        out[weight.name] = {"storage": weight.storage, "numel": source_zero.numel(),
                            "source_zeros": int(torch.count_nonzero(source_zero)),
                            "ir_zeros": int(torch.count_nonzero(ir_zero)),
                            "zeros_kept": int(torch.count_nonzero(source_zero & ir_zero))}
    if not out:
        raise ExportIntegrityError(f"found no weights of the source model in the IR {ir_dir}: the export is unusable")
    return out


def _check_compiles(ir_dir: Path, device: str) -> dict:
    from sqft_ov.io.runtime import fully_connected_primitives, run_prefill, runtime_properties
    from sqft_ov.io.sparse_fc.op import core_for

    compiled = core_for(ir_dir).compile_model(ir_dir / "openvino_model.xml", device, runtime_properties(ir_dir))
    result = {"device": device}
    run_prefill(compiled)
    if device.upper().startswith("CPU"):
        primitives = fully_connected_primitives(compiled)
        result["fully_connected_primitives"] = sorted(set(primitives.values()))
        result["sparse_kernels"] = sum("sparse" in p for p in primitives.values())
    return result


def _prepare(config: ExportConfig, grid: Int4Grid | None, sizes: dict[str, int]) -> tuple[dict, list[str] | None]:
    """Every check that can fail before the conversion; the INT4 group plan (empty on a trained grid) and the
    calibration texts (None without --dataset), read now so that a bad file fails before the conversion."""
    from sqft_ov.io.hub import is_hub_dataset

    if config.device:
        from sqft_ov.io.runtime import check_device

        check_device(config.device)
    groups = {}
    if grid is not None:
        _check_grid(grid, config)
    else:
        groups = _plan_groups(sizes, config)
    if config.calibration and not (Path(config.calibration).expanduser().exists() or is_hub_dataset(config.calibration)):
        raise ConfigError(f"calibration file {config.calibration} does not exist")
    return groups, calibration_texts(config)


def _write(output: str | Path, overwrite: bool, config: ExportConfig, source: str, convert: Callable[[Path], dict],
           source_zeros: Callable, tokenizer: Callable, trained_grid: bool, groups: dict,
           texts: list[str] | None, trained_chat: bool | None = None,
           after: Callable[[Path], dict] | None = None) -> ExportReport:
    """Convert (`convert(folder)`), compress, verify and record; OUTPUT appears only when all of it succeeded.
    `after(folder)` adds files beside the IR and returns what the record says of them (`runtime_adapter`)."""
    import openvino as ov

    from sqft_ov import __version__

    start = time.perf_counter()
    logging_disabled = logging.root.manager.disable  # optimum's conversion re-enables every log level after it
    with atomic_output(output, overwrite) as tmp:
        settings = {"weight_format": config.weight_format}
        phases: dict[str, float] = {}
        mark = time.perf_counter()
        settings |= convert(tmp)
        logging.disable(logging_disabled)
        xml = tmp / "openvino_model.xml"
        if not (tmp / "openvino_tokenizer.xml").is_file():
            raise ExportIntegrityError(f"the tokenizer of {source} could not be converted to OpenVINO: genai needs "
                                       "openvino_tokenizer.xml (check that the folder has tokenizer.json)")
        phases["convert"] = time.perf_counter() - mark
        dropped = should_drop(config.chat_template, trained_chat) and drop_chat_template(tmp)
        settings["chat_template"] = "dropped" if dropped else "kept"
        settings["trained_with_chat_template"] = trained_chat
        kill_point("export-converted")
        mark = time.perf_counter()
        if config.sparse_format:
            settings["sparse_fc"] = rewrite_ir(xml, config.sparse_format)
        chunks = calibration_chunks(tokenizer(), texts, config) if texts else None
        if not trained_grid and config.weight_format in ("int4", "int8"):
            settings |= {"sym": bool(config.sym)}
            provenance = {"sqft_ov_version": __version__, "source": source}
            settings |= compress_ir(xml, config, provenance, chunks=chunks) | groups
        elif config.weight_format == "int8-w8a8":
            settings |= quantize_w8a8(tmp, chunks, config)
        if config.fuse_projections is not False and after is None and config.weight_format != "int8-w8a8":
            settings["fused_projections"] = fuse_ir(xml) or "none"
        phases["compress"] = time.perf_counter() - mark
        report = ExportReport(output=str(Path(output).absolute()), source=source, settings=settings, phases=phases)
        mark = time.perf_counter()
        report.weights = verify_zeros(tmp, source_zeros)
        phases["verify_zeros"] = time.perf_counter() - mark
        lost = {k: w["source_zeros"] - w["zeros_kept"] for k, w in report.weights.items()
                if w["zeros_kept"] != w["source_zeros"]}
        if lost:
            raise ExportIntegrityError(f"{sum(lost.values())} source zeros became nonzero in the IR (e.g. "
                                       f"{next(iter(lost))}): " + (lost_zeros_hint(config) or
                                       "the export is not sparsity-preserving; please report this with the command "
                                       "used"))
        if conflict := dense_branches_conflict(config, report.weights):
            raise ExportIntegrityError(conflict)
        report.sparse_decompression = sparse_decompression(tmp, config)
        if config.device:
            report.settings["compiled_on"] = _check_compiles(tmp, config.device)
        if after is not None:
            report.runtime_adapter = after(tmp)
        report.seconds = time.perf_counter() - start
        (tmp / PROVENANCE).write_text(json.dumps({**asdict(report), "sqft_ov_version": __version__,
                                                  "openvino_version": ov.get_version()}, indent=2))
    return report


MODEL_IN_MEMORY = "model in memory"


def export_model(model, tokenizer, output: str | Path, config: ExportConfig | None = None,
                 overwrite: bool = False) -> ExportReport:
    """Export a transformers model in memory (e.g. `merge_model`'s, which carries its INT4 grid) to an IR folder.

    Compression and the zero check are `export`'s. A model carrying a trained INT4 grid is converted in place
    (NNCF's strip without a copy), so it is spent afterwards: export a `copy.deepcopy` to keep using it.
    """
    from sqft_ov.io.checkpoint import check_finite

    config = config or ExportConfig()
    output = check_output(output, overwrite)
    check_finite(model.named_parameters(), MODEL_IN_MEMORY)
    grid = grid_of(model)
    groups, texts = _prepare(config, grid, grouped_input_sizes(model, config.all_layers))
    zeros = {name: tensor == 0 for name, tensor in model.state_dict().items()}  # before any in-place conversion
    return _write(output, overwrite, config, MODEL_IN_MEMORY, model_converter(model, tokenizer, config), zeros.get,
                  lambda: tokenizer, grid is not None, groups, texts, trained_with_chat_template(model.config))


def export(model_dir: str | Path, output: str | Path, config: ExportConfig | None = None,
           overwrite: bool = False, after: Callable[[Path], dict] | None = None,
           trained_chat: bool | None = None) -> ExportReport:
    """Export a Hugging Face folder: optimum-intel's `main_export` for a plain one (as optimum-cli), `export_model`'s
    conversion for one only sqft-ov loads (a trained INT4 grid, per-block widths); OUTPUT appears only when all of it
    succeeded. `after(folder)`: more files written into OUTPUT before it appears (`export_adapter`'s adapter);
    `trained_chat`: how the IR will be prompted, if not the folder's config.json (`export_adapter`: the adapter's)."""
    import torch

    from sqft_ov.io.blocks import WIDTHS_KEY
    from sqft_ov.io.checkpoint import (check_folder_finite, check_model_dir, load_causal_lm, load_config,
                                       require_safetensors, require_tokenizer)

    config = config or ExportConfig()
    model_dir = check_model_dir(model_dir)
    model_config = load_config(model_dir, config.trust_remote_code)
    require_safetensors(model_dir)
    require_tokenizer(model_dir)
    check_output(output, overwrite, inputs=(model_dir,))
    check_folder_finite(model_dir)
    grid = Int4Grid.read(model_dir)
    groups, texts = _prepare(config, grid, grouped_input_sizes(model_dir, config.all_layers))

    def tokenizer():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True,
                                             trust_remote_code=config.trust_remote_code)

    if grid is not None or getattr(model_config, WIDTHS_KEY, None):
        def convert(out: Path) -> dict:  # loaded inside the atomic output, as main_export loads
            model, tok = load_causal_lm(model_dir, config.trust_remote_code, dtype=torch.float32)
            carry_grid(model, grid)
            return model_converter(model, tok, config)(out)
    else:
        convert = partial(convert_folder, model_dir, config=config)
    return _write(output, overwrite, config, str(model_dir), convert, folder_zeros(model_dir), tokenizer,
                  grid is not None, groups, texts,
                  trained_with_chat_template(model_config) if trained_chat is None else trained_chat, after)
