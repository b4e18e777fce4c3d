"""The runtime properties `tune` searches, their candidate values, and how a value is checked and read back.

A *setting* is a dict of properties changed together (the key and value cache group sizes go as one).
A *dimension* is the list of settings tried for one property, each against the folder's current
configuration. Device properties go to the CPU plugin; pipeline properties (ATTENTION_BACKEND) only
to `openvino_genai.LLMPipeline`, so they change how genai runs the graph, not the compiled graph.
"""

from __future__ import annotations

from sqft_ov.errors import ConfigError
from sqft_ov.io.runtime import PIPELINE_PROPERTIES

PIPELINE_DEFAULTS = {"ATTENTION_BACKEND": "PA"}
KV_GROUP = "KV_CACHE_GROUP_SIZE"  # a dimension, not a property: KEY_ and VALUE_CACHE_GROUP_SIZE together
_NON_NEGATIVE = {"DYNAMIC_QUANTIZATION_GROUP_SIZE", "KEY_CACHE_GROUP_SIZE", "VALUE_CACHE_GROUP_SIZE",
                 "INFERENCE_NUM_THREADS"}


def default_grid(device: str = "CPU") -> dict[str, list[dict[str, str]]]:
    """The dimensions worth trying on this machine, most promising first (a short budget measures those)."""
    import openvino as ov

    from sqft_ov.measure.bench.machine import usable_cores

    core = ov.Core()
    capabilities = set(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    precisions = ["f32"] + [p for p, cap in (("bf16", "BF16"), ("f16", "FP16")) if cap in capabilities]
    cores = usable_cores()
    threads = sorted({1, max(1, cores // 2), cores})
    values = {
        "ATTENTION_BACKEND": list(PIPELINE_PROPERTIES["ATTENTION_BACKEND"]),
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": ["0", "32", "64", "128", "256"],
        "INFERENCE_PRECISION_HINT": precisions,
        "KV_CACHE_PRECISION": ["u8", "u4", "bf16", "f16", "f32"],
        "INFERENCE_NUM_THREADS": [str(t) for t in threads],
        "ENABLE_CPU_PINNING": ["YES", "NO"],
        "PERFORMANCE_HINT": ["LATENCY", "THROUGHPUT"],
        "NUM_STREAMS": [str(s) for s in sorted({1, min(2, cores)})],
    }
    grid = {key: [{key: v} for v in vals] for key, vals in values.items()}
    grid[KV_GROUP] = [{"KEY_CACHE_GROUP_SIZE": g, "VALUE_CACHE_GROUP_SIZE": g} for g in ("0", "32", "64")]
    return grid


def grid_from_options(items: dict[str, list[str]]) -> dict[str, list[dict[str, str]]]:
    """`--property KEY=V1,V2`: a dimension per key (KV_CACHE_GROUP_SIZE sets the key and value groups)."""
    grid = {}
    for key, values in items.items():
        if key == KV_GROUP:
            grid[key] = [{"KEY_CACHE_GROUP_SIZE": v, "VALUE_CACHE_GROUP_SIZE": v} for v in values]
        else:
            grid[key] = [{key: v} for v in values]
    return grid


def split(properties: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(device properties, pipeline properties)."""
    device = {k: v for k, v in properties.items() if k not in PIPELINE_PROPERTIES}
    return device, {k: v for k, v in properties.items() if k in PIPELINE_PROPERTIES}


def check_properties(properties: dict[str, str], device: str = "CPU") -> None:
    """Refuse an unknown property or a value the plugin would reject, before anything is measured."""
    import openvino as ov

    core = ov.Core()
    supported = set(core.get_property(device, "SUPPORTED_PROPERTIES"))  # also loads the plugin: clear messages
    for key, value in properties.items():
        if key in PIPELINE_PROPERTIES:
            if value not in PIPELINE_PROPERTIES[key]:
                raise ConfigError(f"{key}={value} is not valid: choose {', '.join(PIPELINE_PROPERTIES[key])}")
            continue
        if key not in supported:
            raise ConfigError(f"{key} is not a property of the {device} plugin (nor of genai's pipeline); "
                              f"tunable ones: {', '.join(sorted({*PIPELINE_PROPERTIES, *_tunable(supported)}))}")
        if key in _NON_NEGATIVE and not (value.isdigit()):
            raise ConfigError(f"{key}={value} is not valid: expected a non-negative integer")
        try:
            core.set_property(device, {key: value})
        except RuntimeError as exc:
            lines = [x for x in str(exc).splitlines() if x.strip() and not x.startswith("Exception from")]
            raise ConfigError(f"{key}={value} is not valid for {device}: {lines[-1] if lines else exc}") from exc


def _tunable(supported: set[str]) -> set[str]:
    return supported & {"INFERENCE_PRECISION_HINT", "DYNAMIC_QUANTIZATION_GROUP_SIZE", "KV_CACHE_PRECISION",
                        "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION", "KEY_CACHE_GROUP_SIZE",
                        "VALUE_CACHE_GROUP_SIZE", "INFERENCE_NUM_THREADS", "ENABLE_CPU_PINNING",
                        "PERFORMANCE_HINT", "NUM_STREAMS", "ENABLE_HYPER_THREADING", "EXECUTION_MODE_HINT"}


def as_text(value) -> str:
    """A property value as the CLI spells it: bf16 not <Type: 'bfloat16'>, LATENCY, YES/NO, 32."""
    import openvino as ov

    if isinstance(value, ov.Type):
        return value.to_string()
    if isinstance(value, bool):
        return "YES" if value else "NO"
    if hasattr(value, "name") and not isinstance(value, (str, int)):
        return str(value.name)
    return str(value)


def same_value(key: str, requested: str, applied: str) -> bool:
    """Whether a value read back from a compiled model is the one asked for (YES == true, 1 == 1)."""
    norm = {"TRUE": "YES", "FALSE": "NO"}
    a, b = requested.strip().upper(), applied.strip().upper()
    return norm.get(a, a) == norm.get(b, b)


def read_back(compiled_model, keys) -> dict[str, str]:
    """The compiled model's own value of each device property in `keys`."""
    out = {}
    for key in keys:
        if key in PIPELINE_PROPERTIES:
            continue
        try:
            out[key] = as_text(compiled_model.get_property(key))
        except RuntimeError:
            out[key] = "?"
    return out


def describe(setting: dict[str, str]) -> str:
    if set(setting) == {"KEY_CACHE_GROUP_SIZE", "VALUE_CACHE_GROUP_SIZE"} and len(set(setting.values())) == 1:
        return f"{KV_GROUP}={next(iter(setting.values()))}"
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "(current)"
