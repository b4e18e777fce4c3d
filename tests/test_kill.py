"""Kill drills: SIGKILL at set points of sparsify, finetune, merge and export (SQFT_OV_KILL_AT), then run again.

A killed run never leaves a half OUTPUT; the next run into the same OUTPUT removes the killed run's hidden
temporary folder (or puts a replaced OUTPUT back); a killed finetune continues with --resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def sqft(*args, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("SQFT_OV_KILL_AT", None)
    if kill_at:
        env["SQFT_OV_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "sqft_ov.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def killed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == -signal.SIGKILL, f"not killed (exit {result.returncode}):\n{result.stderr}"


def test_killed_sparsify(tmp_path, tiny_models, calibration_txt):
    out = tmp_path / "sparse"
    args = ["sparsify", tiny_models["llama"], out, "--dataset", calibration_txt, "--num-samples", "4",
            "--seq-len", "32"]
    for point in ("sparsify-block#2", "output-written"):  # mid-Wanda, and with OUTPUT whole in its temporary
        killed(sqft(*args, kill_at=point))
        assert not out.exists()
    left = hidden(tmp_path)  # each killed run's start removed the one before it: only the last one's is left
    assert len(left) == 1 and left[0].startswith(".sparse.tmp-"), left
    assert sqft(*args).returncode == 0
    assert hidden(tmp_path) == [], "the next run did not clean the killed runs' temporary folders"
    assert json.loads((out / "sparsity.json").read_text())["total_sparsity"] == pytest.approx(0.5)


@pytest.mark.slow
def test_killed_export_and_a_replacement_killed_between_its_renames(tmp_path, sparse_models, exported):
    import shutil

    out = tmp_path / "ir"
    args = ["export", sparse_models["llama"], out, "--weight-format", "fp16"]
    killed(sqft(*args, kill_at="export-converted"))
    assert not out.exists() and len(hidden(tmp_path)) == 1
    shutil.copytree(exported("llama", "int4"), out)  # a finished IR in OUTPUT ...
    first = (out / "sqft_export.json").read_bytes()
    # ... that --overwrite moves aside, then the new one in: killed in between, OUTPUT is briefly missing
    killed(sqft(*args, "--overwrite", kill_at="output-swapping"))
    assert not out.exists() and any(name.startswith(".ir.old-") for name in hidden(tmp_path))
    # the next run into it puts the complete old IR back first (so this one, without --overwrite, refuses)
    # and removes the killed runs' temporaries
    result = sqft(*args)
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (out / "sqft_export.json").read_bytes() == first and hidden(tmp_path) == []


def test_killed_merge(tmp_path, trained):
    adapter, out = trained("sparsepeft"), tmp_path / "merged"
    killed(sqft("merge", adapter, out, kill_at="merge-merged"))
    assert not out.exists()
    assert sqft("merge", adapter, out).returncode == 0
    assert hidden(tmp_path) == [] and (out / "model.safetensors").is_file()


def test_killed_finetune_resumes(tmp_path, sparse_models, sft_data):
    out = tmp_path / "adapter"
    args = ["finetune", sparse_models["llama"], sft_data, out, "--prompt-field", "question", "--response-field",
            "answer", "--max-length", "64", "--max-steps", "6", "--save-steps", "2", "--batch-size", "4",
            "--rank", "4", "--lr", "5e-3"]
    killed(sqft(*args, kill_at="finetune-step#5"))
    assert not out.exists()
    checkpoints = sorted(p.name for p in (tmp_path / ".adapter.run").iterdir())
    assert checkpoints[-1] == "checkpoint-4", checkpoints
    result = sqft(*args, "--resume")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "sqft_adapter.json").read_text())
    assert record["steps"] == 6 and len(record["step_seconds"]) == 2  # steps 5 and 6 only: it resumed
    assert hidden(tmp_path) == []  # checkpoints go once the adapter is written


def test_overwrite_replaces_whole_and_stale_temporaries_of_dead_processes_go(tmp_path):
    from sqft_ov.errors import SqftError
    from sqft_ov.io.output import atomic_output

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_output(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and hidden(tmp_path) == []

    with pytest.raises(SqftError, match="already exists"), atomic_output(out):
        pass
    with pytest.raises(ZeroDivisionError), atomic_output(out, overwrite=True) as tmp:
        (tmp / "half.txt").write_text("half")
        1 / 0  # any failure: the temporary goes, OUTPUT stays as it was
    assert [p.name for p in out.iterdir()] == ["new.txt"] and hidden(tmp_path) == []

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f".out.tmp-{dead}-abc").mkdir()  # a killed run's
    (tmp_path / f".out.tmp-{os.getppid()}-abc").mkdir()  # a live process's: another run, still writing
    with atomic_output(out, overwrite=True) as tmp:
        (tmp / "newer.txt").write_text("newer")
    assert hidden(tmp_path) == [f".out.tmp-{os.getppid()}-abc"]
