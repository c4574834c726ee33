"""daisy-speech: label-free, per-utterance early exit for self-supervised speech models.

    model = daisy.EarlyExitHubert.from_pretrained(model_dir)
    out = model(wavs, lengths)            # ExitOutput: exit_layers, hidden_states, lengths, scores
    model.policy = daisy.policies.Fixed(layer=4)

Heavy modules load on first use, so `import daisy` (and the CLI's --help) stays fast.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "EarlyExitHubert": "daisy.model",
    "ExitOutput": "daisy.model",
    "DaisyConfig": "daisy.model",
    "Trace": "daisy.model",
    "ExitHeads": "daisy.heads",
}
_SUBMODULES = {"audio", "data", "features", "heads", "io", "model", "policies", "targets", "upstream", "downstream"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"daisy.{name}")
    raise AttributeError(f"module 'daisy' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
