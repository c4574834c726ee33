"""MiniSUPERB-style probes on (weighted-sum) features: ASR (CTC), SID, SE and SS.

Every probe reads features (B, T, D) with their valid frame counts `lengths` (B,); padded frames
never reach a loss, a pooled vector or an LSTM state. Sizes are constructor arguments; defaults are
MiniSUPERB's (3-layer BLSTM, 256 units).

SE and SS mask a log1p STFT magnitude (as s3prl's enhancement_stft2 / separation_stft2 with
`log: log1p`, mask type "AM"), but with hop 320 so that STFT frames follow HuBERT's frames: see
`Spectrogram`. Their methods take (features, waveform(s), lengths); `lengths` counts feature frames.
"""

from __future__ import annotations

import itertools
import string

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def frame_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, frames) True on valid frames, on the device of `lengths`."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


class BLSTM(nn.Module):
    """Bidirectional LSTM over packed sequences: (B, T, D), lengths -> (B, T, 2 * hidden), zeros past lengths."""

    def __init__(self, dim: int, hidden: int, layers: int, dropout: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden, layers, batch_first=True, bidirectional=True, dropout=dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


# -- ASR ----------------------------------------------------------------------------------------------------------
class CharVocab:
    """Characters for CTC: id 0 is the blank, then the characters (lowercase letters, apostrophe, space)."""

    ALPHABET = " '" + string.ascii_lowercase

    def __init__(self, chars: str = ALPHABET):
        if len(set(chars)) != len(chars):
            raise ValueError(f"repeated characters in {chars!r}")
        self.chars = chars
        self.ids = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def from_texts(cls, texts: list[str]) -> CharVocab:
        """The alphabet characters that occur in `texts` (after normalising), in alphabet order."""
        seen = set("".join(cls.normalise(t) for t in texts))
        return cls("".join(c for c in cls.ALPHABET if c in seen))

    @classmethod
    def normalise(cls, text: str) -> str:
        """Lowercase, drop characters outside the alphabet, collapse runs of spaces."""
        kept = "".join(c for c in text.lower() if c in cls.ALPHABET)
        return " ".join(kept.split())

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        """Characters of the normalised text missing from this vocabulary are dropped."""
        return [self.ids[c] for c in self.normalise(text) if c in self.ids]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if 0 < i <= len(self.chars))


def ctc_greedy_decode(logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best path per utterance: argmax per valid frame, repeats merged, blanks (0) removed.
    logits (B, T, V), lengths (B,) -> B lists of label ids."""
    best = logits.argmax(-1).tolist()
    decoded = []
    for path, n in zip(best, lengths.tolist()):
        merged = [k for i, k in enumerate(path[:n]) if i == 0 or k != path[i - 1]]
        decoded.append([k for k in merged if k != 0])
    return decoded


class CTCProbe(nn.Module):
    """BLSTM + linear to characters, trained with CTC (blank id 0); vocab_size counts the blank
    (`len(CharVocab)`)."""

    def __init__(self, dim: int, vocab_size: int, hidden: int = 256, layers: int = 3, dropout: float = 0.0):
        super().__init__()
        self.rnn = BLSTM(dim, hidden, layers, dropout)
        self.out = nn.Linear(2 * hidden, vocab_size)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> logits (B, T, V)."""
        return self.out(self.rnn(features, lengths))

    def loss(
        self, features: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor
    ) -> torch.Tensor:
        """targets (B, S) padded label ids (>= 1), target_lengths (B,). Mean over utterances of the
        per-utterance CTC loss divided by its target length (torch's reduction="mean")."""
        log_probs = F.log_softmax(self(features, lengths), dim=-1).transpose(0, 1)  # (T, B, V)
        return F.ctc_loss(log_probs, targets, lengths, target_lengths, blank=0, zero_infinity=True)

    @torch.no_grad()
    def predict(self, features: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        return ctc_greedy_decode(self(features, lengths), lengths)


# -- SID ----------------------------------------------------------------------------------------------------------
class SIDProbe(nn.Module):
    """Mean over valid frames, then linear to speakers."""

    def __init__(self, dim: int, num_speakers: int):
        super().__init__()
        self.out = nn.Linear(dim, num_speakers)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> logits (B, num_speakers)."""
        lengths = lengths.to(features.device)
        valid = frame_mask(lengths, features.shape[1])[..., None].to(features.dtype)
        pooled = (features * valid).sum(1) / lengths.clamp(min=1)[:, None].to(features.dtype)
        return self.out(pooled)

    def loss(self, features: torch.Tensor, lengths: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(features, lengths), speakers)

    @torch.no_grad()
    def predict(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) speaker ids."""
        return self(features, lengths).argmax(-1)


# -- STFT shared by SE and SS -------------------------------------------------------------------------------------
class Spectrogram(nn.Module):
    """STFT with n_fft 512, a 400-sample Hann window and hop 320, center=False.

    The signal is padded by one hop plus (n_fft - win) / 2 = 56 samples on the left, so that frame t + 1's
    window covers samples [320 t, 320 t + 400): exactly the receptive field of HuBERT's frame t. HuBERT
    has 1 + (n - 400) // 320 frames; the STFT has three more, one at the head and two at the tail, so that
    every sample, edges included, lies well inside some window (HuBERT's frames reach the edges with
    near-zero window values, or, at the tail, not at all). Probes give these frames the mask of the
    nearest feature frame. The inverse is a weighted overlap-add (torch.istft refuses a center=False
    window with zero ends), exact for an all-pass mask."""

    n_fft, win, hop = 512, 400, 320
    floor = 1e-2  # below the smallest envelope over the signal (~0.018, where two windows cross): never bites

    def __init__(self):
        super().__init__()
        window = F.pad(torch.hann_window(self.win), ((self.n_fft - self.win) // 2,) * 2)
        self.register_buffer("window", window, persistent=False)

    @property
    def pad(self) -> int:
        """Samples added on the left (and, plus one hop, on the right)."""
        return self.hop + (self.n_fft - self.win) // 2

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """(..., n) -> complex (..., F=257, 4 + (n - 400) // 320)."""
        if wav.shape[-1] < self.win:
            raise ValueError(f"signal of {wav.shape[-1]} samples is shorter than one {self.win}-sample window")
        shape = wav.shape[:-1]
        padded = F.pad(wav.reshape(-1, wav.shape[-1]), (self.pad, self.pad + self.hop))
        spec = torch.stft(padded, self.n_fft, self.hop, self.n_fft, self.window, center=False, return_complex=True)
        return spec.reshape(*shape, *spec.shape[-2:])

    def inverse(self, spec: torch.Tensor, samples: int) -> torch.Tensor:
        """complex (..., F, frames) -> (..., samples); samples no frame covers are zero."""
        shape, frames = spec.shape[:-2], spec.shape[-1]
        chunks = torch.fft.irfft(spec.reshape(-1, *spec.shape[-2:]), n=self.n_fft, dim=-2) * self.window[:, None]
        span = self.n_fft + self.hop * (frames - 1)
        fold = dict(output_size=(1, span), kernel_size=(1, self.n_fft), stride=(1, self.hop))
        summed = F.fold(chunks, **fold)[:, 0, 0]
        envelope = F.fold(self.window.square()[None, :, None].expand(1, -1, frames), **fold)[:, 0, 0]
        wav = (summed / envelope.clamp(min=self.floor))[:, self.pad : self.pad + samples]
        wav = F.pad(wav, (0, samples - wav.shape[-1]))
        return wav.reshape(*shape, samples)


class MaskProbe(nn.Module):
    """BLSTM + linear + sigmoid: `masks` masks (B, masks, T, F) in [0, 1] over log1p STFT magnitudes."""

    def __init__(self, dim: int, hidden: int, layers: int, masks: int):
        super().__init__()
        self.spectrogram = Spectrogram()
        self.masks, self.bins = masks, self.spectrogram.n_fft // 2 + 1
        self.rnn = BLSTM(dim, hidden, layers)
        self.out = nn.Linear(2 * hidden, masks * self.bins)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, masks, T, F)."""
        masks = torch.sigmoid(self.out(self.rnn(features, lengths)))
        return masks.unflatten(-1, (self.masks, self.bins)).transpose(1, 2)

    def masked(self, features, lengths, mixture):
        """Masks on the mixture's S STFT frames, and what the losses need: masks (B, K, S, F); log1p |mix|
        (B, 1, S, F); the mix STFT (B, F, S); valid (B, S), the frames that have features. Frames past an
        utterance's features repeat its last mask frame (the first covers its tail, the others only zero
        padding, which so reconstructs to zero), and frame 0 (the head) takes the first."""
        spec = self.spectrogram(mixture)
        frames = spec.shape[-1]
        lengths = lengths.to(spec.device)
        masks = self(features, lengths)
        # STFT frame t + 1 is feature frame t; the edge frames take the nearest feature frame
        steps = torch.arange(frames, device=spec.device)
        source = torch.minimum((steps - 1).clamp(min=0)[None, :], (lengths - 1).clamp(min=0)[:, None])
        masks = masks.gather(2, source[:, None, :, None].expand(-1, self.masks, -1, self.bins))
        valid = (steps[None, :] >= 1) & (steps[None, :] <= lengths[:, None])
        return masks, torch.log1p(spec.abs()).transpose(-1, -2)[:, None], spec, valid

    def reconstruct(self, masks: torch.Tensor, spec: torch.Tensor, samples: int) -> torch.Tensor:
        """Masked log1p magnitude back to linear, with the mixture's phase: (B, K, samples)."""
        magnitude = torch.expm1(masks * torch.log1p(spec.abs()).transpose(-1, -2)[:, None])
        estimate = magnitude.transpose(-1, -2) * torch.exp(1j * spec.angle())[:, None]
        return self.spectrogram.inverse(estimate, samples)


def per_utterance(error: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, frames, F) errors -> (B,): summed over valid frames and bins, divided by the valid frames (s3prl)."""
    return (error * valid[..., None]).sum((1, 2)) / valid.sum(1).clamp(min=1)


class EnhancementProbe(MaskProbe):
    """One mask over the noisy log1p magnitude; L1 against the clean log1p magnitude."""

    def __init__(self, dim: int, hidden: int = 256, layers: int = 3):
        super().__init__(dim, hidden, layers, masks=1)

    def loss(
        self, features: torch.Tensor, noisy_wav: torch.Tensor, clean_wav: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """features (B, T, D), noisy/clean (B, n), lengths (B,) frames -> scalar."""
        masks, noisy, _, valid = self.masked(features, lengths, noisy_wav)
        clean = torch.log1p(self.spectrogram(clean_wav).abs()).transpose(-1, -2)
        return per_utterance((masks[:, 0] * noisy[:, 0] - clean).abs(), valid).mean()

    @torch.no_grad()
    def enhance(self, features: torch.Tensor, noisy_wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, n) noisy -> (B, n) enhanced, with the noisy phase."""
        masks, _, spec, _ = self.masked(features, lengths, noisy_wav)
        return self.reconstruct(masks, spec, noisy_wav.shape[-1])[:, 0]


class SeparationProbe(MaskProbe):
    """One mask per speaker; MSE on log1p magnitudes under the best speaker permutation (PIT)."""

    def __init__(self, dim: int, hidden: int = 256, layers: int = 3, speakers: int = 2):
        super().__init__(dim, hidden, layers, masks=speakers)

    def loss(
        self, features: torch.Tensor, mixture: torch.Tensor, sources: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """features (B, T, D), mixture (B, n), sources (B, speakers, n), lengths (B,) frames -> scalar:
        per utterance the smallest loss over permutations, averaged over utterances and speakers (s3prl)."""
        masks, mix, _, valid = self.masked(features, lengths, mixture)
        target = torch.log1p(self.spectrogram(sources).abs()).transpose(-1, -2)  # (B, K, frames, F)
        estimate = masks * mix
        per_perm = [
            sum(per_utterance((estimate[:, k] - target[:, p]).square(), valid) for k, p in enumerate(perm))
            for perm in itertools.permutations(range(self.masks))
        ]
        return torch.stack(per_perm).min(0).values.mean() / self.masks

    @torch.no_grad()
    def separate(self, features: torch.Tensor, mixture: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, n) mixture -> (B, speakers, n), in the probe's own speaker order."""
        masks, _, spec, _ = self.masked(features, lengths, mixture)
        return self.reconstruct(masks, spec, mixture.shape[-1])
