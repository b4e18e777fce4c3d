"""eval's metrics on hand-written generations: `####` numbers as before, any other answer as normalised text."""

import math

import pytest

from sqft_ov.errors import SqftError
from sqft_ov.io.sft_data import extract_answer
from sqft_ov.stages.evaluate import EvalConfig, EvalReport
from sqft_ov.stages.metrics import normalize, score

STOPS = ("<|eos|>",)


@pytest.mark.parametrize("response, generated, correct, predicted", [
    (" 3 + 4 = 7. #### 7", " 3 + 4 = 7. #### 7", True, "7"),
    (" 3 + 4 = 7. #### 7", " 3 + 4 = 7. #### 7.0", True, "7"),  # numbers compare normalised
    ("#### 1,234", "so #### 1234", True, "1234"),
    (" 3 + 4 = 7. #### 7", " 3 + 4 = 8. #### 8", False, "8"),
    (" 3 + 4 = 7. #### 7", " 3 + 4 = 7.", False, None),  # no final answer: no_answer counts it
    ("Paris", "  Paris \n", True, "Paris"),
    ("Paris", "Paris<|eos|>Question: and Rome?", True, "Paris"),  # cut at the first stop
    ("the  red\nfox", "the red fox", True, "the red fox"),  # whitespace collapsed on both sides
    ("Paris", "Paris is the capital", False, "Paris is the capital"),
    ("Paris", "paris", False, "paris"),  # case is kept
])
def test_exact(response, generated, correct, predicted):
    scored = score("exact", response, generated, STOPS)
    assert (scored.correct, scored.predicted, scored.numeric) == (correct, predicted, "####" in response)


@pytest.mark.parametrize("response, generated, correct", [
    ("Paris", "The capital is Paris.", True),
    ("New  York", "it is New York<|eos|>", True),
    ("Paris", "The capital is Rome.<|eos|>Paris", False),  # after the stop does not count
    ("#### 42", "6 * 7 = 42, I think", True),  # a `####` reference: its number among the generation's numbers
    ("#### 1234", "about 1,234.0 of them", True),
    ("#### 42", "6 * 7 = 420", False),  # a whole number, not a substring
    ("#### -3", "it is -3", True),
])
def test_contains(response, generated, correct):
    assert score("contains", response, generated, STOPS).correct is correct


@pytest.mark.parametrize("generated", [" 2 + 2 = 4. #### 4", "#### 5", "no answer", "#### 4.00", "####4"])
def test_exact_on_gsm8k_answers_is_what_eval_always_scored(generated):
    """The quickstart's numbers must not move: `####` references score as `extract_answer` equality."""
    scored = score("exact", " 2 + 2 = 4. #### 4", generated)
    assert scored.correct == (extract_answer(generated) == "4") and scored.reference == "4"
    assert EvalConfig().metric == "exact"


def test_normalize_and_bad_metrics():
    assert normalize("  a \n\t b  c<|eos|> d", STOPS) == "a b c"
    assert normalize("x\n\nQuestion: y", ("\n\n", "")) == "x"
    with pytest.raises(SqftError, match="--metric must be exact, contains, loss"):
        EvalConfig(metric="bleu")
    with pytest.raises(SqftError, match="scores no generation"):
        score("loss", "a", "a")


def test_report_says_which_metric_scored():
    exact = EvalReport("m", None, "openvino", "d", 4, 3, 0, 0.5, 10, 1.0, metric="contains", numeric=0)
    assert exact.exact_match == 0.75 and exact.to_dict()["metric"] == "contains"
    assert exact.to_dict()["perplexity"] == pytest.approx(math.exp(0.5))
    loss = EvalReport("m", None, "openvino", "d", 4, 0, 0, 0.5, 10, 1.0, metric="loss")
    assert loss.exact_match is None and loss.to_dict()["exact_match"] is None
    old = EvalReport("m", None, "pytorch", "d", 2, 1, 0, None, 0, 1.0)  # reports written before metrics
    assert old.metric == "exact" and old.exact_match == 0.5 and old.perplexity is None
