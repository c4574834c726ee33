"""Consumer side of daisy: featurizers and MiniSUPERB-style probes over exited representations.

- `featurizer`: `WeightedSum`, the softmax-weighted sum over layers ("static", DAISY's "dynamic", "per_depth").
- `probes`: `CTCProbe` (ASR), `SIDProbe`, `EnhancementProbe` (SE), `SeparationProbe` (SS).
- `metrics`: WER/CER, accuracy, PESQ, STOI, SI-SDR(i); metric packages are imported only when called.
"""
