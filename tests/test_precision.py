"""Memory options of finetune (issue 32): a bf16 / fp16 base with autocast, gradient checkpointing, --device,
and how a launcher's sharding request is checked. Several processes: tests/test_distributed.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FIELDS
from conftest import train as _train
from safetensors.torch import load_file

from sqft_ov import FinetuneConfig
from sqft_ov.errors import ConfigError
from sqft_ov.stages.merge import merge


@pytest.mark.parametrize("method,nls", [("qa-sparsepeft", True), ("sparsepeft", False)])
def test_bf16_with_checkpointing_merges_with_every_zero_and_on_the_grid(sparse_models, sft_data, tmp_path, method,
                                                                        nls):
    """The base held in bf16 and activations recomputed: the merge (in float32 from the base on disk) still
    keeps every zero, and a QA-SparsePEFT merge lands on the trained INT4 grid, which export writes unchanged."""
    from sqft_ov.io.checkpoint import read_tensor, safetensors_index
    from sqft_ov.io.ir import iter_ir_weights
    from sqft_ov.stages.export import ExportConfig, export

    adapter = tmp_path / "adapter"
    extra = dict(nls=True, rank_space=(8, 4)) if nls else dict(rank=8)
    result = _train(sparse_models["llama"], sft_data, adapter, method=method, precision="bf16", max_steps=8,
                    gradient_checkpointing=True, **extra, **FIELDS)
    record = json.loads((adapter / "sqft_adapter.json").read_text())
    assert (record["precision"], record["gradient_checkpointing"], record["device"]) == ("bf16", True, "cpu")
    assert np.mean(result.train_loss[-2:]) < np.mean(result.train_loss[:2]), result.train_loss
    trained = load_file(adapter / "sqft_trainable.safetensors")
    assert all(torch.isfinite(t).all() for t in trained.values())
    if method == "qa-sparsepeft":  # NNCF's INT4 ranges are float32 parameters; bf16 holds only the frozen base
        assert {t.dtype for n, t in trained.items() if n.endswith(("input_low", "_input_range_param_storage"))} == {
            torch.float32}
    merged = tmp_path / "merged"
    report = merge(adapter, merged)
    assert report.base_zeros > 0 and report.base_zeros_kept == report.base_zeros
    if method == "qa-sparsepeft":
        ir = tmp_path / "ir"
        exported = export(merged, ir, ExportConfig(weight_format="int4"))
        assert exported.zeros_kept == exported.source_zeros >= report.base_zeros
        index = safetensors_index(merged)
        quantized = [w for w in iter_ir_weights(ir) if w.storage == "u4"]
        assert quantized
        for w in quantized:  # on the grid: the IR's INT4 values are the merged weights (fp16 scales aside)
            source = read_tensor(index, w.name).float().numpy()
            np.testing.assert_allclose(w.values.astype(np.float32), source, rtol=2e-3, atol=1e-6)
            np.testing.assert_array_equal(w.values == 0, source == 0)


@pytest.mark.parametrize("method,nls", [("qa-sparsepeft", True), ("sparsepeft", False)])
def test_gradient_checkpointing_trains_the_same_tensors(sparse_models, sft_data, tmp_path, method, nls):
    """Recomputing activations must not change what is trained: for QA-SparsePEFT the recomputation re-enters
    NNCF's hook mode, else backward would see unquantized weights (torch's checkpoint check fails then)."""
    extra = dict(nls=True, rank_space=(8, 4)) if nls else dict(rank=8)
    runs = {}
    for checkpointing in (False, True):
        out = tmp_path / f"ckpt-{checkpointing}"
        _train(sparse_models["llama"], sft_data, out, method=method, max_steps=4, gradient_checkpointing=checkpointing,
               **extra, **FIELDS)
        runs[checkpointing] = load_file(out / "sqft_trainable.safetensors")
    assert runs[False].keys() == runs[True].keys()
    for name, tensor in runs[False].items():
        torch.testing.assert_close(runs[True][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(t, torch.zeros_like(t)) for n, t in runs[True].items() if "lora_B" in n)


def test_fp16_base_trains(sparse_models, sft_data, tmp_path):
    out = tmp_path / "fp16"
    result = _train(sparse_models["llama"], sft_data, out, method="sparsepeft", rank=8, precision="fp16", max_steps=3,
                    **FIELDS)
    assert json.loads((out / "sqft_adapter.json").read_text())["precision"] == "fp16"
    assert all(np.isfinite(result.train_loss))


def test_device_and_precision_errors(sparse_models, sft_data, tmp_path):
    from sqft_ov.io.device import available_torch_devices, torch_device

    with pytest.raises(ConfigError, match="unknown precision"):
        FinetuneConfig(precision="int8")
    with pytest.raises(ConfigError, match="unknown --device"):
        FinetuneConfig(device="tpu")
    assert torch_device("cpu") == "cpu" and torch_device("auto") in ("cuda", "xpu", "cpu")
    missing = [d for d, ok in available_torch_devices().items() if not ok]
    for device in missing:  # on this machine: names a device torch does not see, before anything is loaded
        with pytest.raises(ConfigError, match=f"sees no {device.upper()} device"):
            _train(sparse_models["llama"], sft_data, tmp_path / device, method="sparsepeft", rank=8, device=device,
                   **FIELDS)
        assert not (tmp_path / device).exists()


def test_fsdp_request_on_cpu_is_refused_not_run_as_ddp(sparse_models, sft_data, tmp_path, monkeypatch):
    """`accelerate launch --use_fsdp` on CPUs: Accelerate would run unsharded DDP; say so instead."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine Accelerate does shard")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="shards models only on GPUs"):
        _train(sparse_models["llama"], sft_data, tmp_path / "fsdp", method="lora", rank=8, max_steps=1, **FIELDS)
    assert not (tmp_path / "fsdp").exists()


def test_cli_precision_flags(sparse_models, sft_data, tmp_path):
    from typer.testing import CliRunner

    from sqft_ov.cli import app

    result = CliRunner().invoke(app, ["finetune", str(sparse_models["llama"]), str(sft_data), str(tmp_path / "a"),
                                      "--bf16", "--fp16", "--prompt-field", "question", "--response-field", "answer"])
    assert isinstance(result.exception, ConfigError) and "exclude each other" in str(result.exception)
    assert not (tmp_path / "a").exists()


def test_pytorch_eval_takes_a_torch_device(sparse_models, sft_data):
    """eval --device: OpenVINO's names for an IR; for a PyTorch model a torch device (CPU means cpu)."""
    from sqft_ov import EvalConfig, SFTFormat, evaluate

    fmt = SFTFormat(prompt_field="question", response_field="answer", max_length=64)
    report = evaluate(sparse_models["llama"], sft_data, EvalConfig(device="cpu", limit=2, max_new_tokens=4,
                                                                  data_format=fmt))
    assert report.engine == "pytorch" and report.examples == 2
    with pytest.raises(ConfigError, match="for PyTorch"):
        evaluate(sparse_models["llama"], sft_data, EvalConfig(device="GPU", limit=2, data_format=fmt))
