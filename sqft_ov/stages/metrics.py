"""How eval scores one generation against its reference response: `exact`, `contains` or `loss`.

A reference with a final answer after `####` (GSM8K style, the quickstart's arithmetic task) is scored on that
number, as eval always did; any other reference on its text, so a task of any shape can be scored. Texts are
compared normalised — stripped, whitespace collapsed, cut at the first stop string — so a trailing newline or
a run-on past the answer's end does not decide the score. `loss` generates nothing: the teacher-forced
response loss (and its perplexity) is the measure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqft_ov.errors import ConfigError, SqftError
from sqft_ov.io.sft_data import extract_answer, normalize_number

METRICS = ("exact", "contains", "loss")
DEFAULT_METRIC = "exact"  # on `####` answers exactly what eval scored before metrics existed
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ConfigError(f"--metric must be {', '.join(METRICS)}; got {metric!r}")
    return metric


def normalize(text: str, stops: Sequence[str] = ()) -> str:
    """Cut at the first stop string, strip, collapse whitespace."""
    for stop in stops:
        if stop:
            text = text.split(stop, 1)[0]
    return " ".join(text.split())


@dataclass(frozen=True)
class Score:
    reference: str  # the final `####` number, or the normalised reference text
    predicted: str | None  # the generation's final `####` number (None: it has none), or its normalised text
    correct: bool
    numeric: bool  # scored on the `####` number


def score(metric: str, response: str, generated: str, stops: Sequence[str] = ()) -> Score:
    """One example under `exact` or `contains` (`loss` scores no generation)."""
    if check_metric(metric) == "loss":
        raise SqftError("the loss metric scores no generation")
    answer = extract_answer(response)
    if answer is not None:
        predicted = extract_answer(generated)
        if metric == "exact":
            return Score(answer, predicted, predicted == answer, True)
        numbers = {normalize_number(n) for n in _NUMBER.findall(normalize(generated, stops))}
        return Score(answer, predicted, answer in numbers, True)
    reference, text = normalize(response), normalize(generated, stops)
    correct = text == reference if metric == "exact" else reference in text
    return Score(reference, text, correct, False)
