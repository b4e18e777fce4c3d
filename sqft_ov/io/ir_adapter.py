"""A runtime LoRA adapter beside an IR: what `sqft-ov export ADAPTER OUT` writes and eval / bench apply.

OUT is the base model's IR with `adapter/adapter_model.safetensors` in the format `openvino_genai.Adapter`
loads: PEFT's tensor names (`base_model.model.<layer>.lora_A.weight` / `.lora_B.weight`; genai's LLM pipelines
strip the `base_model.model.` prefix and match the rest inside the IR's MatMul names) with PEFT's scaling
`lora_alpha / r` already multiplied into `lora_B`. genai ignores any alpha stored in the file and scales the
update by the AdapterConfig's alpha alone (src/cpp/src/lora/adapter.cpp, 2026.4), so the alpha to pass is 1.0
(the AdapterConfig default), recorded in sqft_export.json under `runtime_adapter`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqft_ov.errors import ModelFolderError

ADAPTER_DIR = "adapter"
ADAPTER_FILE = "adapter_model.safetensors"
EXPORT_RECORD = "sqft_export.json"  # export's provenance file; its `runtime_adapter` key describes the adapter
RECORD_KEY = "runtime_adapter"
TENSOR_PREFIX = "base_model.model."  # what genai's LLM pipelines strip from adapter tensor names


@dataclass
class RuntimeAdapter:
    file: Path  # the safetensors file genai loads
    alpha: float  # the AdapterConfig alpha that reproduces the trained model

    def to_dict(self) -> dict:
        return {"file": str(self.file), "alpha": self.alpha}


def find_runtime_adapter(ir_dir: str | Path) -> RuntimeAdapter | None:
    """The IR folder's runtime adapter (None: it has none). A record naming one whose file is missing fails: the
    bare base must not be scored in its place."""
    ir_dir = Path(ir_dir)
    file = ir_dir / ADAPTER_DIR / ADAPTER_FILE
    record = {}
    if (ir_dir / EXPORT_RECORD).is_file():
        try:
            record = json.loads((ir_dir / EXPORT_RECORD).read_text()).get(RECORD_KEY) or {}
        except (ValueError, AttributeError):
            record = {}
    if not file.is_file():
        if record or (ir_dir / ADAPTER_DIR).is_dir():
            raise ModelFolderError(f"{ir_dir} was exported with a runtime adapter, but {file} is missing: copy the "
                                   "whole folder again (or pass --no-adapter to use the bare base)")
        return None
    return RuntimeAdapter(file.absolute(), float(record.get("alpha", 1.0)))


def genai_adapter_config(adapter: RuntimeAdapter):
    """`openvino_genai.AdapterConfig` applying the adapter at its alpha (genai's default mode: dynamic LoRA)."""
    import openvino_genai

    return openvino_genai.AdapterConfig(openvino_genai.Adapter(str(adapter.file)), adapter.alpha)
