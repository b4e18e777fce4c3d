"""Deploying an IR without sqft-ov: what plain loaders pick up from the IR, what they must be given, the OVMS layout.

Plain loaders are checked as users call them: `ov.Core().compile_model(xml)`, `OVModelForCausalLM.from_pretrained(ir)`
and `openvino_genai.LLMPipeline(ir, "CPU")`. genai does not expose its compiled model, but prints the compiled
model's properties when OPENVINO_LOG_LEVEL is above WARNING ("Model: LLM with Paged Attention" block).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from test_cli import assert_one_line_error, sqft

from sqft_ov.io.runtime import SPARSE_RATE, read_runtime_config

HONOURED = {"KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}  # both differ from CPU defaults
EXPLICIT = {"INFERENCE_NUM_THREADS": "1", "ATTENTION_BACKEND": "SDPA"}  # not read from the IR / genai-only


@pytest.fixture(scope="module")
def deployed(sparse_models, tmp_path_factory):
    """An IR written by export --sparse-rate, then tune --apply: the two writers of runtime properties."""
    from sqft_ov.stages.export import ExportConfig, export
    from sqft_ov.measure.tune import apply

    ir = tmp_path_factory.mktemp("deploy") / "ir"
    report = export(sparse_models["llama"], ir, ExportConfig(weight_format="int4", group_size=64, sparse_rate=0.5))
    weights = (ir / "openvino_model.bin").stat()
    applied = apply(ir, {**HONOURED, **EXPLICIT})
    return ir, report, applied, weights


def _genai_compiled_properties(ir) -> dict[str, str]:
    """The properties genai's LLMPipeline compiled the LLM with, from a plain `LLMPipeline(ir, "CPU")`."""
    code = "import openvino_genai, sys; openvino_genai.LLMPipeline(sys.argv[1], 'CPU')"
    out = subprocess.run([sys.executable, "-c", code, str(ir)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OPENVINO_LOG_LEVEL": "4"})
    assert out.returncode == 0, out.stderr
    block = out.stdout.split("Model: LLM")[-1]
    return dict(re.findall(r"^\s+([A-Z_]+): (\S+)", block, flags=re.M))


def test_properties_reach_plain_loaders(deployed):
    import openvino as ov
    import openvino_genai
    from optimum.intel import OVModelForCausalLM

    ir, report, applied, weights = deployed
    assert read_runtime_config(ir) == {SPARSE_RATE: "0.5", **HONOURED, **EXPLICIT}  # sqft-ov's loaders: all of it
    model = ov.Core().read_model(ir / "openvino_model.xml")
    for key, value in HONOURED.items():
        assert model.get_rt_info(["runtime_options", key]).astype(str) == value
    for key in (SPARSE_RATE, *EXPLICIT):
        assert not model.has_rt_info(["runtime_options", key])
    # only the XML was rewritten: the weights file is the one export wrote
    assert (ir / "openvino_model.bin").stat().st_ino == weights.st_ino
    assert not [p for p in ir.iterdir() if p.name.startswith(".")]

    # plain loaders, no arguments: the honoured properties are in effect, the others at their defaults
    compiled = ov.Core().compile_model(ir / "openvino_model.xml", "CPU")
    plain_ov = OVModelForCausalLM.from_pretrained(str(ir)).request.get_compiled_model()
    for target in (compiled, plain_ov):
        assert str(target.get_property("KV_CACHE_PRECISION")) == "<Type: 'float32'>"
        assert int(target.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 0
        assert float(target.get_property(SPARSE_RATE)) == 1.0
    genai = _genai_compiled_properties(ir)
    assert genai["KV_CACHE_PRECISION"] == "f32" and genai["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "0"
    plain = applied["plain_loaders_apply"]  # tune apply's own read-back agrees
    assert plain[SPARSE_RATE] is False and all(plain[k] for k in HONOURED) and "ATTENTION_BACKEND" not in plain

    # the arguments the CLI prints for the rest are exact: run them as written
    lines = applied["pass_to_loaders"]
    assert len(lines) == 2 and lines[0].startswith("openvino_genai.LLMPipeline(ir, \"CPU\", **")
    names = {"openvino_genai": openvino_genai, "OVModelForCausalLM": OVModelForCausalLM, "ir": str(ir)}
    pipe = eval(lines[0], names)
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens, config.ignore_eos = 2, True
    assert pipe.generate(["Ana buys"], config).perf_metrics.get_num_generated_tokens() == 2
    explicit = eval(lines[1], names).request.get_compiled_model()
    assert float(explicit.get_property(SPARSE_RATE)) == 0.5
    assert int(explicit.get_property("INFERENCE_NUM_THREADS")) == 1 or plain["INFERENCE_NUM_THREADS"]  # 1-core CPU
    assert "ATTENTION_BACKEND" not in lines[1]  # OVModelForCausalLM refuses genai's own options
    assert report.sparse_decompression["pass_to_loaders"] == [
        f'openvino_genai.LLMPipeline(ir, "CPU", **{{"{SPARSE_RATE}": "0.5"}})',
        f'OVModelForCausalLM.from_pretrained(ir, device="CPU", ov_config={{"{SPARSE_RATE}": "0.5"}})']


def _pbtxt(text: str) -> dict:
    """A protobuf text-format message as {field: [values]}: enough to read a graph without MediaPipe's protos."""
    tokens = re.findall(r"#[^\n]*|\[[^\]]+\]|\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[{}:,;]|[^\s{}:,;\[\]]+", text)
    tokens = [t for t in tokens if not t.startswith("#")]
    position = 0

    def message(end: str | None) -> dict:
        nonlocal position
        fields: dict = {}
        while position < len(tokens) and tokens[position] != end:
            name = tokens[position]
            position += 1
            if tokens[position] == ":":
                position += 1
            if tokens[position] == "{":
                position += 1
                value = message("}")
                position += 1
            else:
                value = tokens[position]
                position += 1
                if value[0] in "'\"":
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
            fields.setdefault(name, []).append(value)
            if position < len(tokens) and tokens[position] in ",;":
                position += 1
        return fields

    parsed = message(None)
    assert position == len(tokens), "unbalanced braces"
    return parsed


def test_ovms_repository(deployed, tmp_path):
    import openvino_genai

    from sqft_ov.stages.ovms import OvmsConfig, write_ovms_repository

    ir = deployed[0]
    repo = tmp_path / "repo"
    result = write_ovms_repository(ir, repo, OvmsConfig(name="tiny-sqft", max_num_batched_tokens=256))
    listing = json.loads((repo / "config.json").read_text())
    assert listing["mediapipe_config_list"] == [{"name": "tiny-sqft", "base_path": "tiny-sqft"}]
    served = repo / "tiny-sqft"
    for name in ("graph.pbtxt", "openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml",
                 "openvino_detokenizer.xml", "config.json", "runtime_config.json"):
        assert (served / name).is_file(), name
    graph = _pbtxt((served / "graph.pbtxt").read_text())
    assert graph["input_stream"] == ["HTTP_REQUEST_PAYLOAD:input"]
    node = graph["node"][0]
    assert node["calculator"] == ["HttpLLMCalculator"] and node["input_side_packet"] == ["LLM_NODE_RESOURCES:llm"]
    options = node["node_options"][0]["[type.googleapis.com / mediapipe.LLMCalculatorOptions]"][0]
    assert options["models_path"] == ["./"] and options["device"] == ["CPU"]
    assert options["cache_size"] == ["2"] and options["max_num_seqs"] == ["256"]
    assert options["max_num_batched_tokens"] == ["256"] and options["enable_prefix_caching"] == ["true"]
    plugin = json.loads(options["plugin_config"][0])
    # not genai's ATTENTION_BACKEND; the f32 KV cache brings f32 compute (paged attention refuses it beside bf16)
    assert plugin == {SPARSE_RATE: "0.5", **HONOURED, "INFERENCE_NUM_THREADS": "1", "INFERENCE_PRECISION_HINT": "f32"}
    assert result["not_applicable"] == {"ATTENTION_BACKEND": "SDPA"}

    # what OVMS builds from these fields, done with genai directly (no OVMS here): the graph's settings load
    scheduler = openvino_genai.SchedulerConfig()
    scheduler.cache_size, scheduler.max_num_seqs = int(options["cache_size"][0]), int(options["max_num_seqs"][0])
    scheduler.max_num_batched_tokens = int(options["max_num_batched_tokens"][0])
    scheduler.enable_prefix_caching = True
    pipe = openvino_genai.ContinuousBatchingPipeline(str(served / options["models_path"][0]), scheduler, "CPU", plugin)
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = 2
    assert pipe.generate(["Ana buys"], [config])[0].m_generation_ids

    # all or nothing, and never over an existing repository without --overwrite
    assert_one_line_error(sqft("ovms", ir, repo, "--name", "tiny-sqft"), "already exists", "--overwrite")
    done = sqft("ovms", ir, repo, "--name", "other", "--no-prefix-caching", "--overwrite")
    assert done.returncode == 0, done.stderr
    assert "ovms --rest_port 8000 --config_path" in done.stdout
    assert not (repo / "tiny-sqft").exists() and (repo / "other" / "graph.pbtxt").is_file()
    assert _pbtxt((repo / "other" / "graph.pbtxt").read_text())["node"][0]["node_options"][0][
        "[type.googleapis.com / mediapipe.LLMCalculatorOptions]"][0]["enable_prefix_caching"] == ["false"]
    assert_one_line_error(sqft("ovms", ir, tmp_path / "r2", "--name", "a/b"), "--name")
    assert_one_line_error(sqft("ovms", ir, ir / "repo"), "inside the input")
    assert not (tmp_path / "r2").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
