"""Hugging Face Hub IDs as MODEL and data, without a network: the download is faked, offline is the user's own."""

import json
import os
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, sqft

from sqft_ov.errors import SqftError
from sqft_ov.io.hub import MODEL_FILES, is_hub_dataset, is_hub_model


@pytest.fixture
def fake_hub(monkeypatch, tiny_models):
    """snapshot_download answered from the tiny llama folder; the calls it got are recorded."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns, **kwargs})
        return str(tiny_models["llama"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


@pytest.fixture
def fake_datasets(monkeypatch):
    """datasets.load_dataset answered with a few lines of text; the calls it got are recorded."""
    import datasets

    from sqft_ov.quickstart.tiny import sample_corpus

    calls = []

    def load_dataset(path, *args, split=None, **kwargs):
        calls.append({"path": path, "split": split, "args": args, **kwargs})
        return datasets.Dataset.from_dict({"text": sample_corpus(64, seed=1)})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_ids_are_told_from_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for text in ("Qwen/Qwen2.5-0.5B-Instruct", "org/name@v1.0", "org/name@refs/pr/3"):
        assert is_hub_model(text) and is_hub_model(Path(text)), text
    for text in ("./org/name", "/org/name", "~/org/name", "a/b/c", "org/model.gguf", "smollm2", "runs/sparse",
                 str(tmp_path / "runs")):
        assert not is_hub_model(text), text
    assert is_hub_dataset("org/name") and is_hub_dataset("org/name:test") and is_hub_dataset("org/name:train[:10%]")
    for text in ("data/train.jsonl", "org/corpus.txt", "./org/name", "runs/x", "train.jsonl"):
        assert not is_hub_dataset(text), text


def test_export_of_a_hub_id(tmp_path, fake_hub, tiny_models):
    from typer.testing import CliRunner

    from sqft_ov.cli import app

    result = CliRunner().invoke(app, ["export", "org/tiny@v1", str(tmp_path / "ir"), "--weight-format", "fp16"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert [(c["repo_id"], c["revision"]) for c in fake_hub] == [("org/tiny", "v1")]
    patterns = fake_hub[0]["allow_patterns"]
    assert patterns == list(MODEL_FILES) and "model*.safetensors" in patterns and "config.json" in patterns
    assert not any(p.endswith((".bin", ".pt", ".pth", ".py", ".ckpt")) or p == "*" for p in patterns)
    record = json.loads((tmp_path / "ir" / "sqft_export.json").read_text())
    assert record["source"] == str(tiny_models["llama"].absolute())


def test_sparsify_of_a_hub_id_with_hub_calibration(tmp_path, fake_hub, fake_datasets, tiny_models):
    from sqft_ov.stages.sparsify import SparsityConfig, sparsify_folder

    report = sparsify_folder("org/tiny", tmp_path / "sparse", SparsityConfig("wanda", 0.5), "org/corpus:validation",
                             num_samples=4, seq_len=32)
    assert report.total == pytest.approx(0.5, abs=1e-3)
    assert [c["split"] for c in fake_datasets] == ["validation"] and fake_datasets[0]["path"] == "org/corpus"
    record = json.loads((tmp_path / "sparse" / "sparsity.json").read_text())
    assert record["source"] == str(tiny_models["llama"].absolute()) and record["calibration"] == "org/corpus:validation"


def test_hub_data_defaults_to_train_and_recipes_accept_it(fake_datasets):
    from sqft_ov.io.data import load_texts
    from sqft_ov.recipe import task_files

    assert len(load_texts("org/corpus")) == 64 and fake_datasets[-1]["split"] == "train"
    train, test = task_files("org/task", "org/task:test")
    assert (str(train), str(test)) == ("org/task", "org/task:test")


def test_finetune_and_merge_with_hub_model_and_data(tmp_path, fake_hub, monkeypatch, tiny_models):
    """The adapter records the snapshot as its base and the dataset ID as its data; merge --base takes an ID."""
    import datasets

    from sqft_ov.io.sft_data import SFTFormat
    from sqft_ov.stages.finetune import FinetuneConfig, finetune
    from sqft_ov.stages.merge import merge

    rows = {"prompt": [f"{a} + 1 =" for a in range(16)], "response": [f"#### {a + 1}" for a in range(16)]}
    monkeypatch.setattr(datasets, "load_dataset", lambda path, split=None, **k: datasets.Dataset.from_dict(rows))
    config = FinetuneConfig(method="sparsepeft", rank=4, max_steps=2, batch_size=4, save_steps=100, eval_split=0.25,
                            data_format=SFTFormat(max_length=32))
    finetune("org/tiny", "org/task:train", tmp_path / "adapter", config)
    record = json.loads((tmp_path / "adapter" / "sqft_adapter.json").read_text())
    assert record["base"] == str(tiny_models["llama"].absolute()) and record["data"] == "org/task:train"
    merge(tmp_path / "adapter", tmp_path / "merged", base="org/tiny")
    assert (tmp_path / "merged" / "config.json").is_file()
    assert {c["repo_id"] for c in fake_hub} == {"org/tiny"}


def test_bench_model_from_a_hub_id(fake_hub, tiny_models):
    from sqft_ov.measure.bench.runner import BenchModel

    model = BenchModel(Path("org/tiny"))
    assert model.path == tiny_models["llama"] and model.label == "tiny"


def test_hub_repo_without_safetensors_is_refused(tmp_path, monkeypatch):
    import huggingface_hub

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(tmp_path))
    from sqft_ov.io.checkpoint import check_model_dir

    with pytest.raises(SqftError, match="no safetensors weights.*never loads pickled .bin"):
        check_model_dir("org/pickled")


def test_unknown_hub_repo_is_one_clear_error(monkeypatch):
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def missing(*args, **kwargs):
        response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/org/none"))
        raise RepositoryNotFoundError("404 Client Error.\nRepository Not Found", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", missing)
    from sqft_ov.io.checkpoint import check_model_dir

    with pytest.raises(SqftError) as info:
        check_model_dir("org/none")
    message = str(info.value)
    assert "\n" not in message and "no such repository" in message and "hf download org/none --local-dir" in message


def test_missing_local_paths_still_do_not_exist(tmp_path, monkeypatch):
    import huggingface_hub

    def never(*args, **kwargs):
        raise AssertionError("a local path was sent to the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", never)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    from sqft_ov.io.checkpoint import check_model_dir
    from sqft_ov.io.data import load_texts

    for text in ("./org/name", "a/b/c", "runs/sparse", str(tmp_path / "nope"), "missing.gguf"):
        with pytest.raises(SqftError, match="does not exist"):
            check_model_dir(text)
    with pytest.raises(SqftError, match="does not exist"):
        load_texts("runs/calibration")


def test_the_users_offline_setting_is_kept(monkeypatch, tiny_models):
    """sqft-ov neither sets HF_HUB_OFFLINE in its own process nor in the bench workers it starts."""
    import logging
    import warnings

    import sqft_ov
    from sqft_ov.cli.app import quiet_libraries
    from sqft_ov.measure.bench import runner

    for name in ("TRANSFORMERS_VERBOSITY", "TOKENIZERS_PARALLELISM", "HF_DATASETS_DISABLE_PROGRESS_BARS",
                 "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, os.environ.get(name, "x"))  # restored after the test
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    disabled = logging.root.manager.disable
    with warnings.catch_warnings():
        quiet_libraries()
    logging.disable(disabled)
    assert "HF_HUB_OFFLINE" not in os.environ

    started = {}

    class Popen:
        def __init__(self, *args, **kwargs):
            started.update(kwargs, env_now=dict(os.environ))

    monkeypatch.setattr(runner.subprocess, "Popen", Popen)
    runner._Worker(runner.BenchModel(tiny_models["llama"]), runner.BenchConfig())
    assert started.get("env") is None and "HF_HUB_OFFLINE" not in started["env_now"]
    for file in Path(sqft_ov.__file__).parent.rglob("*.py"):
        text = file.read_text()
        assert 'setdefault("HF_HUB_OFFLINE"' not in text and '"HF_HUB_OFFLINE": "1"' not in text, file


@pytest.fixture
def empty_hf_home(tmp_path, monkeypatch):
    """A Hugging Face cache with nothing in it, for the `sqft` subprocesses (which run with HF_HUB_OFFLINE=1)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(name, raising=False)


def test_offline_uncached_hub_model_is_one_line(tmp_path, empty_hf_home):
    result = sqft("export", "sqft-test/not-cached", tmp_path / "ir")
    assert_one_line_error(result, "sqft-test/not-cached is not a local folder", "HF_HUB_OFFLINE=1",
                          "hf download sqft-test/not-cached --local-dir DIR")
    assert not (tmp_path / "ir").exists()


def test_offline_uncached_hub_dataset_is_one_line(tmp_path, tiny_models, empty_hf_home):
    result = sqft("sparsify", tiny_models["llama"], tmp_path / "out", "--dataset", "sqft-test/no-corpus")
    assert_one_line_error(result, "data sqft-test/no-corpus is not a local file", "HF_HUB_OFFLINE=1",
                          "--repo-type dataset")
    assert not (tmp_path / "out").exists()
