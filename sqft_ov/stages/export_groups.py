"""INT4 group sizes per layer: the fallback for layers a group size does not divide, planned and described.

`optimum-cli export openvino --weight-format int4` leaves NNCF's fallback at ERROR for its generic default
(group 128), so a model such as SmolLM2-135M (hidden 576) fails there; optimum-intel's own per-model defaults
for such models pick ADJUST. sqft-ov's `auto` does the same for the default group size (a group size the user
chose explicitly and that does not fit is still an error), and says which layers got which group size.
"""

from __future__ import annotations

from pathlib import Path

from sqft_ov.errors import ConfigError

FALLBACKS = ("auto", "error", "adjust", "ignore")
MIN_ADJUSTED_GROUP_SIZE = 32  # NNCF's AdvancedCompressionParameters.min_adjusted_group_size default


def resolve_fallback(fallback: str, explicit_group_size: bool) -> str:
    """`auto`: NNCF's ADJUST when the default group size applies, ERROR for one the user chose."""
    if fallback != "auto":
        return fallback
    return "error" if explicit_group_size else "adjust"


def grouped_input_sizes(source, all_layers: bool) -> dict[str, int]:
    """Input size of every weight NNCF groups: the decoder linears (and embeddings / lm_head with all_layers),
    from a model folder's safetensors headers or from a model in memory."""
    from safetensors import safe_open

    if isinstance(source, (str, Path)):
        shapes = {}
        for file in sorted(Path(source).glob("*.safetensors")):
            with safe_open(file, framework="pt") as f:
                shapes |= {name: f.get_slice(name).get_shape() for name in f.keys()}
    else:
        shapes = {name: list(t.shape) for name, t in source.state_dict().items()}
    # NNCF keeps embeddings and lm_head in INT8 (per channel): only the decoder linears are grouped.
    return {name: shape[1] for name, shape in shapes.items()
            if len(shape) == 2 and name.endswith(".weight") and (all_layers or not ("embed" in name or "lm_head" in name))}


def _adjusted(size: int, fallback: str) -> int | str:
    """NNCF 3.4's choice for a layer the group size does not divide (WeightCompression's fallback handling)."""
    if fallback == "ignore":
        return "not compressed"
    lowest_power_of_two = size & -size  # the largest power of two dividing the input size
    return lowest_power_of_two if lowest_power_of_two >= MIN_ADJUSTED_GROUP_SIZE else "int8 (backup)"


def plan_group_sizes(sizes: dict[str, int], group_size: int, fallback: str, explicit: bool) -> dict[str, int | str]:
    """The layers `group_size` does not divide, each with what it gets; raises when the fallback is an error."""
    misfits = {name: size for name, size in sizes.items() if group_size != -1 and size % group_size}
    if not misfits:
        return {}
    if fallback == "error":
        name, size = next(iter(misfits.items()))
        flag = f"--group-size {group_size}" if explicit else f"the group size {group_size}"
        more = f" and {len(misfits) - 1} more layers" if len(misfits) > 1 else ""
        raise ConfigError(f"{flag} does not divide {name} (input size {size}){more}:"
                          " choose a divisor, or pass --group-size-fallback adjust|ignore")
    return {name: _adjusted(size, fallback) for name, size in misfits.items()}


def describe_plan(plan: dict[str, int | str], sizes: dict[str, int], group_size: int) -> str:
    """One line: 'group size 128, adjusted to 64 on 30 layers whose input size 576 it does not divide'."""
    if not plan:
        return f"group size {group_size} on all {len(sizes)} layers"
    counts: dict[tuple, int] = {}
    for name, got in plan.items():
        counts[(got, sizes[name])] = counts.get((got, sizes[name]), 0) + 1
    parts = [f"{'adjusted to ' if isinstance(got, int) else ''}{got} on {n} layers whose input size {size} "
             "it does not divide" for (got, size), n in sorted(counts.items(), key=str)]
    return f"group size {group_size}, " + "; ".join(parts)
