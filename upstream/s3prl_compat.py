"""Shims for today's known breakages of s3prl on current torch / torchaudio. Imported only by the s3prl
plugin; each shim acts only where its breakage shows, so it is a no-op once the libraries are fixed.
"""

from __future__ import annotations

import argparse
import sys


def import_torchaudio():
    """Import torchaudio even where its compiled extension cannot load.

    Why: the torchaudio 2.11 wheels on PyPI are CUDA builds; next to a CPU-only torch (`+cpu`) loading
    `_torchaudio.abi3.so` fails with `OSError: libc10_cuda.so: cannot open shared object file`, so
    `import torchaudio` fails, and with it `import s3prl.hub` (which imports every upstream). The Python
    parts s3prl uses (kaldi compliance, transforms, save/load through torchcodec) do not need that
    extension, and torchaudio already supports running without it (`_load_lib` returns False when the
    library file is absent), so we make a library that fails to load count as absent.
    """
    try:
        import torchaudio
    except OSError:
        # The failed import left the pure-Python torchaudio._extension.utils in sys.modules.
        utils = sys.modules.get("torchaudio._extension.utils")
        if utils is None:
            raise
        load_lib = utils._load_lib

        def load_lib_or_skip(lib: str) -> bool:
            try:
                return load_lib(lib)
            except OSError:
                return False

        utils._load_lib = load_lib_or_skip
        import torchaudio
    return torchaudio


def allow_runner_checkpoints() -> None:
    """Let s3prl's downstream runner load the checkpoints it saves itself.

    Why: the runner saves `{"Args": argparse.Namespace, ...}` and reloads it with a plain
    `torch.load(path)` (resume `-e`, evaluate `-e`, `-i`); torch >= 2.6 defaults to `weights_only=True`,
    which refuses `argparse.Namespace`. We allow exactly that class instead of turning `weights_only` off.
    """
    import torch

    torch.serialization.add_safe_globals([argparse.Namespace])
