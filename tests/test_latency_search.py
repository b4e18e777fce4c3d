"""Decode-aware search: `sqft-ov latency` measures ms per token per width choice, `search --max-latency` keeps to it.

One table is really measured (tiny IRs, few tokens: mechanics, not speed); the search's tests use tables written
here with chosen times, so that which sub-networks meet a bound is decided by the test, not by a CPU's noise.
"""

from __future__ import annotations

import json
from itertools import product

import pytest

from conftest import FIELDS, run_cli, train

# The tiny Llama (2 blocks, MLP 256, 2 KV heads) with --mlp-widths 1.0,0.5 --head-widths 1.0,0.5
PAIRS = [(256, 2), (256, 1), (128, 2), (128, 1)]
# Chosen times (ms per token): the full sub-network is slowest, (128, 1) fastest.
TIMES = {(256, 2): 4.0, (256, 1): 3.0, (128, 2): 2.5, (128, 1): 1.0}
QUICK = dict(new_tokens=4, prompt_tokens=8, repeats=1, warmup=0, properties={"INFERENCE_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def elastic(tmp_path_factory, sparse_models, sft_data):
    """A SparsePEFT + NLS super-network with elastic MLP widths and KV groups on the tiny Llama."""
    out = tmp_path_factory.mktemp("latency") / "adapter"
    train(sparse_models["llama"], sft_data, out, method="sparsepeft", nls=True, rank_space=(8, 4),
          mlp_widths=(1.0, 0.5), head_widths=(1.0, 0.5), **FIELDS)
    return out


@pytest.fixture(scope="module")
def measured(elastic):
    """The table `measure_latency` writes for it (really timed, few tokens, one thread)."""
    from sqft_ov.measure.latency import LatencyConfig, measure_latency

    path = elastic.parent / "table.json"
    return path, measure_latency(elastic, path, LatencyConfig(**QUICK))


def table_record(adapter, times=TIMES, cpu=None) -> dict:
    """A table as `sqft-ov latency` writes it for `adapter`, with the given times and this machine's CPU."""
    from sqft_ov.io.latency_table import FORMAT, VERSION
    from sqft_ov.io.runtime import cpu_model

    record = json.loads((adapter / "sqft_adapter.json").read_text())
    shape = dict(layers=2, hidden=128, intermediate=256, heads=4, kv_heads=2, head_dim=32)
    return {"format": FORMAT, "version": VERSION, "adapter": str(adapter), "shape": shape, "space": record["widths"],
            "machine": {"cpu": cpu or cpu_model()},
            "points": [{"mlp": m, "kv_groups": k, "ms_per_token": ms} for (m, k), ms in times.items()]}


def write(path, record):
    path.write_text(json.dumps(record))
    return path


def test_the_measured_table_is_written_read_back_and_exact_on_its_points(measured, elastic):
    from sqft_ov.errors import ConfigError
    from sqft_ov.io.blocks import BlockWidth
    from sqft_ov.io.latency_table import read_latency_table
    from sqft_ov.io.runtime import cpu_model
    from sqft_ov.measure.latency import LatencyConfig, measure_latency

    path, written = measured
    table = read_latency_table(path)
    assert sorted(table.points) == sorted(PAIRS) and table.points == written.points
    assert all(ms > 0 for ms in table.points.values())
    assert table.machine["cpu"] == cpu_model() and table.record["timing"]["repeats"] == 1
    assert table.record["export"]["weight_format"] == "int4" and table.reference == (256, 2)
    for (m, k), ms in table.points.items():  # every measured point is predicted as measured
        assert table.predict([BlockWidth(m, k)] * 2) == pytest.approx(ms, rel=1e-12)
    with pytest.raises(ConfigError, match="already exists"):  # refused before anything is exported
        measure_latency(elastic, path, LatencyConfig(**QUICK))


def test_prediction_is_additive_between_measured_points(tmp_path, elastic):
    from sqft_ov.io.blocks import BlockWidth
    from sqft_ov.io.latency_table import read_latency_table

    table = read_latency_table(write(tmp_path / "t.json", table_record(elastic)))
    for (a, b) in product(PAIRS, PAIRS):  # each block moves the time by half the uniform change to its widths
        expected = 4.0 + (TIMES[a] - 4.0) / 2 + (TIMES[b] - 4.0) / 2
        assert table.predict([BlockWidth(*a), BlockWidth(*b)]) == pytest.approx(expected)
    assert table.predict([BlockWidth(256, 2), BlockWidth(128, 1)]) == pytest.approx(2.5)


def feasible(result, bound):
    return result.predicted_ms_per_token is not None and result.predicted_ms_per_token <= bound + 1e-9


def test_max_latency_keeps_the_search_within_the_bound(tmp_path, elastic):
    from sqft_ov.errors import ConfigError
    from sqft_ov.stages.search import search

    table = write(tmp_path / "t.json", table_record(elastic))
    # <= 2 ms: one block at (128, 1) and the other anywhere but (256, 2); the full sub-network is 4 ms
    climbed = search(elastic, "hill-climb", budget=12, max_latency=2.0, latency_table=table)
    assert feasible(climbed, 2.0)
    assert all(e["predicted_ms_per_token"] <= 2.0 + 1e-9 for e in climbed.evaluated)
    assert climbed.validation_loss == min(e["validation_loss"] for e in climbed.evaluated)
    free = search(elastic, "max", latency_table=table)  # the table alone bounds nothing, it predicts
    assert free.predicted_ms_per_token == 4.0

    history = json.loads((elastic / "nls_history.json").read_text())
    chosen = search(elastic, "min-loss", max_latency=2.0, latency_table=table)
    assert feasible(chosen, 2.0)
    mean = {}
    for h in history:  # the most accurate sampled sub-network among those predicted within 2 ms
        widths = tuple((w["mlp"], w["kv_groups"]) for w in h["widths"])
        if 4.0 + sum(TIMES[p] - 4.0 for p in widths) / 2 <= 2.0:
            mean.setdefault((tuple(h["ranks"]), widths), []).append(h["loss"])
    best = min(mean, key=lambda key: sum(mean[key]) / len(mean[key]))
    assert (tuple(chosen.ranks), tuple((w.mlp, w.kv_groups) for w in chosen.widths)) == best

    assert search(elastic, "min", max_latency=2.0, latency_table=table).predicted_ms_per_token == 1.0
    with pytest.raises(ConfigError, match=r"predicted at 4 ms per token, above --max-latency 2"):
        search(elastic, "max", max_latency=2.0, latency_table=table)
    assert search(elastic, "max").predicted_ms_per_token is None


def test_max_size_and_max_latency_bound_together(tmp_path, elastic):
    from sqft_ov.stages.search import search

    # shares of the decoder per block: (256, 2) 1, (256, 1) 0.83, (128, 2) 0.67, (128, 1) 0.5; times chosen apart
    times = {(256, 2): 4.0, (256, 1): 1.5, (128, 2): 3.5, (128, 1): 3.0}
    table = write(tmp_path / "t.json", table_record(elastic, times))
    result = search(elastic, "hill-climb", budget=16, max_size=0.8, max_latency=3.0, latency_table=table)
    assert result.decoder_share <= 0.8 and feasible(result, 3.0)
    assert all(e["decoder_share"] <= 0.8 and e["predicted_ms_per_token"] <= 3.0 for e in result.evaluated)
    saved = tmp_path / "sub.json"
    result.save(saved, [8, 4])
    assert json.loads(saved.read_text())["predicted_ms_per_token"] == result.predicted_ms_per_token


def test_no_sub_network_meets_the_bound(tmp_path, elastic):
    from sqft_ov.errors import ConfigError
    from sqft_ov.stages.search import search

    table = write(tmp_path / "t.json", table_record(elastic))
    with pytest.raises(ConfigError, match=r"no sub-network meets --max-latency 0.5 ms: .*fastest is predicted at 1 ms"):
        search(elastic, "hill-climb", max_latency=0.5, latency_table=table)
    with pytest.raises(ConfigError, match="no sampled sub-network meets --max-latency 0.5 ms"):
        search(elastic, "min-loss", max_latency=0.5, latency_table=table)


def test_latency_table_errors(tmp_path, elastic):
    from sqft_ov.errors import ConfigError
    from sqft_ov.stages.search import search

    def fails(message, **kwargs):
        with pytest.raises(ConfigError, match=message):
            search(elastic, "min", **kwargs)

    fails("--max-latency needs --latency-table", max_latency=2.0)
    fails("must be a positive number", max_latency=-1.0, latency_table=tmp_path / "none.json")
    fails("does not exist", max_latency=2.0, latency_table=tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{ not json")
    fails("is not valid JSON", max_latency=2.0, latency_table=tmp_path / "bad.json")
    fails("is not a latency table", latency_table=write(tmp_path / "other.json", {"points": []}))
    record = table_record(elastic)
    record["points"] = record["points"][:-1]
    fails("malformed .*no measurement for MLP width 128 with 1 KV groups",
          latency_table=write(tmp_path / "short.json", record))
    record = table_record(elastic)
    record["points"][0]["ms_per_token"] = -1
    fails("malformed", latency_table=write(tmp_path / "negative.json", record))
    record = table_record(elastic)
    record["space"] = {"blocks": [{"mlp": [256, 128], "kv_groups": [2]}] * 2}  # another adapter's space
    fails(r"measured for other widths \(MLP widths \[256, 128\], KV groups \[2\]", max_latency=2.0,
          latency_table=write(tmp_path / "space.json", record))
    record = table_record(elastic)
    record["shape"]["hidden"] = 64
    fails("another model shape", latency_table=write(tmp_path / "shape.json", record))


def test_a_table_from_another_cpu_warns(tmp_path, elastic):
    from sqft_ov.stages.search import search

    table = write(tmp_path / "t.json", table_record(elastic, cpu="Imaginary CPU 9000"))
    result = search(elastic, "min", max_latency=2.0, latency_table=table)
    assert len(result.warnings) == 1 and "measured on 'Imaginary CPU 9000'" in result.warnings[0]
    here = write(tmp_path / "here.json", table_record(elastic))
    assert search(elastic, "min", max_latency=2.0, latency_table=here).warnings == []


def test_search_model_takes_a_table_in_memory(elastic, tmp_path):
    from sqft_ov.adapters.adapted import load_adapted
    from sqft_ov.io.latency_table import read_latency_table
    from sqft_ov.stages.search import search_model

    table = read_latency_table(write(tmp_path / "t.json", table_record(elastic)))
    adapted, tokenizer, _ = load_adapted(elastic)
    result = search_model(adapted, tokenizer, "min", max_latency=2.0, latency_table=table)
    assert result.predicted_ms_per_token == 1.0


def test_latency_refuses_an_adapter_without_widths_and_bad_options(tmp_path, trained):
    from sqft_ov.errors import ConfigError
    from sqft_ov.measure.latency import LatencyConfig, measure_latency

    with pytest.raises(ConfigError, match="without elastic widths"):
        measure_latency(trained("sparsepeft", True), tmp_path / "t.json")
    with pytest.raises(ConfigError, match="--repeats must be at least 1"):
        LatencyConfig(repeats=0)
    with pytest.raises(ConfigError, match="--weight-format"):
        LatencyConfig(weight_format="int8-w8a8")
    assert not (tmp_path / "t.json").exists()


@pytest.mark.slow
def test_cli_latency_then_search_max_latency(tmp_path, elastic, capsys):
    table, sub = tmp_path / "table.json", tmp_path / "sub.json"
    code, err = run_cli(["latency", elastic, table, "--new-tokens", "4", "--prompt-tokens", "8", "--repeats", "2",
                         "--property", "INFERENCE_NUM_THREADS=1"], capsys)
    assert code == 0, err
    points = {(p["mlp"], p["kv_groups"]): p["ms_per_token"] for p in json.loads(table.read_text())["points"]}
    assert sorted(points) == sorted(PAIRS)
    bound = min(points.values())  # (at least) the fastest uniform sub-network meets it
    code, err = run_cli(["search", elastic, "--strategy", "hill-climb", "--budget", "6", "--max-latency", bound,
                         "--latency-table", table, "--save", sub], capsys)
    assert code == 0, err
    assert json.loads(sub.read_text())["predicted_ms_per_token"] <= bound + 1e-9
    code, err = run_cli(["latency", elastic, table], capsys)  # TABLE exists: refused, kept
    assert code == 2 and "--overwrite" in err and json.loads(table.read_text())["points"]
    code, err = run_cli(["search", elastic, "--strategy", "min", "--max-latency", "2", "--save", sub], capsys)
    assert code == 2 and "--latency-table" in err
