"""How far a setting moves the model's outputs: logits of a teacher-forced probe against a reference.

The reference runs the compiled graph at full precision (f32 inference, f32 KV cache, no dynamic
quantization of activations); its greedy tokens are then fed to every setting, so each decode step of
every setting sees the same context and the logits compare position by position. Pipeline properties
do not change the compiled graph; genai's own greedy tokens (from `bench`) cover them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


@dataclass
class Probe:
    prompt: list[int]
    tokens: list[int]  # the reference's greedy continuation, fed to every setting
    logits: np.ndarray  # [len(tokens), vocab]: the logits that predicted each token

    def compare(self, logits: np.ndarray) -> dict:
        diff = float(np.abs(logits - self.logits).max())
        agree = float((logits.argmax(-1) == self.logits.argmax(-1)).mean())
        scale = float(np.abs(self.logits).max())
        return {"max_logit_diff": diff, "relative_logit_diff": diff / scale if scale else 0.0, "top1_agreement": agree}


def _feed(compiled, ids: list[int], start: int) -> dict:
    names = {i.get_any_name() for i in compiled.inputs}
    n = len(ids)
    feed = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, start + n), dtype=np.int64),
            "position_ids": np.arange(start, start + n, dtype=np.int64)[None], "beam_idx": np.zeros(1, dtype=np.int32)}
    return {k: v for k, v in feed.items() if k in names}


def teacher_forced_logits(compiled, prompt: list[int], tokens: list[int] | None, steps: int) -> tuple[list[int], np.ndarray]:
    """Logits of the prompt's last position and of `steps - 1` decode steps, one token each.

    With `tokens=None` the model's own greedy choices are fed (the reference); otherwise `tokens`.
    """
    request = compiled.create_infer_request()
    request.reset_state()
    out = request.infer(_feed(compiled, prompt, 0))
    rows = [np.asarray(out[compiled.output(0)])[0, -1].astype(np.float32)]
    chosen: list[int] = []
    for step in range(steps):
        chosen.append(int(rows[-1].argmax()) if tokens is None else tokens[step])
        if step == steps - 1:
            break
        out = request.infer(_feed(compiled, [chosen[-1]], len(prompt) + step))
        rows.append(np.asarray(out[compiled.output(0)])[0, -1].astype(np.float32))
    return chosen, np.stack(rows)


def reference_probe(xml: Path, prompt: list[int], steps: int, device: str = "CPU") -> Probe:
    import openvino as ov

    compiled = ov.Core().compile_model(xml, device, REFERENCE)
    tokens, logits = teacher_forced_logits(compiled, prompt, None, steps)
    return Probe(prompt, tokens, logits)


def probe_setting(xml: Path, probe: Probe, device_properties: dict[str, str], device: str = "CPU",
                  read_keys=()) -> dict:
    """Compare a setting's logits with the reference; also read back what the compiled model applied."""
    import openvino as ov

    from sqft_ov.measure.tune.space import read_back

    compiled = ov.Core().compile_model(xml, device, device_properties)
    _, logits = teacher_forced_logits(compiled, probe.prompt, probe.tokens, len(probe.tokens))
    result = probe.compare(logits)
    result["applied"] = read_back(compiled, read_keys)
    return result


def matching_prefix(tokens: list[int], reference: list[int]) -> int:
    """How many generated tokens agree with the reference before the first difference."""
    n = 0
    for a, b in zip(tokens, reference):
        if a != b:
            break
        n += 1
    return n
