"""Running an exported IR folder: its runtime configuration, device checks and loaders that apply both.

OpenVINO keeps per-model runtime options in the IR's `rt_info["runtime_options"]`, but its CPU plugin
honours only a fixed set of them (`RT_INFO_PROPERTIES`, checked against 2026.4.1 by compiling an IR and
reading each property back); `CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE`, the precision hint, threads and
streams are not read from there. So the folder also carries `runtime_config.json` (every property set),
`open_llm_pipeline` / `open_ov_model` pass it explicitly, and `loader_arguments` spells out what a plain
loader must be given.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqft_ov.errors import ConfigError

RUNTIME_CONFIG = "runtime_config.json"
SPARSE_RATE = "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"
# Options of genai's LLMPipeline itself, not of the device: OVModelForCausalLM and compile_model refuse them.
PIPELINE_PROPERTIES: dict[str, tuple[str, ...]] = {"ATTENTION_BACKEND": ("PA", "SDPA")}
# What the CPU plugin reads from rt_info runtime_options when compile_model is given no value for it.
RT_INFO_PROPERTIES = ("KV_CACHE_PRECISION", "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION",
                      "KEY_CACHE_GROUP_SIZE", "VALUE_CACHE_GROUP_SIZE", "DYNAMIC_QUANTIZATION_GROUP_SIZE")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name (what a measurement was taken on)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_amx() -> bool:
    """Sparse-weight decompression in OpenVINO's CPU plugin needs AMX (4th-gen Xeon or later)."""
    return {"amx_tile", "amx_int8"} <= cpu_flags()


def check_device(device: str) -> str:
    import openvino as ov

    available = ov.Core().available_devices
    base = device.split(".")[0].split(":")[0].upper()
    if base in ("AUTO", "HETERO", "MULTI"):
        return device
    if not any(d.upper() == device.upper() or d.upper().startswith(base) for d in available):
        raise ConfigError(f"device {device!r} is not available here: choose one of {', '.join(available)}")
    return device


def read_runtime_config(ir_dir: str | Path) -> dict[str, str]:
    path = Path(ir_dir) / RUNTIME_CONFIG
    return json.loads(path.read_text()) if path.is_file() else {}


def write_runtime_config(ir_dir: str | Path, properties: dict[str, str]) -> None:
    """Record properties in runtime_config.json, and those the plugin reads itself in the IR's rt_info.

    With them in rt_info, a plain `OVModelForCausalLM.from_pretrained(dir)`, `LLMPipeline(dir, "CPU")` or
    OpenVINO Model Server gets them too; the rest need the arguments `loader_arguments` prints.
    """
    from sqft_ov.io.output import write_file_atomic

    ir_dir = Path(ir_dir)
    merged = {**read_runtime_config(ir_dir), **{k: str(v) for k, v in properties.items()}}
    write_rt_info_options(ir_dir / "openvino_model.xml", {k: v for k, v in merged.items() if k in RT_INFO_PROPERTIES},
                          drop=[k for k in merged if k not in RT_INFO_PROPERTIES])
    write_file_atomic(ir_dir / RUNTIME_CONFIG, json.dumps(merged, indent=2) + "\n", overwrite=True)


def write_rt_info_options(xml: Path, options: dict[str, str], drop: tuple[str, ...] | list[str] = ()) -> None:
    """Set `options` (and remove `drop`) in the IR's rt_info runtime_options, editing the XML only.

    The weights do not change, so the .bin is left alone and the XML is replaced in one rename: a killed
    run leaves the old IR or the new one, never a graph beside weights of another.
    """
    import xml.etree.ElementTree as ET

    from sqft_ov.io.output import write_file_atomic

    tree = ET.parse(xml)
    rt_info = tree.getroot().find("rt_info")
    if rt_info is None:
        rt_info = ET.SubElement(tree.getroot(), "rt_info")
    section = rt_info.find("runtime_options")
    if section is None:
        if not options:
            return
        if len(rt_info):
            rt_info[-1].tail = "\n\t\t"
        section = ET.SubElement(rt_info, "runtime_options")
        section.tail = "\n\t"
    for key in [*options, *drop]:
        for old in section.findall(key):
            section.remove(old)
    for key, value in options.items():
        ET.SubElement(section, key, value=str(value))
    section.text = "\n\t\t\t" if len(section) else None  # OpenVINO's own layout: a tab per level
    for child in section:
        child.tail = "\n\t\t\t" if child is not section[-1] else "\n\t\t"
    write_file_atomic(xml, ET.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True), overwrite=True)


def loader_arguments(properties: dict[str, str], device: str = "CPU",
                     from_ir: tuple[str, ...] | list[str] = RT_INFO_PROPERTIES) -> list[str]:
    """The exact arguments plain loaders need for the properties OpenVINO does not read from the IR (`from_ir`)."""
    explicit = {k: v for k, v in properties.items() if k not in from_ir}
    if not explicit:
        return []
    lines = [f'openvino_genai.LLMPipeline(ir, "{device}", **{json.dumps(explicit)})']
    if device_properties(explicit):
        lines.append(f'OVModelForCausalLM.from_pretrained(ir, device="{device}", '
                     f'ov_config={json.dumps(device_properties(explicit))})')
    return lines


def device_properties(properties: dict[str, str]) -> dict[str, str]:
    """`properties` without genai's own pipeline options: what compile_model and OVModelForCausalLM accept."""
    return {k: v for k, v in properties.items() if k not in PIPELINE_PROPERTIES}


def runtime_properties(ir_dir: str | Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The folder's runtime configuration, overridden by `extra`."""
    return {**read_runtime_config(ir_dir), **(extra or {})}


def open_llm_pipeline(ir_dir: str | Path, device: str = "CPU", properties: dict[str, str] | None = None,
                      adapters=None):
    """genai's LLMPipeline; `adapters`: an `openvino_genai.AdapterConfig` it applies (e.g. a runtime LoRA)."""
    import openvino_genai

    from sqft_ov.io.sparse_fc.op import extension_properties

    check_device(device)
    extra = {"adapters": adapters} if adapters is not None else {}
    extra |= extension_properties(ir_dir)  # an IR with SparseFullyConnected nodes
    return openvino_genai.LLMPipeline(str(Path(ir_dir).absolute()), device, **runtime_properties(ir_dir, properties),
                                      **extra)


def paged_attention_properties(properties: dict[str, str]) -> dict[str, str]:
    """`properties` for genai's continuous batching (paged attention), which on a CPU computing in bf16 refuses an
    f32 KV cache (OpenVINO 2026.4: "expect kvcache type bf16", seen on an AVX-512 BF16 Xeon): an f32 cache asked for
    without an inference precision gets INFERENCE_PRECISION_HINT=f32, which keeps it (and is the default on CPUs
    without bf16, so the result does not depend on the machine that writes it)."""
    caches = {properties.get(k) for k in ("KV_CACHE_PRECISION", "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION")}
    if "f32" in caches and "INFERENCE_PRECISION_HINT" not in properties:
        return {**properties, "INFERENCE_PRECISION_HINT": "f32"}
    return properties


def open_batch_pipeline(ir_dir: str | Path, device: str = "CPU", properties: dict[str, str] | None = None,
                        adapters=None):
    """genai's continuous-batching pipeline, for many prompts at once.

    Unlike optimum-intel's generate on a padded batch, it computes logits for the last position only,
    prefills each prompt without padding, computes a prompt prefix shared by many prompts (a chat
    template's system turn) once, and lets a new prompt take the place of a finished one at every step.

    `adapters` (an `openvino_genai.AdapterConfig`) is set up with the pipeline, then applied by one 1-token
    `generate`: genai 2026.4 applies a pipeline's adapters in `generate` only, and requests fed through
    `add_request` / `step` would otherwise run on the bare base (seen on a tiny model: the base's tokens).
    """
    import openvino_genai

    from sqft_ov.io.sparse_fc.op import extension_properties

    check_device(device)
    scheduler = openvino_genai.SchedulerConfig()
    scheduler.enable_prefix_caching = True
    properties = paged_attention_properties(device_properties(runtime_properties(ir_dir, properties)))
    properties |= extension_properties(ir_dir)
    if adapters is not None:
        properties["adapters"] = adapters
    pipe = openvino_genai.ContinuousBatchingPipeline(str(Path(ir_dir).absolute()), scheduler, device, properties)
    if adapters is not None:
        import numpy as np
        import openvino as ov

        config = openvino_genai.GenerationConfig(max_new_tokens=1, do_sample=False)
        config.adapters = adapters
        pipe.generate([ov.Tensor(np.zeros((1, 1), dtype=np.int64))], [config])
    return pipe


def open_ov_model(ir_dir: str | Path, device: str = "CPU", properties: dict[str, str] | None = None):
    from optimum.intel import OVModelForCausalLM

    from sqft_ov.io.sparse_fc.op import extend_optimum

    check_device(device)
    extend_optimum(ir_dir)  # an IR with SparseFullyConnected nodes
    return OVModelForCausalLM.from_pretrained(str(Path(ir_dir).absolute()), device=device,
                                              ov_config=device_properties(runtime_properties(ir_dir, properties)))


def run_prefill(compiled_model, tokens: int = 8) -> None:
    """One forward pass of a stateful LLM IR; CPU kernels of dynamic-shape models are chosen on first run."""
    import numpy as np

    feed = {"input_ids": np.arange(1, tokens + 1, dtype=np.int64)[None],
            "attention_mask": np.ones((1, tokens), dtype=np.int64),
            "position_ids": np.arange(tokens, dtype=np.int64)[None], "beam_idx": np.zeros(1, dtype=np.int32)}
    names = {i.get_any_name() for i in compiled_model.inputs}
    compiled_model.create_infer_request().infer({k: v for k, v in feed.items() if k in names})


def fully_connected_primitives(compiled_model) -> dict[str, str]:
    """Primitive type per FullyConnected node of a compiled CPU model: tells whether sparse kernels engaged.

    Read it after `run_prefill`: before the first inference a dynamic-shape model reports `undef_*`.
    """
    out = {}
    for op in compiled_model.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "FullyConnected":
            out[op.get_friendly_name()] = info["primitiveType"].astype(str)
    return out
