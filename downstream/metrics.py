"""Task metrics of MiniSUPERB: WER / CER (ASR), accuracy (SID), PESQ / STOI (SE), SI-SDR(i) (SS).

Reference implementations do the work (jiwer, pesq, pystoi, torchmetrics); they are imported inside the
functions, so importing daisy.downstream needs none of them (they are the `eval` extra). Signals are
single utterances without padding: trim a padded batch to each utterance's length first.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch


def _texts(refs: str | Sequence[str], hyps: str | Sequence[str]) -> tuple[list[str], list[str]]:
    refs, hyps = ([refs] if isinstance(refs, str) else list(refs)), ([hyps] if isinstance(hyps, str) else list(hyps))
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("no references given")
    empty = [i for i, r in enumerate(refs) if not r.strip()]
    if empty:
        raise ValueError(f"references {empty[:5]} are empty: an error rate over no words is undefined")
    return refs, hyps


def wer(refs: str | Sequence[str], hyps: str | Sequence[str]) -> float:
    """Word error rate over the whole set (total edits / total reference words). Texts are compared as
    given: normalise them first (e.g. `CharVocab.normalise`)."""
    import jiwer

    return float(jiwer.wer(*_texts(refs, hyps)))


def cer(refs: str | Sequence[str], hyps: str | Sequence[str]) -> float:
    """Character error rate over the whole set (spaces count as characters)."""
    import jiwer

    return float(jiwer.cer(*_texts(refs, hyps)))


def accuracy(predictions: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"{tuple(predictions.shape)} predictions but {tuple(labels.shape)} labels")
    if predictions.numel() == 0:
        raise ValueError("no predictions given")
    return float((predictions == labels).double().mean())


def _signal_pair(ref, deg) -> tuple[np.ndarray, np.ndarray]:
    ref, deg = (np.asarray(torch.as_tensor(x).detach().cpu(), dtype=np.float64) for x in (ref, deg))
    if ref.ndim != 1 or deg.ndim != 1:
        raise ValueError(f"expected one utterance (1-D signals), got shapes {ref.shape} and {deg.shape}")
    if len(ref) != len(deg):
        raise ValueError(f"reference has {len(ref)} samples but the degraded signal {len(deg)}")
    if len(ref) == 0:
        raise ValueError("empty signals")
    return ref, deg


def pesq_wb(ref, deg, sample_rate: int = 16000) -> float:
    """Wideband PESQ (ITU-T P.862.2, MOS-LQO about 1.0 .. 4.64) of one utterance (n,) against its reference."""
    from pesq import pesq

    if sample_rate != 16000:
        raise ValueError(f"wideband PESQ needs 16 kHz audio, got {sample_rate} Hz")
    return float(pesq(sample_rate, *_signal_pair(ref, deg), "wb"))


def stoi(ref, deg, sample_rate: int = 16000, extended: bool = False) -> float:
    """STOI (0 .. 1) of one utterance (n,) against its clean reference; `extended` for ESTOI."""
    from pystoi import stoi as pystoi

    return float(pystoi(*_signal_pair(ref, deg), sample_rate, extended=extended))


def si_sdr(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SDR in dB (no mean removal), computed in float64. est, ref (..., n) -> (...)."""
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

    est, ref = torch.as_tensor(est).double(), torch.as_tensor(ref).double()
    if est.shape != ref.shape:
        raise ValueError(f"estimate {tuple(est.shape)} and reference {tuple(ref.shape)} differ in shape")
    if est.numel() == 0 or est.shape[-1] == 0:
        raise ValueError("empty signals")
    return scale_invariant_signal_distortion_ratio(est, ref)


def si_sdr_improvement(est: torch.Tensor, mix: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """SI-SDR(est, ref) - SI-SDR(mix, ref) in dB. est, ref (..., n); mix the same, or (B, n) for
    (B, S, n) sources. Order the estimates first for separation (`align_sources`)."""
    est, mix, ref = (torch.as_tensor(x) for x in (est, mix, ref))
    if mix.dim() == ref.dim() - 1:
        mix = mix.unsqueeze(-2).expand_as(ref)
    return si_sdr(est, ref) - si_sdr(mix, ref)


def align_sources(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Estimates (B, S, n) reordered, per utterance, to the speaker permutation with the highest mean
    SI-SDR against ref (B, S, n): separation outputs come in no particular speaker order."""
    est, ref = torch.as_tensor(est), torch.as_tensor(ref)
    if est.dim() != 3 or est.shape != ref.shape:
        raise ValueError(f"expected estimates and references of one shape (B, S, n), got {est.shape} and {ref.shape}")
    perms = list(itertools.permutations(range(est.shape[1])))
    scores = torch.stack([si_sdr(est[:, list(p)], ref).mean(-1) for p in perms])  # (P, B)
    best = torch.tensor(perms, device=est.device)[scores.argmax(0).to(est.device)]  # (B, S)
    return est.gather(1, best[..., None].expand_as(est))
