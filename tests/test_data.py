import json

import pandas as pd
import pytest
from transformers import AutoTokenizer

from sqft_ov.errors import SqftError
from sqft_ov.io.data import load_texts, token_chunks


def test_txt_is_one_sample_per_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first line\n\nsecond line\n")
    assert load_texts(path) == ["first line", "second line"]


def test_json_jsonl_csv_parquet_and_field_joining(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}", "id": i} for i in range(3)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for ext in ("jsonl", "json", "csv", "parquet"):
        assert load_texts(tmp_path / f"d.{ext}", ("question",)) == ["q0", "q1", "q2"]
        assert load_texts(tmp_path / f"d.{ext}", ("question", "answer"))[1] == "q1\na1"


def test_text_column_is_the_default(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "hello", "meta": 1}\n')
    assert load_texts(tmp_path / "t.jsonl") == ["hello"]


@pytest.mark.parametrize("content,match", [
    ("", "is empty"),
    ("\n\n  \n", "is empty"),
])
def test_empty_calibration_is_refused(tmp_path, content, match):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(SqftError, match=match):
        load_texts(path)


def test_missing_unreadable_and_ambiguous_files(tmp_path):
    with pytest.raises(SqftError, match="does not exist"):
        load_texts(tmp_path / "nope.txt")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x00\xff{not json")
    with pytest.raises(SqftError, match="not UTF-8 text .byte 0xff at offset 1, line 1"):
        load_texts(bad)
    bad.write_text("{not json")
    with pytest.raises(SqftError, match="cannot read"):
        load_texts(bad)
    (tmp_path / "two.jsonl").write_text('{"a": "x", "b": "y"}\n')
    with pytest.raises(SqftError, match="--text-field"):
        load_texts(tmp_path / "two.jsonl")
    with pytest.raises(SqftError, match="no field c"):
        load_texts(tmp_path / "two.jsonl", ("c",))
    with pytest.raises(SqftError, match="unsupported"):
        (tmp_path / "x.xml").write_text("<a/>")
        load_texts(tmp_path / "x.xml")


def test_token_chunks_are_full_length(tiny_models, calibration_txt):
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    chunks = token_chunks(tok, load_texts(calibration_txt), num_samples=5, seq_len=32)
    assert len(chunks) == 5 and all(c.shape == (1, 32) for c in chunks)
    short = token_chunks(tok, ["one two"], num_samples=4, seq_len=512)
    assert len(short) == 1 and 1 < short[0].shape[1] < 512
