"""Deployment parity: the exported IR answers `openvino_genai.LLMPipeline(ir).generate(prompt)`, called as a user
calls it (genai applies the tokenizer's chat template by default), as it answers in `sqft-ov eval`.

The tiny models' tokenizer has a chat template, like an Instruct model's: a model fine-tuned on plain prompts
must come out of export without it (else genai wraps every prompt in it), a model fine-tuned with it keeps it.
"""

import json

import pytest

from conftest import FIELDS, train

PROMPTS = 6
STEPS = 60  # enough for the tiny model to answer in text (after the shared fixtures' 12 it answers only EOS)


def _adapter(workdir, sparse_models, sft_data, chat_template: bool):
    from dataclasses import replace

    fmt = replace(FIELDS["data_format"], chat_template=chat_template)
    adapter = workdir / f"adapter-lora-parity-{'chat' if chat_template else 'plain'}"
    if not adapter.is_dir():
        train(sparse_models["llama"], sft_data, adapter, method="lora", rank=8, data_format=fmt, max_steps=STEPS)
    return adapter, fmt


def _ir(workdir, adapter, name, **export_options):
    from sqft_ov.stages.export import ExportConfig, export
    from sqft_ov.stages.merge import merge

    merged = workdir / f"parity-merged-{name}"
    if not merged.is_dir():
        merge(adapter, merged)
    ir = workdir / f"parity-ir-{name}"
    report = export(merged, ir, ExportConfig(weight_format="fp16", **export_options), overwrite=True)
    return ir, report


def _user_answers(ir, prompts, max_new_tokens):
    import openvino_genai

    pipe = openvino_genai.LLMPipeline(str(ir), "CPU")  # as a user deploys it: default generation settings
    return pipe, [pipe.generate(p, max_new_tokens=max_new_tokens) for p in prompts]


def _eval_answers(ir, data, fmt, max_new_tokens):
    from sqft_ov.stages.evaluate import EvalConfig, evaluate

    report = evaluate(ir, data, EvalConfig(data_format=fmt, limit=PROMPTS, max_new_tokens=max_new_tokens, loss=False))
    assert report.engine == "openvino"
    return [s["generated"] for s in report.samples]


def _prompts(sft_data):
    return [json.loads(line)["question"] for line in sft_data.read_text().splitlines()[:PROMPTS]]


def test_plain_prompt_training_drops_the_template_and_genai_answers_as_eval(workdir, sparse_models, sft_data):
    adapter, fmt = _adapter(workdir, sparse_models, sft_data, chat_template=False)
    ir, report = _ir(workdir, adapter, "plain")
    assert report.settings["chat_template"] == "dropped"
    assert report.settings["trained_with_chat_template"] is False
    assert not (ir / "chat_template.jinja").exists()
    assert "chat_template" not in json.loads((ir / "tokenizer_config.json").read_text())
    pipe, answers = _user_answers(ir, _prompts(sft_data), 24)
    assert pipe.get_tokenizer().chat_template == ""
    evaluated = _eval_answers(ir, sft_data, fmt, 24)
    assert answers == evaluated and all(a.strip() for a in answers)  # text, not only EOS: the comparison means something
    # the control: the same model with its template kept answers otherwise through genai's default call
    kept, report = _ir(workdir, adapter, "plain-kept", chat_template="keep")
    assert report.settings["chat_template"] == "kept" and (kept / "chat_template.jinja").is_file()
    assert _user_answers(kept, _prompts(sft_data), 24)[1] != evaluated


def test_chat_template_training_keeps_it_and_genai_answers_as_eval(workdir, sparse_models, sft_data):
    adapter, fmt = _adapter(workdir, sparse_models, sft_data, chat_template=True)
    assert json.loads((adapter / "sqft_adapter.json").read_text())["chat_template_applied"] is True
    ir, report = _ir(workdir, adapter, "chat")
    assert report.settings["chat_template"] == "kept"
    pipe, answers = _user_answers(ir, _prompts(sft_data), 24)
    assert pipe.get_tokenizer().chat_template  # genai wraps the prompt, as training did
    assert answers == _eval_answers(ir, sft_data, fmt, 24) and any(a.strip() for a in answers)


def test_a_plain_base_keeps_its_template_unless_asked(workdir, exported, sparse_models):
    from sqft_ov.errors import ConfigError
    from sqft_ov.stages.export import ExportConfig, export

    kept = json.loads((exported("llama", "fp16") / "sqft_export.json").read_text())["settings"]
    assert kept["chat_template"] == "kept" and kept["trained_with_chat_template"] is None
    dropped = export(sparse_models["llama"], workdir / "parity-base-dropped",
                     ExportConfig(weight_format="fp16", chat_template="drop"), overwrite=True)
    assert dropped.settings["chat_template"] == "dropped"
    with pytest.raises(ConfigError, match="--chat-template"):
        ExportConfig(chat_template="never")
