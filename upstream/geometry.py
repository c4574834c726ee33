"""The input and frame geometry every backbone shares: 16 kHz mono in, one frame per 320 samples."""

SAMPLE_RATE = 16000
HOP = 320  # samples per frame: the conv front-end's total stride
MIN_SAMPLES = 400  # receptive field of one frame of the standard conv front-end


def num_frames(samples: int) -> int:
    """Frames the standard conv front-end (HuBERT, wav2vec 2.0 Base and Large) gives for `samples`; a
    backbone's own `frame_lengths` follows its conv config (transformers' formula)."""
    return (samples - MIN_SAMPLES) // HOP + 1
