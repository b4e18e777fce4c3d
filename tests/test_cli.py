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
    result = sqft("sparsify", model, sparse, "--method", "wanda", "--calibration", calibration_txt,
                  "--num-samples", "8", "--seq-len", "32")
    assert result.returncode == 0, result.stderr
    assert "50.00%" in result.stdout
    assert json.loads((sparse / "sparsity.json").read_text())["total_sparsity"] == pytest.approx(0.5)
    result = sqft("export", sparse, ir, "--weight-format", "int4", "--sym", "--group-size", "64", "--device", "CPU")
    assert result.returncode == 0, result.stderr
    assert "100.00%" in result.stdout  # source zeros kept
    record = json.loads((ir / "sqft_export.json").read_text())
    assert record["settings"]["nncf_mode"] == "int4_sym" and record["settings"]["group_size"] == 64
    # --overwrite replaces an existing output; without it nothing is touched (next test)
    result = sqft("export", sparse, ir, "--weight-format", "fp16", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert json.loads((ir / "sqft_export.json").read_text())["settings"]["weight_format"] == "fp16"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


@pytest.mark.parametrize("case", ["missing-model", "not-causal", "ratio", "n-ge-m", "empty-calibration",
                                  "unreadable-calibration", "group-size", "output-exists", "device"])
def test_bad_input(case, tmp_path, sparse_models, calibration_txt):
    out = tmp_path / "out"
    model = sparse_models["llama"]
    if case == "missing-model":
        result, expect = sqft("sparsify", tmp_path / "nope", out, "--method", "magnitude"), ("does not exist",)
    elif case == "not-causal":
        from transformers import BertConfig

        BertConfig(architectures=["BertForMaskedLM"]).save_pretrained(tmp_path / "bert")
        result, expect = sqft("export", tmp_path / "bert", out), ("not a causal language model",)
    elif case == "ratio":
        result, expect = sqft("sparsify", model, out, "--method", "magnitude", "--ratio", "1.2"), ("--ratio",)
    elif case == "n-ge-m":
        result, expect = sqft("sparsify", model, out, "--method", "magnitude", "--pattern", "4:4"), ("N must be",)
    elif case == "empty-calibration":
        (tmp_path / "empty.txt").write_text("\n")
        result = sqft("sparsify", model, out, "--calibration", tmp_path / "empty.txt")
        expect = ("no non-empty text",)
    elif case == "unreadable-calibration":
        (tmp_path / "bad.parquet").write_bytes(b"not a parquet file")
        result, expect = sqft("sparsify", model, out, "--calibration", tmp_path / "bad.parquet"), ("cannot read",)
    elif case == "group-size":
        result = sqft("export", model, out, "--weight-format", "int4", "--group-size", "96")
        expect = ("--group-size 96 does not divide", "--group-size-fallback")
    elif case == "output-exists":
        out.mkdir()
        (out / "keep.txt").write_text("precious")
        result, expect = sqft("export", model, out, "--weight-format", "fp16"), ("--overwrite",)
        assert (out / "keep.txt").read_text() == "precious" and len(list(out.iterdir())) == 1
    else:
        result, expect = sqft("export", model, out, "--device", "TPU"), ("not available here", "CPU")
    assert_one_line_error(result, *expect)
    if case != "output-exists":
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_killed_export_leaves_no_output(tmp_path, sparse_models):
    """SIGKILL mid-run: OUTPUT must not exist (only a hidden temporary folder may remain beside it)."""
    import signal
    import time

    out = tmp_path / "ir"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sqft_ov.cli", "export", str(sparse_models["llama"]), str(out),
                             "--weight-format", "int4", "--group-size", "64"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".ir.tmp-") for p in tmp_path.iterdir()):
        time.sleep(0.05)  # wait until the export has started writing
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the export finished before it could be killed"
    assert not out.exists()
