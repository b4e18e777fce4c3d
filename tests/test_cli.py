"""The CLI as users run it: real subprocesses, exit codes, one-line errors, nothing written on failure."""

import json
import os
import subprocess
import sys

import pytest


def sqft(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "sqft_ov.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_pipeline_through_the_cli(tmp_path, calibration_txt):
    model, sparse, ir = tmp_path / "m", tmp_path / "s", tmp_path / "ir"
    assert sqft("tiny-model", model, "--arch", "qwen2", "--layers", "1").returncode == 0
    result = sqft("sparsify", model, sparse, "--method", "wanda", "--dataset", calibration_txt,
                  "--num-samples", "8", "--seq-len", "32")
    assert result.returncode == 0, result.stderr
    assert "50.00%" in result.stdout
    assert json.loads((sparse / "sparsity.json").read_text())["total_sparsity"] == pytest.approx(0.5)
    result = sqft("export", sparse, ir, "--weight-format", "int4", "--sym", "--group-size", "64", "--device", "CPU")
    assert result.returncode == 0, result.stderr
    assert "100.00%" in result.stdout  # source zeros kept
    record = json.loads((ir / "sqft_export.json").read_text())
    assert record["settings"]["nncf_mode"] == "int4_sym" and record["settings"]["group_size"] == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


@pytest.mark.parametrize("case", ["output-exists", "ratio"])
def test_bad_input(case, tmp_path, sparse_models):
    """Through the real script: one line, exit 2, nothing written (tests/test_hostile.py has the whole corpus)."""
    out = tmp_path / "out"
    model = sparse_models["llama"]
    if case == "output-exists":
        out.mkdir()
        (out / "keep.txt").write_text("precious")
        result, expect = sqft("export", model, out, "--weight-format", "fp16"), ("--overwrite",)
        assert (out / "keep.txt").read_text() == "precious" and len(list(out.iterdir())) == 1
    else:
        result, expect = sqft("sparsify", model, out, "--method", "magnitude", "--ratio", "1.2"), ("--ratio",)
    assert_one_line_error(result, *expect)
    if case != "output-exists":
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
