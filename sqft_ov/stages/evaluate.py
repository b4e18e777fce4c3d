"""Stage 6b: accuracy of a deployed model — a metric on its greedy generations, and response-token loss.

The same data as fine-tuning (prompt / response fields, or chat `messages` rows). `metric` (see
`sqft_ov.stages.metrics`) says how a generation is scored: `exact` compares the number after the last `####`
where the reference has one (GSM8K style; `sqft_ov.io.sft_data.extract_answer`), else the normalised text;
`contains` looks for the reference inside the generation; `loss` generates nothing. An OpenVINO IR
generates through openvino_genai's continuous batching (the folder's runtime configuration, as deployed;
with the runtime LoRA adapter of an IR exported from a finetune output, `adapter/`, unless `no_adapter`)
and scores the loss through optimum-intel's OVModelForCausalLM (which cannot apply a runtime adapter: the loss
of such an IR is not computed); a Hugging Face folder runs in PyTorch with
an optional adapter (PEFT, or any sqft-ov finetune output), in left-padded batches. Both paths feed the
same token ids and decode the same way, so their figures differ only by what the runtime computes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqft_ov.errors import ConfigError, ModelFolderError, SqftError
from sqft_ov.io.gguf import resolve_model
from sqft_ov.io.ir import IR_FILE
from sqft_ov.io.sft_data import IGNORE_INDEX, Prompt, SFTFormat, load_pairs, prompt_ids, tokenize_pair
from sqft_ov.stages.metrics import DEFAULT_METRIC, check_metric, score


@dataclass
class EvalConfig:
    adapter: Path | None = field(default=None, metadata={
        "help": "Adapter for a Hugging Face MODEL (PEFT or sqft-ov finetune folder)."})
    sub_adapter: Path | None = field(default=None, metadata={"help": "CONFIG.json from search, for an NLS adapter."})
    no_adapter: bool = field(default=False, metadata={
        "help": "An IR exported with a runtime LoRA adapter (its adapter/ folder): score the bare base without it."})
    data_format: SFTFormat = field(default_factory=SFTFormat)
    limit: int | None = field(default=None, metadata={"help": "Evaluate the first N examples only."})
    # PyTorch: rows per padded batch; OpenVINO: prompts in flight at once
    batch_size: int = field(default=16, metadata={"help": "Examples per generation batch."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest generated answer."})
    device: str = field(default="CPU", metadata={"help": "OpenVINO device for an IR (CPU, GPU, AUTO ...); for a "
                                                         "PyTorch model auto | cpu | cuda | xpu (CPU = cpu)."})
    properties: dict[str, str] = field(default_factory=dict)  # OpenVINO properties on top of runtime_config.json
    torch_dtype: str = field(default="float32", metadata={
        "help": "PyTorch models: float32 | bfloat16 | float16 | auto."})
    # the loss metric always computes it
    loss: bool = field(default=True, metadata={
        "help": "Also the teacher-forced response loss: one more forward pass per batch, about as costly as the "
                "generation's prompt pass; --no-loss to skip it."})
    metric: str = field(default=DEFAULT_METRIC, metadata={  # sqft_ov.stages.metrics
        "help": "exact: the final '####' number where the reference has one, else the normalised text; contains: "
                "the reference inside the generation; loss: no generation, response loss and perplexity only."})
    stop: tuple[str, ...] = ()  # text answers end at the first of these (and at EOS)

    def __post_init__(self) -> None:
        check_metric(self.metric)
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("--batch-size and --max-new-tokens must be positive")


@dataclass
class EvalReport:
    model: str
    adapter: str | None
    engine: str  # "openvino" | "pytorch"
    data: str
    examples: int
    correct: int
    no_answer: int  # generations without a `####` number, among references that have one
    response_loss: float | None  # mean cross-entropy per response token (teacher-forced)
    response_tokens: int
    seconds: float  # all of it, loading and compiling the model included
    samples: list[dict] = field(default_factory=list)
    load_seconds: float = 0.0  # loading (and, for an IR, compiling) the model: a one-off cost per process
    metric: str = DEFAULT_METRIC  # what `correct` counts: exact | contains | loss (no generation, no score)
    numeric: int | None = None  # references scored on their final `####` number; the rest on normalised text
    runtime_adapter: dict | None = None  # the IR's runtime LoRA adapter genai applied (file, alpha), if any

    @property
    def exact_match(self) -> float | None:
        """Share of examples `metric` counts correct (None for the loss metric); the name predates metrics."""
        if self.metric == "loss":
            return None
        return self.correct / self.examples if self.examples else 0.0

    @property
    def perplexity(self) -> float | None:
        return math.exp(self.response_loss) if self.response_loss is not None else None

    def to_dict(self) -> dict:
        return {**asdict(self), "exact_match": self.exact_match, "perplexity": self.perplexity}


def _runtime_adapter(model_path: Path, config: EvalConfig):
    """The IR's runtime adapter eval applies (None: none, or --no-adapter); the loss metric cannot use one."""
    from sqft_ov.io.ir_adapter import find_runtime_adapter

    adapter = None if config.no_adapter else find_runtime_adapter(model_path)
    if adapter is not None and config.metric == "loss":
        raise ConfigError(f"{model_path} carries a runtime LoRA adapter, which optimum-intel (the loss pass) cannot "
                          "apply: score generations (--metric exact|contains), or merge and export the adapter")
    return adapter


def _load(model_path: Path, config: EvalConfig):
    """(generator, tokenizer, engine, runtime adapter): genai's batch pipeline for an IR (None for the loss metric),
    with the IR's runtime adapter applied, or the PyTorch model (no runtime adapter)."""
    if (model_path / IR_FILE).is_file():
        if config.adapter is not None:
            raise ConfigError(f"{model_path} is an OpenVINO IR: --adapter applies to Hugging Face folders (an IR "
                              "exported from a finetune output, sqft-ov export ADAPTER IR, carries its adapter)")
        from transformers import AutoTokenizer

        from sqft_ov.io.checkpoint import require_tokenizer
        from sqft_ov.io.ir import check_ir_files
        from sqft_ov.io.ir_adapter import genai_adapter_config
        from sqft_ov.io.runtime import open_batch_pipeline

        check_ir_files(model_path)
        require_tokenizer(model_path)
        adapter = _runtime_adapter(model_path, config)
        adapters = genai_adapter_config(adapter) if adapter is not None else None
        pipe = (open_batch_pipeline(model_path, config.device, config.properties, adapters)
                if config.metric != "loss" else None)
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        return pipe, tokenizer, "openvino", adapter
    import torch

    from sqft_ov.adapters.adapted import load_for_inference

    dtype = config.torch_dtype if config.torch_dtype == "auto" else getattr(torch, config.torch_dtype, None)
    if dtype is None:
        raise ConfigError(f"--torch-dtype must be auto, float32, bfloat16 or float16, got {config.torch_dtype!r}")
    from sqft_ov.io.device import torch_device

    device = torch_device(config.device)  # before loading: a device torch does not see fails at once
    model, tokenizer = load_for_inference(model_path, config.adapter, dtype, config.sub_adapter)
    return model.to(device), tokenizer, "pytorch", None


def eval_pairs(data: str | Path, fmt: SFTFormat, metric: str, limit: int | None = None) -> list[tuple[Prompt, str]]:
    """The examples METRIC scores: every row with a response (a chat row's last assistant turn). Recipes call
    it before training, so data that cannot be scored fails in seconds, not after the run."""
    check_metric(metric)
    return load_pairs(data, fmt)[:limit]


def _pad(rows: list[list[int]], pad: int, left: bool):
    import torch

    longest = max(len(r) for r in rows)
    ids = [([pad] * (longest - len(r)) + r) if left else (r + [pad] * (longest - len(r))) for r in rows]
    mask = [([0] * (longest - len(r)) + [1] * len(r)) if left else ([1] * len(r) + [0] * (longest - len(r)))
            for r in rows]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def _generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy continuations of left-padded prompts, up to EOS (PyTorch)."""
    import torch

    ids, mask = _pad(prompts, tokenizer.pad_token_id, left=True)
    ids, mask = ids.to(model.device), mask.to(model.device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def _generate_continuous(pipe, tokenizer, prompts: list[list[int]], max_new_tokens: int, in_flight: int,
                         done=lambda n: None) -> list[str]:
    """Greedy continuations up to EOS through genai: `in_flight` prompts at a time, a finished one replaced
    by the next at once, so no row waits for the longest answer of its batch (OpenVINO)."""
    import numpy as np
    import openvino as ov
    import openvino_genai

    config = openvino_genai.GenerationConfig()
    config.max_new_tokens, config.do_sample = max_new_tokens, False
    config.eos_token_id, config.stop_token_ids = tokenizer.eos_token_id, {tokenizer.eos_token_id}
    texts: list[str | None] = [None] * len(prompts)
    waiting, running = list(range(len(prompts)))[::-1], {}
    while waiting or running:
        while waiting and len(running) < in_flight:
            i = waiting.pop()
            running[i] = pipe.add_request(i, ov.Tensor(np.asarray([prompts[i]], dtype=np.int64)), config)
        pipe.step()
        for i, handle in list(running.items()):
            status = handle.get_status()
            if status == openvino_genai.GenerationStatus.RUNNING:
                continue
            if status != openvino_genai.GenerationStatus.FINISHED:
                raise SqftError(f"OpenVINO GenAI did not generate for prompt {i + 1} ({status.name}: a prompt of "
                                f"{len(prompts[i])} tokens); lower --max-length or --batch-size")
            texts[i] = tokenizer.decode(list(handle.read_all()[0].generated_ids), skip_special_tokens=True)
            del running[i]
            done(1)
    return texts


def _response_loss(model, tokenizer, rows: list[dict]) -> tuple[float, int]:
    """Summed cross-entropy of the response tokens (right-padded, teacher-forced) and their count."""
    import torch

    ids, mask = _pad([r["input_ids"] for r in rows], tokenizer.pad_token_id, left=False)
    labels, _ = _pad([r["labels"] for r in rows], IGNORE_INDEX, left=False)
    device = getattr(model, "device", None)
    if device is not None:  # a PyTorch model (the OpenVINO one takes CPU tensors)
        ids, mask = ids.to(device), mask.to(device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    logits = torch.as_tensor(logits).float().cpu()[:, :-1]
    target = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum")
    return float(loss), int((target != IGNORE_INDEX).sum())


def evaluate(model: str | Path, data: str | Path, config: EvalConfig | None = None,
             on_progress=None) -> EvalReport:
    """The metric's score and the response loss of MODEL (IR or Hugging Face folder [+ adapter]) on DATA.

    `on_progress(done, total, label)` counts examples: `eval NAME` while generating, then `loss NAME`."""
    config = config or EvalConfig()
    model_path, data = Path(model).expanduser(), Path(data)
    if not (model_path / IR_FILE).is_file():
        model_path = resolve_model(model_path)  # a .gguf file or an example name: its Hugging Face folder
    model_path = model_path.absolute()
    if not model_path.is_dir():
        raise ModelFolderError(f"model folder {model_path} does not exist")
    fmt = config.data_format
    pairs = eval_pairs(data, fmt, config.metric, config.limit)
    generate, with_loss = config.metric != "loss", config.loss or config.metric == "loss"
    start = time.perf_counter()
    net, tokenizer, engine, runtime_adapter = _load(model_path, config)
    with_loss = with_loss and runtime_adapter is None  # optimum-intel would score the bare base
    scorer = net
    if engine == "openvino" and with_loss:  # genai returns no logits: the loss pass runs in optimum-intel
        from sqft_ov.io.runtime import open_ov_model

        scorer = open_ov_model(model_path, config.device, config.properties)
        scorer.compile()  # here, not inside the first batch: compiling is loading, not evaluating
    load_seconds = time.perf_counter() - start
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = [prompt_ids(tokenizer, p, fmt)[-fmt.max_length:] for p, _ in pairs]
    counter = {"done": 0, "label": f"eval {model_path.name}"}

    def advance(n: int) -> None:
        counter["done"] += n
        if on_progress is not None:
            on_progress(counter["done"], len(pairs), counter["label"])
    generated: list[str] = []
    if generate and engine == "openvino":
        generated = _generate_continuous(net, tokenizer, prompts, config.max_new_tokens, config.batch_size, advance)
    elif generate:
        for i in range(0, len(prompts), config.batch_size):
            batch = prompts[i:i + config.batch_size]
            generated += _generate(net, tokenizer, batch, config.max_new_tokens)
            advance(len(batch))
    loss_sum, loss_tokens = 0.0, 0
    if with_loss:
        counter.update(done=0, label=f"loss {model_path.name}")
        for i in range(0, len(pairs), config.batch_size):
            rows = [tokenize_pair(tokenizer, p, r, fmt) for p, r in pairs[i:i + config.batch_size]]
            total, count = _response_loss(scorer, tokenizer, rows)
            loss_sum, loss_tokens = loss_sum + total, loss_tokens + count
            advance(len(rows))
    stops = (*config.stop, *([tokenizer.eos_token] if tokenizer.eos_token else []))
    samples, numeric = [], 0
    for (prompt, response), text in zip(pairs, generated):
        scored = score(config.metric, response, text, stops)
        numeric += scored.numeric
        samples.append({"prompt": prompt, "reference": scored.reference, "generated": text,
                        "predicted": scored.predicted, "correct": scored.correct})
    return EvalReport(
        model=str(model_path), adapter=str(config.adapter) if config.adapter else None, engine=engine,
        data=str(data.absolute()), examples=len(pairs), correct=sum(s["correct"] for s in samples),
        no_answer=sum(s["predicted"] is None for s in samples),
        response_loss=loss_sum / loss_tokens if loss_tokens else (None if not with_loss else math.nan),
        response_tokens=loss_tokens, seconds=time.perf_counter() - start, samples=samples, load_seconds=load_seconds,
        metric=config.metric, numeric=numeric if generate else None,
        runtime_adapter=None if runtime_adapter is None else {
            **runtime_adapter.to_dict(),
            **({"response_loss": "not computed: optimum-intel cannot apply it"} if config.loss else {})})
