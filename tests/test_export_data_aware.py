"""Data-aware INT4 export (optimum-cli's --dataset, --awq, --scale-estimation, --gptq, --lora-correction, --ratio,
--backup-precision, --sensitivity-metric, --num-samples): each option reaches nncf.compress_weights, the source's
zeros survive what keeps them, what cannot work is one line before any conversion, and the record says what ran."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from sqft_ov.errors import ConfigError, ExportIntegrityError, SqftError
from sqft_ov.stages.export import ExportConfig, compress_ir, export, folder_zeros, verify_zeros
from sqft_ov.stages.export_data_aware import BACKUP_PRECISIONS, SENSITIVITY_METRICS, calibration_chunks, prefill_inputs

SAMPLES, TOKENS = 4, 32  # calibration kept small: the mechanics, not the accuracy


@pytest.fixture(scope="module")
def sparse(tmp_path_factory) -> Path:
    """A 50 % magnitude-sparse tiny Llama (no calibration needed to build it)."""
    from sqft_ov.quickstart.tiny import TinyModelConfig, build_tiny_model
    from sqft_ov.stages.sparsify import SparsityConfig, sparsify_folder

    root = tmp_path_factory.mktemp("data-aware")
    base = build_tiny_model(root / "tiny", TinyModelConfig())
    sparsify_folder(base, root / "sparse", SparsityConfig("magnitude", 0.5))
    return root / "sparse"


@pytest.fixture(scope="module")
def fp16_ir(sparse) -> Path:
    ir = sparse.parent / "fp16"
    export(sparse, ir, ExportConfig(weight_format="fp16"))
    return ir


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """nncf.compress_weights' keyword arguments, one dict per call; the real function still runs."""
    import nncf

    real, seen = nncf.compress_weights, []

    def recording(model, **kwargs):
        seen.append(kwargs)
        return real(model, **kwargs)

    monkeypatch.setattr(nncf, "compress_weights", recording)
    return seen


def chunks_for(ir: Path, calibration: Path, config: ExportConfig) -> list:
    from transformers import AutoTokenizer

    from sqft_ov.io.data import load_texts

    return calibration_chunks(AutoTokenizer.from_pretrained(ir), load_texts(calibration), config)


def test_option_values_are_nncf_and_optimum_cli_values():
    import nncf

    assert set(SENSITIVITY_METRICS) == {m.value for m in nncf.SensitivityMetric}
    assert set(BACKUP_PRECISIONS) == {"none", "int8_sym", "int8_asym"}  # optimum-cli's choices
    assert {nncf.BackupMode(v).value for v in BACKUP_PRECISIONS} == set(BACKUP_PRECISIONS)


def test_prefill_inputs_are_what_optimum_intel_collects(fp16_ir, calibration_txt):
    """The samples are the IR's inputs optimum-intel's calibration builder records from generate() (less its
    reset-state marker, which NNCF's default for a stateful model replaces)."""
    import numpy as np
    import openvino as ov
    from datasets import Dataset
    from optimum.intel import OVModelForCausalLM, OVQuantizer, OVWeightQuantizationConfig

    config = ExportConfig(weight_format="int4", awq=True, calibration=str(calibration_txt), num_samples=SAMPLES,
                          seq_len=TOKENS)
    chunks = chunks_for(fp16_ir, calibration_txt, config)
    ours = prefill_inputs(ov.Core().read_model(fp16_ir / "openvino_model.xml"), chunks)
    rows = Dataset.from_dict({"input_ids": [c[0].tolist() for c in chunks],
                              "attention_mask": [[1] * c.shape[1] for c in chunks]})
    model = OVModelForCausalLM.from_pretrained(str(fp16_ir), compile=False)
    built = OVQuantizer(model).dataset_builder.build_from_dataset(
        OVWeightQuantizationConfig(bits=4, num_samples=len(chunks)), rows)["model"]
    theirs = list(built.get_inference_data())
    assert len(ours) == len(theirs) == SAMPLES
    order = lambda sample: sample["input_ids"].tobytes()  # noqa: E731  (optimum samples in random order)
    for mine, other in zip(sorted(ours, key=order), sorted(theirs, key=order)):
        assert set(other) - set(mine) == {"nncf_reset_state"} and other["nncf_reset_state"] is True
        for name, value in mine.items():
            assert value.dtype == other[name].dtype and np.array_equal(value, other[name]), name


def test_awq_and_scale_estimation_export(sparse, calibration_txt, calls, tmp_path):
    """A real export: AWQ + scale estimation reach NNCF with the data, the IR is INT4, loads and generates, and
    every source zero is still zero."""
    import nncf
    import openvino as ov

    ir = tmp_path / "ir"
    report = export(sparse, ir, ExportConfig(weight_format="int4", group_size=64, awq=True, scale_estimation=True,
                                             calibration=str(calibration_txt), num_samples=SAMPLES, seq_len=TOKENS))
    (kwargs,) = calls
    assert kwargs["awq"] is True and kwargs["scale_estimation"] is True and kwargs["ratio"] == 1.0
    assert "gptq" not in kwargs and "lora_correction" not in kwargs
    assert isinstance(kwargs["dataset"], nncf.Dataset) and kwargs["subset_size"] == SAMPLES
    assert kwargs["mode"] == nncf.CompressWeightsMode.INT4_ASYM and kwargs["group_size"] == 64
    assert {w["storage"] for w in report.weights.values()} == {"u4", "u8"}  # INT4 layers, INT8 embeddings
    assert report.zeros_kept == report.source_zeros > 0
    record = json.loads((ir / "sqft_export.json").read_text())["settings"]
    expected = {"awq": True, "scale_estimation": True, "gptq": False, "lora_correction": False,
                "calibration": str(calibration_txt), "calibration_samples": SAMPLES, "calibration_tokens": TOKENS,
                "ratio": 1.0, "backup_precision": "int8_asym", "nncf_mode": "int4_asym"}
    assert {k: record[k] for k in expected} == expected
    model = ov.Core().read_model(ir / "openvino_model.xml")
    stamped = json.loads(model.get_rt_info(["sqft_ov", "provenance"]).astype(str))["settings"]
    assert {k: stamped[k] for k in expected} == expected
    constants = [op for op in model.get_ops() if op.get_type_name() == "Constant"]
    assert {op.get_output_element_type(0).get_type_name() for op in constants} >= {"u4", "u8"}
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(ir)("Ana buys 3 apples.", return_tensors="pt").input_ids
    out = OVModelForCausalLM.from_pretrained(str(ir)).generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4


CASES = {  # name: (options, what nncf.compress_weights must receive, whether the source zeros survive)
    "awq": (dict(awq=True), dict(awq=True), True),
    "scale-estimation": (dict(scale_estimation=True), dict(scale_estimation=True), True),
    "lora-correction": (dict(lora_correction=True), dict(lora_correction=True), True),
    "mixed": (dict(ratio=0.5, backup_precision="int8_sym", sensitivity_metric="mean_activation_magnitude"),
              dict(ratio=0.5, backup_mode="int8_sym", sensitivity_metric="mean_activation_magnitude"), True),
    "backup-none": (dict(ratio=0.5, backup_precision="none", awq=True), dict(backup_mode="none", awq=True), True),
    "gptq": (dict(gptq=True, num_samples=3), dict(gptq=True, subset_size=3), False),
}


SYM_TOO = ("awq", "scale-estimation", "lora-correction")  # the algorithms that set scales: sym and asym grids


@pytest.mark.parametrize("case,sym", [(c, False) for c in CASES] + [(c, True) for c in SYM_TOO],
                         ids=[c for c in CASES] + [f"{c}-sym" for c in SYM_TOO])
def test_each_option_reaches_nncf_and_zeros(case, sym, fp16_ir, sparse, calibration_txt, calls, tmp_path):
    """compress_ir on the uncompressed IR (the conversion is the same for every case): the option is in NNCF's
    call, and the IR's weights keep every source zero, except under GPTQ, which moves weights."""
    options, expected, keeps_zeros = CASES[case]
    config = ExportConfig(weight_format="int4", group_size=64, sym=sym, calibration=str(calibration_txt),
                          **{"num_samples": SAMPLES, "seq_len": TOKENS, **options})
    settings = compress_ir(fp16_ir / "openvino_model.xml", config, {}, into=tmp_path / "openvino_model.xml",
                           chunks=chunks_for(fp16_ir, calibration_txt, config))
    (kwargs,) = calls
    shown = {k: getattr(v, "value", v) for k, v in kwargs.items()}
    assert {k: shown[k] for k in expected} == expected
    assert kwargs["subset_size"] == config.num_samples == settings["calibration_samples"]
    assert all(settings[name] == bool(options.get(name)) for name in ("awq", "scale_estimation", "gptq",
                                                                      "lora_correction"))
    weights = verify_zeros(tmp_path, folder_zeros(sparse))
    lost = sum(w["source_zeros"] - w["zeros_kept"] for w in weights.values())
    assert (lost == 0) == keeps_zeros, f"{case}: {lost} source zeros lost"


def test_data_free_mixed_precision_takes_no_data(fp16_ir, calls, tmp_path):
    """--ratio below 1 without --dataset: NNCF ranks layers by weight error; no dataset, no algorithm is passed."""
    config = ExportConfig(weight_format="int4", group_size=64, ratio=0.5, backup_precision="none")
    settings = compress_ir(fp16_ir / "openvino_model.xml", config, {}, into=tmp_path / "openvino_model.xml")
    (kwargs,) = calls
    assert kwargs["ratio"] == 0.5 and kwargs["backup_mode"].value == "none"
    assert not {"dataset", "awq", "scale_estimation", "gptq", "lora_correction", "sensitivity_metric"} & set(kwargs)
    assert settings["sensitivity_metric"] == "weight_quantization_error" and "awq" not in settings


@pytest.mark.slow
def test_gptq_on_a_sparse_model_fails_the_zero_check(sparse, calibration_txt, tmp_path):
    with pytest.raises(ExportIntegrityError, match="source zeros became nonzero .*--gptq compensates"):
        export(sparse, tmp_path / "ir", ExportConfig(weight_format="int4", group_size=64, gptq=True,
                                                     calibration=str(calibration_txt), num_samples=SAMPLES,
                                                     seq_len=TOKENS))
    assert list(tmp_path.iterdir()) == []


REFUSED = {  # CLI options (after MODEL IR; {cal} is the calibration file): a fragment of the one-line error
    "awq-without-data": (["--awq"], "--awq needs calibration data: pass --dataset"),
    "several-without-data": (["--scale-estimation", "--gptq"], "--scale-estimation, --gptq need calibration data"),
    "int8": (["--weight-format", "int8", "--awq", "--dataset", "{cal}"], "--awq applies to --weight-format int4 only"),
    "int8-ratio": (["--weight-format", "int8", "--ratio", "0.8"], "--ratio applies to --weight-format int4 only"),
    "fp16-data": (["--weight-format", "fp16", "--dataset", "{cal}"], "--dataset is used by"),
    "w8a8-awq": (["--weight-format", "int8-w8a8", "--dataset", "{cal}", "--awq"], "--awq applies to"),
    "gptq-and-lora": (["--gptq", "--lora-correction", "--dataset", "{cal}"], "--gptq and --lora-correction exclude"),
    "ratio-range": (["--ratio", "1.5"], "--ratio must be between 0 and 1"),
    "backup-unknown": (["--backup-precision", "int4"], "unknown --backup-precision 'int4'"),
    "metric-unknown": (["--sensitivity-metric", "size", "--ratio", "0.5"], "unknown --sensitivity-metric"),
    "metric-no-ratio": (["--sensitivity-metric", "weight_quantization_error"], "with --ratio 1 every layer is INT4"),
    "metric-no-data": (["--sensitivity-metric", "hessian_input_activation", "--ratio", "0.5"],
                       "measures activations: pass --dataset"),
    "data-unused": (["--dataset", "{cal}"], "--dataset with --weight-format int4 is used by"),
    "no-samples": (["--awq", "--dataset", "{cal}", "--num-samples", "0"], "--num-samples must be >= 1"),
    "missing-data": (["--awq", "--dataset", "{missing}"], "does not exist"),
    "bad-text-field": (["--awq", "--dataset", "{cal}", "--text-field", "question"], "has no field question"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_before_any_conversion(case, sparse, calibration_txt, tmp_path, capsys, monkeypatch):
    import sqft_ov.stages.export as module

    def no_conversion(*_args, **_kwargs):
        raise AssertionError("converted before refusing")

    monkeypatch.setattr(module, "convert_folder", no_conversion)
    options, fragment = REFUSED[case]
    values = {"cal": calibration_txt, "missing": tmp_path / "missing.txt"}
    argv = ["export", sparse, tmp_path / "ir", *(str(o).format(**values) for o in options)]
    code, err = run_cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


def test_trained_grid_refuses_data_aware_options(sparse, calibration_txt, tmp_path):
    """A model merged onto a trained INT4 grid is written on that grid: nothing data-aware may re-quantize it."""
    import torch

    from sqft_ov.io.grid import Int4Grid

    merged = shutil.copytree(sparse, tmp_path / "merged")
    Int4Grid(sym=False, group_size=64, tensors={"model.layers.0.mlp.up_proj.weight": {"scale": torch.ones(1)}}
             ).save(merged)
    for options in (dict(awq=True, calibration=str(calibration_txt)), dict(ratio=0.5),
                    dict(backup_precision="int8_sym")):
        with pytest.raises(ConfigError, match="trained INT4 grid, whose codes are written as they are") as caught:
            export(merged, tmp_path / "ir", ExportConfig(weight_format="int4", **options))
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "ir").exists()


def test_help_lists_the_options():
    from typer.testing import CliRunner

    from sqft_ov.cli import app

    result = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "2000"}, prog_name="sqft-ov")
    assert result.exit_code == 0
    for flag in ("--dataset", "--awq", "--scale-estimation", "--gptq", "--lora-correction", "--ratio",
                 "--backup-precision", "--sensitivity-metric", "--num-samples"):
        assert flag in result.output, flag
    assert "int8_asym | int8_sym | none" in result.output and "mean_activation_magnitude" in result.output
    assert "data-aware int4" in result.output


def test_what_nncf_refuses_late_is_one_line(fp16_ir, calibration_txt, monkeypatch, tmp_path):
    """A refusal only NNCF can make (it depends on the model's graph) is a ConfigError, not a traceback."""
    import nncf

    def refuses(model, **kwargs):
        raise nncf.UnsupportedModelError("Transposed activations are not supported yet for the GPTQ algorithm")

    monkeypatch.setattr(nncf, "compress_weights", refuses)
    config = ExportConfig(weight_format="int4", gptq=True, calibration=str(calibration_txt), num_samples=1, seq_len=8)
    with pytest.raises(ConfigError, match="^NNCF refuses this compression of the model: Transposed activations"):
        compress_ir(fp16_ir / "openvino_model.xml", config, {}, into=tmp_path / "openvino_model.xml",
                    chunks=chunks_for(fp16_ir, calibration_txt, config))
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_ir_input_is_one_line():
    import openvino as ov
    import openvino.opset13 as ops

    param = ops.parameter([1, 4], name="token_type_ids")
    param.output(0).get_tensor().set_names({"token_type_ids"})
    model = ov.Model([ops.result(param)], [param], "odd")
    with pytest.raises(SqftError, match="data-aware INT4 fills the inputs .* this IR has token_type_ids"):
        prefill_inputs(model, [])


def test_lora_correction_is_refused_on_a_sparse_source(calibration_txt):
    """LoRA correction keeps W's zeros but adds dense low-rank branches: a sparse source would run dense, so the
    export fails (the check after the zero check); a dense source (a few zeros by chance) passes."""
    from sqft_ov.stages.export_data_aware import dense_branches_conflict

    config = ExportConfig(weight_format="int4", group_size=64, calibration=str(calibration_txt), lora_correction=True)
    sparse_weights = {"w": {"numel": 100, "source_zeros": 50}}
    assert "run dense" in dense_branches_conflict(config, sparse_weights)
    assert dense_branches_conflict(config, {"w": {"numel": 1000, "source_zeros": 3}}) == ""
    awq = ExportConfig(weight_format="int4", group_size=64, calibration=str(calibration_txt), awq=True)
    assert dense_branches_conflict(awq, sparse_weights) == ""
