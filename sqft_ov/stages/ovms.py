"""`ovms`: an OpenVINO Model Server repository that serves one exported IR with continuous batching.

OVMS serves an LLM through a MediaPipe graph: `<repo>/<name>/graph.pbtxt` holds one `HttpLLMCalculator`
node whose `LLMCalculatorOptions` say where the IR is, how the KV cache is sized and scheduled, and which
properties the device gets (`plugin_config`); `<repo>/config.json` lists the graph in `mediapipe_config_list`.
The layout follows what OVMS's own `demos/common/export_models/export_model.py text_generation` writes. The IR
is copied beside the graph (hard links where possible; `models_path: "./"`), so the repository folder can be
moved or mounted as a whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqft_ov.errors import ConfigError, ModelFolderError

GRAPH = "graph.pbtxt"
CONFIG = "config.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class OvmsConfig:
    """Serving settings of the LLM node; None leaves a setting to OVMS's default."""

    name: str = "model"  # the served model's name: the "model" field of /v3/chat/completions requests
    device: str = "CPU"
    cache_size_gb: int = 2  # KV-cache memory reserved up front; OVMS's own default (10) is much for a small CPU
    max_num_seqs: int = 256  # sequences decoded together
    max_num_batched_tokens: int | None = None  # tokens per scheduler step (OVMS default when None)
    enable_prefix_caching: bool = True  # reuse the KV cache of a prompt prefix shared by requests (chat history)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"--name {self.name!r} is not a plain name: use letters, digits, '.', '_' or '-'")
        if self.cache_size_gb < 0:
            raise ConfigError(f"--cache-size must be 0 or more GB, got {self.cache_size_gb}")
        if self.max_num_seqs < 1:
            raise ConfigError(f"--max-num-seqs must be at least 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ConfigError(f"--max-num-batched-tokens must be at least 1, got {self.max_num_batched_tokens}")


def plugin_config(ir_dir: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """(device properties for the graph, genai pipeline options OVMS has no place for) from runtime_config.json.

    All device properties are listed, also those the IR's rt_info already carries: the graph then says what
    the server runs with (an f32 KV cache also gets INFERENCE_PRECISION_HINT=f32: `paged_attention_properties`).
    """
    from sqft_ov.io.runtime import (PIPELINE_PROPERTIES, device_properties, paged_attention_properties,
                                    read_runtime_config)

    properties = read_runtime_config(ir_dir)
    return (paged_attention_properties(device_properties(properties)),
            {k: v for k, v in properties.items() if k in PIPELINE_PROPERTIES})


def _text(value: str) -> str:
    """A protobuf text-format string in single quotes (the JSON inside keeps its double quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def graph_text(config: OvmsConfig, properties: dict[str, str]) -> str:
    """The MediaPipe graph of one LLM node, in protobuf text format."""
    options = ['models_path: "./"', f"plugin_config: {_text(json.dumps(properties))}",
               f"enable_prefix_caching: {'true' if config.enable_prefix_caching else 'false'}",
               f"cache_size: {config.cache_size_gb}"]
    if config.max_num_batched_tokens is not None:
        options.append(f"max_num_batched_tokens: {config.max_num_batched_tokens}")
    options += [f"max_num_seqs: {config.max_num_seqs}", f'device: "{config.device}"']
    body = "\n".join(f"      {line}," for line in options)
    return f"""input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"

node: {{
  name: "LLMExecutor"
  calculator: "HttpLLMCalculator"
  input_stream: "LOOPBACK:loopback"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  input_side_packet: "LLM_NODE_RESOURCES:llm"
  output_stream: "LOOPBACK:loopback"
  output_stream: "HTTP_RESPONSE_PAYLOAD:output"
  input_stream_info: {{
    tag_index: 'LOOPBACK:0',
    back_edge: true
  }}
  node_options: {{
    [type.googleapis.com / mediapipe.LLMCalculatorOptions]: {{
{body}
    }}
  }}
  input_stream_handler {{
    input_stream_handler: "SyncSetInputStreamHandler",
    options {{
      [mediapipe.SyncSetInputStreamHandlerOptions.ext] {{
        sync_set {{
          tag_index: "LOOPBACK:0"
        }}
      }}
    }}
  }}
}}
"""


def _link_or_copy(source: str, target: str) -> None:
    """A hard link where the file system allows: IR files are replaced by a rename, never edited in place, so
    the repository's copy cannot change with the IR's (and a multi-GB .bin costs no time or space)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_ovms_repository(ir_dir: str | Path, repo_dir: str | Path, config: OvmsConfig | None = None,
                          overwrite: bool = False) -> dict:
    """Write `<repo>/config.json` and `<repo>/<name>/` (graph.pbtxt + a copy of the IR); all or nothing."""
    from sqft_ov.io.ir import check_ir_files
    from sqft_ov.io.output import atomic_output, check_output

    config = config or OvmsConfig()
    ir_dir = check_ir_files(ir_dir)
    for name in ("openvino_tokenizer.xml", "openvino_detokenizer.xml"):
        if not (ir_dir / name).is_file():
            raise ModelFolderError(f"{ir_dir} has no {name}: OVMS needs the tokenizer IRs; export the model with "
                                   "sqft-ov export, which writes them")
    repo_dir = check_output(repo_dir, overwrite, inputs=(ir_dir,))
    properties, dropped = plugin_config(ir_dir)
    with atomic_output(repo_dir, overwrite) as tmp:
        shutil.copytree(ir_dir, tmp / config.name, copy_function=_link_or_copy)
        (tmp / config.name / GRAPH).write_text(graph_text(config, properties))
        listing = {"mediapipe_config_list": [{"name": config.name, "base_path": config.name}],
                   "model_config_list": []}
        (tmp / CONFIG).write_text(json.dumps(listing, indent=4) + "\n")
    return {"repository": str(repo_dir), "config": str(repo_dir / CONFIG), "graph": str(repo_dir / config.name / GRAPH),
            "name": config.name, "plugin_config": properties, "not_applicable": dropped,
            "start": f"ovms --rest_port 8000 --config_path {repo_dir / CONFIG}"}
