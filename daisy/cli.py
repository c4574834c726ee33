"""The `daisy` command line: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    help="daisy-speech: label-free early exit for self-supervised speech models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """daisy-speech: label-free early exit for self-supervised speech models."""
    from transformers.utils import logging

    logging.disable_progress_bar()  # per-shard loading bars drown the command's own output


def fail(message: str) -> None:
    """One line on stderr and a non-zero exit: users get the problem, not a traceback."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


@app.command()
def info(model: Path = typer.Argument(..., help="HuBERT checkpoint: model directory or s3prl-converted file")):
    """Load a checkpoint and print its geometry."""
    from daisy.upstream import HubertBackbone

    try:
        backbone = HubertBackbone.from_pretrained(model)
    except (OSError, ValueError) as e:
        fail(str(e))
    c = backbone.config
    print(
        f"{model}: {backbone.num_layers} layers x {backbone.hidden_size}, "
        f"{'pre' if c.do_stable_layer_norm else 'post'}-norm, conv front-end norm: {c.feat_extract_norm}, "
        f"{sum(p.numel() for p in backbone.parameters()) / 1e6:.1f} M parameters"
    )


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="output folder")):
    """The main job on the embedded default (currently: build, save, reload and run a tiny HuBERT)."""
    from daisy.demo import run_demo

    run_demo(out)
