"""Chat rows (`{"messages": [...]}`): the prompt is the template up to the last assistant turn, the loss is on it."""

import json

import pytest

from sqft_ov.errors import SqftError
from sqft_ov.io.sft_data import IGNORE_INDEX, SFTFormat, build_datasets, load_pairs, tokenize_pair

TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 3 ="},
         {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 4 + 4?"},
         {"role": "assistant", "content": "4 + 4 = 8. #### 8"}]


@pytest.fixture(scope="module")
def tokenizer():
    from sqft_ov.quickstart.tiny import build_tokenizer

    return build_tokenizer(vocab=512)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_messages_rows_are_detected_and_split_at_the_last_assistant_turn(tmp_path):
    data = write_rows(tmp_path / "chat.jsonl", [{"messages": TURNS}, {"messages": TURNS[1:3]}])
    assert load_pairs(data, SFTFormat()) == [(TURNS[:4], TURNS[4]["content"]), (TURNS[1:2], "5")]


def test_loss_mask_covers_exactly_the_last_assistant_turn(tmp_path, tokenizer):
    [(prompt, response)] = load_pairs(write_rows(tmp_path / "chat.jsonl", [{"messages": TURNS}]), SFTFormat())
    row = tokenize_pair(tokenizer, prompt, response, SFTFormat())
    head = tokenizer(tokenizer.apply_chat_template(TURNS[:4], tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
    answer = tokenizer(TURNS[4]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert row["input_ids"] == head + answer
    assert row["labels"] == [IGNORE_INDEX] * len(head) + answer  # the earlier assistant turn is not learned
    assert tokenizer.decode(head).count("<|bos|>") == 4  # the template's own special tokens, none added twice


def test_finetune_and_importance_read_chat_rows(tmp_path, tokenizer):
    data = write_rows(tmp_path / "chat.jsonl", [{"messages": TURNS}] * 6)
    train, held_out = build_datasets(data, tokenizer, SFTFormat(), 0.34, seed=0)
    assert len(train) == 4 and len(held_out) == 2
    assert train[0]["labels"] == tokenize_pair(tokenizer, TURNS[:4], TURNS[4]["content"], SFTFormat())["labels"]


@pytest.mark.parametrize("turns, match", [
    ([{"role": "user", "content": "2 + 3 ="}], "row 2 has no assistant turn"),
    (TURNS + [{"role": "user", "content": "thanks"}], "row 2 has turns after its last assistant turn"),
    ([], "must be a non-empty list"),
    ("2 + 3 =", "must be a non-empty list"),
])
def test_unscorable_chat_rows_are_refused_before_any_model_loads(tmp_path, turns, match):
    data = write_rows(tmp_path / "chat.jsonl", [{"messages": TURNS}, {"messages": turns}])
    with pytest.raises(SqftError, match=match):
        load_pairs(data, SFTFormat())


def test_chat_rows_need_a_chat_template(tmp_path, tokenizer):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path / "tok")
    bare = AutoTokenizer.from_pretrained(tmp_path / "tok")  # a copy, then without its template
    bare.chat_template = None
    [(prompt, response)] = load_pairs(write_rows(tmp_path / "chat.jsonl", [{"messages": TURNS}]), SFTFormat())
    with pytest.raises(SqftError, match="chat rows .'messages'. need a tokenizer with a chat template"):
        tokenize_pair(bare, prompt, response, SFTFormat())
    with pytest.raises(SqftError, match="--chat-template was given"):
        tokenize_pair(bare, "2 + 3 =", "5", SFTFormat(chat_template=True))


def test_neither_shape_names_both(tmp_path):
    data = write_rows(tmp_path / "other.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(SqftError, match="no field prompt, response.*--prompt-field.*messages"):
        load_pairs(data, SFTFormat())


def test_finetune_trains_on_chat_rows(tmp_path, sparse_models):
    from conftest import train

    data = write_rows(tmp_path / "chat.jsonl", [{"messages": TURNS}] * 8)
    result = train(sparse_models["llama"], data, tmp_path / "adapter", method="lora", rank=4, max_steps=2)
    assert (result.output / "sqft_trainable.safetensors").is_file()
