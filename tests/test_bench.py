"""sqft-ov bench: statistics on synthetic timings, report fields, engines, failures. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sqft_ov.errors import SqftError
from sqft_ov.measure.bench.report import markdown, plot_png, rows
from sqft_ov.measure.bench.runner import METRICS, BenchConfig, _summarize_entry
from sqft_ov.measure.bench.stats import paired_ratios, summarize

REPEATS = 3
NEW_TOKENS = 6


def test_summarize_on_known_values():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["q1"], s["q3"], s["iqr"], s["min"], s["max"], s["n"]) == (3.0, 2.0, 4.0, 2.0, 1.0, 5.0, 5)
    s = summarize([1.0, 2.0, 3.0, 4.0])  # linear interpolation between order statistics, like numpy
    assert (s["median"], s["q1"], s["q3"]) == (2.5, 1.75, 3.25)
    assert summarize([7.0])["iqr"] == 0.0
    with pytest.raises(ValueError):
        summarize([])


def test_paired_ratios_cancel_a_drift_that_medians_keep():
    # The machine slows down 2x half-way; model B is always 1.25x faster than the baseline in the same round.
    drift = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    baseline = [10.0 * d for d in drift]
    faster = [12.5 * d for d in drift]
    ratios = paired_ratios(faster, baseline)
    assert ratios == pytest.approx([1.25] * 6)
    assert summarize(ratios)["iqr"] == pytest.approx(0.0)
    assert summarize(faster)["iqr"] > 3  # the unpaired figures carry the drift
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])


def _synthetic_entry(label: str, decode: list[float], bytes_per_token: int) -> dict:
    runs = [{"ttft_s": 0.01, "decode_s": (NEW_TOKENS - 1) / d, "decode_steps": NEW_TOKENS - 1,
             "new_tokens": NEW_TOKENS, "total_s": 0.2, "prompt_tokens": 32, "tpot_s": 1 / d,
             "decode_tokens_per_s": d, "prefill_tokens_per_s": 3200.0} for d in decode]
    return {"label": label, "path": f"/x/{label}", "adapter": None, "error": None, "runs": runs,
            "engine": "openvino-genai", "load_seconds": 1.0, "peak_rss_mib": 100.0, "size_bytes": 2**20,
            "weight_bytes_per_token": bytes_per_token, "fc_primitives": {"brgemm_avx512_sparse_I8": 2, "gemm": 1}}


def test_entry_statistics_and_report_rendering():
    bandwidth = summarize([20.0, 25.0])
    base_copy = _synthetic_entry("base", [10.0, 20.0, 30.0], 10**9)
    base = _summarize_entry(_synthetic_entry("base", [10.0, 20.0, 30.0], 10**9), base_copy, bandwidth)
    fast = _summarize_entry(_synthetic_entry("fast", [20.0, 40.0, 60.0], 10**8), base_copy, bandwidth)
    assert fast["ratios"]["decode_tokens_per_s"]["per_repeat"] == pytest.approx([2.0, 2.0, 2.0])
    assert fast["ratios"]["prefill_tokens_per_s"]["median"] == pytest.approx(1.0)
    assert fast["stats"]["decode_tokens_per_s"]["median"] == 40.0
    assert set(fast["stats"]) == set(METRICS)
    assert fast["weight_gb_per_s"] == pytest.approx(4.0)  # 1e8 bytes x 40 tokens/s
    assert fast["bandwidth_share"] == pytest.approx(4.0 / 25.0)
    assert fast["sparse_decompression_engaged"] is True
    failed = _summarize_entry({"label": "broken", "error": "no such model", "runs": []}, base_copy, bandwidth)
    assert failed["ok"] is False
    report = {"models": [base, fast, failed], "baseline": "base", "bandwidth": bandwidth,
              "config": {"device": "CPU", "prompt_tokens": 32, "new_tokens": NEW_TOKENS, "repeats": 3, "warmup": 1,
                         "ir_properties": {"A": "1"}},
              "machine": {"cpu": "test cpu", "usable_cores": 2, "physical_cores": 2, "amx": False, "memory_gib": 8,
                          "load_average_start": [0.1], "load_average_end": [0.2]},
              "versions": {"openvino": "x"}}
    speed, resources = rows(report)
    assert [r[0] for r in speed] == ["base", "fast", "broken"] and speed[2][1] == "failed"
    assert speed[1][2] == "40.0 [30.0-50.0]" and speed[1][3] == "2.00 [2.00-2.00]"
    assert len(resources) == 2 and "sparse engaged" in resources[1][-1]
    text = markdown(report)
    assert "| fast |" in text and "no such model" in text and "test cpu" in text and "A=1" in text
    assert plot_png(report)[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_refuses_bad_values():
    for bad in (dict(repeats=0), dict(new_tokens=1), dict(prompt_tokens=0), dict(warmup=-1), dict(sparse_rate=1.5),
                dict(torch_dtype="int3")):
        with pytest.raises(SqftError):
            BenchConfig(**bad)


def test_ir_weight_bytes_count_every_linear_once(tiny_models, exported):
    import torch
    from transformers import AutoModelForCausalLM

    from sqft_ov.measure.bench.worker import ir_weight_bytes_per_token, torch_weight_bytes_per_token

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32)
    linear = {m.weight.data_ptr(): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    fp16 = ir_weight_bytes_per_token(exported("llama", "fp16") / "openvino_model.xml")
    assert fp16 == pytest.approx(2 * sum(linear.values()), rel=0.01)
    int4 = ir_weight_bytes_per_token(exported("llama", "int4") / "openvino_model.xml")
    assert fp16 / 4.5 < int4 < fp16 / 2  # 4-bit codes plus per-group scales / zero points; INT8 lm_head
    embedding = model.get_input_embeddings().weight
    params = {p.data_ptr(): p.numel() * 4 for p in [*model.parameters(), *model.buffers()]}
    expected = sum(params.values()) - (0 if model.config.tie_word_embeddings else embedding.numel() * 4)
    assert torch_weight_bytes_per_token(model) == expected


def _cli(*args, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "sqft_ov.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=900)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def bench_run(exported, sparse_models, trained, tmp_path_factory):
    """One `sqft-ov bench` over two IRs, PyTorch with two kinds of adapter, and two models that cannot run."""
    out = tmp_path_factory.mktemp("bench")
    broken = out / "broken-ir"
    broken.mkdir()
    (broken / "openvino_model.xml").write_text("<net>not an IR</net>")  # whole files, but no model the runtime reads
    (broken / "openvino_model.bin").write_bytes(b"")
    (broken / "config.json").write_text("{}")
    models = [exported("llama", "int4"), exported("llama", "fp16"), sparse_models["llama"], sparse_models["llama"],
              broken, sparse_models["llama"]]
    adapters = [trained("sparsepeft"), trained("lora"), trained("qa-sparsepeft")]
    proc = _cli("bench", *models, *[a for adapter in adapters for a in ("--adapter", adapter)],
                "--repeats", REPEATS, "--warmup", 1, "--new-tokens", NEW_TOKENS, "--prompt-tokens", 12,
                "--bandwidth-gib", 0.05, "--property", "INFERENCE_PRECISION_HINT=f32", "--json", out / "r.json",
                "--markdown", out / "r.md", "--plot", out / "r.png", check_rc=1)  # 1: some models failed
    return proc, out, json.loads((out / "r.json").read_text())


def test_bench_report_has_every_field(bench_run, exported):
    proc, out, report = bench_run
    assert [m["label"] for m in report["models"]] == [
        exported("llama", "int4").name, exported("llama", "fp16").name, "sparse-llama+adapter-sparsepeft-fixed",
        "sparse-llama+adapter-lora-fixed", "broken-ir", "sparse-llama+adapter-qa-sparsepeft-fixed"]
    assert report["baseline"] == report["models"][0]["label"]
    assert report["bandwidth"]["n"] == 10 and report["bandwidth"]["max"] > 0
    assert {"cpu", "usable_cores", "amx", "load_average_start", "load_average_end"} <= set(report["machine"])
    assert report["config"]["ir_properties"] == {"INFERENCE_PRECISION_HINT": "f32"}
    ok = [m for m in report["models"] if m["ok"]]
    assert len(ok) == 4
    for m in ok:
        assert len(m["runs"]) == REPEATS
        for run in m["runs"]:
            assert run["new_tokens"] == NEW_TOKENS and run["decode_steps"] == NEW_TOKENS - 1
            assert run["prompt_tokens"] == 12
            assert all(run[k] > 0 for k in METRICS)
        for key in ("load_seconds", "peak_rss_mib", "size_bytes", "weight_bytes_per_token", "weight_gb_per_s",
                    "bandwidth_share"):
            assert m[key] > 0, key
        assert set(m["stats"]) == set(METRICS) and m["stats"]["decode_tokens_per_s"]["n"] == REPEATS
        assert len(m["ratios"]["decode_tokens_per_s"]["per_repeat"]) == REPEATS
    assert ok[0]["ratios"]["decode_tokens_per_s"]["per_repeat"] == [1.0] * REPEATS  # the baseline against itself
    assert [m["engine"] for m in ok] == ["openvino-genai", "openvino-genai", "pytorch", "pytorch"]
    for ir in ok[:2]:
        assert sum(ir["fc_primitives"].values()) == 2 * 4 + 1  # qkv (fused) o gate+up (fused) down per block, lm_head
        assert ir["sparse_decompression_engaged"] is False
    assert ok[2]["fc_primitives"] is None and ok[2]["torch_dtype"] == "float32"
    assert ok[0]["size_bytes"] < ok[1]["size_bytes"]
    assert ok[0]["weight_bytes_per_token"] < ok[1]["weight_bytes_per_token"]
    assert (out / "r.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "r.md").read_text()
    assert all(m["label"] in md for m in report["models"])


def test_bench_reports_failed_models_and_runs_the_others(bench_run):
    proc, _, report = bench_run
    broken, qa = report["models"][4], report["models"][5]
    assert not broken["ok"] and "openvino-genai" in broken["error"] and "optimum-intel" in broken["error"]
    assert not qa["ok"] and "merge" in qa["error"]
    assert "failed: broken-ir" in proc.stderr and "sqft-ov bench: speed" in proc.stdout


def test_unmerged_sparsepeft_runs_the_masked_forward(trained, sparse_models):
    """The PyTorch path of a SparsePEFT adapter is the trained model (masked update), not plain PEFT LoRA."""
    import torch

    from sqft_ov import load_adapted
    from sqft_ov.measure.bench.worker import _load_torch

    spec = {"path": str(sparse_models["llama"]), "adapter": str(trained("sparsepeft")), "torch_dtype": "float32"}
    model, _ = _load_torch(spec)
    reference, _, _ = load_adapted(trained("sparsepeft"))
    ids = torch.arange(3, 20)[None]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference.model(ids).logits)


def test_ir_without_genai_falls_back_to_optimum(exported, monkeypatch):
    from sqft_ov.measure.bench import worker

    def refuse(spec):
        raise RuntimeError("genai cannot load this")

    monkeypatch.setattr(worker, "GenaiEngine", refuse)
    spec = {"path": str(exported("llama", "int4")), "device": "CPU", "properties": {}, "new_tokens": NEW_TOKENS,
            "prompt_tokens": 8}
    engine, facts = worker.load_engine(spec)
    assert engine.name == "optimum-intel" and facts["fallback_reason"] == "RuntimeError: genai cannot load this"
    run = engine.generate(list(range(5, 13)))
    assert run["new_tokens"] == NEW_TOKENS and run["decode_steps"] == NEW_TOKENS - 1 and run["ttft_s"] > 0


def test_bench_refuses_bad_input(exported, tmp_path):
    import openvino as ov

    ir = exported("llama", "int4")
    absent = next(d for d in ("GPU", "NPU", "GNA") if d not in ov.Core().available_devices)
    proc = _cli("bench", ir, "--device", absent, check_rc=2)
    assert f"device {absent!r} is not available here" in proc.stderr and "CPU" in proc.stderr
    assert "--baseline 3" in _cli("bench", ir, ir, "--baseline", 3, check_rc=2).stderr
    assert "KEY=VALUE" in _cli("bench", ir, "--property", "NOVALUE", check_rc=2).stderr
    assert "--adapter" in _cli("bench", ir, "--adapter", tmp_path, check_rc=2).stderr
    existing = tmp_path / "r.json"
    existing.write_text("keep")
    assert "--overwrite" in _cli("bench", ir, "--json", existing, check_rc=2).stderr
    assert existing.read_text() == "keep"


def test_invalid_property_value_is_reported(exported, tmp_path):
    proc = _cli("bench", exported("llama", "int4"), "--property", "INFERENCE_NUM_THREADS=many", "--repeats", 1,
                "--new-tokens", 2, "--bandwidth-gib", 0, "--json", tmp_path / "r.json", check_rc=1)
    entry = json.loads((tmp_path / "r.json").read_text())["models"][0]
    assert not entry["ok"] and "INFERENCE_NUM_THREADS" in entry["error"] + proc.stderr


def test_bandwidth_reads_really_happen():
    from sqft_ov.measure.bench.machine import read_bandwidth

    speeds = read_bandwidth(gib=0.02, passes=2)
    assert len(speeds) == 2 and all(np.isfinite(s) and s > 0 for s in speeds)
