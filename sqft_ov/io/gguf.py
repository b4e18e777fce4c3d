"""GGUF checkpoints as input: checked cheaply, dequantized once by transformers, kept as a Hugging Face folder.

Every stage reads Hugging Face folders (safetensors weights it can index, hash and compare zero by zero), so
a `.gguf` MODEL is converted once — transformers' GGUF loader dequantizes it to float32, the exact values
the quantized file encodes — into `$SQFT_OV_CACHE/gguf/<name>-<sha256[:12]>/`, and every later use of the
same file reads that folder. Outputs of the stages are ordinary Hugging Face folders.

Before the (seconds-long) conversion the file is read with a small header parser: magic, version, metadata
and the tensor table, so a non-GGUF, truncated or unsupported file is a one-line error in milliseconds
(`gguf.GGUFReader` takes ~3 s on SmolLM2's file, as it builds an array per vocabulary string, and meets a
truncated file with a numpy reshape error).
transformers' GGUF tokenizer is repaired on the way (see `_repair_tokenizer`): its special tokens are
taken from the file's own metadata.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from sqft_ov.errors import ModelFolderError

GGUF_RECORD = "sqft_gguf.json"  # in a converted folder: the source file and its sha256
_MAGIC = b"GGUF"
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_NOT_DECODERS = ("t5", "umt5")


@dataclass
class GGUFInfo:
    path: Path
    version: int
    architecture: str
    metadata: dict  # scalar and string values; arrays as their length
    tensors: int
    tied_embeddings: bool  # no separate output.weight: lm_head shares the token embedding


class _Reader:
    def __init__(self, f, path: Path):
        self.f, self.path = f, path

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ModelFolderError(f"{self.path} is truncated (its header ends early): download or copy it again")
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.read(self.unpack("<Q")).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item == _STRING:
                for _ in range(count):
                    self.f.seek(self.unpack("<Q"), 1)
            elif item in _SCALAR:
                self.f.seek(struct.calcsize(_SCALAR[item]) * count, 1)
            else:
                raise ModelFolderError(f"{self.path}: unreadable GGUF metadata (nested array): not a GGUF file "
                                       "sqft-ov can read")
            return f"<array of {count}>"
        if kind not in _SCALAR:
            raise ModelFolderError(f"{self.path}: unknown GGUF metadata type {kind}: the file is corrupt")
        return self.unpack(_SCALAR[kind])


def read_gguf(path: str | Path) -> GGUFInfo:
    """Header, metadata and tensor table of a GGUF file, checked for truncation; no tensor is read."""
    import gguf

    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise ModelFolderError(f"GGUF file {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        reader = _Reader(f, path)
        if f.read(4) != _MAGIC:
            raise ModelFolderError(f"{path} is not a GGUF file (no GGUF magic): pass a .gguf checkpoint or a Hugging "
                                   "Face model folder")
        version, n_tensors, n_kv = reader.unpack("<I"), reader.unpack("<Q"), reader.unpack("<Q")
        metadata = {}
        for _ in range(n_kv):
            key = reader.string()
            metadata[key] = reader.value(reader.unpack("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = reader.string()
            dims = [reader.unpack("<Q") for _ in range(reader.unpack("<I"))]
            tensors.append((name, dims, reader.unpack("<I"), reader.unpack("<Q")))
        align = int(metadata.get("general.alignment", 32))
        data_start = -(-f.tell() // align) * align
    needed = data_start
    for name, dims, kind, offset in tensors:
        try:
            block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise ModelFolderError(f"{path}: tensor {name} has an unknown GGML type {kind}: the file is corrupt or "
                                   "newer than the gguf package") from None
        count = 1
        for d in dims:
            count *= d
        needed = max(needed, data_start + offset + count // block * block_bytes)
    if size < needed:
        raise ModelFolderError(f"{path} is truncated: {size} bytes of the {needed} its tensor table needs; download or "
                               "copy it again")
    architecture = str(metadata.get("general.architecture", "?"))
    return GGUFInfo(path, version, architecture, metadata, n_tensors,
                    tied_embeddings=not any(t[0] == "output.weight" for t in tensors))


def check_supported(info: GGUFInfo) -> None:
    """Refuse, in one line, a GGUF whose architecture transformers cannot dequantize or that is not a decoder."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    arch = info.architecture
    aliases = {arch, arch.replace("moe", "_moe"), arch.replace("-", "_")}
    if arch in _NOT_DECODERS or not aliases & (set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}):
        known = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer", *_NOT_DECODERS})
        raise ModelFolderError(f"{info.path} holds a {arch!r} model, which transformers' GGUF loader cannot read as a "
                               f"causal LM (it reads {', '.join(known)}): convert it to a Hugging Face folder another "
                               "way")


def _token(tokenizer, metadata: dict, key: str) -> str | None:
    token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
    return None if token_id is None else tokenizer.convert_ids_to_tokens(int(token_id))


def _repair_tokenizer(tokenizer, info: GGUFInfo, vocab_size: int):
    """transformers 5.5 turns a GGUF BPE ("gpt2") tokenizer into a CodeLlamaTokenizer that adds five tokens
    beyond the model's vocabulary, swaps BOS and EOS, always prepends BOS, and whose saved form reloads with
    the wrong pre-tokenizer. Rebuilt here as a plain fast tokenizer with the file's own special tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    meta = info.metadata
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    byte_level = (spec.get("pre_tokenizer") or {}).get("type") == "ByteLevel" or any(
        p.get("type") == "ByteLevel" for p in (spec.get("pre_tokenizer") or {}).get("pretokenizers", []))
    if meta.get("tokenizer.ggml.model") != "gpt2" or not byte_level:
        return tokenizer  # sentencepiece-style files convert correctly
    spec["added_tokens"] = [t for t in spec.get("added_tokens", []) if t["id"] < vocab_size]
    if not meta.get("tokenizer.ggml.add_bos_token", False):
        spec["post_processor"] = None
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    backend = Tokenizer.from_str(json.dumps(spec))
    special = {name: _token(tokenizer, meta, key) for name, key in
               (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding"))}
    if special["pad_token"] is None:
        special["pad_token"] = special["eos_token"]
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=tokenizer.chat_template,
                                   **{k: v for k, v in special.items() if v is not None})


@functools.lru_cache(maxsize=8)
def _sha256_once(path: Path, size: int, mtime_ns: int) -> str:
    """Every stage resolves its MODEL (check_model_dir): hash a ~100 MB file once per process, not per call."""
    from sqft_ov.io.cache import file_sha256

    return file_sha256(path)


def gguf_folder(path: str | Path, cache: str | Path | None = None) -> Path:
    """The Hugging Face folder of a GGUF file, converted on first use (float32, safetensors, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sqft_ov.io.cache import cache_dir
    from sqft_ov.io.output import atomic_output

    info = read_gguf(path)
    check_supported(info)
    stat = info.path.stat()
    sha = _sha256_once(info.path, stat.st_size, stat.st_mtime_ns)
    folder = Path(cache or cache_dir()).expanduser() / "gguf" / f"{info.path.stem}-{sha[:12]}"
    if (folder / GGUF_RECORD).is_file():
        return folder
    import sys

    # Said before it happens: a 7-8B GGUF becomes ~30 GB of float32 (4 bytes a weight, whatever its GGUF type),
    # once; stages then load it in the dtype they are asked for (finetune --bf16 holds it in bfloat16).
    print(f"converting {info.path.name} ({stat.st_size / 2**30:.2f} GiB) once to a float32 Hugging Face folder in "
          f"{folder}: 4 bytes a weight, about 7x a 4-bit GGUF (SQFT_OV_CACHE moves it)", file=sys.stderr)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the caller shows progress; transformers would draw three tqdm bars
    try:
        model = AutoModelForCausalLM.from_pretrained(info.path.parent, gguf_file=info.path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(info.path.parent, gguf_file=info.path.name)
    except Exception as exc:  # transformers raises ValueError / OSError / numpy errors for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFolderError(f"transformers cannot load {info.path}: {first}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer = _repair_tokenizer(tokenizer, info, model.config.vocab_size)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_output(folder, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / GGUF_RECORD).write_text(json.dumps({"source": str(info.path), "sha256": sha, "version": info.version,
                                                   "architecture": info.architecture,
                                                   "name": info.metadata.get("general.name"),
                                                   "tied_embeddings": info.tied_embeddings,
                                                   "dtype": "float32"}, indent=2))
    return folder


def is_gguf(path: str | Path) -> bool:
    """A `.gguf` name, or any file that starts with the GGUF magic."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == _MAGIC


def resolve_model(path: str | Path, cache: str | Path | None = None) -> Path:
    """A model argument as a Hugging Face folder: a folder as it is, a `.gguf` file converted (once), the
    name of an example model (`smollm2`) fetched into the cache when no such path exists, or a Hugging Face
    Hub ID (`org/name[@revision]`) downloaded into the user's Hub cache (see `sqft_ov.io.hub`)."""
    from sqft_ov.io.examples import EXAMPLES, fetch_example
    from sqft_ov.io.hub import download_model, is_hub_model

    text, path = str(path), Path(path).expanduser()  # the text as given: Path() drops a leading ./
    if not path.exists() and str(path) in EXAMPLES:
        path = fetch_example(str(path), cache)
    elif is_hub_model(text):
        path = download_model(text)
    return gguf_folder(path, cache) if is_gguf(path) else path
