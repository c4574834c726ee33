"""The `daisy` command line: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import json
import math
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    help="daisy-speech: label-free early exit for self-supervised speech models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

DATA_HELP = (
    "'synthetic' (the embedded corpus), a corpus folder with manifest.jsonl, a folder of audio files, "
    "or hf:PATH (a dataset saved with HF datasets' save_to_disk)"
)
DEVICE_HELP = "torch device the model runs on: auto (cuda where torch sees one, else cpu), cpu, cuda, cuda:1, ..."
WORKERS_HELP = "DataLoader worker processes that decode the audio (0: the command's own process)"
PRECISION_HELP = "fp32, or bf16: bfloat16 autocast on the model's matrix products (exit decisions stay float32)"


@app.callback()
def _root() -> None:
    """daisy-speech: label-free early exit for self-supervised speech models."""
    from transformers.utils import logging

    logging.disable_progress_bar()  # per-shard loading bars drown the command's own output


def fail(message: str) -> None:
    """One line on stderr and a non-zero exit: users get the problem, not a traceback."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def _at_least(option: str, value: int | None, low: int = 1) -> None:
    if value is not None and value < low:
        fail(f"{option} must be at least {low}, got {value}")


@contextmanager
def _locked(folder: Path):
    """Hold the run lock of `folder` (daisy.io.run_lock); another run holding it is a one-line error."""
    from daisy.io import run_lock

    lock = run_lock(folder)
    try:
        lock.__enter__()
    except ValueError as e:
        fail(str(e))
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _finite(option: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        fail(f"{option} must be a finite number, got {value}")


def _writable_folder(option: str, path: Path) -> None:
    """Fail now, not after the work, where `path` cannot be made or written (a file in the way, no write
    permission); nothing is created."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        fail(f"{option} {path}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        fail(f"{option} {path}: cannot write in {existing} ({e.strerror or e})")


def _check_device(option: str, device: str) -> None:
    """A torch device this machine has, or a one-line error before any work."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        fail(f"{option} {device!r}: not a torch device (e.g. cpu, cuda, cuda:1)")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        fail(f"{option} {device}: this machine has no CUDA device (torch sees none); use --device cpu")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        fail(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        fail(f"{option} {device}: this machine has no MPS device; use --device cpu")


def _device(option: str, device: str) -> str:
    """`device` with auto resolved (cuda where torch sees one, else cpu), checked before any work."""
    from daisy.distributed import rank_device
    from daisy.precision import resolve_device

    device = resolve_device(device)
    _check_device(option, device)
    try:
        return rank_device(device)  # under torchrun: 'cuda' is this process's own GPU
    except ValueError as e:
        fail(f"{option} {device}: {e}")


def _precision(precision: str) -> None:
    from daisy.precision import PRECISIONS

    if precision not in PRECISIONS:
        fail(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def _override_policy(early, policy: str | None, threshold: float | None, layer: int | None) -> None:
    """Apply `daisy exit`'s --policy / --threshold / --layer to the model's own policy."""
    from daisy import policies

    if layer is not None:
        if policy is not None or threshold is not None:
            fail("--layer is a fixed exit: give it without --policy or --threshold")
        options = {"policy": "fixed", "layer": layer}
    elif policy is not None:
        if policy not in ("entropy", "confidence"):
            hint = {"fixed": "; use --layer N", "oracle": "; it needs targets (analysis only: model.trace)"}
            fail(f"--policy must be entropy or confidence, got {policy!r}{hint.get(policy, '')}")
        if threshold is None:
            fail(f"--policy {policy} needs --threshold")
        options = {"policy": policy, "threshold": threshold}
    elif threshold is not None:
        if not hasattr(early.policy, "threshold"):
            fail(f"--threshold needs --policy: this model's policy ({early.policy.name}) has no threshold")
        options = {"threshold": threshold}  # the model's own policy, with this threshold
    else:
        return
    early.policy = policies.policy_from_dict(policies.override(early.policy.to_dict(), options))


def _numbers(option: str, text: str, kind: type) -> tuple:
    """A comma-separated option's values, or a ValueError that starts with the option's name."""
    try:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated {kind.__name__}s, got {text!r}") from None


def _report_calibration(path: Path, early, task: str | None = None) -> None:
    provenance = early.config.provenance
    calibration = provenance["calibration"] if task is None else provenance["task_calibration"][task]
    policy = early.policy if task is None else early.task_policy(task)
    out.print(
        f"{path}: mean exit depth {calibration['reached_depth']:.2f} of {early.num_layers} layers "
        f"on {calibration['utterances']} held-out utterances" + ("" if task is None else f" (task {task})"),
        highlight=False,
        soft_wrap=True,
    )
    if "target_agreement" in calibration:
        out.print(
            f"agreement with the full model's answer: {calibration['agreement']:.3f} of the frames (utterance mean); "
            f">= {calibration['target_agreement']:g} with confidence {1 - calibration['delta']:g} "
            f"(lower bound {calibration['agreement_bound']:.3f})",
            highlight=False,
            soft_wrap=True,
        )
    label = "policy" if task is None else f"policy for {task}"
    out.print(f"{label}: {json.dumps(policy.to_dict())}", highlight=False, soft_wrap=True)


@app.command()
def info(
    model: Path = typer.Argument(
        ..., help="checkpoint: a HuBERT, wav2vec 2.0, WavLM or data2vec-audio directory, or an s3prl-converted file"
    ),
):
    """Load a checkpoint and print its geometry; for a daisy model, its exit heads and policy too."""
    from daisy.model import EarlyExitHubert
    from daisy.upstream import load_backbone

    early = None
    try:
        if (model / "daisy.json").is_file():
            early = EarlyExitHubert.from_pretrained(model)
            backbone = early.backbone
        else:
            backbone = load_backbone(model)
    except (OSError, ValueError) as e:
        fail(str(e))
    c = backbone.config
    lines = [
        f"{model}: {backbone.num_layers} layers x {backbone.hidden_size}, "
        f"{'pre' if c.do_stable_layer_norm else 'post'}-norm, conv front-end norm: {c.feat_extract_norm}, "
        f"{sum(p.numel() for p in backbone.parameters()) / 1e6:.1f} M parameters, input: "
        + ("normalised per utterance" if c.normalize_waveform else "raw waveform (its level matters)")
    ]
    if early is not None:
        config = early.config
        source = "the model's own prediction" if config.targets == "teacher" else "k-means ids"
        where = "feed-forward output" if config.head_input == "ffn" else "output state"
        rank = "" if config.head_rank is None else f", rank {config.head_rank}"
        lines.append(f"exit heads: {config.num_classes} classes{rank} on each layer's {where}, trained on {source}")
        lines.append(f"policy: {json.dumps(early.policy.to_dict())}")
        lines += [f"policy for {task}: {json.dumps(early.task_policy(task).to_dict())}" for task in early.tasks]
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True)


@app.command()
def corpus(
    root: Path = typer.Option(None, help="cache folder (default $DAISY_CACHE/corpus or ~/.cache/daisy/corpus)"),
    quick: bool = typer.Option(False, help="the small corpus used by tests"),
):
    """Synthesise the embedded corpus (or find it cached) and print its folder."""
    from daisy.data.corpus import CorpusConfig, build_corpus
    from daisy.data.sources import default_cache

    folder = build_corpus(root or default_cache() / "corpus", CorpusConfig.quick() if quick else CorpusConfig())
    out.print(str(folder))


@app.command()
def pretrain(
    out_dir: Path = typer.Option(..., "--out", help="run folder: checkpoints, log, and the exported model/"),
    data: str = typer.Option("synthetic", help=DATA_HELP),
    quick: bool = typer.Option(False, help="minutes on 2 CPU cores, for tests"),
    steps: int = typer.Option(None, help="total optimiser steps (default: the config's)"),
    config_json: Path = typer.Option(None, "--config", help="JSON file of PretrainConfig fields"),
    noise_prob: float = typer.Option(None, help="denoising pretraining: share of inputs with noise mixed in"),
    normalize: bool = typer.Option(
        None, help="scale each input to zero mean, unit variance (fairseq's normalize): no level sensitivity"
    ),
    time_limit: float = typer.Option(None, help="stop (with a checkpoint) after this many minutes; rerun resumes"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    labels_from: Path = typer.Option(
        None, help="HuBERT iteration 2: labels from k-means on a layer of this model (e.g. iteration 1's RUN/model)"
    ),
    label_layer: int = typer.Option(None, help="the layer of --labels-from to cluster (default: its middle layer)"),
    classes: int = typer.Option(None, help="k-means K (default 100 on MFCC, 200 on layer states; --quick: 50)"),
    init_from: Path = typer.Option(
        None,
        help="start from this exported model (a `daisy pretrain` export or the shipped model) with a fresh "
        "optimiser; the step count goes on from the run folder's log.json, if any",
    ),
):
    """HuBERT masked-prediction pretraining from scratch (or --init-from a model); resumes from
    out/checkpoint.json."""
    from daisy.data.sources import utterances
    from daisy.training.pretrain import PretrainConfig
    from daisy.training.pretrain import pretrain as run
    from daisy.training.pretrain_state import check_resume

    device = _device("--device", device)
    config = PretrainConfig.quick() if quick else PretrainConfig()
    if config_json:
        try:
            fields = json.loads(config_json.read_text())
            if not isinstance(fields, dict):
                raise ValueError("not a JSON object of PretrainConfig fields")
            config = PretrainConfig(**{**config.__dict__, **fields})
        except (OSError, ValueError, TypeError) as e:  # unreadable, not JSON, an unknown field
            fail(f"--config {config_json}: {e}")
    if steps is not None:
        config.steps = steps
    if noise_prob is not None:
        config.noise_prob = noise_prob
    if normalize is not None:
        config.normalize = normalize
    if label_layer is not None and labels_from is None and config.label_model is None:
        fail("--label-layer needs --labels-from (the model whose layer states become the labels)")
    if labels_from is not None:
        config.label_model = str(labels_from)
        if config.label_features == "mfcc":  # e.g. from --config: the labels now come from the model
            config.label_features = None
    if label_layer is not None:
        config.label_features = f"layer:{label_layer}"
    if classes is not None:
        config.num_classes = classes
    try:
        config = config.resolved()  # a bad label model or layer fails here, before any data is read
        check_resume(out_dir, config, init_from=init_from)
        if init_from is not None and not (init_from / "model.safetensors").is_file():
            raise ValueError(f"--init-from {init_from}: no model.safetensors (give an exported model directory)")
        utts = utterances(data, split="train", quick=quick)
    except (OSError, ValueError) as e:
        fail(str(e))
    limit = time_limit * 60 if time_limit else None
    try:  # what needs the audio: its identity against the run's, a warm start's fit; a run holding the folder
        result = run(utts, out_dir, config, device=device, time_limit=limit, init_from=init_from)
    except (OSError, ValueError) as e:
        fail(str(e))
    out.print(f"model: {result}" if result else f"stopped early; rerun to resume from {out_dir}/checkpoint.json")


@app.command("train-heads")
def train_heads_cmd(
    model: Path = typer.Option(
        ...,
        help="pretrained model: daisy pretrain output, HF HuBERT dir or s3prl .pt (a daisy model: its heads train on)",
    ),
    out_dir: Path = typer.Option(..., "--out", help="run folder: checkpoint, log and the daisy model in out/model"),
    data: str = typer.Option("synthetic", help=DATA_HELP),
    quick: bool = typer.Option(False, help="the small corpus and 60 steps, for tests"),
    steps: int = typer.Option(None, help="optimiser steps (default 1500; 60 with --quick)"),
    head_input: str = typer.Option(None, help="'ffn' (DAISY's before-norm, the default) or 'output'"),
    noise_prob: float = typer.Option(0.0, help="share of training inputs with noise mixed in"),
    targets_from: str = typer.Option("input", help="'input' (DAISY) or 'clean'"),
    classes: int = typer.Option(None, help="k-means K where the model has no pretraining head (default 100)"),
    head_rank: int = typer.Option(
        None, help="factorise each head through this many dimensions (cheaper; default: DAISY's full Linear)"
    ),
    depth: float = typer.Option(None, help="calibrate the entropy policy to this mean depth (default 60 % of L)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    precision: str = typer.Option("fp32", help=PRECISION_HELP),
    workers: int = typer.Option(0, help=WORKERS_HELP + "; each batch's crops are read from the files"),
):
    """Train DAISY's per-layer exit heads with the backbone frozen, then calibrate on the dev split.
    Rerunning with the same --out resumes from its checkpoint (out/heads_checkpoint.json)."""
    from dataclasses import replace

    from daisy.calibration import calibrate_model, recalibrate_tasks, trace_scores
    from daisy.data.sources import load_all, utterances
    from daisy.data.streaming import AudioFiles
    from daisy.distributed import rank_and_world
    from daisy.precision import inference
    from daisy.training.train_heads import HeadTrainConfig, check_resume, prepare_model, train_heads

    _finite("--depth", depth)  # before the model and the audio are read
    _at_least("--workers", workers, 0)
    device = _device("--device", device)
    _precision(precision)
    try:
        config = HeadTrainConfig.quick() if quick else HeadTrainConfig()
        config = replace(config, steps=config.steps if steps is None else steps, noise_prob=noise_prob)
        config = replace(config, targets_from=targets_from)
        if classes is not None and classes < 2:
            raise ValueError(f"--classes must be at least 2, got {classes}")
        if (model / "daisy.json").is_file() and any(o is not None for o in (head_input, classes, head_rank)):
            raise ValueError(
                f"{model} is a daisy model: its heads train on as they are; --head-input, --classes and "
                "--head-rank choose fresh heads on a backbone (pass the pretrained model instead)"
            )
        train = AudioFiles(utterances(data, "train", quick), workers=workers)  # read from the files as it trains
        dev = [u for u in utterances(data, "dev", quick) if u.split == "dev"]  # a plain folder has none
        dev = load_all(dev, workers=workers)
        early = prepare_model(model, head_input or "ffn", classes or 100, train, head_rank).to(device)
        depth = 0.6 * early.num_layers if depth is None else depth
        if not 1 <= depth <= early.num_layers:
            raise ValueError(f"--depth {depth:g} outside 1..{early.num_layers} (the model's layers)")
        check_resume(out_dir, early, config, train)
        early.require_targets(str(model))
    except (OSError, ValueError) as e:
        fail(str(e))
    if not dev:
        err.print(f"{data} has no dev split: calibrating on 50 of the training utterances", highlight=False)
        dev = list(train[:50])
    try:
        with inference(device, precision):  # the frozen model's pass; the heads' steps stay float32
            train_heads(early, train, out_dir, config, workers=workers)
    except ValueError as e:  # another run holds the folder
        fail(str(e))
    if rank_and_world()[0] != 0:  # under torchrun, one process writes the model
        return
    with inference(device, precision):
        entropy = trace_scores(early, dev)["entropy"]  # one trace of the new heads for every calibration
        calibrate_model(early, dev, depth, entropy=entropy)
        kept = recalibrate_tasks(early, dev, entropy)  # a daisy model's own task policies, for its new heads
    early.save_pretrained(out_dir / "model")
    _report_calibration(out_dir / "model", early)
    for task in early.tasks:
        if task not in kept:
            _report_calibration(out_dir / "model", early, task)
    if kept:
        err.print(
            f"task policies kept as they were (not calibrated budgets): {', '.join(kept)}; their thresholds were "
            "set for the heads before (`daisy calibrate --task` fits them again)",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def calibrate(
    model: Path = typer.Option(..., help="daisy model directory (rewritten in place)"),
    data: str = typer.Option("synthetic", help=DATA_HELP),
    depth: float = typer.Option(None, help="target mean exit depth in layers"),
    compute: float = typer.Option(None, help="target share of full-model compute (0..1), instead of --depth"),
    agreement: float = typer.Option(
        None,
        help="instead of a depth: the cheapest threshold whose exits give the full model's own answer on at least "
        "this share of the frames (0..1), guaranteed with confidence 1 - --delta; exits start at --min-layer as given",
    ),
    delta: float = typer.Option(0.05, help="with --agreement: the risk (0..1) that the guarantee does not hold"),
    per_layer: bool = typer.Option(False, help="one threshold per layer (same quantile) instead of one shared"),
    min_layer: int = typer.Option(1, help="no exit before this layer; the heads below it are not run"),
    rare_exits: float = typer.Option(  # = daisy.calibration.RARE_EXITS, not imported: the CLI loads torch lazily
        0.1, help="raise --min-layer past layers below which at most this share of the audio would exit; 0: off"
    ),
    task: str = typer.Option(
        None, help="save the thresholds as this task's own policy (e.g. asr), leaving the model's policy as it is"
    ),
    quick: bool = typer.Option(False, help="the small corpus, for tests"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    precision: str = typer.Option("fp32", help=PRECISION_HELP),
):
    """Fit entropy thresholds on held-out audio to a depth, compute or agreement target; saved into daisy.json."""
    from daisy.calibration import calibrate_agreement, calibrate_model, check_agreement
    from daisy.compute import depth_for_share
    from daisy.data.sources import load_all, utterances
    from daisy.model import EarlyExitHubert, stored_dtype
    from daisy.precision import inference

    if [depth, compute, agreement].count(None) != 2:
        fail("give exactly one of --depth, --compute or --agreement")
    device = _device("--device", device)
    _precision(precision)
    for option, value in (("--depth", depth), ("--compute", compute), ("--rare-exits", rare_exits)):
        _finite(option, value)
    _at_least("--min-layer", min_layer)
    if agreement is not None:
        if per_layer:
            fail("--per-layer is a depth calibration; --agreement searches one shared threshold")
        try:
            check_agreement(agreement, delta)
        except ValueError as e:
            fail(f"--agreement {agreement:g} --delta {delta:g}: {e}")
    try:
        early = EarlyExitHubert.from_pretrained(model).to(device)
        wavs = load_all(utterances(data, "dev", quick) or utterances(data, None, quick))
        with inference(device, precision):
            if agreement is not None:
                calibrate_agreement(early, wavs, agreement, delta, min_layer, task)
            else:
                if compute is not None:
                    depth = depth_for_share(early.backbone.config, compute)
                calibrate_model(early, wavs, depth, per_layer, min_layer, task, rare_exits=rare_exits)
    except (OSError, ValueError) as e:
        fail(str(e))
    early.save_pretrained(model, dtype=stored_dtype(model))
    _report_calibration(model, early, task)


@app.command("exit")
def exit_cmd(
    files: list[Path] = typer.Argument(..., help="audio files"),
    model: Path = typer.Option(..., help="daisy model directory"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list instead of lines"),
    policy: str = typer.Option(None, help="instead of the model's policy: entropy or confidence (with --threshold)"),
    threshold: float = typer.Option(
        None, help="threshold for --policy; alone, replaces the threshold of the model's own policy"
    ),
    layer: int = typer.Option(None, help="fixed exit at this layer instead of the policy"),
    task: str = typer.Option(None, help="start from this task's saved policy (`daisy calibrate --task`)"),
    agreement: bool = typer.Option(
        False, help="also run the full model: each file's share of frames where the exit gives its answer"
    ),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    precision: str = typer.Option("fp32", help=PRECISION_HELP),
):
    """Run early exit on audio files and print each file's exit layer (files that cannot be read are
    reported on stderr and left out, also from --json; truncated or silent ones get a warning there)."""
    from daisy import domain
    from daisy.apps.exit_files import exit_files
    from daisy.io import shown
    from daisy.model import EarlyExitHubert
    from daisy.precision import inference

    _finite("--threshold", threshold)
    device = _device("--device", device)
    _precision(precision)
    try:
        early = EarlyExitHubert.from_pretrained(model).to(device)
        if task is not None:
            early.use_task(task)
        _override_policy(early, policy, threshold, layer)
        if agreement and early.config.targets == "teacher":
            early.require_targets("--agreement: this model")  # its answer is its teacher head's argmax
    except (OSError, ValueError) as e:
        fail(str(e))
    with inference(device, precision):
        results, errors = exit_files(early, files, agreement)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:  # plain lines, never wrapped, for pipes
        for r in results:
            agrees = f"\tagreement {r['agreement']:.3f}" if agreement else ""
            spread = f" (mean {r['mean_exit_layer']:.2f} over {len(r['windows'])} windows)" if "windows" in r else ""
            typer.echo(
                f"{shown(r['path'])}\texit layer {r['exit_layer']}/{r['num_layers']}{spread}\t{r['seconds']:.2f} s"
                + agrees
            )
    for message in [m for r in results for m in r["warnings"]]:
        err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)
    for message in errors:
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    notice = domain.notice(early, str(model), [r["head_entropy"] for r in results if r["head_entropy"]])
    if notice:
        err.print(f"[yellow]note:[/yellow] {escape(notice)}", highlight=False, soft_wrap=True)
    if errors:
        raise typer.Exit(code=1)


@app.command("noise-sweep")
def noise_sweep_cmd(
    model: Path = typer.Option(..., help="daisy model directory"),
    audio: str = typer.Option("synthetic", help=f"the test audio: {DATA_HELP} ('synthetic': its test split)"),
    noise: str = typer.Option("white,pink,babble", help="noise types and/or noise audio files, comma-separated"),
    snr: str = typer.Option("clean,20,10,5,0,-5", help="'clean' and SNRs in dB, comma-separated"),
    out_dir: Path = typer.Option(Path("runs/noise-sweep"), "--out", help="folder for the table, CSV/JSON and plots"),
    limit: int = typer.Option(None, help="use at most this many utterances (default: all)"),
    asr: bool = typer.Option(
        False,
        help="also report ASR CER per condition at the exited depth, next to the full model and fixed truncation "
        "(trains CTC probes on the source's train split; needs transcripts: synthetic or a folder with manifest.jsonl)",
    ),
    asr_train: int = typer.Option(300, help="training utterances for the ASR probes"),
    asr_size: str = typer.Option("cpu", help="ASR probe size: quick, cpu or paper"),
    task: str = typer.Option(None, help="exit under this task's saved policy instead of the model's own"),
    quick: bool = typer.Option(False, help="the small corpus, for tests"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    precision: str = typer.Option("fp32", help=PRECISION_HELP),
):
    """Exit depth of every utterance at every noise type and SNR: table, CSV/JSON and plots."""
    from daisy import domain
    from daisy.analysis import asr_per_snr as sq
    from daisy.analysis import noise_sweep as ns
    from daisy.data.sources import load_all, utterances
    from daisy.downstream.minisuperb import SIZES
    from daisy.io import staged_outputs
    from daisy.model import EarlyExitHubert
    from daisy.precision import inference

    _at_least("--limit", limit)
    device = _device("--device", device)
    _precision(precision)
    if asr:
        _at_least("--asr-train", asr_train)
    if asr and asr_size not in SIZES:
        fail(f"--asr-size must be one of {', '.join(SIZES)}, got {asr_size!r}")
    try:
        include_clean, snrs = ns.parse_snrs(snr)
        kinds, noise_files = ns.parse_noises(noise)
    except (OSError, ValueError) as e:
        fail(str(e))
    _writable_folder("--out", out_dir)  # before the sweep, which takes a while
    try:
        early = EarlyExitHubert.from_pretrained(model).to(device)
        if task is not None:
            early.use_task(task)
        utts = utterances(audio, "test" if audio == "synthetic" else None, quick)[:limit]
        wavs = load_all(utts, early.backbone.min_samples)
        pool = load_all(utterances(audio, "train", quick)[:64]) if audio == "synthetic" else wavs
        train_utts = utterances(audio, "train", quick)[:asr_train] if asr else []
        if asr and (not train_utts or not all(u.text for u in train_utts + utts)):
            raise ValueError(f"{audio}: --asr needs transcribed train and test splits (synthetic, or manifest.jsonl)")
        if "babble" in kinds and len(pool) < 4:
            raise ValueError(f"babble mixes 4 other utterances; {audio} gives {len(pool)} (raise --limit or drop it)")
        train_wavs = load_all(train_utts, early.backbone.min_samples)
        if snrs:  # silent audio cannot be mixed at an SNR: named now, not mid-sweep
            ns.check_audible(wavs, [str(u.path) for u in utts])
        if asr:  # its training audio is mixed whatever the SNRs
            ns.check_audible(train_wavs, [str(u.path) for u in train_utts])
    except (OSError, ValueError) as e:
        fail(str(e))
    with _locked(out_dir), inference(device, precision):  # one run at a time into --out; ASR probes train in fp32
        config = ns.SweepConfig(noises=tuple(kinds), snrs=snrs)
        traced = {}  # with --asr, its test features carry the head scores the sweep needs: no second pass
        try:  # what the checks above cannot see (a silent stretch of a noise file, a policy that needs targets)
            if asr:
                quality = sq.asr_quality(
                    early,
                    (train_wavs, [u.text for u in train_utts]),
                    (wavs, [u.text for u in utts]),
                    config,
                    include_clean,
                    sq.QualityConfig(size=asr_size),
                    pool,
                    noise_files,
                    test_scores=traced,
                )
            rows = ns.sweep(early, wavs, config, include_clean, pool, noise_files, traced=traced)
        except ValueError as e:
            fail(str(e))
        summary = ns.summarize(rows, early)
        with staged_outputs(out_dir) as staged:  # the run's files land together, or the last run's stay
            ns.write_results(rows, summary, early, staged, [str(u.path) for u in utts])
            if asr:
                sq.write_quality(quality, staged)
        out.print(ns.markdown_table(summary), highlight=False)
        if asr:
            out.print(sq.markdown_table(quality), highlight=False)
        verdict = ns.monotone_text(ns.monotone(summary)) or "n/a (one condition per noise)"
        out.print(f"exit depth rises as SNR falls: {verdict}; results in {out_dir}", highlight=False)
        clean = [r["entropy"] for r in rows if r["snr"] is None and "entropy" in r]
        notice = domain.notice(early, str(model), clean, what="clean utterances")
        if notice:
            err.print(f"[yellow]note:[/yellow] {escape(notice)}", highlight=False, soft_wrap=True)


@app.command()
def minisuperb(
    model: Path = typer.Option(..., help="daisy model directory"),
    data: str = typer.Option(
        "synthetic",
        help="'synthetic' (the embedded corpus) or real corpora as TASK=PATH pairs, comma-separated, e.g. "
        "asr=/data/LibriSpeech,sid=/data/VoxCeleb1 (keys: asr or librispeech, sid or voxceleb1, se or "
        "voicebank for VoiceBank-DEMAND, ss or libri2mix; any subset). Budgets are calibrated on LibriSpeech's "
        "dev-* subsets when asr is given and has them, else on a sample of the first task's training audio.",
    ),
    out_dir: Path = typer.Option(Path("runs/minisuperb"), "--out"),
    size: str = typer.Option("cpu", help="probe size and steps: quick, cpu or paper (MiniSUPERB's)"),
    tasks: str = typer.Option(
        None, help="comma-separated subset of asr, sid, se, ss (default: all for synthetic, else those in --data)"
    ),
    train: int = typer.Option(600, help="training utterances per task"),
    test: int = typer.Option(150, help="test utterances per task"),
    featurizer: str = typer.Option("dynamic", help="static, dynamic (DAISY) or per_depth"),
    budgets: str = typer.Option(
        "0.4,0.8", help="entropy budgets compared, as shares of the layers (comma-separated; '' for none)"
    ),
    fixed: str = typer.Option(None, help="fixed truncation at these layers (comma-separated; default DAISY's depth)"),
    seed: int = typer.Option(0, help="seed of the probes' initialisation and batches (rerun with others: the spread)"),
    quick: bool = typer.Option(False, help="the quick corpus (tests)"),
    device: str = typer.Option("auto", help=DEVICE_HELP + "; feature extraction only, the probes train on the CPU"),
    precision: str = typer.Option("fp32", help=PRECISION_HELP + "; features are cached per precision"),
    workers: int = typer.Option(0, help=WORKERS_HELP + " ('synthetic' data; real corpora are read by their task)"),
):
    """Probes on exited representations: full model vs DAISY vs budgets vs fixed truncation vs MFCC.
    Results are kept per task and setting in --out: a rerun with more tasks, budgets or layers trains
    only the probes it has not got."""
    from daisy.data.sources import load_all, utterances
    from daisy.distributed import rank_and_world
    from daisy.downstream.minisuperb import MiniSuperbConfig, run
    from daisy.downstream.tasks import corpus_tasks, names, parse_corpus_paths, synthetic_tasks
    from daisy.model import EarlyExitHubert
    from daisy.precision import inference

    _at_least("--train", train)
    _at_least("--test", test)
    _at_least("--workers", workers, 0)
    device = _device("--device", device)
    _precision(precision)
    try:
        paths = None if data == "synthetic" else parse_corpus_paths(data)
    except ValueError as e:
        fail(str(e))
    chosen = tuple(t.strip() for t in (tasks or ",".join(paths or names())).split(",") if t.strip())
    try:  # checked before any model or audio is read
        config = MiniSuperbConfig(
            tasks=chosen,
            size=size,
            featurizer=featurizer,
            budgets=_numbers("budgets", budgets, float),
            fixed=_numbers("fixed", fixed or "", int),
            seed=seed,
        )
    except ValueError as e:
        fail(f"--{e}")  # its fields are named as the options
    if paths is not None and not set(chosen) <= set(paths):
        fail(f"--tasks {','.join(chosen)}: --data gives no corpus for {', '.join(sorted(set(chosen) - set(paths)))}")
    source = None
    try:
        early = EarlyExitHubert.from_pretrained(model).to(device)
        config.check(early.num_layers)
        if paths is None:
            train_u, test_u = utterances(data, "train", quick)[:train], utterances(data, "test", quick)[:test]
            dev = load_all(utterances(data, "dev", quick)[:100], workers=workers)
            train_w, test_w = load_all(train_u, workers=workers), load_all(test_u, workers=workers)
            task_data = synthetic_tasks(train_u, test_u, train_w, test_w, tasks=chosen)
        else:
            corpora = corpus_tasks({t: paths[t] for t in chosen}, train, test, min_samples=early.backbone.min_samples)
            task_data, source, dev = corpora.data, corpora.source, corpora.dev
    except (OSError, ValueError) as e:
        fail(str(e))
    first = rank_and_world()[0] == 0  # under torchrun the ranks share the extraction; rank 0 writes
    # one run at a time into --out (rank 0 holds it for its ranks); the probes train in fp32
    with _locked(out_dir) if first else nullcontext(), inference(device, precision):
        summary = run(early, task_data, dev, out_dir, config, source=source)
    if summary is None:  # another rank's: its share of the features went to rank 0
        return
    from daisy.downstream.minisuperb import markdown

    out.print(markdown(summary["results"], summary["scores"]), highlight=False)
    out.print(f"results in {out_dir}", highlight=False)


@app.command()
def bench(
    model: Path = typer.Option(None, help="daisy model directory (default: a random model of --preset)"),
    preset: str = typer.Option("tiny", help="without --model: tiny, base or large, random weights"),
    classes: int = typer.Option(100, help="without --model: head classes C"),
    head_rank: int = typer.Option(None, help="without --model: low-rank heads of this rank (default: full Linear)"),
    audio: str = typer.Option("synthetic", help="'synthetic' (its test split) or a folder of audio"),
    depth: float = typer.Option(None, help="mean exit depth the entropy budget is calibrated to (default L / 2)"),
    utterances: int = typer.Option(32, help="held-out utterances timed per round"),
    repeats: int = typer.Option(5, help="rounds of timings; medians are reported, with quartiles for the ratios"),
    json_path: Path = typer.Option(None, "--json", help="also write the figures to this JSON file"),
    threads: int = typer.Option(None, help="torch intra-op threads (default: torch's choice, one per core)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    precision: str = typer.Option("fp32", help=PRECISION_HELP),
    batch_rule: bool = typer.Option(
        False, "--batch-rule", help="instead: per-utterance exits vs DAISY's per-batch rule at batch 16, same depth"
    ),
):
    """Wall-clock early exit vs full model (and vs transformers) at batch 1 and 16, with the ideal speedup."""
    from daisy.analysis.speed import benchmark

    device = _device("--device", device)
    _precision(precision)
    try:
        path = str(model) if model else None
        benchmark(
            path,
            preset,
            classes,
            audio,
            depth,
            utterances,
            repeats,
            json_path,
            threads,
            head_rank,
            device,
            precision,
            batch_rule,
        )
    except (OSError, ValueError) as e:
        fail(str(e))


@app.command()
def ship(
    run: Path = typer.Option(..., help="pretraining run folder (daisy pretrain --out)"),
    out_dir: Path = typer.Option(..., "--out", help="model directory to write (fp16) with MODEL_CARD.md"),
    head_steps: int = typer.Option(1500, help="exit-head training steps"),
    base: Path = typer.Option(
        None, help="an exported model of the run to ship (default: export the run's latest state); heads trained afresh"
    ),
    neural_speech: bool = typer.Option(
        True, help="train the heads on Kokoro speech beside espeak-ng's and calibrate on held-out Kokoro speech"
    ),
    real: Path = typer.Option(None, help="folder of real recordings the card measures exits on (default: the dev set)"),
):
    """Make a pretraining run the default model: heads, calibration, fp16 weights, figures, model card."""
    from daisy.apps.ship import REAL_SPEECH, NeuralSpeech
    from daisy.apps.ship import ship as run_ship

    _at_least("--head-steps", head_steps)
    if not (run / "log.json").is_file():
        fail(f"--run {run}: no log.json, not a `daisy pretrain` run folder")
    for option, folder in (("--base", base), ("--real", real)):
        if folder is not None and not folder.is_dir():
            fail(f"{option} {folder}: no such folder")
    if neural_speech:
        from daisy.data import kokoro

        if not kokoro.available():
            fail("--neural-speech needs Kokoro: pip install 'daisy-speech[tts]' (or ship with --no-neural-speech)")
    _writable_folder("--out", out_dir)
    try:
        neural = NeuralSpeech() if neural_speech else None
        card = run_ship(run, out_dir, head_steps, base=base, neural=neural, real=real or REAL_SPEECH)
    except (FileNotFoundError, ValueError) as e:  # a run folder without its state; a damaged --base
        fail(str(e))
    out.print(f"{out_dir}: teacher {card['figures']['teacher']}", highlight=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def s3prl(ctx: typer.Context):
    """Run s3prl's downstream runner with daisy's upstreams registered: daisy s3prl -- ARGS (needs the s3prl extra)."""
    from daisy.upstream.s3prl_plugin import run_s3prl_downstream

    try:
        code = run_s3prl_downstream(list(ctx.args))
    except ImportError as e:
        fail(str(e))
    raise typer.Exit(code=code)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="output folder (model/, report/, ...)"),
    quick: bool = typer.Option(False, help="the small size used by tests (minutes)"),
    pretrain: bool = typer.Option(
        False, help="pretrain HuBERT from scratch (the shipped model's recipe) instead of using the shipped model"
    ),
    train_heads: bool = typer.Option(False, help="train DAISY heads even where the shipped model has them"),
    fresh: bool = typer.Option(False, help="rerun every stage, ignoring earlier outputs"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    precision: str = typer.Option("fp32", help=PRECISION_HELP + "; training steps stay fp32"),
):
    """The main job: corpus, pretrained model, DAISY heads, calibration, evaluation, noise sweep, report."""
    from daisy.apps.demo import DemoConfig, run_demo

    device = _device("--device", device)
    _precision(precision)
    try:
        config = DemoConfig(
            quick=quick, pretrain=pretrain, train_heads=train_heads, fresh=fresh, device=device, precision=precision
        )
        run_demo(out_dir, config)
    except ValueError as e:  # another run holds the folder
        fail(str(e))


@app.command("asr-exits")
def asr_exits_cmd(
    model: Path = typer.Option(None, help="daisy model directory (default: the shipped model)"),
    data: str = typer.Option(
        "synthetic", help="'synthetic' (the embedded corpus) or asr=PATH: a LibriSpeech folder (train-*, test-*, dev-*)"
    ),
    out_dir: Path = typer.Option(
        Path("runs/asr-exits"), "--out", help="folder for results.json, results.md, plots and parts/ (one per system)"
    ),
    train: int = typer.Option(None, help="training utterances (default 600; --quick 32)"),
    test: int = typer.Option(None, help="test utterances (default 150; --quick 12)"),
    dev: int = typer.Option(None, help="held-out utterances the thresholds are set on (default 100; --quick 12)"),
    steps: int = typer.Option(None, help="training steps per supervised system, hubert-ee: per stage (default 2000)"),
    batch_size: int = typer.Option(None, help="training batch size (default 8; --quick 4)"),
    thresholds: int = typer.Option(None, help="operating points per system and selection (default 8; --quick 3)"),
    probe_size: str = typer.Option(None, help="DAISY's ASR probe: quick, cpu or paper (default cpu)"),
    methods: str = typer.Option("daisy,hubert-ee,wright-scratch,wright-finetune", help="systems, comma-separated"),
    seed: int = typer.Option(0, help="seed of training, noise and probes"),
    quick: bool = typer.Option(False, help="tiny sizes for tests (a minute or two; CERs not meaningful)"),
):
    """CER against compute: DAISY's label-free exits beside supervised early-exit ASR (HuBERT-EE, Wright et al.).
    Each system's results are kept in --out/parts/ as it finishes: a rerun with the same settings and data
    reuses them instead of retraining, so a killed run resumes at the system it was on."""
    from dataclasses import replace

    from daisy.analysis import asr_exits as ax
    from daisy.apps.demo import shipped_model
    from daisy.data.sources import load_all, utterances
    from daisy.downstream.tasks import corpus_tasks, parse_corpus_paths

    sizes = {"train": 32, "test": 12, "dev": 12} if quick else {"train": 600, "test": 150, "dev": 100}
    train, test, dev = (sizes[k] if v is None else v for k, v in (("train", train), ("test", test), ("dev", dev)))
    for option, value in (("--train", train), ("--test", test), ("--dev", dev), ("--steps", steps)):
        _at_least(option, value)
    _at_least("--batch-size", batch_size)
    base = ax.AsrExitsConfig.quick() if quick else ax.AsrExitsConfig()
    try:
        training = replace(
            base.train,
            seed=seed,  # --seed seeds the supervised systems' training too
            **{k: v for k, v in (("steps", steps), ("branch_steps", steps), ("batch_size", batch_size)) if v},
        )
        config = replace(
            base,
            train=training,
            methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
            seed=seed,
            **{k: v for k, v in (("thresholds", thresholds), ("probe_size", probe_size)) if v is not None},
        )
        paths = None if data == "synthetic" else parse_corpus_paths(data)
        if paths is not None and set(paths) != {"asr"}:
            raise ValueError(f"--data {data}: asr-exits reads one ASR corpus (asr=PATH)")
    except ValueError as e:
        fail(str(e))
    model = model or shipped_model()
    if model is None:
        fail("no --model given and no shipped model in this installation")
    _writable_folder("--out", out_dir)
    try:
        if paths is None:
            tr, te = utterances(data, "train", quick)[:train], utterances(data, "test", quick)[:test]
            train_set = (load_all(tr), [u.text for u in tr])
            test_set = (load_all(te), [u.text for u in te])
            dev_wavs = load_all(utterances(data, "dev", quick)[:dev])
        else:
            corpus = corpus_tasks(paths, train, test, seed=seed, dev=dev)
            sets = corpus.data["librispeech"]
            train_set = (sets["train"].inputs, sets["train"].texts)
            test_set = (sets["test"].inputs, sets["test"].texts)
            dev_wavs = corpus.dev
        summary = ax.run(model, train_set, dev_wavs, test_set, out_dir, config)
    except (OSError, ValueError) as e:
        fail(str(e))
    for method, cost in summary["training"].items():
        out.print(f"{method}: {cost['steps']} training steps, {cost['seconds']:.0f} s", highlight=False)
    out.print(f"{len(summary['points'])} operating points; results in {out_dir}", highlight=False)


if __name__ == "__main__":  # torchrun -m daisy.apps.cli ...
    app()
