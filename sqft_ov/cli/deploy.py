"""Commands that package an exported IR for a server: ovms."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sqft_ov.cli.app import app, console


@app.command()
def ovms(
    ir: Path = typer.Argument(..., help="OpenVINO IR folder from sqft-ov export (with tokenizer IRs)."),
    repo: Path = typer.Argument(..., help="Folder for the OVMS model repository (config.json + NAME/)."),
    name: str = typer.Option("model", help="Served model name: the \"model\" field of /v3/chat/completions."),
    device: str = typer.Option("CPU", help="OpenVINO device OVMS compiles the IR on."),
    cache_size: int = typer.Option(2, help="KV-cache memory OVMS reserves, in GB."),
    max_num_seqs: int = typer.Option(256, help="Sequences decoded together (continuous batching)."),
    max_num_batched_tokens: Optional[int] = typer.Option(None, show_default="OVMS's own", help="Tokens per scheduler step."),
    prefix_caching: bool = typer.Option(True, help="Reuse the KV cache of prompt prefixes shared by requests."),
    overwrite: bool = typer.Option(False, help="Replace REPO if it exists."),
) -> None:
    """Write an OpenVINO Model Server repository that serves IR with continuous batching (graph.pbtxt, config.json).

    Not run against a real OVMS yet (none was available where this was written).
    Serve it: ovms --rest_port 8000 --config_path REPO/config.json (see docs/deploy.md).
    """
    from sqft_ov.stages.ovms import OvmsConfig, write_ovms_repository

    config = OvmsConfig(name=name, device=device, cache_size_gb=cache_size, max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=max_num_batched_tokens, enable_prefix_caching=prefix_caching)
    result = write_ovms_repository(ir, repo, config, overwrite)
    console.print(f"OVMS repository written to {result['repository']} (graph {result['graph']})", highlight=False,
                  soft_wrap=True)
    console.print(f"plugin_config: {result['plugin_config'] or 'OpenVINO defaults and the IR rt_info'}",
                  highlight=False, markup=False)
    if result["not_applicable"]:
        console.print(f"not used by OVMS (genai LLMPipeline options): {result['not_applicable']}", highlight=False,
                      markup=False)
    console.print(f"start: {result['start']}", highlight=False, markup=False)
