"""Supervised fine-tuning data: prompt/response pairs, tokenized with the loss on response tokens only.

Local JSON/JSONL/CSV/parquet files, a saved `datasets` folder or a Hub dataset `org/name[:split]` (see
`sqft_ov.io.data.load_table`). Two row shapes, told apart by their fields: prompt/response (`SFTFormat`'s
field names), or chat rows `{"messages": [{"role": ..., "content": ...}, ...]}`. A plain prompt is used as
it is, or wrapped in the tokenizer's chat template as a user turn (`chat_template=True`); a chat row's
prompt is the template applied to every turn before its last assistant turn, and that turn is the response.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqft_ov.errors import ConfigError, SqftError
from sqft_ov.io.data import data_name, load_table

IGNORE_INDEX = -100  # label value the loss skips: prompt tokens and padding
MESSAGES = "messages"  # the field of chat rows
Prompt = str | list[dict]  # a plain prompt, or the chat turns before the response


@dataclass(frozen=True)
class SFTFormat:
    prompt_field: str = "prompt"
    response_field: str = "response"
    chat_template: bool = False
    max_length: int = 512


def load_pairs(path: str | Path, fmt: SFTFormat) -> list[tuple[Prompt, str]]:
    """(prompt, response) of every row with a non-empty response: prompt/response rows, else chat rows."""
    table = load_table(path)
    path = data_name(path)  # as messages name it
    columns = list(table.column_names)
    missing = [f for f in (fmt.prompt_field, fmt.response_field) if f not in columns]
    if missing and MESSAGES in columns:
        pairs = [chat_pair(row[MESSAGES], f"data {path}, row {i}") for i, row in enumerate(table, 1)]
    elif missing:
        raise SqftError(f"data {path} has no field {', '.join(missing)}: its fields are {', '.join(columns)} "
                        "(choose with --prompt-field / --response-field, or give chat rows "
                        '{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]})')
    else:
        pairs = [(str(row[fmt.prompt_field]), str(row[fmt.response_field])) for row in table
                 if row[fmt.prompt_field] is not None and row[fmt.response_field] is not None]
    pairs = [(p, r) for p, r in pairs if r.strip()]
    if not pairs:
        field = "assistant turn" if missing else repr(fmt.response_field)
        raise SqftError(f"data {path} has no example with a non-empty {field}")
    return pairs


def chat_pair(turns, where: str) -> tuple[list[dict], str]:
    """(turns before the last assistant turn, its content) of one chat row; any other shape is refused here,
    before a model loads, since a row without an answer can be neither learned nor scored."""
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        raise SqftError(f"{where}: {MESSAGES!r} must be a non-empty list of {{\"role\", \"content\"}} turns")
    turns = [{k: v for k, v in t.items() if v is not None} for t in turns]  # datasets fills absent keys with None
    roles = [t.get("role") for t in turns]
    if "assistant" not in roles:
        raise SqftError(f"{where} has no assistant turn (roles: {', '.join(map(str, roles))}): the last assistant "
                        "turn is the response that is learned and scored")
    last = len(roles) - 1 - roles[::-1].index("assistant")
    if last != len(turns) - 1:
        raise SqftError(f"{where} has turns after its last assistant turn: end each chat row with the assistant "
                        "turn to learn and score")
    if not isinstance(turns[last].get("content"), str):
        raise SqftError(f"{where}: the last assistant turn has no text 'content'")
    return turns[:last], turns[last]["content"]


def render_prompt(tokenizer, prompt: Prompt, chat_template: bool) -> str:
    """The prompt as the model reads it: plain, or through the tokenizer's chat template (chat rows always)."""
    if isinstance(prompt, str) and not chat_template:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "the model"
        raise ConfigError(f"--chat-template was given but the tokenizer of {name} has no chat template"
                          if isinstance(prompt, str) else
                          f"chat rows ({MESSAGES!r}) need a tokenizer with a chat template and {name}'s has none: "
                          "give prompt/response rows instead")
    turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, prompt: Prompt, fmt: SFTFormat) -> list[int]:
    """Token ids of the rendered prompt; a chat template writes its own special tokens."""
    templated = fmt.chat_template or not isinstance(prompt, str)
    return tokenizer(render_prompt(tokenizer, prompt, fmt.chat_template), add_special_tokens=not templated)["input_ids"]


def prompts_templated(path: str | Path, fmt: SFTFormat) -> bool:
    """Whether training wraps the prompts in the chat template: asked for, or chat rows (always templated)."""
    return fmt.chat_template or any(not isinstance(prompt, str) for prompt, _ in load_pairs(path, fmt))


def tokenize_pair(tokenizer, prompt: Prompt, response: str, fmt: SFTFormat) -> dict[str, list[int]]:
    """input_ids = prompt + response + eos; labels mask the prompt so only the response is learned."""
    head = prompt_ids(tokenizer, prompt, fmt)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    ids = (head + response_ids)[: fmt.max_length]
    labels = ([IGNORE_INDEX] * len(head) + response_ids)[: fmt.max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def build_datasets(path: str | Path, tokenizer, fmt: SFTFormat, eval_split: float, seed: int):
    """Tokenized train and held-out `datasets.Dataset`s (the held-out one is None when eval_split is 0)."""
    from datasets import Dataset

    if not 0 <= eval_split < 1:
        raise ConfigError(f"--eval-split must be in [0, 1), got {eval_split}")
    rows = [tokenize_pair(tokenizer, p, r, fmt) for p, r in load_pairs(path, fmt)]
    rows = [r for r in rows if any(label != IGNORE_INDEX for label in r["labels"])]
    if not rows:
        raise ConfigError(f"every example of {data_name(path)} is longer than --max-length {fmt.max_length} before its "
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
    return normalize_number(found[-1]) if found else None


def normalize_number(number: str) -> str:
    """`1,234` -> `1234`, `7.0` -> `7`: the form answers are compared in."""
    number = number.replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".") or "0"
    return str(int(number)) if re.fullmatch(r"-?\d+", number) else number
