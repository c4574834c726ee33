"""Run under torchrun by test_training.py: heads and pretraining with DDP (gloo), 2 processes."""

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from daisy.data.corpus import load_manifest
from daisy.training.pretrain import PretrainConfig, pretrain
from daisy.training.train_heads import HeadTrainConfig, train_heads

corpus, out = Path(sys.argv[1]), Path(sys.argv[2])
rank = int(os.environ["RANK"])
utts = load_manifest(corpus, "train")[:24]
config = PretrainConfig.quick()
config.steps, config.checkpoint_every, config.batch_size, config.num_classes = 4, 2, 2, 10
model_dir = pretrain(utts, out / "pretrain", config)

from daisy.training.train_heads import prepare_model  # noqa: E402

early = prepare_model(model_dir)
heads_config = HeadTrainConfig(steps=3, batch_size=2, checkpoint_every=10)
train_heads(early, [u.load() for u in utts], out / "heads", heads_config)
save_file(early.heads.state_dict(), str(out / f"heads_rank{rank}.safetensors"))
