"""Knowledge distillation in finetune: a frozen teacher's next-token distributions as a second loss.

With `FinetuneConfig.teacher` the training loss is

    task_loss + distill_weight * T^2 * KL(softmax(teacher_logits / T) || softmax(student_logits / T))

with the KL summed over the vocabulary and taken over the response tokens the task loss counts (labels != -100,
position i predicting token i + 1 as the causal LM loss shifts them), normalised as Trainer normalises the task
loss (per token of the batch, or of the whole accumulated batch with `num_items_in_batch`). T^2 keeps the soft
targets' gradients on the task loss's scale whatever T is (Hinton et al., 2015). NNCF's distillation_qat_with_lora
example and Minitron distil on the KL alone at T = 1; here the task loss stays, and T = 1, weight 1 by default.

The teacher is any model folder sqft-ov loads (the dense base, a merged model) or a finetune OUTPUT folder (its
base + trained adapter, as `load_for_inference` rebuilds it, NLS / elastic widths at their largest). It is frozen,
in eval mode, in the training precision, on the student's device, and runs only in training steps: the eval loss
stays the task loss. Each process of a distributed run loads its own (no code of ours: DDP needs none; FSDP does
not shard the teacher). The student's NLS ranks, elastic widths and gradient checkpointing apply to the student
only; its logits come from its own forward, under Trainer's autocast.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sqft_ov.adapters.config import ADAPTER_CONFIG, TRAINABLE, FinetuneConfig
from sqft_ov.errors import ConfigError, ModelFolderError
from sqft_ov.io.sft_data import IGNORE_INDEX

__all__ = ["Distiller", "load_teacher", "response_kl", "teacher_source"]


def teacher_source(path: str | Path) -> dict:
    """The teacher as the adapter's record names it: {"path", "kind": model | adapter, "fingerprint"} (an adapter
    also its "base"). Fails in one line, before anything is loaded, when `path` is neither a model folder nor a
    finetune output."""
    from sqft_ov.io.checkpoint import check_model_dir, model_fingerprint

    folder = Path(path).expanduser()
    if (folder / ADAPTER_CONFIG).is_file():
        from sqft_ov.adapters.adapted import read_record

        record = read_record(folder)
        trained = folder / TRAINABLE
        if not trained.is_file():
            raise ConfigError(f"--teacher {folder} has no {TRAINABLE} (the trained tensors): copy the whole adapter "
                              "folder")
        digest = hashlib.sha256(record["base_fingerprint"].encode())  # the base and the adapter trained on it
        digest.update(trained.read_bytes())
        return {"path": str(folder.absolute()), "kind": "adapter", "base": record["base"],
                "fingerprint": digest.hexdigest()}
    try:
        model_dir = check_model_dir(path)  # a .gguf file, Hub ID or example name too, as for the base
    except ModelFolderError as exc:
        raise ConfigError(f"--teacher: {str(exc).rstrip('.')}, or a finetune output folder (with {ADAPTER_CONFIG})"
                          ) from None
    return {"path": str(model_dir), "kind": "model", "fingerprint": model_fingerprint(model_dir)}


def _output_size(model) -> int:
    """Rows of the output embedding: the logits' last dimension."""
    head = model.get_output_embeddings()
    return head.weight.shape[0] if head is not None else model.config.vocab_size


def check_vocabulary(teacher, teacher_tokenizer, student, student_tokenizer, where: str) -> None:
    """The KL compares the two models' distributions token id by token id: same logits size, same tokenizer."""
    sizes = _output_size(teacher), _output_size(student)
    if sizes[0] != sizes[1]:
        raise ConfigError(f"--teacher {where} predicts {sizes[0]} tokens, the student {sizes[1]}: distillation needs "
                          "the student's vocabulary (a teacher of the same model family and tokenizer)")
    theirs, ours = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if theirs != ours:
        differ = len(set(theirs.items()) ^ set(ours.items())) // 2 or abs(len(theirs) - len(ours))
        raise ConfigError(f"--teacher {where} has another tokenizer than the student ({differ} of {len(ours)} tokens "
                          "differ): distillation needs the student's vocabulary")


def load_teacher(config: FinetuneConfig, student, tokenizer, source: dict | None = None) -> tuple:
    """(teacher model, its record entry) for `config.teacher`: frozen, in eval mode, in `config.precision`, its
    vocabulary checked against the student's. Remote code runs only with `config.trust_remote_code`."""
    from sqft_ov.adapters.adapted import load_for_inference
    from sqft_ov.io.checkpoint import load_causal_lm

    source = source or teacher_source(config.teacher)
    if source["kind"] == "adapter":  # base + adapter as eval and merge rebuild it (never remote code)
        teacher, teacher_tokenizer = load_for_inference(source["base"], source["path"], dtype=config.torch_dtype)
    else:
        teacher, teacher_tokenizer = load_causal_lm(source["path"], config.trust_remote_code, dtype=config.torch_dtype)
    check_vocabulary(teacher, teacher_tokenizer, student, tokenizer, source["path"])
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher, {**source, "distill_weight": config.distill_weight, "temperature": config.temperature}


def response_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                temperature: float) -> tuple[torch.Tensor, int]:
    """(T^2 * KL(teacher || student) summed over the response tokens, how many there are), in float32."""
    mask = labels[:, 1:] != IGNORE_INDEX  # logits at i predict labels at i + 1
    student = student_logits[:, :-1][mask].float() / temperature
    teacher = teacher_logits[:, :-1][mask].float() / temperature
    kl = torch.nn.functional.kl_div(torch.log_softmax(student, -1), torch.log_softmax(teacher, -1), log_target=True,
                                    reduction="sum")
    return kl * temperature ** 2, int(mask.sum())


class Distiller:
    """The teacher and the term `SqftTrainer.compute_loss` adds to the task loss; it keeps T^2 * KL per response
    token since the last log line, which the loss log shows as `distill_loss` (this process's tokens)."""

    def __init__(self, teacher, weight: float, temperature: float):
        self.teacher, self.weight, self.temperature = teacher, weight, temperature
        self._kl, self._tokens = 0.0, 0

    def to(self, device) -> "Distiller":
        self.teacher.to(device)
        return self

    def add_to(self, trainer, loss: torch.Tensor, outputs, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        """`loss` (Trainer's task loss) + weight * T^2 * KL, the KL normalised as Trainer normalised the loss: by
        `num_items_in_batch` (response tokens of the accumulated batch, all processes) where the model took it,
        else by this batch's response tokens. Weight 0 only logs the KL."""
        tokens, scale = None, 1
        if trainer.model_accepts_loss_kwargs and num_items_in_batch is not None:
            tokens = num_items_in_batch
            if trainer.args.average_tokens_across_devices:  # as Trainer scales the summed-token loss
                scale = trainer.accelerator.num_processes if trainer.args.n_gpu <= 1 else trainer.args.n_gpu
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                                          use_cache=False).logits
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.weight > 0):
            kl, count = response_kl(outputs.logits, teacher_logits.to(outputs.logits.device), inputs["labels"],
                                    self.temperature)
        self._kl, self._tokens = self._kl + float(kl.detach()), self._tokens + count
        if self.weight == 0:
            return loss
        return loss + self.weight * scale * kl / (tokens if tokens is not None else max(count, 1))

    def logged(self) -> dict:
        """{"distill_loss": T^2 * KL per response token since the last call} (nothing if no token was seen)."""
        entry = {"distill_loss": self._kl / self._tokens} if self._tokens else {}
        self._kl, self._tokens = 0.0, 0
        return entry
