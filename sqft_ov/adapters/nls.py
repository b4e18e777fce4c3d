"""Neural Low-rank adapter Search (NLS): elastic adapter ranks, one per decoder block, sampled every step
(and, for LoNAS / EFTNAS super-networks, elastic base widths sampled with them).

Training a super-adapter with a random rank per block each optimizer step makes every sub-adapter usable;
the activated configurations and their losses are recorded so that `sqft_ov.stages.search` can pick one
afterwards. Sampling is a pure function of (seed, step), so a resumed run samples exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from sqft_ov.errors import AdapterMismatchError, ConfigError, ModelFolderError, SqftError

HISTORY = "nls_history.json"
_BLOCK = re.compile(r"\.layers\.(\d+)\.")


def check_rank_space(rank_space: tuple[int, ...]) -> tuple[int, ...]:
    if not rank_space:
        raise ConfigError("--rank-space needs at least one rank")
    if len(set(rank_space)) != len(rank_space):
        raise ConfigError(f"--rank-space {' '.join(map(str, rank_space))} has duplicates: list each rank once")
    if min(rank_space) < 1:
        raise ConfigError("--rank-space ranks must be positive")
    return tuple(sorted(rank_space, reverse=True))


def blocks_of(weight_names) -> dict[int, list[str]]:
    """Decoder block index -> the adapted weights in it (they share one rank)."""
    out: dict[int, list[str]] = defaultdict(list)
    for name in weight_names:
        match = _BLOCK.search(name)
        if match is None:
            raise ModelFolderError(f"cannot tell which decoder block {name} belongs to: NLS needs model.layers.N.*")
        out[int(match.group(1))].append(name)
    return dict(sorted(out.items()))


def expand(ranks: dict[int, int], blocks: dict[int, list[str]]) -> dict[str, int]:
    return {name: ranks[b] for b, names in blocks.items() for name in names}


class RankSampler(TrainerCallback):
    """Samples a sub-network at each optimizer step (a rank per block; with elastic widths also an MLP width
    and KV-group count per block) and records (configuration, loss).

    With elastic widths the steps follow the sandwich rule of weight-sharing NAS: every 4th step trains the
    largest sub-network, the next the smallest, the two others random ones. Ranks alone are sampled at random.
    """

    def __init__(self, blocks: dict[int, list[str]], rank_space: tuple[int, ...], seed: int,
                 apply: Callable[[dict[str, int]], None] | None, space=None, apply_widths=None):
        self.blocks, self.rank_space, self.seed, self.apply = blocks, rank_space, seed, apply
        self.space, self.apply_widths = space, apply_widths
        self.history: list[dict] = []
        self.current: dict[int, int] = {}
        self.current_widths: list = []
        self._losses: list[float] = []

    def sample(self, step: int) -> dict[int, int]:
        rng = random.Random(f"{self.seed}:{step}")
        if self.space is None:
            return {b: rng.choice(self.rank_space) for b in self.blocks}
        from sqft_ov.io.blocks import BlockWidth

        kind = step % 4
        pick = (lambda choices: choices[0]) if kind == 0 else (lambda choices: choices[-1]) if kind == 1 \
            else rng.choice
        space = sorted(self.rank_space, reverse=True)
        ranks = {b: pick(space) for b in self.blocks}
        self.current_widths = [BlockWidth(pick(m), pick(k)) for m, k in zip(self.space.mlp, self.space.kv_groups)]
        return ranks

    def on_step_begin(self, args, state, control, **kwargs):
        self.current = self.sample(state.global_step)
        if self.apply is not None:
            self.apply(expand(self.current, self.blocks))
        if self.space is not None:
            self.apply_widths(self.current_widths)

    def record(self, loss: float) -> None:
        self._losses.append(loss)

    def on_step_end(self, args, state, control, **kwargs):
        if self._losses:
            entry = {"step": state.global_step, "ranks": [self.current[b] for b in self.blocks],
                     "loss": sum(self._losses) / len(self._losses)}
            if self.space is not None:
                entry["widths"] = [{"mlp": w.mlp, "kv_groups": w.kv_groups} for w in self.current_widths]
            self.history.append(entry)
        self._losses = []

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            (folder / HISTORY).write_text(json.dumps(self.history))

    def load(self, checkpoint: str | Path) -> None:
        path = Path(checkpoint) / HISTORY
        if path.is_file():
            self.history = json.loads(path.read_text())

    def on_train_end(self, args, state, control, **kwargs):
        maximal = {b: max(self.rank_space) for b in self.blocks}
        if self.apply is not None:
            self.apply(expand(maximal, self.blocks))  # the saved super-adapter is used at full rank by default
        if self.space is not None:
            self.apply_widths(self.space.largest())


def load_sub_adapter(source, rank_space: list[int], blocks: int) -> list[int]:
    """Ranks from a CONFIG.json (or a `SearchResult` in memory), checked against the adapter's rank space and
    block count."""
    if hasattr(source, "ranks"):
        ranks = source.ranks
    else:
        try:
            ranks = json.loads(Path(source).read_text())["ranks"]
        except (OSError, ValueError, KeyError) as exc:
            raise SqftError(f"cannot read a sub-adapter configuration from {source}: expected JSON with "
                            "'ranks'") from exc
    where = "the search result" if hasattr(source, "ranks") else source
    if ranks is None or len(ranks) != blocks:
        raise AdapterMismatchError(f"{where} has {len(ranks or [])} ranks but the adapter has {blocks} decoder blocks")
    outside = [r for r in ranks if r not in rank_space]
    if outside:
        raise AdapterMismatchError(f"{where}: rank {outside[0]} is outside the adapter's rank space {rank_space}")
    return list(ranks)


def load_sub_widths(source, space) -> list:
    """Widths per block from a CONFIG.json (or a `SearchResult` in memory), checked against the super-network's
    search space."""
    from sqft_ov.io.blocks import BlockWidth

    if hasattr(source, "widths"):
        widths, where = source.widths or [], "the search result"
    else:
        where = source
        try:
            widths = [BlockWidth(int(w["mlp"]), int(w["kv_groups"]))
                      for w in json.loads(Path(source).read_text())["widths"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SqftError(f"cannot read sub-network widths from {source}: expected JSON with 'widths' "
                            "([{\"mlp\": ..., \"kv_groups\": ...}, ...] per block)") from exc
    if not space.contains(widths):
        raise AdapterMismatchError(f"{where}: its widths are outside the adapter's search space (or for another number "
                                   "of blocks): use a CONFIG.json that search wrote for this adapter")
    return widths
