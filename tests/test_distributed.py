"""Several processes through the existing engines (issue 32): the same `sqft-ov finetune` under `accelerate
launch` trains what one process trains on the same global batch. No distribution code of sqft-ov's own.

On CPUs Accelerate runs several processes as DDP over gloo (its FSDP and DeepSpeed plugins need GPUs / XPUs;
an FSDP request on CPU is refused, tests/test_precision.py). The FSDP test needs two accelerators and is skipped
elsewhere: it has not run on this project's CPU-only CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ARGS = ["--nls", "--rank-space", "8,4", "--group-size", "64", "--prompt-field", "question", "--response-field", "answer",
        "--max-length", "64", "--max-steps", "4", "--lr", "5e-3", "--eval-split", "0", "--save-steps", "100", "--seed", "3"]


def _launch(launcher: list[str], method: str, sparse: Path, data: Path, out: Path,
            batch_size: int) -> dict[str, torch.Tensor]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "-m", "sqft_ov.cli", "finetune", str(sparse), str(data), str(out), "--method", method, *ARGS,
           "--batch-size", str(batch_size)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(out / "sqft_trainable.safetensors")


def _assert_same(single: dict, several: dict, method: str) -> None:
    """The same tensors up to the order of float additions (batch 4 vs 2 x 2).

    QA-SparsePEFT's adapters are NNCF's, kept in bfloat16 (NNCF 3.4's LoRA quantizers create them so): their
    gradients are bf16 sums whose rounding differs between the two batchings and AdamW amplifies it (measured
    ~3 % relative after 4 steps), so there the check is on the relative size of the difference; float32
    adapters (PEFT's, sparsepeft) must agree elementwise."""
    assert single.keys() == several.keys() and any("lora_B" in n for n in single)
    if method != "qa-sparsepeft":
        for name, tensor in single.items():
            # atol 1e-5: lora_B starts at zero, and AdamW's normalised steps turn float-order differences in its
            # near-zero gradients into ~1e-6 absolute (measured 1.8e-6 on a 2-core Xeon; relative norm 6e-7)
            torch.testing.assert_close(several[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
        return
    for kind in ("lora", "input_"):
        names = [n for n in single if n.rsplit(".", 1)[-1].startswith(kind)]
        assert names
        diff = sum(float(((several[n].float() - single[n].float()) ** 2).sum()) for n in names) ** 0.5
        size = sum(float((single[n].float() ** 2).sum()) for n in names) ** 0.5
        assert diff < 0.1 * size, (kind, diff / size)


@pytest.mark.slow
def test_two_cpu_processes_train_what_one_process_trains(sparse_models, sft_data, tmp_path):
    """2 DDP processes x batch 2 against 1 process x batch 4: SparsePEFT + NLS (the rank sampler too)."""
    single = _launch([sys.executable], "sparsepeft", sparse_models["llama"], sft_data, tmp_path / "single", 4)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    several = _launch(launcher, "sparsepeft", sparse_models["llama"], sft_data, tmp_path / "ddp", 2)
    record = json.loads((tmp_path / "ddp" / "sqft_adapter.json").read_text())
    assert record["steps"] == 4 and record["world_size"] == 2
    _assert_same(single, several, "sparsepeft")


def _accelerators() -> int:
    xpu = getattr(torch, "xpu", None)
    return max(torch.cuda.device_count(), xpu.device_count() if xpu is not None and xpu.is_available() else 0)


@pytest.mark.accelerator
@pytest.mark.skipif(_accelerators() < 2, reason="FSDP through Accelerate needs two GPUs / XPUs")
@pytest.mark.parametrize("method", ["sparsepeft", "qa-sparsepeft"])
def test_fsdp_trains_what_one_process_trains(sparse_models, sft_data, tmp_path, method):
    """FSDP2 over 2 accelerators, the trained tensors read from the gathered state dict (FULL_STATE_DICT)."""
    single = _launch([sys.executable], method, sparse_models["llama"], sft_data, tmp_path / "single", 4)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--use_fsdp", "--fsdp_version", "2",
                "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_state_dict_type", "FULL_STATE_DICT"]
    several = _launch(launcher, method, sparse_models["llama"], sft_data, tmp_path / "fsdp", 2)
    _assert_same(single, several, method)
