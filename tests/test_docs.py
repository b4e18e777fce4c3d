"""The documentation cannot go stale: docs/cli.md is the CLI's own help, and the README's commands run."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_matches_the_app():
    from sqft_ov.cli.docs import DOC, render

    assert DOC.read_text() == render(), "docs/cli.md is stale: run python -m sqft_ov.cli.docs --write"


def test_cli_reference_documents_every_command_and_option():
    import click
    import typer

    from sqft_ov.cli import app

    text = (ROOT / "docs" / "cli.md").read_text()
    group = typer.main.get_command(app)
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command.hidden:
            continue
        assert f"## `sqft-ov {name}`" in text, name
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and param.name != "help":
                assert param.opts[0] in text, f"{name} {param.opts[0]}"


def test_readme_links_resolve():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "CONTRIBUTING.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def readme_block(tag: str, language: str = "bash") -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {tag} -->\s*```{language}\n(.*?)```", text, re.S)
    assert match, f"README.md has no <!-- {tag} --> {language} block"
    return match.group(1)


@pytest.mark.slow
def test_readme_your_model_commands_run(tmp_path, tiny_models):
    """The README's five commands, verbatim but for MODEL (a tiny local folder instead of a hub ID)."""
    from sqft_ov.quickstart.arithmetic import write_task

    block = readme_block("your-model")
    assert len(block.strip().splitlines()) <= 6
    script = re.sub(r"^MODEL=\S+", f"MODEL={tiny_models['llama']}", block, count=1, flags=re.M)
    assert script != block, "the block no longer starts with MODEL=..."
    task = write_task(tmp_path / "task", train=16, test=8)
    for name in ("train", "test"):
        (tmp_path / f"{name}.jsonl").write_text(Path(task[name]).read_text())
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    merge = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert merge["method"] == "qa-sparsepeft" and merge["base_zeros"] > 0
    assert merge["base_zeros_kept"] == merge["base_zeros"], "the merge filled zeros of the sparse base"
    weights = json.loads((tmp_path / "ir" / "sqft_export.json").read_text())["weights"]
    assert sum(w["zeros_kept"] for w in weights.values()) == sum(w["source_zeros"] for w in weights.values()) > 0
    assert re.search(r"exact", done.stdout, re.I), done.stdout  # eval printed its table
