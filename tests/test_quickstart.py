"""The embedded task, eval, recipes and `sqft-ov quickstart --fast` end to end."""

import json
from pathlib import Path

import pytest
from conftest import FIELDS
from test_cli import assert_one_line_error, sqft

from sqft_ov.quickstart.arithmetic import extract_answer, problems, write_task

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.mark.parametrize("text, expected", [
    (" 3 + 4 = 7. #### 7", "7"),
    ("#### 12 then more text #### 42", "42"),  # the last one counts
    ("####42", "42"),
    ("#### 1,234", "1234"),
    ("#### -5", "-5"),
    ("#### 7.0", "7"),
    ("#### 3.50", "3.5"),
    ("#### .5", ".5"),
    ("the answer is 7", None),
    ("#### ", None),
    ("", None),
])
def test_answer_extraction(text, expected):
    assert extract_answer(text) == expected


def test_task_is_deterministic_shifted_and_held_out(tmp_path):
    a, b = write_task(tmp_path / "a", 300, 60, seed=4), write_task(tmp_path / "b", 300, 60, seed=4)
    assert a["train"].read_text() == b["train"].read_text() and a["test"].read_text() == b["test"].read_text()
    train = [json.loads(line) for line in a["train"].read_text().splitlines()]
    test = [json.loads(line) for line in a["test"].read_text().splitlines()]
    assert len(train) == 300 and len(test) == 60
    assert not {r["prompt"] for r in test} & {r["prompt"] for r in train}
    for row in train + test:
        assert extract_answer(row["response"]) == row["answer"]
    # The downstream task has operations the foundation corpus never shows.
    assert {r["kind"] for r in train} == {"add", "sub", "two-step", "mul"}
    foundation = problems("foundation", 500)
    assert {p.kind for p in foundation} == {"add", "sub"}
    assert not any("*" in p.response for p in foundation)
    foundation_questions = {p.question for p in foundation}
    assert not any(r["prompt"].split("Question: ")[1].split("\n")[0] in foundation_questions for r in train)


def test_held_back_problems_are_in_no_split_and_the_rest_is_unchanged(tmp_path):
    rows = lambda path: [json.loads(line)["prompt"] for line in path.read_text().splitlines()]  # noqa: E731
    old = write_task(tmp_path / "old", 200, 30, seed=4, validation=10)  # an earlier plan was tuned on its test
    new = write_task(tmp_path / "new", 200, 30, seed=4, validation=10, held_back=30)
    assert rows(old["train"]) == rows(new["train"])
    splits = [set(rows(new[name])) for name in ("train", "test", "validation")]
    assert [len(s) for s in splits] == [200, 30, 10] and not (splits[0] & splits[1] or splits[1] & splits[2])
    assert not set(rows(old["test"])) & (splits[1] | splits[2])  # the tuned-on problems scored nowhere
    assert rows(write_task(tmp_path / "zero", 200, 30, seed=4, validation=10, held_back=0)["test"]) == \
        rows(old["test"])


def test_foundation_model_is_cached_by_configuration(tmp_path, monkeypatch):
    from sqft_ov.quickstart import foundation
    from sqft_ov.quickstart.foundation import FoundationConfig, foundation_model

    small = FoundationConfig(layers=1, hidden=64, intermediate=128, heads=2, kv_heads=1, vocab=320, seq_len=32,
                             batch_size=4, steps=3)
    path = foundation_model(small, tmp_path)
    record = json.loads((path / foundation.RECORD).read_text())
    assert record["steps"] == 3 and record["config"]["hidden"] == 64
    tokenizer_json = (path / "tokenizer.json").read_text()
    assert '"individual_digits": true' in tokenizer_json.replace(" ", "").replace('":true', '": true')

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model must be reused")

    monkeypatch.setattr(foundation, "pretrain", no_training)
    assert foundation_model(small, tmp_path) == path
    other = FoundationConfig(**{**small.__dict__, "steps": 4})
    assert other.key != small.key
    with pytest.raises(AssertionError, match="reused"):
        foundation_model(other, tmp_path)


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """`sqft-ov quickstart --fast` in the user's cache, as users run it: after the README's install command
    (which runs the full quickstart) it reuses that foundation model; elsewhere it pretrains it first."""
    out = tmp_path_factory.mktemp("quick") / "qs"
    result = sqft("quickstart", "--fast", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    return out, result


@pytest.mark.slow
def test_quickstart_fast_end_to_end(quickstart_run):
    out, result = quickstart_run
    data = json.loads((out / "quickstart.json").read_text())
    table = {row["method"]: row for row in data["table"]}
    assert set(table) == {"Foundation (dense, no FT)", "Wanda 50 % (no FT)", "LoRA",
                          "LoRA, merged", "LoRA, merged, INT4 PTQ g128", "Shears", "SparsePEFT", "QA-SparsePEFT"}
    # The plan must learn with margin on every CPU (README, "--fast": 45-56 points over the base where measured;
    # 40 steps once sat on a cliff and scored 0 % on one machine): a margin, not a figure.
    dense, wanda = table["Foundation (dense, no FT)"]["accuracy"], table["Wanda 50 % (no FT)"]["accuracy"]
    assert table["LoRA"]["accuracy"] >= dense + 0.3, (table["LoRA"], dense)
    for method in ("Shears", "SparsePEFT", "QA-SparsePEFT"):
        assert table[method]["accuracy"] >= wanda + 0.2, (method, table[method], wanda)
    assert data["reference_problem"] is None and table["LoRA"]["relative_to_lora"] == 1.0
    for method, row in table.items():
        assert 0.0 <= row["accuracy"] <= 1.0
        if "no FT" in method:
            assert row["decode_tokens_per_s"] is None and row["merged"] == "-"
        else:
            assert row["decode_tokens_per_s"] > 0, row  # every deployment ran through bench
    assert table["Foundation (dense, no FT)"]["sparsity"] < 0.01
    for method in ("Wanda 50 % (no FT)", "LoRA", "Shears", "SparsePEFT", "QA-SparsePEFT"):
        assert table[method]["sparsity"] >= 0.5, method  # Wanda zeroes half of each row; merges keep them
    assert table["LoRA, merged"]["sparsity"] < 0.25  # the dense update filled the zeros
    ptq = table["LoRA, merged, INT4 PTQ g128"]
    assert ptq["merged"] == "yes" and "int4" in ptq["precision"]
    assert table["SparsePEFT"]["merged"] == table["QA-SparsePEFT"]["merged"] == "yes"
    assert table["LoRA"]["merged"] == table["Shears"]["merged"] == "no"
    deployments = {d["label"]: d for d in data["deployments"]}
    assert (Path(deployments["QA-SparsePEFT"]["model"]) / "openvino_model.xml").is_file()
    assert deployments["QA-SparsePEFT"]["evaluation"]["engine"] == "openvino"
    assert deployments["LoRA"]["evaluation"]["engine"] == "pytorch"
    assert (out / "quickstart.md").read_text().startswith("| method | accuracy (min–max over seeds) | 95 % interval |")
    assert "QA-SparsePEFT" in result.stdout and "vs LoRA" in result.stdout
    again = sqft("quickstart", "--fast", "--out", out)
    assert_one_line_error(again, "already exists", "--overwrite")


def _first_divergence_gaps(model_path: Path, pairs: list[tuple[dict, dict]]) -> list[float]:
    """For each (IR sample, PyTorch sample) whose texts differ: |log p(PyTorch's token) - log p(IR's token)| at
    the first token where they part, under the PyTorch model; a rounding flip shows as a near-tie."""
    import torch

    from sqft_ov.io.checkpoint import load_causal_lm

    model, tokenizer = load_causal_lm(model_path, dtype=torch.float32)  # as eval loads it
    gaps = []
    for a, b in pairs:
        ids = [tokenizer(s["generated"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
               for s in (a, b)]
        k = next(i for i, (x, y) in enumerate(zip(*ids)) if x != y)
        with torch.no_grad():
            logits = model(torch.tensor([tokenizer(a["prompt"])["input_ids"] + ids[1][:k]])).logits[0, -1]
        log_p = logits.log_softmax(-1)
        gaps.append(abs(log_p[ids[1][k]] - log_p[ids[0][k]]).item())
    return gaps


@pytest.mark.slow
def test_eval_same_exact_match_through_openvino_and_pytorch(quickstart_run, tmp_path):
    from sqft_ov.stages.evaluate import EvalConfig, evaluate

    out, _ = quickstart_run
    test = out / "task" / "test.jsonl"
    ir = evaluate(out / "sparsepeft" / "ir", test, EvalConfig(limit=40))  # of the fast plan's 100
    torch_ = evaluate(out / "sparsepeft" / "merged", test, EvalConfig(limit=40))
    assert (ir.engine, torch_.engine) == ("openvino", "pytorch")
    assert ir.examples == torch_.examples == 40
    assert abs(ir.response_loss - torch_.response_loss) < 0.05 * torch_.response_loss
    # genai's continuous batching (unpadded prompts) generates what padded PyTorch batches do, but where the FP16
    # IR and fp32 PyTorch round a near-tie apart (5 of 40 rows on one CI machine, 2 on another): wherever the two
    # differ, their first differing tokens must be within 0.2 nats of each other under PyTorch (seen: < 0.04).
    differ = [(a, b) for a, b in zip(ir.samples, torch_.samples) if a["generated"] != b["generated"]]
    assert len(differ) <= ir.examples // 2, len(differ)
    gaps = _first_divergence_gaps(out / "sparsepeft" / "merged", differ)
    assert all(gap < 0.2 for gap in gaps), list(zip(differ, gaps))
    few = evaluate(out / "sparsepeft" / "ir", test, EvalConfig(limit=40, batch_size=3, loss=False))
    assert [s["generated"] for s in few.samples] == [s["generated"] for s in ir.samples]
    assert few.response_loss is None
    # The CLI: table, samples, JSON with every example.
    report = tmp_path / "eval.json"
    result = sqft("eval", out / "sparsepeft" / "ir", test, "--limit", "10", "--batch-size", "4", "--json", report)
    assert result.returncode == 0, result.stderr
    saved = json.loads(report.read_text())
    assert saved["examples"] == 10 and len(saved["samples"]) == 10 and saved["engine"] == "openvino"
    assert saved["correct"] == sum(s["correct"] for s in saved["samples"])
    assert "exact match" in result.stdout


@pytest.mark.slow
def test_quickstart_resume_keeps_finished_runs(quickstart_run, monkeypatch):
    """A run killed during Shears: --resume trains Shears again and keeps every other finished run.

    In this process, with the bench left out (it is redone whole on resume, and tested above).
    """
    import shutil

    from sqft_ov.errors import SqftError
    from sqft_ov.quickstart import comparison

    out, _ = quickstart_run
    before = json.loads((out / "quickstart.json").read_text())
    kept = (out / "lora" / "deployments.json").read_bytes()
    shutil.rmtree(out / "shears" / "adapter")
    (out / "shears" / "deployments.json").unlink()
    monkeypatch.setattr(comparison, "_bench", lambda rows, plan, progress=None: ({"models": []}, {}))
    said: list[str] = []
    result = comparison.quickstart(out, fast=True, say=said.append, resume=True)
    assert "recipe LoRA (seed 42): finished before, kept" in said
    assert any(line.startswith("recipe Shears (seed 42): ") and "kept" not in line for line in said), said
    assert (out / "lora" / "deployments.json").read_bytes() == kept
    after = {r["method"]: r for r in result.table_rows()}
    for row in before["table"]:
        if row["method"] != "Shears":  # greedy decoding: the kept runs' and the bases' figures are the same
            assert after[row["method"]]["accuracy"] == row["accuracy"], row["method"]
    assert (out / "shears" / "adapter").is_dir() and (out / "shears" / "deployments.json").is_file()
    with pytest.raises(SqftError, match="--resume.*--overwrite"):
        comparison.quickstart(out, fast=True, resume=True, overwrite=True)


def test_quickstart_resume_refuses_another_plan(tmp_path):
    """Resuming with other options would mix runs trained two ways in one row: one clear error, nothing written."""
    from sqft_ov.errors import SqftError
    from sqft_ov.quickstart import comparison

    out = tmp_path / "qs"
    (out / "task").mkdir(parents=True)
    recorded = comparison.plan_record(comparison.QuickstartPlan.make(True), None)
    (out / comparison.PLAN_JSON).write_text(json.dumps(recorded))
    with pytest.raises(SqftError, match=r"another plan \(.*fast True -> False"):
        comparison.quickstart(out, fast=False, resume=True)
    with pytest.raises(SqftError, match=r"model None -> 'smollm2'"):
        comparison.quickstart(out, fast=True, resume=True, model="smollm2")
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "task"]
    assert json.loads((out / comparison.PLAN_JSON).read_text()) == recorded
    # More seeds: each is a run folder of its own, the new ones are trained. Fewer would drop finished runs.
    comparison.check_same_plan(out, comparison.QuickstartPlan.make(True, seeds=3), None)
    (out / comparison.PLAN_JSON).write_text(json.dumps({**recorded, "seeds": 2}))
    with pytest.raises(SqftError, match=r"seeds 2 -> 1"):
        comparison.check_same_plan(out, comparison.QuickstartPlan.make(True), None)


def test_a_resume_keeps_the_foundation_model_it_started_with(tmp_path):
    """plan.json records the foundation model's key: a run started on another one (an upgrade changed its
    configuration, or a release whose --fast used a weaker one) is refused, not tabled on two models."""
    from sqft_ov.quickstart import comparison
    from sqft_ov.quickstart.foundation import FoundationConfig

    out = tmp_path / "qs"
    out.mkdir()
    plan = comparison.QuickstartPlan.make(True)
    (out / comparison.PLAN_JSON).write_text(json.dumps(comparison.plan_record(plan, None, "older")))
    with pytest.raises(comparison.SqftError, match=f"foundation 'older' -> '{FoundationConfig().key}'"):
        comparison.check_same_plan(out, plan, None, FoundationConfig().key)
    (out / comparison.PLAN_JSON).write_text(json.dumps(comparison.plan_record(plan, None)))  # older plan.json
    comparison.check_same_plan(out, plan, None, FoundationConfig().key)


def _result(accuracies: dict[str, list[list[bool]]]):
    """A quickstart result from hand-written per-problem outcomes (no model, no floating-point kernel)."""
    from sqft_ov.quickstart.comparison import QuickstartPlan, QuickstartResult
    from sqft_ov.recipe import Deployment
    from sqft_ov.stages.evaluate import EvalReport

    rows = []
    for label, seeds in accuracies.items():
        for k, outcomes in enumerate(seeds):
            report = EvalReport("m", None, "pytorch", "d", len(outcomes), sum(outcomes), 0, None, 0, 0.0,
                                samples=[{"correct": c} for c in outcomes])
            method = "none" if "no FT" in label else "lora"
            rows.append(Deployment(label, method, Path("m"), None, None, merged=False, precision="fp32",
                                   sparsity=0.5, evaluation=report, seed=None if method == "none" else 42 + k))
    return QuickstartResult(Path("out"), QuickstartPlan.make(True), rows, {}, {}, 1.0)


def test_quickstart_says_when_the_reference_learned_nothing():
    """LoRA at or below an untuned base: no ratio divides by it, the table says why, and the run says so."""
    result = _result({"Foundation (dense, no FT)": [[True] * 2 + [False] * 8],
                      "Wanda 50 % (no FT)": [[True] + [False] * 9], "LoRA": [[False] * 10],
                      "QA-SparsePEFT": [[True] + [False] * 9]})
    problem = result.reference_problem()
    assert problem.startswith("LoRA, the reference row, scored 0.0%, not above the untuned Foundation (dense, no FT) "
                              "(20.0%): it learned nothing")
    rows = result.table_rows()
    assert all(r["relative_to_lora"] is None and r["difference_to_lora_ci95"] is None for r in rows)
    assert result.markdown().rstrip().endswith(f"Note: {problem}.")
    assert result.to_dict()["reference_problem"] == problem
    tie = _result({"Wanda 50 % (no FT)": [[True] + [False] * 9], "LoRA": [[False] * 9 + [True]]})
    assert "not above the untuned Wanda 50 % (no FT) (10.0%)" in tie.reference_problem()


def test_eval_bad_input(tmp_path, exported, sparse_models, trained, sft_data):
    no_reply = tmp_path / "chat.jsonl"  # an answer without `####` is scored as text; a row without one cannot be
    no_reply.write_text(json.dumps({"messages": [{"role": "user", "content": "2 + 2 ="}]}) + "\n")
    assert_one_line_error(sqft("eval", exported("llama", "int4"), no_reply), "row 1 has no assistant turn")
    assert_one_line_error(sqft("eval", exported("llama", "int4"), sft_data, "--metric", "bleu"), "--metric")
    assert_one_line_error(sqft("eval", tmp_path / "missing", sft_data), "does not exist")
    assert_one_line_error(sqft("eval", exported("llama", "int4"), sft_data, "--adapter", trained("lora"),
                               "--prompt-field", "question", "--response-field", "answer"), "OpenVINO IR")
    assert_one_line_error(sqft("eval", sparse_models["llama"], sft_data), "no field")
    assert_one_line_error(sqft("eval", sparse_models["llama"], sft_data, "--prompt-field", "question",
                               "--response-field", "answer", "--limit", "0"), "--limit")


def test_eval_pytorch_adapters(sparse_models, trained, sft_data):
    """Unmerged adapters of every kind evaluate in PyTorch; an NLS sub-adapter changes the model."""
    from sqft_ov.stages.evaluate import EvalConfig, evaluate

    for method, nls in (("lora", False), ("sparsepeft", True), ("qa-sparsepeft", False)):
        report = evaluate(sparse_models["llama"], sft_data, EvalConfig(adapter=trained(method, nls), limit=6,
                                                                      max_new_tokens=12, **FIELDS))
        assert report.engine == "pytorch" and report.examples == 6 and report.response_loss > 0


@pytest.mark.slow
def test_run_recipe_through_the_cli(tmp_path, sparse_models, workdir):
    task = write_task(tmp_path / "task", 64, 8)
    out = tmp_path / "sp"
    result = sqft("run", RECIPES / "sparsepeft.py", "--model", sparse_models["llama"], "--data", task["train"].parent,
                  "--out", out, "--nls", "--rank-space", "8,4", "--steps", "3", "--batch-size", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SparsePEFT + NLS" in result.stdout
    assert (out / "ir" / "openvino_model.xml").is_file() and (out / "sub_adapter.json").is_file()
    ranks = json.loads((out / "sub_adapter.json").read_text())["ranks"]
    assert set(ranks) <= {8, 4}
    from sqft_ov.stages.sparsify import deployed_sparsity

    assert deployed_sparsity(out / "ir") >= 0.5
    assert_one_line_error(sqft("run", RECIPES / "sparsepeft.py", "--model", sparse_models["llama"], "--data",
                               task["train"].parent, "--out", out), "already exists")
    helped = sqft("run", RECIPES / "qa_sparsepeft.py", "--help")
    assert helped.returncode == 0 and "--group-size" in helped.stdout and "--model" in helped.stdout
    assert_one_line_error(sqft("run", tmp_path / "nope.py", "--model", "m", "--data", "d"), "not a Python file")


def test_qa_sparsepeft_recipe_with_nls(tmp_path, sparse_models):
    from sqft_ov.recipes import qa_sparsepeft

    task = write_task(tmp_path / "task", 64, 8, validation=8)
    (row,) = qa_sparsepeft.recipe(model=sparse_models["llama"], data=task["train"].parent, out=tmp_path / "qa",
                                  nls=True, rank_space="8 4", steps=3, batch_size=4)
    assert row.label == "QA-SparsePEFT + NLS" and row.merged and row.sparsity >= 0.5
    assert row.evaluation.engine == "openvino" and row.evaluation.examples == 8
    # the sub-adapter was chosen on the validation problems, never on the test ones
    chosen = json.loads((tmp_path / "qa" / "sub_adapter.json").read_text())
    assert chosen["scored_on"] == str(task["validation"].absolute()) and chosen["evaluated"]
    splits = {name: {json.loads(line)["prompt"] for line in path.read_text().splitlines()} for name, path in task.items()}
    assert not (splits["validation"] & splits["test"]) and not (splits["validation"] & splits["train"])


def test_dense_qa_lora_row_is_qa_sparsepeft_on_the_dense_base(tmp_path, tiny_models):
    """The quickstart's Dense QA-LoRA row: the same recipe on a base without zeros, merged on its INT4 grid."""
    from sqft_ov.recipes import qa_sparsepeft

    task = write_task(tmp_path / "task", 64, 8)
    (row,) = qa_sparsepeft.recipe(model=tiny_models["llama"], data=task["train"].parent, out=tmp_path / "dense",
                                  steps=3, batch_size=4)
    # zeros only where a code sits on its group's zero point (12.8 % here), not Wanda's half
    assert row.merged and "int4" in row.precision and row.sparsity < 0.3
    assert row.evaluation.engine == "openvino" and row.evaluation.examples == 8


@pytest.mark.slow
def test_lora_recipe_post_training_rows_per_group_size_and_data_aware(tmp_path, sparse_models):
    """The PTQ rows users deploy instead of SQFT: data-free and AWQ + scale estimation (calibrated on the
    training prompts) at each group size; the quickstart asks for the QA rows' group size and 128."""
    from sqft_ov.quickstart.choices import ptq_options
    from sqft_ov.quickstart.comparison import QuickstartPlan
    from sqft_ov.recipes import lora

    task = write_task(tmp_path / "task", 64, 8)
    rows = lora.recipe(model=sparse_models["llama"], data=task["train"].parent, out=tmp_path / "lora", steps=3,
                       batch_size=4, ptq_group_sizes="32", ptq_data_aware=True)
    ptq = {r.label: r for r in rows if "INT4" in r.label}
    assert set(ptq) == {"LoRA, merged, INT4 PTQ g32", "LoRA, merged, INT4 AWQ + SE g32"}
    record = json.loads((tmp_path / "lora" / "ir-int4-g32-awq-se" / "sqft_export.json").read_text())["settings"]
    assert record["awq"] and record["scale_estimation"] and record["group_size"] == 32
    assert record["calibration"] == str(task["train"].absolute())
    assert all(r.evaluation.examples == 8 for r in ptq.values())
    assert ptq_options(QuickstartPlan.make(False, real_model=True)) == {"ptq_group_sizes": "32 128",
                                                                         "ptq_data_aware": True}
    assert ptq_options(QuickstartPlan.make(False))["ptq_group_sizes"] == "64 128"
    assert ptq_options(QuickstartPlan.make(True)) == {}


def test_unmerged_row_is_the_int4_base_ir_with_a_runtime_adapter(tmp_path, sparse_models):
    """The quickstart's SQFT-unmerged row: LoRA on the base snapped to the INT4 grid, deployed as that grid's IR
    plus the adapter openvino_genai applies at runtime, and scored through genai with it."""
    from sqft_ov.recipes import lora

    task = write_task(tmp_path / "task", 64, 8)
    rows = lora.recipe(model=sparse_models["llama"], data=task["train"].parent, out=tmp_path / "u", steps=3,
                       batch_size=4, int4_base=True, group_size=32, runtime_adapter=True, unmerged=False,
                       merged=False)
    assert [r.label for r in rows] == [lora.RUNTIME_ADAPTER]  # the quickstart's options: no PyTorch row to discard
    row = rows[0]
    assert not row.merged and (row.model / "adapter" / "adapter_model.safetensors").is_file()
    record = json.loads((row.model / "sqft_export.json").read_text())
    assert record["settings"]["group_size"] == 32 and record["runtime_adapter"]
    assert row.evaluation.engine == "openvino" and row.evaluation.runtime_adapter and row.sparsity >= 0.5


def test_seeded_rows_report_mean_and_spread(tmp_path):
    from sqft_ov.quickstart.comparison import QuickstartPlan, QuickstartResult, _recipe_runs
    from sqft_ov.quickstart.table_text import accuracy_text
    from sqft_ov.recipe import Deployment
    from sqft_ov.stages.evaluate import EvalReport

    def row(label, correct, seed=None, method="lora"):
        samples = [{"correct": i < correct} for i in range(10)]
        report = EvalReport("m", None, "openvino", "d", 10, correct, 0, None, 0, 1.0, samples)
        return Deployment(label, method, tmp_path, None, None, merged=label != "LoRA", precision="int4",
                          sparsity=0.5, evaluation=report, seed=seed)

    rows = [row("Dense (no FT)", 1, method="none"), row("LoRA", 8, 42), row("LoRA", 6, 43),
            row("QA-SparsePEFT", 7, 42, "qa-sparsepeft"), row("QA-SparsePEFT", 7, 43, "qa-sparsepeft")]
    def timed(label, median, low, high, ratio=None):
        return {"label": label, "ok": True, "size_bytes": 2**20,
                "stats": {"decode_tokens_per_s": {"median": median, "min": low, "max": high}},
                "ratios": {"decode_tokens_per_s": ratio} if ratio else None}

    bench = {"models": [timed("LoRA", 10.0, 9.0, 11.0),
                        timed("QA-SparsePEFT", 15.0, 14.0, 16.0, {"median": 1.5, "min": 1.4, "max": 1.6})]}
    result = QuickstartResult(tmp_path, QuickstartPlan.make(False, real_model=True), rows,
                              {"LoRA": 10.0, "QA-SparsePEFT": 15.0}, bench, 1.0)
    table = {r["method"]: r for r in result.table_rows()}
    assert table["LoRA"]["accuracy"] == pytest.approx(0.7) and table["LoRA"]["runs"] == 2
    assert (table["LoRA"]["accuracy_min"], table["LoRA"]["accuracy_max"]) == (0.6, 0.8)
    assert table["QA-SparsePEFT"]["relative_to_lora"] == pytest.approx(1.0)
    assert table["Dense (no FT)"]["merged"] == "-" and table["Dense (no FT)"]["runs"] == 1
    assert accuracy_text(table["LoRA"]) == "70.0% (60.0%–80.0%, 2 seeds)"
    low, high = table["LoRA"]["accuracy_ci95"]  # hierarchical bootstrap: the 2 seeds, then the 10 problems
    assert 0.3 < low < 0.7 < high <= 1.0 and table["Dense (no FT)"]["accuracy_ci95"][1] <= 0.4
    assert f"| LoRA | 70.0% (60.0%–80.0%, 2 seeds) | {low:.1%}–{high:.1%} | 100.0% | - |" in result.markdown()
    low, high = table["QA-SparsePEFT"]["difference_to_lora_ci95"]  # 7 vs 8 and 6 of the same problems
    assert -0.3 < low <= 0.0 <= high < 0.3
    low, high = table["QA-SparsePEFT"]["relative_to_lora_ci95"]  # the ratio's interval, on the same draws
    assert low <= 1.0 <= high and f"| 100.0% ({low:.1%}–{high:.1%}) |" in result.markdown()
    # decode: the bench's min–max over interleaved repeats and the paired per-repeat ratio to LoRA
    assert table["QA-SparsePEFT"]["decode_range"] == [14.0, 16.0]
    assert "| 15 (14–16) | 1.50 (1.40–1.60) |" in result.markdown() and "| 10 (9–11) | - |" in result.markdown()

    def seeds_of(plan):
        seeds = {}
        for name, _, options in _recipe_runs(plan):
            seeds.setdefault(name, []).append(options["seed"])
        return seeds

    real = seeds_of(QuickstartPlan.make(False, real_model=True, seeds=3))
    assert real["LoRA"] == real["QA-SparsePEFT"] == real["Dense QA-LoRA"] == [42, 43, 44] and real["Shears"] == [42]
    full = seeds_of(QuickstartPlan.make(False))  # the embedded full run: every fine-tuned row, 3 seeds
    assert len(full) == 10 and full["LoNAS"] == full["EFTNAS"] == [42]  # NAS rows: one seed, their own comparison
    assert all(seeds == [42, 43, 44] for name, seeds in full.items() if "NAS" not in name)
    assert all(seeds == [42] for seeds in seeds_of(QuickstartPlan.make(True)).values())
    assert "Dense QA-LoRA" not in seeds_of(QuickstartPlan.make(True))  # --fast stays a smoke test
    assert QuickstartPlan.make(True).seeds == 1 and QuickstartPlan.make(False, real_model=True).chat_template


def test_real_model_plan_trains_the_compared_rows_first_and_tables_them_in_order(tmp_path):
    """A stopped real-model run keeps paired LoRA / QA-SparsePEFT seeds; the table order does not depend on it."""
    from sqft_ov.quickstart.comparison import RUN_ROWS, _recipe_rows, _recipe_runs, run_folder, training_order
    from sqft_ov.quickstart.plan import ALL_LINEARS, QuickstartPlan
    from sqft_ov.recipe import Deployment

    plan = QuickstartPlan.make(False, real_model=True)
    runs = _recipe_runs(plan)
    assert all(options["target_modules"] == ALL_LINEARS for name, _, options in runs)  # every linear adapted
    order = [(name, options["seed"]) for name, _, options in training_order(plan, runs)]
    unmerged = "SQFT unmerged (INT4 base IR + runtime adapter)"
    assert order[:8] == [("LoRA", 42), ("QA-SparsePEFT", 42), ("Dense QA-LoRA", 42), (unmerged, 42), ("LoRA", 43),
                         ("QA-SparsePEFT", 43), ("Dense QA-LoRA", 43), (unmerged, 43)]
    assert sorted(order) == sorted((name, options["seed"]) for name, _, options in runs)
    assert training_order(QuickstartPlan.make(False), _recipe_runs(QuickstartPlan.make(False))) == \
        _recipe_runs(QuickstartPlan.make(False))  # the embedded run trains in the table's order
    assert "target_modules" not in _recipe_runs(QuickstartPlan.make(False))[0][2]  # there: each recipe's default

    for name, _, options in runs:  # every run finished before: --resume reads them back
        row = Deployment(name, "lora", tmp_path, None, None, True, "int4", 0.5, seed=options["seed"])
        (tmp_path / run_folder(name, options["seed"])).mkdir()
        (tmp_path / run_folder(name, options["seed"]) / RUN_ROWS).write_text(json.dumps([row.to_dict()]))
    said = []
    rows = _recipe_rows(plan, tmp_path, tmp_path, True, None, said.append, None)
    assert [(r.label, r.seed) for r in rows] == [(name, options["seed"]) for name, _, options in runs]
    assert said[0] == "recipe LoRA (seed 42): finished before, kept" and "QA-SparsePEFT (seed 42)" in said[1]


def test_learning_rates_are_chosen_on_validation_and_kept_on_resume(tmp_path, monkeypatch):
    """choose_on_validation: one run per learning rate scored on task/validation.jsonl, the best kept (ties: the
    smaller), every score in choices.json; a resumed run reads them back instead of training again."""
    from dataclasses import replace

    from sqft_ov.quickstart.choices import CHOICES_JSON, choose_on_validation
    from sqft_ov.quickstart.comparison import QuickstartPlan
    from sqft_ov.recipe import Deployment
    from sqft_ov.recipes import lora, qa_sparsepeft

    planted = {("lora", 1e-3): 0.5, ("lora", 3e-3): 0.7, ("qa", 1e-3): 0.6, ("qa", 3e-3): 0.6}
    calls = []

    def fake(kind):
        def recipe(out, lr, test, **options):
            calls.append((kind, lr, Path(test).name, options.get("merged")))
            return [Deployment(kind, kind, out, None, None, True, "int4", 0.5,
                               evaluation=_report(planted[kind, lr]))]
        return recipe

    monkeypatch.setattr(lora, "recipe", fake("lora"))
    monkeypatch.setattr(qa_sparsepeft, "recipe", fake("qa"))
    plan = replace(QuickstartPlan.make(True), lr_choices=(1e-3, 3e-3))
    chosen, record = choose_on_validation(plan, tmp_path, tmp_path / "sparse", resume=False, say=lambda line: None)
    assert (chosen.lr, chosen.qa_lr) == (3e-3, 1e-3)  # LoRA: the better one; QA-SparsePEFT: a tie, the smaller
    assert {c[2] for c in calls} == {"validation.jsonl"} and len(calls) == 4
    assert all(merged is False for kind, _, _, merged in calls if kind == "lora")  # unmerged LoRA is the score
    assert record == json.loads((tmp_path / CHOICES_JSON).read_text())
    assert record["scores"]["LoRA"] == {"0.001": 0.5, "0.003": 0.7} and record["split"] == "validation.jsonl"
    calls.clear()
    again, _ = choose_on_validation(plan, tmp_path, tmp_path / "sparse", resume=True, say=lambda line: None)
    assert (again.lr, again.qa_lr) == (3e-3, 1e-3) and not calls
    assert choose_on_validation(QuickstartPlan.make(True), tmp_path, tmp_path, False) == (QuickstartPlan.make(True), {})


def test_distillation_weight_is_chosen_on_validation_with_the_lora_choice_as_teacher(tmp_path, monkeypatch):
    """With distill_choices, QA-SparsePEFT at its chosen lr is trained once per weight with the chosen LoRA choice
    run as teacher and kept only if it beats the run without one on validation (a tie keeps no teacher)."""
    from dataclasses import replace

    from sqft_ov.quickstart.choices import choose_on_validation
    from sqft_ov.quickstart.comparison import QuickstartPlan
    from sqft_ov.quickstart.table_text import choices_text
    from sqft_ov.recipe import Deployment
    from sqft_ov.recipes import lora, qa_sparsepeft

    for distilled, expected in ((0.8, 1.0), (0.6, 0.0)):
        planted = {("lora", 1e-3): 0.5, ("lora", 3e-3): 0.7, ("qa", 1e-3, None): 0.6, ("qa", 3e-3, None): 0.5,
                   ("qa", 1e-3, 1.0): distilled}
        calls = []

        def fake(kind):
            def recipe(out, lr, test, teacher=None, distill_weight=None, **options):
                calls.append((kind, lr, teacher, distill_weight))
                score = planted[kind, lr] if kind == "lora" else planted[kind, lr, distill_weight]
                return [Deployment(kind, kind, out, None, None, True, "int4", 0.5, evaluation=_report(score))]
            return recipe

        monkeypatch.setattr(lora, "recipe", fake("lora"))
        monkeypatch.setattr(qa_sparsepeft, "recipe", fake("qa"))
        out = tmp_path / str(distilled)
        plan = replace(QuickstartPlan.make(True), lr_choices=(1e-3, 3e-3), distill_choices=(1.0,))
        chosen, record = choose_on_validation(plan, out, out / "sparse", resume=False, say=lambda line: None)
        assert (chosen.lr, chosen.qa_lr, chosen.qa_distill) == (3e-3, 1e-3, expected)
        assert calls[-1] == ("qa", 1e-3, out / "choose" / "lora-lr0.003" / "adapter", 1.0) and len(calls) == 5
        assert record["scores"]["QA-SparsePEFT distillation weight"] == {"0": 0.6, "1": distilled}
        assert ("distilled from the same seed's LoRA at weight 1" in choices_text(record)) == bool(expected)


def test_chosen_distillation_reaches_every_qa_row_with_its_seeds_lora_as_teacher(tmp_path, monkeypatch):
    from dataclasses import replace

    from sqft_ov.quickstart.comparison import RUN_ROWS, QuickstartPlan, _recipe_rows, run_folder
    from sqft_ov.quickstart.plan import QA_ROWS
    from sqft_ov.recipe import Deployment

    plan = replace(QuickstartPlan.make(False, real_model=True), qa_distill=1.0)
    seen = {}

    def recipe(out, teacher=None, distill_weight=None, seed=None, **options):
        seen[out.name] = (teacher, distill_weight)
        (out / "adapter").mkdir(parents=True)
        return [Deployment("x", "lora", out, None, None, True, "int4", 0.5)]

    import sqft_ov.quickstart.comparison as comparison

    runs = [(name, recipe, options) for name, _, options in comparison._recipe_runs(plan)]
    monkeypatch.setattr(comparison, "_recipe_runs", lambda plan: runs)
    _recipe_rows(plan, tmp_path, tmp_path, False, None, lambda line: None, lambda name, began: None)
    for name, _, options in runs:
        teacher, weight = seen[run_folder(name, options["seed"])]
        if name in QA_ROWS:
            assert teacher == tmp_path / run_folder("LoRA", options["seed"]) / "adapter" and weight == 1.0
            assert (tmp_path / run_folder("LoRA", options["seed"]) / RUN_ROWS).is_file()
        else:
            assert teacher is None and weight is None, name


def _report(accuracy: float):
    from sqft_ov.stages.evaluate import EvalReport

    correct = round(accuracy * 10)
    return EvalReport("m", None, "openvino", "validation.jsonl", 10, correct, 0, None, 0, 1.0,
                      [{"correct": i < correct} for i in range(10)])
