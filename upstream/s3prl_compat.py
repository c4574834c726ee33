"""Shims for today's known breakages of s3prl on current torch / torchaudio. Imported by the s3prl plugin
(and so by `import daisy.upstream`); each shim acts only where its breakage shows, so it is a no-op once
the libraries are fixed.

The torchaudio shims are applied by an import hook (`after_import`) as torchaudio loads, whichever
package imports it first, so s3prl may be imported before or after `daisy.upstream.register()`; they
need `daisy.upstream` imported before torchaudio is.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import os
import pickle
import sys
import types
from collections.abc import Callable

_CALLBACKS: dict[str, list[Callable]] = {}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `_CALLBACKS[name]` on module `name` right after its code ran, before its importer sees it."""

    def find_spec(self, name, path, target=None):
        callbacks = _CALLBACKS.get(name)
        if not callbacks:
            return None
        for finder in sys.meta_path:  # the spec the import system would have found without us
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = getattr(spec.loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_then_call(module):
            exec_module(module)
            if module.__name__ == name:
                for callback in callbacks:
                    callback(module)

        spec.loader.exec_module = exec_then_call  # this spec's loader instance only
        return spec


def after_import(name: str, callback: Callable[[types.ModuleType], None]) -> None:
    """Call `callback(module)` once module `name` has loaded: now if it already has, else when it does."""
    if not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
    if callback not in _CALLBACKS.setdefault(name, []):
        _CALLBACKS[name].append(callback)
    if name in sys.modules:
        callback(sys.modules[name])


# -- torchaudio -------------------------------------------------------------------------------------------
def shim_torchaudio() -> None:
    """Apply the torchaudio shims as torchaudio loads (now, if it has). Safe to call more than once.

    Why: the torchaudio 2.11 wheels on PyPI are CUDA builds; next to a CPU-only torch (`+cpu`) loading
    `_torchaudio.abi3.so` fails with `OSError: libc10_cuda.so: cannot open shared object file`, so
    `import torchaudio` fails, and with it `import s3prl.hub` (which imports every upstream). The Python
    parts s3prl uses (kaldi compliance, transforms, resampling) do not need that extension, and torchaudio
    already runs without it (`_load_lib` returns False when the library file is absent), so a library
    that fails to load counts as absent. Then `load`, `info` and `sox_effects` (`give_fallbacks`).
    """
    after_import("torchaudio._extension.utils", _tolerate_missing_extension)
    after_import("torchaudio", give_fallbacks)


def import_torchaudio():
    """`import torchaudio` with the shims applied, even where its compiled extension cannot load."""
    shim_torchaudio()
    import torchaudio

    return torchaudio


def _tolerate_missing_extension(utils: types.ModuleType) -> None:
    load_lib = utils._load_lib
    if getattr(load_lib, "tolerant", False):
        return

    def load_lib_or_skip(lib: str) -> bool:
        try:
            return load_lib(lib)
        except OSError:
            return False

    load_lib_or_skip.tolerant = True
    utils._load_lib = load_lib_or_skip


def give_fallbacks(torchaudio: types.ModuleType) -> None:
    """soundfile where torchaudio reads audio only through torchcodec and torchcodec cannot load
    (the PyPI wheel is a CUDA build, and it needs FFmpeg); `info` where torchaudio has none (>= 2.9);
    `torchaudio.sox_effects` where it is gone (>= 2.9), for the effects s3prl's downstreams use."""
    from daisy.upstream import torchaudio_fallbacks as fallbacks

    if not getattr(torchaudio.load, "falls_back", False):
        torchaudio.load = _load_falling_back(torchaudio.load, fallbacks.load)
    if not hasattr(torchaudio, "info"):
        torchaudio.info = fallbacks.info
    if "torchaudio.sox_effects" not in sys.modules and importlib.util.find_spec("torchaudio.sox_effects") is None:
        sox_effects = types.ModuleType("torchaudio.sox_effects", fallbacks.__doc__)
        for name in ("apply_effects_tensor", "apply_effects_file", "effect_names"):
            setattr(sox_effects, name, getattr(fallbacks, name))
        sys.modules["torchaudio.sox_effects"] = torchaudio.sox_effects = sox_effects


def _load_falling_back(load: Callable, fallback: Callable) -> Callable:
    def load_or_soundfile(uri, *args, **kwargs):
        return load(uri, *args, **kwargs) if torchcodec_loads() else fallback(uri, *args, **kwargs)

    load_or_soundfile.falls_back = True
    load_or_soundfile.__doc__ = f"torchaudio.load, through soundfile where torchcodec cannot load.\n{load.__doc__}"
    return load_or_soundfile


_TORCHCODEC: list[bool] = []


def torchcodec_loads() -> bool:
    """Whether torchcodec's audio decoder imports (missing, or a build that does not match torch / FFmpeg)."""
    if not _TORCHCODEC:
        try:
            from torchcodec.decoders import AudioDecoder  # noqa: F401
        except (ImportError, OSError, RuntimeError):
            _TORCHCODEC.append(False)
        else:
            _TORCHCODEC.append(True)
    return _TORCHCODEC[0]


# -- s3prl's downstream runner ----------------------------------------------------------------------------
def allow_runner_checkpoints() -> None:
    """Let s3prl's downstream runner load the checkpoints it saves itself.

    Why: the runner saves `{"Args": argparse.Namespace, ...}` and reloads it with a plain
    `torch.load(path)` (resume `-e`, evaluate `-e`, `-i`); torch >= 2.6 defaults to `weights_only=True`,
    which refuses `argparse.Namespace`. We allow exactly that class instead of turning `weights_only` off.
    """
    import torch

    torch.serialization.add_safe_globals([argparse.Namespace])


def keep_caches_in_expdir() -> None:
    """Point s3prl's voxceleb1 file-list cache at `<expdir>/voxceleb1_cache/`, and read it safely.

    Why: s3prl's voxceleb1 (speaker identification) dataset caches its train/dev/test file lists as
    pickles in its own package folder (site-packages), keyed by split alone: writes to an install
    folder, and a second data set would read the first one's lists. The expdir is the run's own;
    `-m evaluate -e` reuses it. The cache holds lists of paths, so loading refuses anything else
    (plain pickle would run whatever a file names)."""
    from s3prl.downstream import runner

    get_downstream = runner.Runner._get_downstream
    if getattr(get_downstream, "caches_in_expdir", False):
        return

    def get_downstream_caching_in_expdir(self):
        if self.args.downstream == "voxceleb1":
            from s3prl.downstream.voxceleb1 import dataset

            dataset.CACHE_PATH = os.path.join(self.args.expdir, "voxceleb1_cache", "")
            dataset.pickle = _PathListPickle
        return get_downstream(self)

    get_downstream_caching_in_expdir.caches_in_expdir = True
    runner.Runner._get_downstream = get_downstream_caching_in_expdir


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name} in a file-list cache, which holds only lists of paths")


class _PathListPickle:
    """Stands in for the `pickle` module in s3prl's voxceleb1 dataset."""

    dump = staticmethod(pickle.dump)

    @staticmethod
    def load(file):
        return _NoGlobals(file).load()
