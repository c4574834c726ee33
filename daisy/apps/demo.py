"""`daisy demo`: the whole product on the embedded default, end to end.

corpus -> the shipped pretrained HuBERT (or `--pretrain` from scratch) -> DAISY heads (shipped, or
trained) -> calibration -> MiniSUPERB, full model vs early exit vs fixed truncation -> noise sweep
(exit depth, and ASR CER per condition) -> `report/` (report.md, results.json, PNG plots). Each stage
writes its own output under `out/` and is reused only when it finished under the same key: a fingerprint
of its settings, the corpus (its manifest: which utterances, how long) and the model it ran on
(`daisy.run_state.StageRecords`, in `out/stages.json`). A stage whose key changed runs again (its training
folder cleared); an interrupted pretraining or head training under the same key resumes. `fresh` reruns
everything. The folder is locked while the demo runs.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console

from daisy.io import atomic_path, run_lock, write_json
from daisy.precision import exact, inference
from daisy.run_state import StageRecords, fingerprint

console = Console()
SHIPPED = "hubert-tiny-synth"
# What the MiniSUPERB and noise-sweep stages report, in their keys: raise it when a report gains a figure, and
# a folder made before is reported again (2: each setting's agreement with the full model's answer)
REPORT_FORMAT = 2


def shipped_model() -> Path | None:
    """The pretrained model that ships inside the package, if this install has it."""
    path = Path(str(resources.files("daisy") / "assets" / SHIPPED))
    return path if (path / "config.json").is_file() else None


@dataclass
class DemoConfig:
    quick: bool = False
    pretrain: bool = False
    train_heads: bool = False
    fresh: bool = False
    sweep_utterances: int = 120
    probe_train: int = 400
    probe_test: int = 100
    depth_fraction: float = 0.6  # calibrate DAISY to this share of the layers on average
    # tasks with an operating point of their own (default: daisy.calibration.TASK_DEPTH_FRACTIONS)
    task_depth_fractions: dict | None = None
    device: str = "cpu"  # where the models run (pretraining, heads, extraction); probes train on the CPU
    precision: str = "fp32"  # or "bf16": autocast around all but the training steps (daisy.precision)

    def __post_init__(self):
        if self.quick:
            self.sweep_utterances, self.probe_train, self.probe_test = 24, 40, 16


class _Stages:
    """The demo's stages, each reused only where it finished under the same key."""

    def __init__(self, out: Path, corpus: Path):
        self.records = StageRecords(out / "stages.json")
        self.corpus = fingerprint(corpus.name, corpus / "manifest.jsonl")  # its config key, utterances, lengths

    def key(self, *parts) -> str:
        """A stage's key: its settings and inputs (`parts`) and the corpus."""
        return fingerprint(self.corpus, *parts)

    def reuse(self, name: str, key: str, output: Path) -> bool:
        """True (and says so) where `output` was made under `key`; else announces the stage."""
        if self.records.current(name, key, output):
            console.print(f"[dim]= {name}: reusing {output}[/dim]")
            return True
        console.print(f"[bold]> {name}[/bold]")
        return False

    @contextmanager
    def making(self, name: str, key: str, settings: dict, clear: Path | None = None):
        """Run a stage under `key`: `clear` (its training folder) goes first where it holds other work."""
        if self.records.begin(name, key, settings) != key and clear is not None:
            shutil.rmtree(clear, ignore_errors=True)
        yield
        self.records.finish(name, key)


def run_demo(out: str | Path, config: DemoConfig | None = None) -> dict:
    from daisy.data.corpus import CorpusConfig, build_corpus, load_manifest
    from daisy.data.sources import default_cache

    config = config or DemoConfig()
    out = Path(out)
    with run_lock(out):
        if config.fresh:
            for item in out.iterdir():
                if item.name != ".lock":
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
        corpus_config = CorpusConfig.quick() if config.quick else CorpusConfig()
        console.print("[bold]> corpus[/bold]")
        corpus = build_corpus(default_cache() / "corpus", corpus_config)
        splits = {s: load_manifest(corpus, s) for s in ("train", "dev", "test")}
        with inference(config.device, config.precision):  # training steps inside opt out (precision.exact)
            return _run_stages(out, corpus, splits, config)


def _run_stages(out: Path, corpus: Path, splits: dict, config: DemoConfig) -> dict:
    stages = _Stages(out, corpus)
    base, base_key = _base_model(out, splits, config, stages)
    model, model_key = _heads(out, base, base_key, splits, config, stages)
    results = {"corpus": str(corpus), "base_model": str(base), "model": str(out / "model")}
    results["calibration"] = {
        "default": model.config.provenance.get("calibration"),
        "tasks": model.config.provenance.get("task_calibration", {}),
    }
    results["pretraining"] = _read_json(base / "pretrain.json")
    results["heads"] = _head_summary(out)
    results["minisuperb"] = _minisuperb(out, model, model_key, splits, config, stages)
    traced = {}  # the ASR stage's test scores per condition: the noise sweep need not run them again
    asr_per_snr = _asr_per_snr(out, model, model_key, splits, config, stages, traced)
    results["noise_sweep"] = _noise_sweep(out, model, model_key, splits, config, stages, traced)
    results["asr_per_snr"] = asr_per_snr
    write_json(out / "report" / "results.json", results)
    _write_report(out / "report", results)
    console.print(f"report: {out / 'report' / 'report.md'}")
    return results


def _base_model(out: Path, splits, config: DemoConfig, stages: _Stages) -> tuple[Path, str]:
    """The pretrained HuBERT the heads go on (shipped, or pretrained here) and its key."""
    from daisy.training.pretrain import PretrainConfig, pretrain

    shipped = shipped_model()
    if shipped is not None and not config.pretrain:
        console.print(f"[dim]= pretrained model: shipped {shipped}[/dim]")
        return shipped, fingerprint(shipped)
    if shipped is None and not config.pretrain:
        console.print("[yellow]no shipped model in this install: pretraining one here[/yellow]")
    target = out / "pretrain" / "model"
    recipe = PretrainConfig.quick() if config.quick else shipped_recipe()
    key = stages.key("pretraining", recipe)
    if not stages.reuse("pretraining", key, target / "config.json"):
        with stages.making("pretraining", key, {"config": recipe}, clear=out / "pretrain"):
            with exact(config.device):  # pretraining keeps its own precision (bf16 autocast on CUDA only)
                pretrain(splits["train"], out / "pretrain", recipe, device=config.device)
    return target, key


def shipped_recipe():
    """The PretrainConfig the shipped model was made with (from its card), else HuBERT's defaults."""
    from daisy.training.pretrain import PretrainConfig

    card = None if shipped_model() is None else shipped_model() / "card.json"
    if card is None or not card.is_file():
        return PretrainConfig()
    stored = json.loads(card.read_text())["pretraining"]["config"]
    return PretrainConfig(**{k: v for k, v in stored.items() if k in PretrainConfig.__dataclass_fields__})


def _heads(out: Path, base: Path, base_key: str, splits, config: DemoConfig, stages: _Stages):
    """Trained and calibrated DAISY heads on `base`, saved as the daisy model `out/model`, and its key."""
    from daisy.calibration import calibrate_operating_points
    from daisy.data.sources import load_all
    from daisy.model import EarlyExitHubert
    from daisy.training.train_heads import HeadTrainConfig, prepare_model, train_heads

    target = out / "model"
    trains = not (base / "heads.safetensors").is_file() or config.train_heads or config.pretrain
    head_config = (HeadTrainConfig.quick() if config.quick else HeadTrainConfig()) if trains else None
    settings = {"head_training": head_config, "depth": config.depth_fraction, "tasks": config.task_depth_fractions}
    if config.precision != "fp32":  # heads and calibration run on its features; the later stages key on this one
        settings["precision"] = config.precision
    key = stages.key("DAISY heads", base_key, settings)
    if stages.reuse("DAISY heads", key, target / "daisy.json"):
        return EarlyExitHubert.from_pretrained(target).to(config.device), key
    with stages.making("DAISY heads", key, settings, clear=out / "heads"):
        train = load_all(splits["train"])
        model = prepare_model(base, wavs=train).to(config.device)
        if head_config is not None:
            train_heads(model, train, out / "heads", head_config)
        calibrate_operating_points(model, load_all(splits["dev"]), config.depth_fraction, config.task_depth_fractions)
        model.save_pretrained(target)
    return model, key


def _minisuperb(out: Path, model, model_key: str, splits, config: DemoConfig, stages: _Stages) -> dict:
    from daisy.data.sources import load_all
    from daisy.downstream.minisuperb import MiniSuperbConfig, markdown, run
    from daisy.downstream.tasks import synthetic_tasks

    folder = out / "report" / "minisuperb"
    probe = MiniSuperbConfig(size="quick" if config.quick else "cpu")
    settings = {"probe": probe, "train": config.probe_train, "test": config.probe_test, "dev": 100}
    settings["report"] = REPORT_FORMAT  # stage keys hash settings: an older report is made again
    key = stages.key("MiniSUPERB", model_key, settings)
    if not stages.reuse("MiniSUPERB", key, folder / "results.json"):
        with stages.making("MiniSUPERB", key, settings):  # its probe results keep their own cache
            train, test = splits["train"][: config.probe_train], splits["test"][: config.probe_test]
            data = synthetic_tasks(train, test, load_all(train), load_all(test))
            run(model, data, load_all(splits["dev"][: settings["dev"]]), folder, probe)
    summary = json.loads((folder / "results.json").read_text())
    return {
        "scores": summary["scores"],
        "table": markdown(summary["results"], summary["scores"]),
        "results": summary["results"],
    }


def _noise_sweep(out: Path, model, model_key: str, splits, config: DemoConfig, stages: _Stages, traced: dict) -> dict:
    from daisy.analysis import noise_sweep as ns
    from daisy.data.sources import load_all

    folder = out / "report" / "noise_sweep"
    settings = {"sweep": _sweep_config(config), "utterances": config.sweep_utterances, "report": REPORT_FORMAT}
    key = stages.key("noise sweep", model_key, settings)
    if not stages.reuse("noise sweep", key, folder / "noise_sweep.json"):
        with stages.making("noise sweep", key, settings):
            utts = splits["test"][: config.sweep_utterances]
            rows = ns.sweep(
                model, load_all(utts), settings["sweep"], True, load_all(splits["train"][:64]), traced=traced
            )
            ns.write_results(rows, ns.summarize(rows, model), model, folder, [u.id for u in utts])
    summary = json.loads((folder / "noise_sweep.json").read_text())["summary"]
    return {"summary": summary, "monotone": ns.monotone(summary), "table": ns.markdown_table(summary)}


def _sweep_config(config: DemoConfig):
    """The noise conditions of the sweep and of the ASR-per-SNR stage (the same, so their rows line up)."""
    from daisy.analysis import noise_sweep as ns

    return ns.SweepConfig(snrs=(10.0, 0.0) if config.quick else (20.0, 10.0, 5.0, 0.0, -5.0))


def _asr_per_snr(
    out: Path, model, model_key: str, splits, config: DemoConfig, stages: _Stages, test_scores: dict
) -> dict:
    """ASR CER per noise condition at DAISY's exits, fixed truncation and the full model; fills
    `test_scores` with the test audio's head scores per condition when it runs."""
    from daisy.analysis import asr_per_snr as sq
    from daisy.data.sources import load_all

    folder = out / "report" / "noise_sweep"
    settings = {"sweep": _sweep_config(config), "quality": sq.QualityConfig(size="quick" if config.quick else "cpu")}
    settings.update(train=config.probe_train, test=config.sweep_utterances)
    key = stages.key("ASR quality per SNR", model_key, settings)
    if stages.reuse("ASR quality per SNR", key, folder / "asr_quality.json"):
        return _asr_rows(folder)
    with stages.making("ASR quality per SNR", key, settings):
        train, test = splits["train"][: config.probe_train], splits["test"][: config.sweep_utterances]
        rows = sq.asr_quality(
            model,
            (load_all(train), [u.text for u in train]),
            (load_all(test), [u.text for u in test]),
            settings["sweep"],
            config=settings["quality"],
            babble_pool=load_all(splits["train"][:64]),
            test_scores=test_scores,
        )
        sq.write_quality(rows, folder)
    return _asr_rows(folder)


def _asr_rows(folder: Path) -> dict:
    from daisy.analysis import asr_per_snr as sq

    rows = json.loads((folder / "asr_quality.json").read_text())["rows"]
    return {"rows": rows, "table": sq.markdown_table(rows)}


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _head_summary(out: Path) -> list[dict] | None:
    log = _read_json(out / "heads" / "heads_log.json")
    if not log or not log["log"]:
        return None
    last = log["log"][-20:]
    layers = len(last[0]["layers"])
    return [
        {"layer": i + 1, **{k: sum(r["layers"][i][k] for r in last) / len(last) for k in ("loss", "acc", "entropy")}}
        for i in range(layers)
    ]


def _daisy_operating_points(default: dict | None, tasks: dict) -> str:
    """One sentence on where DAISY's thresholds were calibrated: by default, and per task."""
    if default is None:
        return ""
    text = f"DAISY's thresholds are calibrated on dev audio to {default['target_depth']:g} layers on average"
    if not tasks:
        return text + "."
    own = ", ".join(f"{task} {c['target_depth']:g}" for task, c in tasks.items())
    return text + f"; tasks with their own thresholds, as in DAISY's paper: {own} layers."


def _write_report(folder: Path, results: dict) -> None:
    lines = [
        "# daisy demo report",
        "",
        f"Corpus: `{results['corpus']}`  ",
        f"Pretrained model: `{results['base_model']}`  ",
        f"DAISY model: `{results['model']}`",
        "",
    ]
    pre = results.get("pretraining")
    if pre:
        s = pre["summary"]
        lines += [
            "## Pretraining",
            "",
            f"{s['steps']} steps; final training loss {s['final_loss']:.3f}, "
            f"masked accuracy {s['final_masked_acc']:.3f}.",
            "",
        ]
    if results.get("heads"):
        lines += [
            "## Exit heads (last 20 training steps)",
            "",
            "| layer | loss | accuracy vs teacher | entropy |",
            "|---:|---:|---:|---:|",
        ]
        lines += [f"| {h['layer']} | {h['loss']:.3f} | {h['acc']:.3f} | {h['entropy']:.3f} |" for h in results["heads"]]
        lines.append("")
    ms = results["minisuperb"]
    calibration = results.get("calibration", {})
    lines += [
        "## MiniSUPERB: full model vs early exit",
        "",
        "Probes on a weighted sum of the layers each utterance ran (DAISY's dynamic featurizer); "
        "settings differ only in their exit layers. Score: MFCC = 0, full model = 100. "
        + _daisy_operating_points(calibration.get("default"), calibration.get("tasks", {})),
        "",
        ms["table"],
        "",
        "![quality vs depth](minisuperb/minisuperb.png)",
        "",
    ]
    sweep = results["noise_sweep"]
    verdict = sweep["monotone"]
    lines += [
        "## Exit depth vs noise",
        "",
        sweep["table"],
        "",
        "![exit depth vs SNR](noise_sweep/exit_depth_vs_snr.png)",
        "",
        *(  # where the model gives its own answer: its exits' agreement with it per condition
            ["![agreement vs SNR](noise_sweep/agreement_vs_snr.png)", ""]
            if all(s.get("agreement") is not None for s in sweep["summary"])
            else []
        ),
        "![exit layers per SNR](noise_sweep/exit_histogram.png)",
        "",
        "Mean exit depth rises as SNR falls: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in verdict.items()),
        "",
    ]
    if results.get("asr_per_snr"):
        lines += [
            "## What the later exits buy: ASR per noise condition",
            "",
            "CER of a CTC probe per setting, each probe trained on the same multi-condition audio: DAISY's exits "
            "(the model's default policy), fixed truncation at DAISY's clean mean depth, and the full model. "
            "DAISY's exits here are the noise sweep's (the same test audio and conditions): their agreement with "
            "the full model's answer is the sweep table's.",
            "",
            results["asr_per_snr"]["table"],
            "",
            "![ASR CER vs SNR](noise_sweep/asr_cer_vs_snr.png)",
            "",
        ]
    with atomic_path(folder / "report.md", suffix=".md") as tmp:
        tmp.write_text("\n".join(lines))
