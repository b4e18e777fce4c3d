"""Tiny, randomly initialised causal LMs with a locally trained tokenizer, in Hugging Face layout.

Nothing here downloads: the tokenizer is a byte-level BPE trained on text generated below, and the
weights are random. Tests and first-time users get a real model folder (config.json, safetensors,
tokenizer files) of the same architecture families users deploy, in seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from sqft_ov.errors import ConfigError
from sqft_ov.io.data import sample_corpus
from sqft_ov.io.output import atomic_output

ARCHITECTURES = ("llama", "mistral", "qwen2", "phi3")



@dataclass
class TinyModelConfig:
    """Shape of a tiny model. Sizes default to multiples of 64 so every INT4 group size up to 64 divides them."""

    arch: str = "llama"
    layers: int = 2
    hidden: int = 128
    intermediate: int = 256
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 1024
    max_positions: int = 512
    seed: int = 0
    dtype: str = "float32"  # weights as saved: float32, bfloat16 or float16


def build_tokenizer(vocab: int = 1024, seed: int = 0, corpus: list[str] | None = None, split_digits: bool = False):
    """Train a byte-level BPE tokenizer (the Llama-3 / Qwen2 kind) and wrap it for transformers.

    `split_digits`: one token per digit (as Llama and Qwen2 do), which is what lets a small model learn
    arithmetic digit by digit instead of memorising a token per number.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|bos|>", "<|eos|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus if corpus is not None else sample_corpus(seed=seed), trainer=trainer)
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B",
                                                       special_tokens=[("<|bos|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>", model_max_length=4096)
    fast.chat_template = ("{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}{% if m['role'] != 'user' %}"
                          "<|eos|>{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    return fast


def hf_config(cfg: TinyModelConfig, tokenizer):
    from transformers import LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    common = dict(vocab_size=cfg.vocab, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                  num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
                  max_position_embeddings=cfg.max_positions, tie_word_embeddings=False,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    if cfg.arch == "llama":
        return LlamaConfig(**common)
    if cfg.arch == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if cfg.arch == "qwen2":  # Qwen2 always carries q/k/v biases: the architecture tests need one with biases.
        return Qwen2Config(**common)
    if cfg.arch == "phi3":  # fused qkv_proj and gate_up_proj
        return Phi3Config(**common, original_max_position_embeddings=cfg.max_positions)
    raise ConfigError(f"unknown architecture {cfg.arch!r}: choose one of {', '.join(ARCHITECTURES)}")


def check_config(cfg: TinyModelConfig) -> None:
    if cfg.arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {cfg.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    for name in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab", "max_positions"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer")
    if cfg.hidden % cfg.heads or cfg.heads % cfg.kv_heads:
        raise ConfigError(f"--hidden ({cfg.hidden}) must be divisible by --heads ({cfg.heads}) and --heads by "
                          f"--kv-heads ({cfg.kv_heads})")
    if cfg.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype must be float32, bfloat16 or float16, got {cfg.dtype!r}")
    if cfg.vocab < 300:
        raise ConfigError("--vocab must be at least 300 (256 byte tokens, special tokens and some merges)")


def build_tiny_model(output: str | Path, config: TinyModelConfig | None = None, overwrite: bool = False) -> Path:
    """Write a tiny random causal LM with its tokenizer to `output` (Hugging Face layout, safetensors)."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    cfg = config or TinyModelConfig()
    check_config(cfg)
    with atomic_output(output, overwrite) as tmp:
        tokenizer = build_tokenizer(cfg.vocab, cfg.seed)
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_config(hf_config(cfg, tokenizer), dtype=torch.float32)
        model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                                   eos_token_id=tokenizer.eos_token_id,
                                                   pad_token_id=tokenizer.pad_token_id)
        model.to(getattr(torch, cfg.dtype)).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "sqft_tiny_model.json").write_text(json.dumps(asdict(cfg), indent=2))
    return Path(output).absolute()
