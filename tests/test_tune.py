"""sqft-ov tune: the grid is applied, outputs are compared, --apply reaches the loaders, bad input is refused.

No timing is asserted: the speed columns only have to exist and be positive.
"""

from __future__ import annotations

import json
import shutil

import pytest
from test_cli import assert_one_line_error, sqft

FAST = dict(prompt_tokens=8, new_tokens=6, repeats=2, warmup=0, probe_tokens=4, budget_minutes=10)


@pytest.fixture
def ir(exported, tmp_path):
    """A private copy of the INT4 IR: tune --apply writes into its folder."""
    path = tmp_path / "ir"
    shutil.copytree(exported("llama", "int4"), path)
    return path


def test_grid_is_applied_read_back_and_profiled(ir):
    import openvino as ov

    from sqft_ov.measure.tune import TuneConfig, tune
    from sqft_ov.measure.tune.space import default_grid, read_back

    grid = {"INFERENCE_NUM_THREADS": [{"INFERENCE_NUM_THREADS": "1"}],
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": [{"DYNAMIC_QUANTIZATION_GROUP_SIZE": v} for v in ("0", "32", "64")],
            "KV_CACHE_GROUP_SIZE": [{"KEY_CACHE_GROUP_SIZE": "16", "VALUE_CACHE_GROUP_SIZE": "16"}],
            "ENABLE_CPU_PINNING": [{"ENABLE_CPU_PINNING": "NO"}],
            "ATTENTION_BACKEND": [{"ATTENTION_BACKEND": "SDPA"}]}
    report = tune(ir, TuneConfig(**FAST, grid=grid, profile_steps=2))
    rows = {r["setting_text"]: r for r in report.rows}
    # 32 is what this CPU compiles by default: already the current configuration, so not a row
    assert report.current["applied"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "32"
    assert set(rows) == {"INFERENCE_NUM_THREADS=1", "DYNAMIC_QUANTIZATION_GROUP_SIZE=0",
                         "DYNAMIC_QUANTIZATION_GROUP_SIZE=64", "KV_CACHE_GROUP_SIZE=16", "ENABLE_CPU_PINNING=NO",
                         "ATTENTION_BACKEND=SDPA"}
    for row in rows.values():
        assert row["error"] is None, row
        assert row["applied"] == row["setting"], row  # read back from the compiled model
        assert row["decode_tokens_per_s"] > 0 and row["decode_ratio"]["median"] > 0
        assert row["max_logit_diff"] >= 0 and 0 <= row["top1_agreement"] <= 1
    assert rows["ATTENTION_BACKEND=SDPA"]["tokens_as_current"] == FAST["probe_tokens"]
    # independently of tune: compiling with a setting gives a model that reports it
    core = ov.Core()
    for setting in ({"INFERENCE_NUM_THREADS": "1"}, {"KEY_CACHE_GROUP_SIZE": "16", "VALUE_CACHE_GROUP_SIZE": "16"}):
        assert read_back(core.compile_model(ir / "openvino_model.xml", "CPU", setting), setting) == setting
    profile = report.profile["current"]
    fc = profile["fully_connected"]
    assert fc["count"] == 2 * 4 + 1  # qkv (fused) o gate+up (fused) down per layer, and lm_head
    assert fc["weight_bytes"] > 0 and profile["step_ms"] > 0 and profile["graph_ms"] > 0
    assert {"FullyConnectedCompressed"} <= {r["node_type"] for r in profile["by_node_type"]}
    assert all(r["x_bandwidth"] > 0 for r in profile["fully_connected_layers"])
    assert {"ATTENTION_BACKEND", "KV_CACHE_PRECISION", "INFERENCE_PRECISION_HINT", "NUM_STREAMS",
            "PERFORMANCE_HINT"} <= set(default_grid())


def test_setting_that_changes_outputs_is_flagged_and_never_chosen(ir):
    from sqft_ov.measure.tune import TuneConfig, tune
    from sqft_ov.measure.tune.probe import REFERENCE

    grid = {"KV_CACHE_PRECISION": [{"KV_CACHE_PRECISION": "u4"}], "exact": [dict(REFERENCE)]}
    report = tune(ir, TuneConfig(**FAST, grid=grid, max_logit_diff=1e-6, min_gain=-0.99, profile=False))
    rows = {r["setting_text"]: r for r in report.rows}
    u4 = rows["KV_CACHE_PRECISION=u4"]
    exact = next(r for r in report.rows if r["dimension"] == "exact")
    assert u4["max_logit_diff"] > 1e-6 and any(f.startswith("outputs change") for f in u4["flags"])
    assert exact["max_logit_diff"] == 0 and not exact["flags"]
    assert report.best["setting"] == dict(REFERENCE)  # with any gain allowed, the only unflagged setting wins
    assert report.rows[0] is not u4 and report.rows[-1]["setting_text"] == "KV_CACHE_PRECISION=u4"


def test_apply_reaches_optimum_and_genai(ir, monkeypatch):
    import openvino_genai

    from sqft_ov.io.runtime import open_llm_pipeline, open_ov_model, read_runtime_config
    from sqft_ov.measure.tune import apply

    report_file = ir.parent / "tune.json"
    result = sqft("tune", ir, "--property", "KV_CACHE_GROUP_SIZE=16", "--apply", "--min-gain", "-0.99",
                  "--max-logit-diff", "100", "--repeats", 2, "--warmup", 0, "--new-tokens", 6, "--prompt-tokens", 8,
                  "--no-profile", "--json", report_file)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "applied:" in result.stdout
    setting = {"KEY_CACHE_GROUP_SIZE": "16", "VALUE_CACHE_GROUP_SIZE": "16"}
    assert read_runtime_config(ir) == setting
    report = json.loads(report_file.read_text())
    assert report["best"]["setting"] == setting and report["applied"]["plain_loaders_apply"] == {
        "KEY_CACHE_GROUP_SIZE": True, "VALUE_CACHE_GROUP_SIZE": True}

    from optimum.intel import OVModelForCausalLM

    plain = OVModelForCausalLM.from_pretrained(ir)  # no ov_config: the plugin reads the IR's runtime options
    assert str(plain.request.get_compiled_model().get_property("KEY_CACHE_GROUP_SIZE")) == "16"

    # a genai-only option and one the plugin does not read from the IR: sqft-ov's loaders pass both
    written = apply(ir, {"ATTENTION_BACKEND": "SDPA", "INFERENCE_NUM_THREADS": "1"})
    assert written["plain_loaders_apply"]["INFERENCE_NUM_THREADS"] is False
    model = open_ov_model(ir)  # OVModelForCausalLM must not receive ATTENTION_BACKEND
    compiled = model.request.get_compiled_model()
    assert str(compiled.get_property("INFERENCE_NUM_THREADS")) == "1"
    assert str(compiled.get_property("VALUE_CACHE_GROUP_SIZE")) == "16"
    assert len(open_llm_pipeline(ir).generate("one two", max_new_tokens=3)) > 0
    seen = {}
    monkeypatch.setattr(openvino_genai, "LLMPipeline", lambda path, device, **props: seen.update(props))
    open_llm_pipeline(ir)
    assert seen == {**setting, "ATTENTION_BACKEND": "SDPA", "INFERENCE_NUM_THREADS": "1"}


def test_invalid_input_is_a_clear_error(ir, tiny_models, tmp_path):
    cases = [
        (("--property", "INFERENCE_PRECISION_HINT=f8"), ("INFERENCE_PRECISION_HINT=f8", "Supported values")),
        (("--property", "KV_CACHE_PRECISION=u8,q7"), ("KV_CACHE_PRECISION=q7",)),
        (("--property", "NO_SUCH_PROPERTY=1"), ("NO_SUCH_PROPERTY is not a property", "ATTENTION_BACKEND")),
        (("--property", "ATTENTION_BACKEND=FAST"), ("ATTENTION_BACKEND=FAST", "PA, SDPA")),
        (("--property", "DYNAMIC_QUANTIZATION_GROUP_SIZE=-3"), ("non-negative",)),
        (("--property", "INFERENCE_NUM_THREADS"), ("KEY=VALUE",)),
        (("--budget-minutes", "0"), ("--budget-minutes",)),
        (("--export-grid",), ("is an IR",)),
    ]
    for args, fragments in cases:
        assert_one_line_error(sqft("tune", ir, *args, "--no-profile"), *fragments)
    assert_one_line_error(sqft("tune", tiny_models["llama"]), "not an OpenVINO IR folder", "--export-grid")
    assert_one_line_error(sqft("tune", tmp_path / "missing"), "not an OpenVINO IR folder")
    assert_one_line_error(sqft("tune", tiny_models["llama"], "--export-grid", "--apply"), "--apply")
    assert_one_line_error(sqft("tune", tiny_models["llama"], "--export-grid", "--modes", "sym fancy"), "fancy")
    (tmp_path / "report.json").write_text("{}")
    assert_one_line_error(sqft("tune", ir, "--json", tmp_path / "report.json"), "--overwrite")


@pytest.mark.slow
def test_export_grid_exports_every_point_and_times_them(tiny_models, tmp_path):
    import openvino as ov

    out = tmp_path / "grid"
    result = sqft("tune", tiny_models["llama"], "--export-grid", "--out", out, "--groups", "-1,64", "--groups", "96",
                  "--modes", "sym", "--embeddings", "int8,int4", "--repeats", 2, "--warmup", 0,
                  "--new-tokens", 6, "--prompt-tokens", 8)
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads((out / "export_grid.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {f"int4-{g}-sym-emb-{e}" for g in ("channel", "g64", "g96") for e in ("int8", "int4")}
    for g in ("g96",):  # 96 does not divide the hidden size 128: reported, not exported
        assert all(rows[f"int4-{g}-sym-emb-{e}"]["error"] for e in ("int8", "int4"))
        assert not (out / f"int4-{g}-sym-emb-int8").exists()
    built = [r for r in report["rows"] if r["error"] is None]
    assert len(built) == 4 and report["baseline"] == "int4-channel-sym-emb-int8"
    for row in built:
        assert row["decode_tokens_per_s"] > 0 and row["max_logit_diff"] >= 0 and row["size_bytes"] > 0
        model = ov.Core().read_model(out / row["name"] / "openvino_model.xml")
        constants = {op.get_friendly_name(): op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"}
        embed = next(op for name, op in constants.items() if "embed_tokens" in name and op.get_element_type().bitwidth <= 8
                     and op.get_output_partial_shape(0)[0].get_length() == 1024)
        assert embed.get_element_type().bitwidth == (4 if row["embeddings"] == "int4" else 8), row["name"]
        q_proj = next(op for name, op in constants.items() if "layers.0.self_attn.q_proj" in name
                      and op.get_element_type().bitwidth == 4)  # fused with k and v, as export writes it
        shape = [d.get_length() for d in q_proj.get_output_partial_shape(0)]
        assert shape[1:] == ([128] if row["group_size"] == -1 else [128 // 64, 64]), (row["name"], shape)
        assert row["settings"]["fused_projections"].startswith("10 MatMuls into 4"), row["name"]
    assert (out / "fp16" / "openvino_model.xml").is_file()
    assert_one_line_error(sqft("tune", tiny_models["llama"], "--export-grid", "--out", out), "--overwrite")


def test_budget_runs_the_first_batch_and_lists_the_rest_as_not_measured():
    import time

    from sqft_ov.measure.tune.search import in_batches

    rows = [{"error": None} for _ in range(5)]
    seen = []
    done, _ = in_batches(rows, 2, time.monotonic() - 1, lambda batch, number: seen.append((len(batch), number)))
    assert seen == [(2, 1)] and done == 1
    assert [r["error"] is None for r in rows] == [True, True, False, False, False]
    assert all("budget" in r["error"] for r in rows[2:])
    rows = [{"error": None} for _ in range(5)]
    assert in_batches(rows, 2, time.monotonic() + 600, lambda batch, number: None)[0] == 3
    assert all(r["error"] is None for r in rows)
