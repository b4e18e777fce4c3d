"""Local text data for calibration (and later fine-tuning), loaded with `datasets`.

Local files: `.txt` (one sample per line), `.json`/`.jsonl`, `.csv`, `.parquet`, or a folder saved with
`Dataset.save_to_disk`; or a Hugging Face Hub dataset ID, `org/name[:split]` (see `sqft_ov.io.hub`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from sqft_ov.errors import ConfigError, SqftError

_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_table(path: str | Path):
    """Load a local data file, saved dataset folder or Hub dataset (`org/name[:split]`) as a `datasets.Dataset`;
    a `datasets.Dataset` or a list of row dicts (the in-memory verbs' data) is taken as it is."""
    import datasets

    from sqft_ov.io.hub import is_hub_dataset, load_hub_dataset

    if isinstance(path, datasets.Dataset):
        return path
    if isinstance(path, list):
        if not path or not all(isinstance(row, dict) for row in path):
            raise SqftError("in-memory data must be a non-empty list of row dicts, e.g. {'prompt': ..., 'response': ...}")
        return datasets.Dataset.from_list(path)
    if is_hub_dataset(path):  # before Path(), which drops a leading ./
        table = load_hub_dataset(path)
        if len(table) == 0:
            raise SqftError(f"data {path} holds no rows")
        return table
    path = Path(path).expanduser()
    if not path.exists():
        raise SqftError(f"data file {path} does not exist: pass a local .txt/.json/.jsonl/.csv/.parquet file or a "
                        "Hugging Face Hub dataset ID (org/name[:split])")
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a read error is re-raised below as one line
    try:
        if path.is_dir():
            table = datasets.load_from_disk(str(path))
            if isinstance(table, datasets.DatasetDict):
                table = table["train"] if "train" in table else next(iter(table.values()))
            return table
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise SqftError(f"unsupported data file {path.name}: use .txt, .json, .jsonl, .csv or .parquet")
        if builder != "parquet" and not _check_utf8(path):
            raise SqftError(f"data file {path} is empty (nothing but blank space): give it one example per line "
                            "or row")
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except SqftError:
        raise
    except Exception as exc:  # datasets raises many types for unreadable files
        if path.suffix.lower() == ".jsonl":
            _check_json_lines(path)  # names the bad line, which datasets' message does not
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SqftError(f"cannot read data file {path}: {first}") from exc
    finally:
        datasets.logging.set_verbosity(verbosity)
    if len(table) == 0:
        raise SqftError(f"data file {path} holds no rows: give it one example per line (JSONL) or row")
    return table


def _check_utf8(path: Path) -> bool:
    """Text data must be UTF-8: say where it is not (datasets' decoder error names no line). True if not blank."""
    import codecs

    decoder, line, offset, content = codecs.getincrementaldecoder("utf-8")(), 1, 0, False
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad = offset + exc.start
                line += chunk[: exc.start].count(b"\n")
                raise SqftError(f"data file {path} is not UTF-8 text (byte 0x{chunk[exc.start]:02x} at offset {bad}, "
                                f"line {line}): re-encode it as UTF-8, e.g. iconv -f LATIN1 -t UTF-8") from None
            line += chunk.count(b"\n")
            offset += len(chunk)
            content = content or bool(chunk.strip())
    return content


def _check_json_lines(path: Path) -> None:
    import json

    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except ValueError as exc:
                raise SqftError(f"data file {path}, line {number} is not valid JSON ({exc.msg}): fix or remove "
                                "that line") from None
            if not isinstance(row, dict):
                raise SqftError(f"data file {path}, line {number} is not a JSON object: each line must be "
                                "one example such as {\"prompt\": ..., \"response\": ...}")


IN_MEMORY = "in-memory data"  # how a Dataset or list of rows given to an in-memory verb is named and recorded


def data_source(path: str | Path) -> str:
    """How a data argument is recorded in an output: a Hub dataset ID as given, a local path made absolute."""
    from sqft_ov.io.hub import is_hub_dataset

    if not isinstance(path, (str, Path)):
        return IN_MEMORY
    return str(path) if is_hub_dataset(path) else str(Path(path).expanduser().absolute())


def data_name(data) -> str:
    """A data argument as error messages name it."""
    return str(data) if isinstance(data, (str, Path)) else IN_MEMORY


def load_texts(path: str | Path, text_fields: Sequence[str] = ()) -> list[str]:
    """One string per sample: the named fields joined by newlines, or the only/`text` column."""
    table = load_table(path)
    columns = list(table.column_names)
    if text_fields:
        missing = [f for f in text_fields if f not in columns]
        if missing:
            raise SqftError(f"data {path} has no field {', '.join(missing)}: its fields are {', '.join(columns)}")
        fields = list(text_fields)
    elif "text" in columns:
        fields = ["text"]
    elif len(columns) == 1:
        fields = columns
    else:
        raise SqftError(f"data {path} has several fields ({', '.join(columns)}): choose with --text-field")
    texts = ["\n".join(str(row[f]) for f in fields if row[f] is not None) for row in table]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise SqftError(f"data {path} holds no non-empty text: calibration needs at least one sample")
    return texts


def token_chunks(tokenizer, texts: Sequence[str], num_samples: int, seq_len: int) -> list:
    """Concatenate the tokenized texts and cut them into up to `num_samples` sequences of `seq_len` tokens.

    Full-length chunks without padding are what Wanda and NNCF calibrate on; a short corpus gives fewer
    chunks (at least one, possibly shorter than `seq_len`).
    """
    import torch

    if num_samples < 1 or seq_len < 2:
        raise ConfigError("--num-samples must be >= 1 and --seq-len >= 2")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=True)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if len(ids) >= num_samples * seq_len:
            break
    chunks = [ids[i : i + seq_len] for i in range(0, min(len(ids), num_samples * seq_len), seq_len)]
    chunks = [c for c in chunks if len(c) == seq_len] or chunks[:1]
    return [torch.tensor([c], dtype=torch.long) for c in chunks]


# Generated text (no download): tiny models' tokenizers, benchmark prompts and demo calibration use it.
_SUBJECTS = ["Ana", "Ben", "the baker", "a farmer", "the teacher", "Mia", "Omar", "the shop", "Lena", "Raj"]
_VERBS = ["buys", "sells", "bakes", "finds", "gives away", "collects", "plants", "reads", "packs", "counts"]
_OBJECTS = ["apples", "books", "cakes", "coins", "eggs", "flowers", "marbles", "pencils", "stamps", "boxes"]
_LINKS = ["Then", "Later", "After that", "Next", "In the end", "On Monday", "Each day", "In total"]


def sample_corpus(n_lines: int = 2000, seed: int = 0) -> list[str]:
    """Short arithmetic word-problem sentences: enough text to train a small BPE vocabulary."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        s, v, o, link = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_LINKS)
        lines.append(f"{s.capitalize()} {v} {a} {o}. {link}, {s} {rng.choice(_VERBS)} {b} more. "
                     f"How many {o}? {a} + {b} = {a + b}. #### {a + b}")
    return lines
