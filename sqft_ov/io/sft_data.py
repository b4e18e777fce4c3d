"""Supervised fine-tuning data: prompt/response pairs, tokenized with the loss on response tokens only.

Local JSON/JSONL/CSV/parquet files or a saved `datasets` folder (see `sqft_ov.io.data.load_table`). A prompt
is used as it is, or wrapped in the tokenizer's chat template as a user turn (`chat_template=True`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqft_ov.errors import SqftError
from sqft_ov.io.data import load_table

IGNORE_INDEX = -100  # label value the loss skips: prompt tokens and padding


@dataclass(frozen=True)
class SFTFormat:
    prompt_field: str = "prompt"
    response_field: str = "response"
    chat_template: bool = False
    max_length: int = 512


def load_pairs(path: str | Path, fmt: SFTFormat) -> list[tuple[str, str]]:
    table = load_table(path)
    columns = list(table.column_names)
    missing = [f for f in (fmt.prompt_field, fmt.response_field) if f not in columns]
    if missing:
        raise SqftError(f"data {path} has no field {', '.join(missing)}: its fields are {', '.join(columns)} "
                        "(choose with --prompt-field / --response-field)")
    pairs = [(str(row[fmt.prompt_field]), str(row[fmt.response_field])) for row in table
             if row[fmt.prompt_field] is not None and row[fmt.response_field] is not None]
    pairs = [(p, r) for p, r in pairs if r.strip()]
    if not pairs:
        raise SqftError(f"data {path} has no example with a non-empty {fmt.response_field!r}")
    return pairs


def render_prompt(tokenizer, prompt: str, chat_template: bool) -> str:
    if not chat_template:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise SqftError("--chat-template was given but the tokenizer has no chat template")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def tokenize_pair(tokenizer, prompt: str, response: str, fmt: SFTFormat) -> dict[str, list[int]]:
    """input_ids = prompt + response + eos; labels mask the prompt so only the response is learned."""
    prompt_ids = tokenizer(render_prompt(tokenizer, prompt, fmt.chat_template), add_special_tokens=not fmt.chat_template)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + response_ids)[: fmt.max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[: fmt.max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def build_datasets(path: str | Path, tokenizer, fmt: SFTFormat, eval_split: float, seed: int):
    """Tokenized train and held-out `datasets.Dataset`s (the held-out one is None when eval_split is 0)."""
    from datasets import Dataset

    if not 0 <= eval_split < 1:
        raise SqftError(f"--eval-split must be in [0, 1), got {eval_split}")
    rows = [tokenize_pair(tokenizer, p, r, fmt) for p, r in load_pairs(path, fmt)]
    rows = [r for r in rows if any(label != IGNORE_INDEX for label in r["labels"])]
    if not rows:
        raise SqftError(f"every example of {path} is longer than --max-length {fmt.max_length} before its "
                        "response starts: raise --max-length")
    table = Dataset.from_list(rows)
    if eval_split == 0 or len(table) < 2:
        return table, None
    split = table.train_test_split(test_size=max(1, round(len(table) * eval_split)), seed=seed)
    return split["train"], split["test"]


class ResponseCollator:
    """Right-pads a batch; labels are padded with IGNORE_INDEX so padding never counts in the loss."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        longest = -(-longest // self.multiple) * self.multiple
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            gap = longest - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad] * gap)
            batch["attention_mask"].append(list(f["attention_mask"]) + [0] * gap)
            batch["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * gap)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def extract_answer(text: str) -> str | None:
    """The number after the last `####` (GSM8K style), normalised: commas dropped, `7.0` -> `7`; else None."""
    found = _FINAL.findall(text)
    if not found:
        return None
    number = found[-1].replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".") or "0"
    return str(int(number)) if re.fullmatch(r"-?\d+", number) else number
