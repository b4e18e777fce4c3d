"""Load a causal LM from a local Hugging Face folder, refusing what cannot work with a message naming the fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from sqft_ov.errors import ModelFolderError, SqftError


def check_model_dir(path: str | Path) -> Path:
    """A folder with a config.json of a causal-LM architecture and safetensors weights.

    A `.gguf` file (or an example model's name) stands for its converted folder: see `sqft_ov.io.gguf`; a Hub
    ID (`org/name`) for its downloaded snapshot: see `sqft_ov.io.hub`.
    """
    from sqft_ov.io.gguf import resolve_model

    path = resolve_model(path).absolute()
    if path.is_file():
        raise ModelFolderError(f"{path} is a file, not a model: pass a Hugging Face model folder or a .gguf file")
    if not path.is_dir():
        raise ModelFolderError(f"model folder {path} does not exist: pass a local folder in Hugging Face layout, "
                               "a .gguf file or a Hugging Face Hub ID (org/name)")
    if not (path / "config.json").is_file():
        raise ModelFolderError(f"{path} has no config.json: pass a Hugging Face model folder (save_pretrained output)")
    return path


def load_config(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = check_model_dir(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as exc:
        raise ModelFolderError(f"cannot read {path / 'config.json'}: {str(exc).splitlines()[0]}") from exc
    architectures = getattr(config, "architectures", None) or []
    known = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    encoder = config.model_type in ("bert", "roberta", "xlm-roberta", "electra", "camembert") and not config.is_decoder
    if encoder or not (known or trust_remote_code) or (architectures and not any("CausalLM" in a or "LMHead" in a
                                                                                  for a in architectures)):
        raise ModelFolderError(f"{path} is a {config.model_type!r} model "
                               f"({', '.join(architectures) or 'no architecture'}),"
                               " not a causal language model: pass a decoder LM such as Llama, Mistral, Qwen2 or Phi-3")
    return config


def require_safetensors(path: Path) -> None:
    """Safetensors weights only, each file whole: a truncated copy fails here in one line, not deep in a load."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelFolderError(f"{path} has no .safetensors weights: convert the checkpoint with save_pretrained("
                               "safe_serialization=True); pickled .bin weights are not loaded")
    for file in files:
        problem = _safetensors_problem(file)
        if problem:
            raise ModelFolderError(f"{file} is not a whole safetensors file ({problem}): copy it again, or re-save "
                                   "the model with save_pretrained")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def require_tokenizer(path: Path) -> None:
    """Training, eval and export all need the tokenizer saved with the model (a Hub ID's snapshot holds it)."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelFolderError(f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): copy the tokenizer "
                               "files of the model it came from into it (tokenizer.save_pretrained)")


def _safetensors_problem(file: Path) -> str | None:
    """What is wrong with a safetensors file's framing (header length, JSON header, data size), or None.

    Reads the header only; the format is 8 bytes of little-endian header length, a JSON header whose
    `data_offsets` index the data that follows.
    """
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "shorter than its 8-byte header length"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"header of {length} bytes in a file of {size}"
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, ValueError):
            return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
               and "data_offsets" in t), default=0)
    if 8 + length + end != size:
        return f"{size} bytes where its header promises {8 + length + end}: truncated"
    return None


def check_finite(named_tensors, where: Path) -> None:
    """NaN or inf in a weight: a diverged run or a corrupt file, which every later stage would spread."""
    import torch

    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SqftError(f"weight {name} of {where} is not finite (NaN or inf): the checkpoint is corrupt or its "
                            "training diverged; use a good checkpoint")


def check_folder_finite(path: Path) -> None:
    """check_finite over a folder's safetensors, a tensor at a time (export never loads the model itself)."""
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            check_finite(((name, f.get_tensor(name)) for name in f.keys()), path)


def load_causal_lm(path: str | Path, trust_remote_code: bool = False, dtype="auto"):
    """Model (eval mode) and tokenizer from a local folder; safetensors only, no remote code unless asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_dir(path)
    config = load_config(path, trust_remote_code)
    require_safetensors(path)
    require_tokenizer(path)
    from sqft_ov.io.blocks import WIDTHS_KEY

    try:
        if getattr(config, WIDTHS_KEY, None):
            model = _load_cut(path, config, dtype, trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, use_safetensors=True,
                                                         trust_remote_code=trust_remote_code, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as exc:
        raise ModelFolderError(f"cannot load the model in {path}: {str(exc).splitlines()[0]}") from exc
    check_finite(model.named_parameters(), path)
    model.eval()
    return model, tokenizer


def _load_cut(path: Path, config, dtype, trust_remote_code: bool):
    """A model whose blocks have their own widths (`sqft_layer_widths`): built empty, cut, then filled."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from sqft_ov.io.blocks import WIDTHS_KEY, layer_widths, shrink

    if dtype == "auto":
        dtype = checkpoint_dtype(path)
    widths = layer_widths(config)
    full = copy.copy(config)
    delattr(full, WIDTHS_KEY)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(full, dtype=dtype, trust_remote_code=trust_remote_code)
    shrink(model, widths)
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    tied = getattr(config, "tie_word_embeddings", False)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise SqftError(f"the weights in {path} do not fit its {WIDTHS_KEY} ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})")
    if tied:
        model.tie_weights()
    for name, module in model.named_modules():  # rotary tables are computed, not stored: rebuild them on CPU
        if any(b.is_meta for b in module.buffers(recurse=False)):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, type(module)(config=full))
    model.config = config
    return model


def checkpoint_dtype(model_dir: str | Path):
    """The dtype a folder's config.json declares (float32 if none): what a re-saved model keeps."""
    import torch

    dtype = getattr(load_config(model_dir), "dtype", None) or torch.float32
    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).removeprefix("torch."), torch.float32)


def safetensors_index(path: str | Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, for single-file and sharded checkpoints."""
    from safetensors import safe_open

    path = check_model_dir(path)
    index: dict[str, Path] = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            index.update({name: file for name in f.keys()})
    return index


def read_tensor(index: dict[str, Path], name: str):
    """One tensor from its file without loading the rest of the checkpoint."""
    from safetensors import safe_open

    with safe_open(index[name], framework="pt") as f:
        return f.get_tensor(name)


_FINGERPRINTS: dict[tuple, str] = {}  # (file, size, mtime_ns) of every weight file -> its sha256


def model_fingerprint(path: str | Path) -> str:
    """sha256 over the weight files: identifies the exact base a derived artifact came from.

    Cached per process by each file's path, size and modification time, so loading several adapters of one base
    (search, merge, eval) hashes its gigabytes once; a rewritten file is hashed again.
    """
    import hashlib

    path = check_model_dir(path)
    files = sorted(Path(path).glob("*.safetensors"))
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for file in files:
            with open(file, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
        _FINGERPRINTS[key] = digest.hexdigest()
    return _FINGERPRINTS[key]


def decoder_linears(model) -> dict:
    """The linear layers to prune: every nn.Linear except the output embedding (lm_head)."""
    from torch import nn

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}
    if not linears:
        raise ModelFolderError("the model has no linear layers to sparsify outside its lm_head")
    return linears
