"""lm-evaluation-harness on an exported IR with sqft-ov's local task, offline, as the documented command runs it."""

import json
import os
import subprocess
import sys

import pytest

from sqft_ov.quickstart.lm_eval_tasks import FOLDER, sqft_data


def test_bundled_task_data_is_local():
    rows = sqft_data.load(version=1.0)["test"]  # lm-eval passes the task's metadata along
    assert len(rows) == 20 and all("####" in r["response"] for r in rows)


@pytest.mark.slow
def test_lm_eval_openvino_scores_an_exported_ir_offline(tmp_path, exported):
    pytest.importorskip("lm_eval")  # pip install "sqft-ov[lm-eval]" (the test extra has it)
    data = tmp_path / "mine.jsonl"  # the user's own file, through --metadata
    rows = [{"prompt": f"Question: What is {a} plus {a}?\nAnswer:", "response": f" {a} + {a} = {2 * a}. #### {2 * a}"}
            for a in (2, 3, 5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "openvino", "--model_args",
         f"pretrained={exported('llama', 'int4')}", "--device", "cpu", "--include_path", str(FOLDER),
         "--tasks", "sqft_arithmetic", "--metadata", json.dumps({"data": str(data)}), "--output_path",
         str(tmp_path / "out"), "--log_samples"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [report] = (tmp_path / "out").rglob("results_*.json")
    scores = json.loads(report.read_text())["results"]["sqft_arithmetic"]
    assert 0 <= scores["exact_match,final-answer"] <= 1
    [samples] = (tmp_path / "out").rglob("samples_sqft_arithmetic_*.jsonl")
    assert [json.loads(line)["target"] for line in samples.read_text().splitlines()] == ["4", "6", "10"]
