"""The embedded default task: synthetic arithmetic word problems with GSM8K-style answers.

Two distributions, both deterministic given a seed:

* `foundation` — what the tiny foundation model is pretrained on: one-step addition and subtraction in a
  handful of templates.
* `downstream` — the fine-tuning task, shifted the way a real downstream task is: new wording, two-step
  problems (add, then take away) and an operation the foundation never saw (multiplication).

Every answer is worked step by step and ends in `#### N`, so exact-match accuracy reads the number after
the last `####` exactly as GSM8K evaluations do. Numbers are small (the foundation model is tiny): the
point is a task where sparsity visibly costs accuracy and fine-tuning visibly buys it back.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from sqft_ov.io.sft_data import extract_answer  # noqa: F401  (the task's answers are read with it)

PROMPT_FORMAT = "Question: {question}\nAnswer:"

_NAMES = ["Ana", "Ben", "Mia", "Omar", "Lena", "Raj", "Zoe", "Ivan", "Kai", "Nora", "Luis", "Emma"]
_THINGS = ["apples", "books", "cakes", "coins", "eggs", "flowers", "marbles", "pencils", "stamps", "shells",
           "cards", "plums"]
_PLACES = ["box", "bag", "basket", "drawer", "jar", "crate"]


@dataclass(frozen=True)
class Problem:
    question: str
    steps: tuple[str, ...]
    answer: int
    kind: str

    @property
    def prompt(self) -> str:
        return PROMPT_FORMAT.format(question=self.question)

    @property
    def response(self) -> str:
        return " " + " ".join(self.steps) + f" #### {self.answer}"

    def row(self) -> dict:
        return {"prompt": self.prompt, "response": self.response, "answer": str(self.answer), "kind": self.kind}


def _add(a: int, b: int) -> str:
    return f"{a} + {b} = {a + b}."


def _sub(a: int, b: int) -> str:
    return f"{a} - {b} = {a - b}."


_GAIN = ["buys", "finds", "gets", "wins", "picks", "receives"]
_LOSS = ["gives away", "loses", "eats", "sells", "breaks", "uses"]


def _foundation_problem(rng: random.Random) -> Problem:
    n, t = rng.choice(_NAMES), rng.choice(_THINGS)
    if rng.random() < 0.5:
        a, b, v = rng.randint(1, 20), rng.randint(1, 20), rng.choice(_GAIN)
        question = rng.choice([
            f"{n} has {a} {t}. {n} {v} {b} more. How many {t} does {n} have now?",
            f"{n} has {a} {t} and {v} {b} more. How many {t} does {n} have?",
            f"There are {a} {t}. {n} {v} {b} more {t}. How many {t} are there now?",
        ])
        return Problem(question, (_add(a, b),), a + b, "add")
    a, v = rng.randint(2, 40), rng.choice(_LOSS)
    b = rng.randint(1, a)
    question = rng.choice([
        f"{n} has {a} {t}. {n} {v} {b} of them. How many {t} does {n} have now?",
        f"{n} has {a} {t} and {v} {b}. How many {t} are left?",
        f"There are {a} {t}. {n} {v} {b} of the {t}. How many {t} are there now?",
    ])
    return Problem(question, (_sub(a, b),), a - b, "sub")


def _downstream_problem(rng: random.Random) -> Problem:
    n, m, t, p = rng.choice(_NAMES), rng.choice(_NAMES), rng.choice(_THINGS), rng.choice(_PLACES)
    kind = rng.choice(["add", "sub", "two-step", "mul"])
    if kind == "add":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        question = rng.choice([
            f"A {p} holds {a} {t}. {m} {rng.choice(_GAIN)} {b} more for the {p}. How many {t} are in the {p}?",
            f"In the morning {n} has {a} {t}. By the evening {n} {rng.choice(_GAIN)} {b} more. "
            f"How many {t} does {n} have in the evening?",
        ])
        return Problem(question, (_add(a, b),), a + b, kind)
    if kind == "sub":
        a = rng.randint(2, 40)
        b = rng.randint(1, a)
        question = rng.choice([
            f"A {p} holds {a} {t}. {m} {rng.choice(_LOSS)} {b} of them. How many {t} are in the {p}?",
            f"In the morning {n} has {a} {t}. By the evening {n} {rng.choice(_LOSS)} {b}. "
            f"How many {t} does {n} have in the evening?",
        ])
        return Problem(question, (_sub(a, b),), a - b, kind)
    if kind == "two-step":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        c = rng.randint(1, a + b)
        question = (f"A {p} holds {a} {t}. {m} {rng.choice(_GAIN)} {b} more, then {n} {rng.choice(_LOSS)} {c} "
                    f"of them. How many {t} are in the {p}?")
        return Problem(question, (_add(a, b), _sub(a + b, c)), a + b - c, kind)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    question = rng.choice([
        f"{n} fills {a} {p}s with {b} {t} each. How many {t} is that?",
        f"There are {a} {p}s and each {p} holds {b} {t}. How many {t} are there?",
    ])
    return Problem(question, (f"{a} * {b} = {a * b}.",), a * b, kind)


def problems(distribution: str, n: int, seed: int = 0) -> list[Problem]:
    """`n` problems of the `foundation` or `downstream` distribution, the same for the same seed."""
    make = {"foundation": _foundation_problem, "downstream": _downstream_problem}.get(distribution)
    if make is None:
        raise ValueError(f"unknown distribution {distribution!r}: foundation or downstream")
    rng = random.Random(f"{distribution}-{seed}")
    return [make(rng) for _ in range(n)]


def pretraining_text(n: int, seed: int = 0) -> list[str]:
    """Foundation-model pretraining documents: question, worked answer, final answer."""
    return [p.prompt + p.response for p in problems("foundation", n, seed)]


def write_task(out: str | Path, train: int = 2000, test: int = 200, seed: int = 0,
               validation: int = 0, held_back: int = 0) -> dict[str, Path]:
    """The downstream task as JSONL files (`prompt`, `response`, `answer`, `kind`): train, and disjoint from it
    and from each other, `validation` problems (choices: sub-adapters, hyperparameters) and `test` problems
    (scored once per final row). `held_back`: that many problems before the test split are skipped (problems
    an earlier plan was tuned on, which a held-out test set must not contain)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": [p.row() for p in problems("downstream", train, seed)]}
    seen = {r["prompt"] for r in splits["train"]}
    fresh = (p for p in problems("downstream", 20 * (held_back + test + validation), seed + 1)
             if p.prompt not in seen)
    # test first: the same test set as before (without held_back)
    for name, n in (("held back", held_back), ("test", test), ("validation", validation)):
        if not n:
            continue
        rows: list[dict] = []
        for p in fresh:
            if len(rows) == n:
                break
            if p.prompt not in seen:
                seen.add(p.prompt)
                rows.append(p.row())
        if name != "held back":
            splits[name] = rows
    paths = {}
    for name, rows in splits.items():
        paths[name] = out / f"{name}.jsonl"
        tmp = paths[name].with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(paths[name])
    return paths
