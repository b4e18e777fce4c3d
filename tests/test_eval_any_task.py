"""Eval on tasks that are not GSM8K-shaped: text answers, chat rows, loss only; recipes refuse unscorable data first."""

import json
import math
from pathlib import Path

import pytest
from test_cli import sqft

from sqft_ov.errors import SqftError
from sqft_ov.recipe import load_recipe
from sqft_ov.stages.evaluate import EvalConfig, evaluate

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
PLAIN = [{"prompt": "The capital of France is", "response": " Paris"},
         {"prompt": "Two plus two is", "response": " four"}, {"prompt": "Red and blue make", "response": " purple"}]


@pytest.fixture
def plain(tmp_path) -> Path:
    path = tmp_path / "plain.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PLAIN))
    return path


@pytest.mark.parametrize("name", ["lora", "shears", "sparsepeft", "qa_sparsepeft", "lonas", "eftnas"])
@pytest.mark.parametrize("rows, match", [
    ([{"prompt": "2 + 2 ="}], "no field response"),
    ([{"messages": [{"role": "user", "content": "2 + 2 ="}]}], "has no assistant turn"),
])
def test_recipes_refuse_unscorable_test_data_before_training(tmp_path, plain, name, rows, match):
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    with pytest.raises(SqftError, match=match):  # the model does not exist: training would fail otherwise
        load_recipe(RECIPES / f"{name}.py")(model=tmp_path / "no-model", data=plain, out=out, test=test)
    with pytest.raises(SqftError, match="--metric"):
        load_recipe(RECIPES / f"{name}.py")(model=tmp_path / "no-model", data=plain, out=out, metric="bleu")
    assert not out.exists()


def test_loss_only_needs_no_final_answer(plain, sparse_models, exported):
    for model, engine in ((sparse_models["llama"], "pytorch"), (exported("llama", "int4"), "openvino")):
        report = evaluate(model, plain, EvalConfig(metric="loss", loss=False))  # the loss metric implies the loss
        assert report.engine == engine and report.examples == 3 and report.samples == []
        assert report.response_loss > 0 and report.perplexity == pytest.approx(math.exp(report.response_loss))
        assert report.exact_match is None and report.to_dict()["metric"] == "loss"


def test_text_answers_and_chat_rows_are_scored(tmp_path, plain, sparse_models):
    report = evaluate(sparse_models["llama"], plain, EvalConfig(max_new_tokens=4))
    assert report.metric == "exact" and report.numeric == 0 and report.examples == 3
    assert [s["reference"] for s in report.samples] == ["Paris", "four", "purple"]
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["prompt"]},
                                                     {"role": "assistant", "content": r["response"]}]}) + "\n"
                            for r in PLAIN))
    report = evaluate(sparse_models["llama"], chat, EvalConfig(max_new_tokens=4, metric="contains"))
    assert report.metric == "contains" and report.numeric == 0 and report.response_loss > 0
    assert report.samples[0]["prompt"] == [{"role": "user", "content": PLAIN[0]["prompt"]}]


def test_eval_cli_metric_loss(tmp_path, plain, exported):
    out = tmp_path / "eval.json"
    result = sqft("eval", exported("llama", "int4"), plain, "--metric", "loss", "--json", out)
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert saved["metric"] == "loss" and saved["exact_match"] is None and saved["perplexity"] > 1
    assert "perplexity" in result.stdout and "exact match" not in result.stdout
