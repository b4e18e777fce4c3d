"""Knowledge distillation in finetune and the recipes: --teacher, --distill-weight, --temperature (issue 28 item 4,
issue 31 item 2). The loss is task + W * T^2 * KL(teacher || student) over the response tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIELDS
from conftest import train as _train
from safetensors.torch import load_file

from sqft_ov import FinetuneConfig
from sqft_ov.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(method="sparsepeft", rank=4, max_steps=3, eval_split=0.0, **FIELDS)


def trained(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "sqft_trainable.safetensors")


def record(out: Path) -> dict:
    return json.loads((out / "sqft_adapter.json").read_text())


@pytest.fixture(scope="module")
def plain(sparse_models, sft_data, tmp_path_factory):
    """The same run without a teacher, to compare with."""
    out = tmp_path_factory.mktemp("plain") / "adapter"
    return _train(sparse_models["llama"], sft_data, out, **COMMON), out


def test_response_kl_is_the_shifted_masked_kl():
    """T^2 * sum over response tokens of KL(p_teacher || p_student), position i predicting label i + 1."""
    from sqft_ov.stages.distill import response_kl

    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 5, 6]])
    kl, count = response_kl(student, teacher, labels, 2.0)
    expected = 0.0
    for b, i in [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]:  # labels[b, i + 1] != -100
        p = torch.softmax(teacher[b, i] / 2, -1)
        expected += float((p * (p.log() - torch.log_softmax(student[b, i] / 2, -1))).sum()) * 4
    assert count == 6 and float(kl) == pytest.approx(expected, rel=1e-5)
    assert float(response_kl(student, student, labels, 3.0)[0]) == 0.0


def test_weight_zero_trains_exactly_as_without_a_teacher(plain, sparse_models, tiny_models, sft_data, tmp_path):
    """--distill-weight 0: the KL is logged, not trained on; losses and trained tensors are those of no teacher."""
    from sqft_ov.io.checkpoint import model_fingerprint

    base_result, base_out = plain
    out = tmp_path / "zero"
    result = _train(sparse_models["llama"], sft_data, out, teacher=str(tiny_models["llama"]), distill_weight=0.0,
                    **COMMON)
    assert result.train_loss == base_result.train_loss
    a, b = trained(base_out), trained(out)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert len(result.distill_loss) == 3 and all(d > 0 for d in result.distill_loss)
    assert record(base_out)["distillation"] is None and base_result.distill_loss is None
    assert record(out)["distillation"] == {
        "path": str(tiny_models["llama"].absolute()), "kind": "model",
        "fingerprint": model_fingerprint(tiny_models["llama"]), "distill_weight": 0.0, "temperature": 1.0}


def test_a_teacher_changes_the_loss_by_its_weighted_kl(plain, sparse_models, tiny_models, sft_data, tmp_path):
    """Step 1 starts from the same weights: its loss is the plain run's + W * (T^2 KL per response token)."""
    base_result, base_out = plain
    out = tmp_path / "kd"
    result = _train(sparse_models["llama"], sft_data, out, teacher=str(tiny_models["llama"]), distill_weight=0.5,
                    temperature=2.0, **COMMON)
    assert result.distill_loss[0] > 1e-4  # random tiny models: near-uniform distributions
    assert result.train_loss[0] == pytest.approx(base_result.train_loss[0] + 0.5 * result.distill_loss[0], rel=1e-5)
    a, b = trained(base_out), trained(out)
    assert any(not torch.equal(a[n], b[n]) for n in a)
    log = json.loads((out / "loss_log.json").read_text())
    assert [h["distill_loss"] for h in log if "distill_loss" in h] == result.distill_loss
    assert (record(out)["distillation"]["distill_weight"], record(out)["distillation"]["temperature"]) == (0.5, 2.0)


def test_gradient_accumulation_normalises_the_kl_as_the_task_loss(sparse_models, tiny_models, sft_data, tmp_path):
    """2 x 2 accumulated examples give the step loss of one batch of 4: the KL is divided by the accumulated batch's
    response tokens (Trainer's num_items_in_batch), as the task loss is, not averaged per micro-batch."""
    kd = dict(teacher=str(tiny_models["llama"]), distill_weight=0.5, temperature=2.0)
    one = _train(sparse_models["llama"], sft_data, tmp_path / "one", **{**COMMON, "max_steps": 1, "batch_size": 4},
                 **kd)
    two = _train(sparse_models["llama"], sft_data, tmp_path / "two", **{**COMMON, "max_steps": 1, "batch_size": 2,
                                                                       "grad_accum": 2}, **kd)
    assert two.distill_loss[0] == pytest.approx(one.distill_loss[0], rel=1e-5)
    assert two.train_loss[0] == pytest.approx(one.train_loss[0], rel=1e-5)


def test_the_students_own_initial_model_as_teacher_gives_kl_zero_at_the_start(sparse_models, sft_data, tmp_path):
    """The teacher is a frozen copy: KL 0 before the first update (adapters start at zero), then > 0."""
    result = _train(sparse_models["llama"], sft_data, tmp_path / "self", teacher=str(sparse_models["llama"]),
                    **COMMON)
    assert result.distill_loss[0] < 1e-6 and result.distill_loss[-1] > result.distill_loss[0]


@pytest.mark.parametrize("teacher_method,student_method", [("sparsepeft", "sparsepeft"), ("lora", "qa-sparsepeft")])
def test_teacher_from_a_finetune_output(sparse_models, sft_data, tmp_path, teacher_method, student_method):
    """A finetune OUTPUT folder as teacher: its base + trained adapter (not the base alone: KL > 0 at the start);
    rebuilt as eval rebuilds it (sqft-ov's own forward, or PEFT for a plain LoRA folder)."""
    from sqft_ov.stages.distill import teacher_source

    teacher = tmp_path / "teacher"
    _train(sparse_models["llama"], sft_data, teacher, **{**COMMON, "method": teacher_method})
    out = tmp_path / "student"
    grid = {"int4": "asym"} if student_method == "qa-sparsepeft" else {}
    result = _train(sparse_models["llama"], sft_data, out, teacher=str(teacher), **{**COMMON, "method": student_method,
                                                                                     **grid})
    assert result.distill_loss[0] > 1e-6 and np.isfinite(result.train_loss).all()
    entry = record(out)["distillation"]
    assert entry["kind"] == "adapter" and entry["path"] == str(teacher.absolute())
    assert entry["base"] == str(sparse_models["llama"].absolute())
    assert entry["fingerprint"] == teacher_source(teacher)["fingerprint"] and len(entry["fingerprint"]) == 64


def test_nls_elastic_widths_bf16_and_checkpointing_with_a_teacher(sparse_models, tiny_models, sft_data, tmp_path):
    """What LoNAS / EFTNAS train (sampled ranks and widths) distils too, in bf16 with recomputed activations."""
    out = tmp_path / "elastic"
    result = _train(sparse_models["llama"], sft_data, out, method="sparsepeft", nls=True, rank_space=(8, 4),
                    mlp_widths=(1.0, 0.5), max_steps=4, eval_split=0.0, precision="bf16", gradient_checkpointing=True,
                    teacher=str(tiny_models["llama"]), **FIELDS)
    assert len(result.distill_loss) == 4 and np.isfinite(result.distill_loss).all()
    assert np.isfinite(result.train_loss).all() and all(torch.isfinite(t).all() for t in trained(out).values())
    assert record(out)["distillation"]["kind"] == "model" and record(out)["precision"] == "bf16"


def test_resume_with_a_teacher_ends_with_the_same_adapter(sparse_models, tiny_models, sft_data, tmp_path):
    from transformers import TrainerCallback

    from sqft_ov import finetune

    config = dict(method="sparsepeft", rank=4, max_steps=4, save_steps=2, lr=5e-3, batch_size=4, eval_split=0.0,
                  seed=5, teacher=str(tiny_models["llama"]), distill_weight=0.5, **FIELDS)
    straight = finetune(sparse_models["llama"], sft_data, tmp_path / "straight", FinetuneConfig(**config))

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        finetune(sparse_models["llama"], sft_data, tmp_path / "resumed", FinetuneConfig(**config), callbacks=[Crash()])
    resumed = finetune(sparse_models["llama"], sft_data, tmp_path / "resumed", FinetuneConfig(**config), resume=True)
    a, b = trained(tmp_path / "straight"), trained(tmp_path / "resumed")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    np.testing.assert_allclose(resumed.distill_loss, straight.distill_loss, rtol=1e-5)


@pytest.fixture(scope="module")
def other_vocabularies(tmp_path_factory):
    """Tiny models whose vocabulary is not the student's: another size, and another tokenizer of the same size."""
    from sqft_ov.quickstart.tiny import TinyModelConfig, build_tiny_model

    root = tmp_path_factory.mktemp("vocab")
    return (build_tiny_model(root / "v512", TinyModelConfig(vocab=512)),
            build_tiny_model(root / "seed1", TinyModelConfig(seed=1)))


def test_bad_teachers_and_settings_fail_in_one_line_and_write_nothing(sparse_models, sft_data, tmp_path,
                                                                      other_vocabularies):
    smaller, other_tokenizer = other_vocabularies
    (tmp_path / "empty").mkdir()
    cases = [
        (dict(teacher=str(tmp_path / "nope")), r"--teacher: model folder .*nope does not exist.* finetune output"),
        (dict(teacher=str(tmp_path / "empty")), r"--teacher: .*empty has no config.json.* finetune output"),
        (dict(teacher=str(smaller)), r"predicts 512 tokens, the student 1024"),
        (dict(teacher=str(other_tokenizer)), r"another tokenizer than the student"),
        (dict(teacher=str(smaller), distill_weight=-0.5), r"--distill-weight must be 0 or positive, got -0.5"),
        (dict(teacher=str(smaller), temperature=0.0), r"--temperature must be positive, got 0.0"),
        (dict(distill_weight=0.5), r"needs --teacher"),
        (dict(temperature=2.0), r"needs --teacher"),
    ]
    for i, (settings, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises(ConfigError, match=message):
            _train(sparse_models["llama"], sft_data, out, **{**COMMON, **settings})
        assert not out.exists() and not (tmp_path / f".out{i}.run").exists(), settings


def test_cli_finetune_with_a_teacher(sparse_models, tiny_models, sft_data, tmp_path):
    from typer.testing import CliRunner

    from sqft_ov.cli import app

    out = tmp_path / "cli"
    args = ["finetune", str(sparse_models["llama"]), str(sft_data), str(out), "--prompt-field", "question",
            "--response-field", "answer", "--max-length", "64", "--rank", "4", "--max-steps", "2", "--eval-split", "0"]
    result = CliRunner().invoke(app, args + ["--teacher", str(tiny_models["llama"]), "--distill-weight", "0.5",
                                             "--temperature", "2"])
    assert result.exit_code == 0, result.output
    assert "distill loss" in result.output
    entry = record(out)["distillation"]
    assert (entry["path"], entry["distill_weight"], entry["temperature"]) == (str(tiny_models["llama"]), 0.5, 2.0)
    refused = CliRunner().invoke(app, args[:3] + [str(tmp_path / "cli2")] + args[4:] + ["--temperature", "2"])
    assert isinstance(refused.exception, ConfigError) and "needs --teacher" in str(refused.exception)
    assert not (tmp_path / "cli2").exists()


class Captured(Exception):
    """Raised by a stand-in finetune: the config a recipe built."""


@pytest.mark.parametrize("name", ["lora", "sparsepeft", "qa_sparsepeft", "shears", "lonas", "eftnas"])
def test_recipes_pass_the_teacher_through(name, monkeypatch, tiny_models, tmp_path):
    """`sqft-ov run recipes/X.py --teacher T --distill-weight W --temperature T`: finetune gets them (LoNAS / EFTNAS
    after their importance stage, on the real tiny model)."""
    import importlib

    from typer.testing import CliRunner

    import sqft_ov
    from sqft_ov.cli import app
    from sqft_ov.quickstart.arithmetic import write_task

    def fake(model, data, output, config, **kwargs):
        raise Captured(config)

    monkeypatch.setattr(sqft_ov, "finetune", fake)
    monkeypatch.setattr(importlib.import_module("sqft_ov.recipes.lonas"), "finetune", fake)  # eftnas's trainer
    task = write_task(tmp_path / "task", 16, 4)
    teacher = tiny_models["llama"]
    result = CliRunner().invoke(app, ["run", str(ROOT / "recipes" / f"{name}.py"), "--model", str(teacher),
                                      "--data", str(task["train"].parent), "--out", str(tmp_path / "out"),
                                      "--teacher", str(teacher), "--distill-weight", "0.25", "--temperature", "1.5"])
    assert isinstance(result.exception, Captured), result.output
    (config,) = result.exception.args
    assert (config.teacher, config.distill_weight, config.temperature) == (str(teacher), 0.25, 1.5)
