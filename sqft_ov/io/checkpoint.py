"""Load a causal LM from a local Hugging Face folder, refusing what cannot work with a message naming the fix."""

from __future__ import annotations

from pathlib import Path

from sqft_ov.errors import SqftError


def check_model_dir(path: str | Path) -> Path:
    """A folder with a config.json of a causal-LM architecture and safetensors weights.

    A `.gguf` file (or an example model's name) stands for its converted folder: see `sqft_ov.io.gguf`.
    """
    from sqft_ov.io.gguf import resolve_model

    path = resolve_model(path).absolute()
    if not path.is_dir():
        raise SqftError(f"model folder {path} does not exist: pass a local folder in Hugging Face layout")
    if not (path / "config.json").is_file():
        raise SqftError(f"{path} has no config.json: pass a Hugging Face model folder (save_pretrained output)")
    return path


def load_config(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = check_model_dir(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as exc:
        raise SqftError(f"cannot read {path / 'config.json'}: {str(exc).splitlines()[0]}") from exc
    architectures = getattr(config, "architectures", None) or []
    known = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    encoder = config.model_type in ("bert", "roberta", "xlm-roberta", "electra", "camembert") and not config.is_decoder
    if encoder or not (known or trust_remote_code) or (architectures and not any("CausalLM" in a or "LMHead" in a
                                                                                  for a in architectures)):
        raise SqftError(f"{path} is a {config.model_type!r} model ({', '.join(architectures) or 'no architecture'}),"
                        " not a causal language model: pass a decoder LM such as Llama, Mistral, Qwen2 or Phi-3")
    return config


def require_safetensors(path: Path) -> None:
    if not any(path.glob("*.safetensors")):
        raise SqftError(f"{path} has no .safetensors weights: convert the checkpoint with save_pretrained("
                        "safe_serialization=True); pickled .bin weights are not loaded")


def load_causal_lm(path: str | Path, trust_remote_code: bool = False, dtype="auto"):
    """Model (eval mode) and tokenizer from a local folder; safetensors only, no remote code unless asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_dir(path)
    config = load_config(path, trust_remote_code)
    require_safetensors(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as exc:
        raise SqftError(f"cannot load the model in {path}: {str(exc).splitlines()[0]}") from exc
    model.eval()
    return model, tokenizer


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


def model_fingerprint(path: str | Path) -> str:
    """sha256 over the weight files: identifies the exact base a derived artifact came from."""
    import hashlib

    path = check_model_dir(path)
    digest = hashlib.sha256()
    for file in sorted(Path(path).glob("*.safetensors")):
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def decoder_linears(model) -> dict:
    """The linear layers to prune: every nn.Linear except the output embedding (lm_head)."""
    from torch import nn

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}
    if not linears:
        raise SqftError("the model has no linear layers to sparsify outside its lm_head")
    return linears
