"""Model in, model out: the in-memory verbs give what the folder verbs give, with no folder in between.

finetune_model -> merge_model -> export_model on a model loaded once must train the same tensors, merge to the
same weights (a QA-SparsePEFT model carrying its INT4 grid) and write the same IR weights as finetune -> merge ->
export through folders, which are now thin wrappers over them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FIELDS, STEPS

from sqft_ov import (ExportConfig, FinetuneConfig, Int4Grid, export, export_model, finetune_model, merge,
                     merge_model, search, search_model)
from sqft_ov.errors import SqftError
from sqft_ov.io.checkpoint import load_causal_lm, model_fingerprint
from sqft_ov.io.grid import grid_of
from sqft_ov.io.ir import iter_ir_weights

TRAIN = dict(max_steps=STEPS, lr=5e-3, batch_size=4, save_steps=100, eval_split=0.2, seed=3, rank=8, **FIELDS)


def _ir_weights(ir) -> dict[str, np.ndarray]:
    return {w.name: w.values for w in iter_ir_weights(ir)}


@pytest.mark.slow
@pytest.mark.parametrize("method,fmt", [("qa-sparsepeft", "int4"), ("sparsepeft", "fp16")])
def test_in_memory_pipeline_equals_the_folder_pipeline(trained, sparse_models, sft_data, workdir, method, fmt):
    from safetensors.torch import load_file

    rows = [json.loads(line) for line in sft_data.read_text().splitlines()]  # data as a list of rows
    model, tokenizer = load_causal_lm(sparse_models["llama"], dtype=torch.float32)
    done = finetune_model(model, tokenizer, rows, FinetuneConfig(method=method, **TRAIN))
    assert done.steps == STEPS and len(done.train_loss) == STEPS and done.main_process

    folder_adapter = trained(method)  # the same run through finetune(folder, file, OUTPUT)
    on_disk = load_file(folder_adapter / "sqft_trainable.safetensors")
    assert set(on_disk) == set(done.tensors)
    for name, tensor in done.tensors.items():
        torch.testing.assert_close(tensor, on_disk[name], rtol=1e-5, atol=1e-6, msg=name)

    merged, report = merge_model(done.adapted)
    assert report.output is None and report.max_logit_diff is None
    assert report.base_zeros > 0 and report.base_zeros_kept == report.base_zeros
    folder_merged = workdir / f"memory-vs-folder-merged-{method}"
    folder_report = merge(folder_adapter, folder_merged, overwrite=True)
    assert (report.base_zeros, report.base_zeros_kept) == (folder_report.base_zeros, folder_report.base_zeros_kept)
    reloaded, _ = load_causal_lm(folder_merged, dtype=torch.float32)
    for name, weight in reloaded.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[name].to(weight.dtype), weight, rtol=1e-5, atol=1e-6,
                                   msg=name)
    grid = grid_of(merged)
    if method == "qa-sparsepeft":  # the merged model carries the grid the folder saves beside its weights
        saved = Int4Grid.read(folder_merged)
        assert (grid.sym, grid.group_size, grid.weights) == (saved.sym, saved.group_size, saved.weights) == \
            (False, 64, saved.weights)
    else:
        assert grid is None and Int4Grid.read(folder_merged) is None

    ir = workdir / f"memory-ir-{method}"
    exported = export_model(merged, tokenizer, ir, ExportConfig(weight_format=fmt))
    assert exported.source == "model in memory" and exported.zeros_kept == exported.source_zeros > 0
    assert exported.settings.get("trained_int4_grid", False) == (method == "qa-sparsepeft")
    folder_ir = workdir / f"folder-ir-{method}"
    export(folder_merged, folder_ir, ExportConfig(weight_format=fmt), overwrite=True)
    mine, theirs = _ir_weights(ir), _ir_weights(folder_ir)
    assert mine.keys() == theirs.keys() and len(mine) > 10
    for name in mine:  # the folder IR was converted from the checkpoint's dtype: equal up to fp16 rounding
        np.testing.assert_allclose(mine[name].astype(np.float32), theirs[name].astype(np.float32), rtol=2e-3,
                                   atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(mine[name] == 0, theirs[name] == 0)
    assert (ir / "openvino_tokenizer.xml").is_file() and (ir / "sqft_export.json").is_file()


@pytest.mark.slow
def test_nls_search_in_memory_equals_the_folder_search(trained, sparse_models, sft_data, workdir):
    rows = [json.loads(line) for line in sft_data.read_text().splitlines()]
    model, tokenizer = load_causal_lm(sparse_models["llama"], dtype=torch.float32)
    nls = dict(TRAIN, nls=True, rank_space=(16, 12, 8))
    done = finetune_model(model, tokenizer, rows, FinetuneConfig(method="sparsepeft", **nls))
    assert done.nls_history and len(done.nls_history) == STEPS
    validation = rows[:16]
    chosen = search_model(done.adapted, tokenizer, "hill-climb", validation, budget=6)
    (workdir / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in validation) + "\n")
    on_disk = search(trained("sparsepeft", nls=True), "hill-climb", workdir / "validation.jsonl", budget=6)
    assert chosen.ranks == on_disk.ranks and len(chosen.evaluated) == len(on_disk.evaluated)
    assert chosen.validation_loss == pytest.approx(on_disk.validation_loss, rel=1e-5)
    heuristic = search_model(done.adapted, tokenizer, "most-activated", history=done.nls_history)
    assert heuristic.ranks == search(trained("sparsepeft", nls=True), "most-activated").ranks
    with pytest.raises(SqftError, match="validation="):
        search_model(done.adapted, tokenizer, "hill-climb")
    merged, report = merge_model(done.adapted, chosen)
    assert report.ranks == chosen.ranks and report.base_zeros_kept == report.base_zeros > 0
    on_disk.save(workdir / "sub-memory-vs-folder.json", [16, 12, 8])
    folder = workdir / "merged-memory-vs-folder-nls"
    merge(trained("sparsepeft", nls=True), folder, workdir / "sub-memory-vs-folder.json", overwrite=True)
    reloaded, _ = load_causal_lm(folder, dtype=torch.float32)
    for name, weight in reloaded.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[name], weight, rtol=1e-5, atol=1e-6, msg=name)


def test_export_model_of_a_plain_model_and_its_refusals(sparse_models, workdir):
    model, tokenizer = load_causal_lm(sparse_models["qwen2"], dtype=torch.float32)
    ir = workdir / "memory-ir-plain"
    report = export_model(model, tokenizer, ir, ExportConfig(weight_format="int4", group_size=64))
    assert report.settings["nncf_mode"] == "int4_asym" and report.zeros_kept == report.source_zeros > 0
    with pytest.raises(SqftError, match="exists"):  # never overwritten without overwrite=True
        export_model(model, tokenizer, ir, ExportConfig(weight_format="int4", group_size=64))
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(SqftError, match="not finite"):
        export_model(model, tokenizer, workdir / "memory-ir-nan", ExportConfig(weight_format="fp16"))
    assert not (workdir / "memory-ir-nan").exists()


def test_in_memory_data_is_checked():
    from datasets import Dataset

    from sqft_ov.io.data import load_table

    table = Dataset.from_list([{"prompt": "a", "response": "b"}])
    assert load_table(table) is table
    assert load_table([{"prompt": "a", "response": "b"}]).column_names == ["prompt", "response"]
    for bad in ([], [1, 2]):
        with pytest.raises(SqftError, match="list of row dicts"):
            load_table(bad)


def test_fingerprint_is_cached_until_a_weight_file_changes(tiny_models, tmp_path, monkeypatch):
    import hashlib
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_models["llama"], folder)
    first = model_fingerprint(folder)
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    assert model_fingerprint(folder) == first and not calls  # cached: not hashed again
    weights = next(folder.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor's data
    weights.write_bytes(bytes(data))
    assert model_fingerprint(folder) != first and calls
