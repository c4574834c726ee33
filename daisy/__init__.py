"""daisy-speech: label-free, per-utterance early exit for self-supervised speech models."""

__version__ = "0.1.0"
