"""Data: the synthetic corpus, noise at known SNRs, readers for real corpora."""

from daisy.data.noise import NOISE_TYPES, make_noise, mix_at_snr, snr_db

__all__ = ["NOISE_TYPES", "make_noise", "mix_at_snr", "snr_db"]
