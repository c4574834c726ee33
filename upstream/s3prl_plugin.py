"""daisy models as s3prl upstreams: `S3PRLUpstream`, s3prl's `Featurizer` and its downstream runner use
them as they are, without editing s3prl.

    import daisy.upstream  # s3prl.hub gains daisy_hubert, daisy_hubert_fixed as soon as s3prl loads
    upstream = S3PRLUpstream("daisy_hubert", path_or_url="daisy/assets/hubert-tiny-synth").eval()

`register()` does the same explicitly. The upstream returns every state 0..L (L + 1 tensors, state l the
output of layer l); past an utterance's exit layer its states repeat the exit state, so s3prl's weighted
sum sees an early-exited utterance's exit state in every deeper layer.

Policy options (a YAML or JSON `model_config` file, the runner's `-g`, or keyword arguments, e.g.
s3prl's `extra_conf`; keywords win over the file, the file over the checkpoint's own `daisy.json`):
`task` picks the policy the checkpoint saved for that task (`daisy calibrate --task asr`) instead of its
default one; `policy` names a policy (entropy, confidence, budget, fixed); every other key is a field of it
(`threshold`, `min_layer`, `layer`). Without `policy`, the fields change the checkpoint's (or the task's)
own policy (see `daisy.policies.override`). `train_exits` says how exits are decided in training mode
(the runner's `-f`): `eval` (the default) or `live` (see `UpstreamExpert`)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from daisy.upstream import s3prl_compat

NAMES = ("daisy_hubert", "daisy_hubert_fixed")


def read_options(model_config: str | None) -> dict:
    """Policy options from a YAML or JSON file (YAML reads both); {} for None."""
    if model_config is None:
        return {}
    import yaml

    path = Path(model_config)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such policy config file (a YAML/JSON file like `policy: fixed`)")
    options = yaml.safe_load(path.read_text()) or {}
    if not isinstance(options, dict):
        raise ValueError(f"{path}: expected a mapping like `policy: entropy` / `threshold: 0.8`, got {options!r}")
    return options


TRAIN_EXITS = ("eval", "live")


class UpstreamExpert(nn.Module):
    """An s3prl upstream around `EarlyExitHubert`.

    ckpt: a daisy model directory (`EarlyExitHubert.from_pretrained`). model_config: a YAML/JSON file of
    policy options. refresh: s3prl's re-download flag, ignored (checkpoints are local directories).

    In training mode (the runner's `-f`, which fine-tunes the upstream) the backbone runs with its dropout
    and gradients. Dropout changes the heads' scores from call to call, so by default (`train_exits:
    eval`) each utterance's exit layer is decided first by the model in eval mode, without gradients (the
    exit it gets in evaluation, for the current weights); the training pass then runs every utterance to
    that layer. `train_exits: live` decides on the training pass itself: exits then vary between calls.
    """

    def __init__(self, ckpt: str | None, model_config: str | None = None, refresh: bool = False, **options):
        super().__init__()
        from daisy import policies
        from daisy.model import EarlyExitHubert

        if ckpt is None:
            raise ValueError(
                "daisy upstreams need a daisy model directory: S3PRLUpstream('daisy_hubert', path_or_url=DIR), "
                "or -k DIR for s3prl's runner"
            )
        self.model = EarlyExitHubert.from_pretrained(ckpt)
        options = {**read_options(model_config), **options}
        self.train_exits = options.pop("train_exits", "eval")
        if self.train_exits not in TRAIN_EXITS:
            raise ValueError(f"train_exits {self.train_exits!r}: choose one of {', '.join(TRAIN_EXITS)}")
        task = options.pop("task", None)
        if task is not None:
            try:
                self.model.use_task(str(task))
            except ValueError as e:
                raise ValueError(f"{ckpt}: {e}") from e
        spec = policies.override(self.model.policy.to_dict(), options)
        try:
            self.model.policy = policies.policy_from_dict(spec)
        except ValueError as e:  # an unknown field, or a layer past the model's
            raise ValueError(f"policy options {options} (model_config={model_config}) do not fit {spec}: {e}") from e

    def get_downsample_rates(self, key: str) -> int:
        return self.model.backbone.downsample_rate

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        """wavs: B unpadded (T_b,) waveforms at 16 kHz -> hidden_states: L + 1 tensors (B, T', D);
        last_hidden_state (B, T', D) the exit-layer states; exit_layers (B,) in 1..L."""
        lengths = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
        batch = pad_sequence(wavs, batch_first=True)
        # S3PRLUpstream pads only a whole batch to 50 ms; an utterance shorter than one frame's receptive
        # field gets silence up to it rather than failing the batch.
        shortest = self.model.backbone.min_samples
        batch = F.pad(batch, (0, max(0, shortest - batch.shape[1])))
        lengths = lengths.clamp(min=shortest)
        if self.training and self.train_exits == "eval":
            return self._train_at_eval_exits(batch, lengths)
        out = self.model(batch, lengths, output_hidden_states=True)
        return {
            "hidden_states": out.hidden_states,
            "last_hidden_state": out.last_hidden_state,
            "exit_layers": out.exit_layers,
        }

    def _train_at_eval_exits(self, batch: torch.Tensor, lengths: torch.Tensor) -> dict:
        model = self.model
        modes = [m.training for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                exits = model(batch, lengths, output_hidden_states=False).exit_layers
        finally:
            for module, training in zip(model.modules(), modes):
                module.train(training)
        # the training pass: the backbone's own layer loop, every utterance up to the batch's deepest exit
        x, mask = model.embed(batch, lengths)
        bias = model.backbone.attention_bias(mask, x.dtype)
        states = [x]
        for layer in range(1, int(exits.max()) + 1):
            x = model.backbone.layer(layer, x, mask, bias)
            states.append(x)
        stacked, rows = torch.stack(states), torch.arange(len(exits), device=exits.device)
        # state l of an utterance is its state min(l, exit): past the exit, the exit state repeats
        hidden = [stacked[exits.clamp(max=layer), rows] for layer in range(model.num_layers + 1)]
        return {"hidden_states": hidden, "last_hidden_state": stacked[exits, rows], "exit_layers": exits}


# -- s3prl hub entries: s3prl calls them as (ckpt=, model_config=, refresh=, **extra_conf) -------------
def daisy_hubert(ckpt: str | None = None, model_config: str | None = None, refresh: bool = False, **options):
    """The checkpoint's own exit policy, changed by the policy options if any."""
    return UpstreamExpert(ckpt, model_config, refresh, **options)


def daisy_hubert_fixed(ckpt: str | None = None, model_config: str | None = None, refresh: bool = False, **options):
    """Plain truncation at layer K (every utterance exits there): `layer: K` in model_config, or layer=K."""
    options = {**read_options(model_config), **options}
    if options.setdefault("policy", "fixed") != "fixed":
        raise ValueError(f"daisy_hubert_fixed runs the fixed policy, not {options['policy']!r}; use daisy_hubert")
    if "layer" not in options:
        raise ValueError(
            f"daisy_hubert_fixed needs the exit layer: `layer: K` in model_config ({model_config}) or layer=K"
        )
    return UpstreamExpert(ckpt, None, refresh, **options)


def register() -> list[str]:
    """Add daisy's upstreams to `s3prl.hub`, where `S3PRLUpstream`, `S3PRLUpstream.available_names()` and
    s3prl's runner (`-u`) look them up. Returns the names. Safe to call more than once; importing
    `daisy.upstream` already does it whenever s3prl.hub loads, so this is for making sure (or for
    loading s3prl now)."""
    _require_s3prl()
    s3prl_compat.shim_torchaudio()  # s3prl.hub imports every upstream, several of which import torchaudio
    import s3prl.hub

    _add_names(s3prl.hub)
    return list(NAMES)


def _add_names(hub) -> None:
    for name in NAMES:
        setattr(hub, name, globals()[name])


def _require_s3prl() -> None:
    if importlib.util.find_spec("s3prl") is None:
        raise ModuleNotFoundError("s3prl is not installed: pip install 'daisy-speech[s3prl]' (after torch)")


# -- s3prl's downstream runner --------------------------------------------------------------------------
def run_s3prl_downstream(args: list[str]) -> int:
    """Run s3prl's `run_downstream.py ARGS` with daisy's upstreams registered; return its exit code.

    It runs in a child process because the runner patches `builtins.isinstance` and torch's tensor
    sharing strategy, which must not leak into the caller. s3prl's pip package ships no downstream
    configs: pass one with `-c`.
    """
    _require_s3prl()
    code = "from daisy.upstream.s3prl_plugin import _runner_main; _runner_main()"
    return subprocess.run([sys.executable, "-c", code, *args]).returncode


def _runner_main() -> None:
    """The child process of `run_s3prl_downstream`: arguments in sys.argv[1:]."""
    register()
    s3prl_compat.allow_runner_checkpoints()
    s3prl_compat.keep_caches_in_expdir()
    from s3prl import run_downstream

    sys.argv[0] = "run_downstream.py"  # argparse's prog name; `python -c` leaves "-c" there
    run_downstream.main()


# Whichever loads first, s3prl or daisy.upstream: torchaudio gets its shims as it loads, and s3prl.hub
# our names (s3prl_compat.after_import); register() is then optional.
s3prl_compat.shim_torchaudio()
s3prl_compat.after_import("s3prl.hub", _add_names)
