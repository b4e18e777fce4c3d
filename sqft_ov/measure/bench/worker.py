"""One benchmarked model in its own process: load it, generate on command, report its own peak memory.

A process per model keeps the figures apart (peak RSS is per process; one model's allocator state does
not slow another) and keeps a model that crashes while loading from taking the others down. The parent
(`sqft_ov.measure.bench.run`) sends one JSON command per line on stdin; replies are JSON lines on the original
stdout, while anything the libraries print is sent to stderr.

Engines: an IR folder runs in `openvino_genai.LLMPipeline` (optimum-intel's OVModelForCausalLM only if
genai cannot load it), with its runtime LoRA adapter (`adapter/`, written by `sqft-ov export ADAPTER IR`) unless
the spec says `no_adapter` (then no fallback: optimum-intel cannot apply one); a Hugging Face folder, with or
without an adapter, runs in PyTorch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from sqft_ov.io.ir import IR_FILE

PROMPT_STRIDE = 3  # tokens the prompt window moves per run: each run starts with a different token


def model_kind(path: Path) -> str:
    if (path / IR_FILE).is_file():
        return "ir"
    from sqft_ov.io.examples import EXAMPLES
    from sqft_ov.io.gguf import is_gguf

    if (path / "config.json").is_file() or is_gguf(path) or str(path) in EXAMPLES:
        return "hf"  # a GGUF file runs as its converted Hugging Face folder
    raise FileNotFoundError(f"{path} is neither an OpenVINO IR folder ({IR_FILE}) nor a Hugging Face model folder "
                            "(config.json)" if path.is_dir() else f"{path} is not a folder")


def folder_bytes(*folders: Path) -> int:
    """Bytes on disk of model folders (or of a single-file model such as a GGUF)."""
    return sum(f.stat().st_size for folder in folders
               for f in ([folder] if folder.is_file() else folder.rglob("*")) if f.is_file())


def peak_rss_mib() -> float:
    """This process's high-water RSS. VmHWM starts afresh at exec, unlike ru_maxrss, which inherits the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


_DECOMPRESSION_OPS = {"Constant", "Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze"}


def ir_weight_bytes_per_token(xml: Path) -> int:
    """Bytes of constants every decode step reads: MatMul weights with their scales and zero points.

    The embedding table is not counted (a step gathers one row of it) unless a MatMul shares it (tied lm_head).
    """
    from sqft_ov.io.sparse_fc.op import OP_TYPE, core_for

    model = core_for(xml).read_model(xml)
    seen: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == OP_TYPE:  # bitmask, packed values, offsets, scales: all read every step
            seen.update({op.input_value(i).get_node().get_friendly_name(): op.input_value(i).get_node().get_byte_size()
                         for i in range(1, 5)})
        if op.get_type_name() != "MatMul":
            continue
        for port in range(2):
            constants, stack, ok = {}, [op.input_value(port).get_node()], True
            while stack and ok:
                node = stack.pop()
                kind = node.get_type_name()
                if kind not in _DECOMPRESSION_OPS:
                    ok = False
                elif kind == "Constant":
                    constants[node.get_friendly_name()] = node.get_byte_size()
                else:
                    stack.extend(value.get_node() for value in node.input_values())
            if ok and constants and sum(constants.values()) > 4096:  # shape constants are not weights
                seen.update(constants)
    return sum(seen.values())


def torch_weight_bytes_per_token(model) -> int:
    """Parameter and buffer bytes a step reads: everything but the input embedding (unless tied to lm_head)."""
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight.data_ptr() == embedding.data_ptr()
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() == embedding.data_ptr() and not tied:
            continue
        seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


class _Prompts:
    """Prompt `k` is `length` tokens of a fixed text starting at token k * PROMPT_STRIDE.

    Same length every run, never the same prefix twice: genai caches prompt prefixes, and a repeated
    prompt would make time-to-first-token a cache hit.
    """

    def __init__(self, encode, length: int, runs: int):
        from sqft_ov.io.data import sample_corpus

        need = length + PROMPT_STRIDE * runs
        ids: list[int] = []
        seed = 0
        while len(ids) < need:
            ids += encode(" ".join(sample_corpus(64, seed=seed)))
            seed += 1
        self.ids, self.length = ids, length

    def __call__(self, k: int) -> list[int]:
        start = k * PROMPT_STRIDE
        return self.ids[start:start + self.length]


class GenaiEngine:
    name = "openvino-genai"

    def __init__(self, spec: dict, adapter=None):
        import openvino as ov

        from sqft_ov.io.ir_adapter import genai_adapter_config
        from sqft_ov.io.runtime import open_llm_pipeline

        self.ov = ov
        self.adapters = genai_adapter_config(adapter) if adapter is not None else None  # the IR's runtime LoRA
        self.pipe = open_llm_pipeline(spec["path"], spec["device"], spec["properties"], self.adapters)
        self.config = self._config(spec["new_tokens"])
        try:  # the prompts are token ids; a folder without tokenizer IRs still runs, tokenized by transformers
            tokenizer = self.pipe.get_tokenizer()
            tokenizer.encode("probe")
            self.encode = lambda text: [int(t) for t in tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]
        except RuntimeError:
            from transformers import AutoTokenizer

            hf_tokenizer = AutoTokenizer.from_pretrained(spec["path"], local_files_only=True)
            self.encode = lambda text: hf_tokenizer(text, add_special_tokens=False).input_ids

    def _config(self, new_tokens: int):
        import openvino_genai

        config = openvino_genai.GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, ignore_eos=True,
                                                 do_sample=False)
        if self.adapters is not None:
            config.adapters = self.adapters
        return config

    def generate(self, ids: list[int]) -> dict:
        import numpy as np

        start = time.perf_counter()
        result = self.pipe.generate(self.ov.Tensor(np.array([ids], dtype=np.int64)), self.config)
        total = time.perf_counter() - start
        metrics = result.perf_metrics
        steps = [d / 1e6 for d in metrics.raw_metrics.m_durations]  # µs between consecutive new tokens
        return {"ttft_s": metrics.get_ttft().mean / 1e3, "decode_s": sum(steps), "decode_steps": len(steps),
                "new_tokens": len(result.tokens[0]), "total_s": total}

    def greedy(self, ids: list[int], new_tokens: int) -> list[int]:
        import numpy as np

        config = self._config(new_tokens)
        return [int(t) for t in self.pipe.generate(self.ov.Tensor(np.array([ids], dtype=np.int64)), config).tokens[0]]


class _StepClock:
    """A transformers streamer that only notes the time of each `put`: the prompt first, then each token."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class HFGenerateEngine:
    """`model.generate` of transformers (PyTorch) or optimum-intel (OpenVINO), timed per token."""

    def __init__(self, model, tokenizer, new_tokens: int, name: str):
        self.model, self.tokenizer, self.new_tokens, self.name = model, tokenizer, new_tokens, name
        self.encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids

    def generate(self, ids: list[int]) -> dict:
        import torch

        clock = _StepClock()
        input_ids = torch.tensor([ids])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      max_new_tokens=self.new_tokens, min_new_tokens=self.new_tokens, do_sample=False,
                                      num_beams=1, pad_token_id=pad, streamer=clock)
        total = time.perf_counter() - start
        token_times = clock.times[1:]  # times[0]: the prompt, handed to the streamer before any compute
        return {"ttft_s": token_times[0] - start, "decode_s": token_times[-1] - token_times[0],
                "decode_steps": len(token_times) - 1, "new_tokens": out.shape[1] - input_ids.shape[1], "total_s": total}

    def greedy(self, ids: list[int], new_tokens: int) -> list[int]:
        import torch

        input_ids = torch.tensor([ids])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                      num_beams=1, pad_token_id=pad)
        return [int(t) for t in out[0, input_ids.shape[1]:]]


def _load_optimum(spec: dict) -> HFGenerateEngine:
    from transformers import AutoTokenizer

    from sqft_ov.io.runtime import open_ov_model

    model = open_ov_model(spec["path"], spec["device"], spec["properties"])
    tokenizer = AutoTokenizer.from_pretrained(spec["path"], local_files_only=True)
    return HFGenerateEngine(model, tokenizer, spec["new_tokens"], "optimum-intel")


def _load_torch(spec: dict):
    import torch

    from sqft_ov.adapters.adapted import load_for_inference

    dtype = spec["torch_dtype"] if spec["torch_dtype"] == "auto" else getattr(torch, spec["torch_dtype"])
    return load_for_inference(spec["path"], spec.get("adapter"), dtype, spec.get("sub_adapter"), allow_qa=False)


def load_engine(spec: dict):
    """(engine, facts about the loaded model). Facts: weight bytes per token, size, fallback reason."""
    path = Path(spec["path"])
    kind = model_kind(path)
    facts: dict = {"kind": kind}
    if kind == "ir":
        from sqft_ov.io.ir_adapter import find_runtime_adapter

        adapter = None if spec.get("no_adapter") else find_runtime_adapter(path)
        facts["runtime_adapter"] = adapter.to_dict() if adapter is not None else None
        try:
            engine = GenaiEngine(spec, adapter) if adapter is not None else GenaiEngine(spec)
        except Exception as exc:  # noqa: BLE001 - genai's errors are plain RuntimeErrors
            if adapter is not None:  # optimum-intel would run the bare base
                raise RuntimeError(f"openvino-genai (needed for the runtime adapter): {_error_text(exc)}") from exc
            facts["fallback_reason"] = _error_text(exc)
            try:
                engine = _load_optimum(spec)
            except Exception as fallback_exc:
                raise RuntimeError(f"openvino-genai: {facts['fallback_reason']}; optimum-intel: "
                                   f"{_error_text(fallback_exc)}") from fallback_exc
        # a runtime adapter's A and B are read every step too (its file: the tensors and a small header)
        facts["weight_bytes_per_token"] = (ir_weight_bytes_per_token(path / IR_FILE)
                                           + (adapter.file.stat().st_size if adapter is not None else 0))
        facts["size_bytes"] = folder_bytes(path)
    else:
        model, tokenizer = _load_torch(spec)
        engine = HFGenerateEngine(model, tokenizer, spec["new_tokens"], "pytorch")
        facts["weight_bytes_per_token"] = torch_weight_bytes_per_token(model)
        facts["size_bytes"] = folder_bytes(path, *([Path(spec["adapter"])] if spec.get("adapter") else []))
        facts["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
        facts["torch_threads"] = sys.modules["torch"].get_num_threads()  # imported by _load_torch
    return engine, facts


def fc_primitives(spec: dict) -> dict[str, int] | None:
    """Count of each FullyConnected primitive type in the runtime graph of the IR compiled as benchmarked, and of
    the IR's SparseFullyConnected nodes (`export --sparse-format`).

    genai does not expose its compiled model, so the IR is compiled once more with the same device
    properties (genai's own pipeline keys, such as ATTENTION_BACKEND, are not device properties).
    """
    from sqft_ov.io.runtime import fully_connected_primitives, run_prefill, runtime_properties
    from sqft_ov.io.sparse_fc.op import OP_TYPE, core_for

    if spec["device"].split(".")[0].upper() != "CPU":
        return None
    core = core_for(spec["path"])
    supported = set(core.get_property("CPU", "SUPPORTED_PROPERTIES"))
    properties = {k: v for k, v in runtime_properties(spec["path"], spec["properties"]).items() if k in supported}
    model = core.read_model(Path(spec["path"]) / IR_FILE)
    sparse = sum(op.get_type_name() == OP_TYPE for op in model.get_ordered_ops())  # the plugin calls them Reference
    compiled = core.compile_model(model, "CPU", properties)
    run_prefill(compiled)
    counts: dict[str, int] = {OP_TYPE: sparse} if sparse else {}
    for primitive in fully_connected_primitives(compiled).values():
        counts[primitive] = counts.get(primitive, 0) + 1
    return counts


def _error_text(exc: BaseException) -> str:
    """First line of the message; the exception type too where the message alone would not say what broke."""
    from sqft_ov.errors import SqftError

    all_lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    lines = [line for line in all_lines if not line.startswith("Exception from src/")] or all_lines  # OpenVINO's trace
    if isinstance(exc, (SqftError, FileNotFoundError)) and lines:
        return lines[0]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def main() -> None:
    reply_stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the replies
    sys.stdout = sys.stderr

    def reply(message: dict) -> None:
        reply_stream.write(json.dumps(message) + "\n")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = json.loads(sys.argv[1])
    try:
        start = time.perf_counter()
        engine, facts = load_engine(spec)
        load_seconds = time.perf_counter() - start
        prompts = _Prompts(engine.encode, spec["prompt_tokens"], spec["runs"])
        if len(prompts(0)) < spec["prompt_tokens"]:
            raise ValueError("the tokenizer produced too few tokens for the prompt")
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which carries on with the other models
        reply({"ok": False, "error": _error_text(exc)})
        return
    reply({"ok": True, "engine": engine.name, "load_seconds": load_seconds, **facts})
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["cmd"] == "run":
                reply({"ok": True, **engine.generate(prompts(command["index"]))})
            elif command["cmd"] == "finish":
                peak = peak_rss_mib()
                # the tokens this engine generates for a given prompt: lets `tune` compare settings' outputs
                probe = engine.greedy(*command["probe"]) if command.get("probe") else None
                primitives = fc_primitives(spec) if facts["kind"] == "ir" else None
                reply({"ok": True, "peak_rss_mib": peak, "fc_primitives": primitives, "probe_tokens": probe})
                return
        except Exception as exc:  # noqa: BLE001
            reply({"ok": False, "error": _error_text(exc)})
            return


if __name__ == "__main__":
    main()
