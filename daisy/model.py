"""The early-exit HuBERT: backbone + per-layer exit heads + an exit policy.

`model(wavs, lengths)` steps the backbone one layer at a time; after layer l, head l scores each
utterance still running, the policy marks finished ones, and those leave the batch (compaction:
later layers run only on the rest, and the time axis is trimmed to the longest one left). So compute
really shrinks, and an utterance's outputs do not depend on its batch-mates.

`model.trace(...)` runs every layer for every utterance and scores all heads; any policy can then be
applied offline (`policy.exit_layers(trace.scores)`, `trace.select(exits, policy)`) with the same result as
the live path. Layer numbering: state 0 is the embedding, state l the output of layer l (1-based).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from daisy import policies
from daisy.heads import ExitHeads
from daisy.io import atomic_dir, carry_over, recover_dir
from daisy.targets import KMeansTargets, TeacherHead
from daisy.upstream import Backbone, load_backbone

HEAD_INPUTS = ("ffn", "output")
# what `save_pretrained` writes (or leaves out when the model has no such part); any other file in a model
# directory (a model card, notes) is kept when the model is saved over it
MODEL_FILES = {
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "preprocessor_config.json",
    "heads.safetensors",
    "teacher_head.safetensors",
    "kmeans.safetensors",
    "daisy.json",
}


@dataclass
class DaisyConfig:
    """Saved as `daisy.json` beside the backbone weights."""

    num_classes: int
    # "ffn": the layer's feed-forward output before the residual add and layer norm (DAISY's default,
    # "before-norm"); "output": the layer's output state.
    head_input: str = "ffn"
    # None: DAISY's Linear(D, C) heads; r: each factorised through r dimensions (cheaper; see heads.py)
    head_rank: int | None = None
    targets: str = "teacher"  # "teacher" (the model's own prediction) or "kmeans"
    policy: dict = field(default_factory=lambda: {"name": "entropy", "threshold": 1.0})
    # task name -> policy: one operating point per downstream task (DAISY's paper gives each its own
    # threshold), chosen with `EarlyExitHubert.use_task`; `policy` above stays the default.
    task_policies: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an integer of at least 2, got {self.num_classes!r}")
        if self.head_input not in HEAD_INPUTS:
            raise ValueError(f"head_input must be one of {HEAD_INPUTS}, got {self.head_input!r}")
        if self.targets not in ("teacher", "kmeans"):
            raise ValueError(f"targets must be 'teacher' or 'kmeans', got {self.targets!r}")
        if not isinstance(self.task_policies, dict):  # each policy is checked by the model it configures
            raise ValueError(f"task_policies must map task names to policies, got {self.task_policies!r}")


@dataclass
class ExitOutput:
    """exit_layers (B,) in 1..L; lengths (B,) valid frames; last_hidden_state (B, T, D) each
    utterance's exit-layer state; hidden_states: L + 1 tensors (B, T, D) where layers past an
    utterance's exit repeat its exit state (None when called with output_hidden_states=False);
    scores: name -> (B, L) for the scores the policy reads, NaN for layers an utterance did not
    run, layers the policy does not read (below its `min_layer`) and the last layer (where every
    utterance exits, so no head runs)."""

    exit_layers: torch.Tensor
    lengths: torch.Tensor
    last_hidden_state: torch.Tensor
    scores: dict[str, torch.Tensor]
    hidden_states: list[torch.Tensor] | None = None


@dataclass
class Trace:
    """Every layer run for every utterance: hidden_states (L + 1 of (B, T, D); None when the trace kept
    scores only), scores name -> (B, L)."""

    hidden_states: list[torch.Tensor] | None
    lengths: torch.Tensor
    scores: dict[str, torch.Tensor]

    def select(self, exit_layers: torch.Tensor, policy: policies.Policy | None = None) -> ExitOutput:
        """The output the live model gives for these exits; with the `policy` that chose them, its scores too
        (the live model scores only the layers the policy reads)."""
        stacked = torch.stack(self.hidden_states)  # (L+1, B, T, D)
        exit_layers, on = exit_layers.to(stacked.device), stacked.device
        depth = torch.arange(stacked.shape[0], device=on)[:, None]
        index = torch.minimum(depth, exit_layers[None, :])  # (L+1, B): past the exit, the exit state
        rows = torch.arange(stacked.shape[1], device=on)[None, :]
        states = stacked[index, rows]
        # scored layers, as the live path scores them: up to the exit, never the last (it always exits)
        layers = torch.arange(1, stacked.shape[0], device=on)[None, :]
        run = (layers <= exit_layers[:, None]) & (layers < stacked.shape[0] - 1)
        if policy is not None:
            run &= torch.tensor([policy.reads(layer) for layer in range(1, stacked.shape[0])], device=on)
        scores = {k: v.masked_fill(~run, float("nan")) for k, v in self.scores.items()}
        return ExitOutput(exit_layers, self.lengths, states[-1], scores, list(states))


class EarlyExitHubert(nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        heads: ExitHeads,
        config: DaisyConfig,
        teacher: TeacherHead | None = None,
        kmeans: KMeansTargets | None = None,
    ):
        super().__init__()
        if len(heads.heads) != backbone.num_layers:
            raise ValueError(f"{len(heads.heads)} heads for a {backbone.num_layers}-layer backbone")
        self.backbone, self.heads, self.config = backbone, heads, config
        self.teacher, self.kmeans = teacher, kmeans
        self.policy = policies.policy_from_dict(config.policy)
        for task in config.task_policies:
            self.task_policy(task)  # each must fit this backbone too

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    @property
    def policy(self) -> policies.Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: policies.Policy) -> None:
        policy.check(self.num_layers)  # a layer or threshold list that does not fit fails here, not mid-batch
        self._policy = policy

    @property
    def tasks(self) -> list[str]:
        """The tasks with an operating point of their own (`task_policies` in daisy.json)."""
        return sorted(self.config.task_policies)

    def task_policy(self, task: str) -> policies.Policy:
        """The policy saved for `task`; a ValueError naming the saved tasks if there is none."""
        if task not in self.config.task_policies:
            saved = ", ".join(self.tasks) or "none"
            raise ValueError(
                f"no policy for task {task!r} in this model (tasks with their own policy: {saved}); "
                f"calibrate one with `daisy calibrate --task {task}`"
            )
        try:
            policy = policies.policy_from_dict(self.config.task_policies[task])
            policy.check(self.num_layers)
        except (TypeError, ValueError) as e:  # not a mapping, an unknown policy or field, a layer past the model
            raise ValueError(f"task {task!r}'s policy: {e}") from e
        return policy

    def set_task_policy(self, task: str, policy: policies.Policy) -> None:
        """Save `policy` as `task`'s operating point; the model's own `policy` is left as it is."""
        check_task_name(task)
        policy.check(self.num_layers)
        self.config.task_policies[task] = policy.to_dict()

    def use_task(self, task: str) -> EarlyExitHubert:
        """Run under `task`'s saved policy from now on (it becomes `self.policy`, and is what
        `save_pretrained` then records as the default). Returns the model."""
        self.policy = self.task_policy(task)
        return self

    @classmethod
    def from_backbone(
        cls, backbone: Backbone, num_classes: int, teacher: TeacherHead | None = None, seed: int = 0, **config
    ) -> EarlyExitHubert:
        """Fresh (untrained) heads on a backbone, initialised from `seed` (reproducible runs)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            heads = ExitHeads(backbone.num_layers, backbone.hidden_size, num_classes, config.get("head_rank"))
        return cls(backbone, heads, DaisyConfig(num_classes=num_classes, **config), teacher=teacher)

    # -- running ----------------------------------------------------------------------------------
    def embed(self, wavs: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone embedding that never depends on batch-mates: a group-normed conv front-end
        (HuBERT Base) normalises over time, padding included, so each utterance is embedded alone."""
        if self.backbone.config.feat_extract_norm != "group" or wavs.shape[0] == 1:
            return self.backbone.embed(wavs, lengths)
        from daisy.upstream import check_batch

        lengths = check_batch(wavs, lengths, self.backbone.min_samples)
        parts = [self.backbone.embed(wavs[i : i + 1, :n]) for i, n in enumerate(lengths.tolist())]
        width = max(x.shape[1] for x, _ in parts)
        x = torch.cat([nn.functional.pad(x, (0, 0, 0, width - x.shape[1])) for x, _ in parts])
        mask = torch.cat([nn.functional.pad(m, (0, width - m.shape[1])) for _, m in parts])
        return x, mask

    def _run(self, wavs, lengths, targets, policy, keep_states: bool) -> ExitOutput:
        x, mask = self.embed(wavs, lengths)  # on the weights' device, wherever `wavs` are
        targets = None if targets is None else targets.to(x.device)
        batch, width, _ = x.shape
        frames = mask.sum(1)
        num_layers = self.num_layers
        final = None  # allocated at the first early exit; while nobody has left, the last state is it
        states = [x] if keep_states else None
        scores: dict[str, torch.Tensor] = {}
        active = torch.arange(batch, device=x.device)
        # A trace (policy None) scores every head on every layer. The live path runs up to the policy's last
        # layer, scores only what the policy reads (and, with targets, the loss up to the exit) and never the
        # model's last layer (everyone exits there).
        if policy is None:
            last, which = num_layers, ("entropy", "confidence")
        else:
            policy.require(("entropy", "confidence", "frames") + (() if targets is None else ("loss",)))
            last, which = policy.last_layer(num_layers), policy.needs
        exit_layers = torch.full((batch,), last, dtype=torch.long, device=x.device)
        scoring = bool(which) or targets is not None  # whether any head runs at all
        use_ffn = self.config.head_input == "ffn" and scoring
        bias = self.backbone.attention_bias(mask, x.dtype)
        weights = self.heads.frame_weights(mask) if scoring else None
        for layer in range(1, last + 1):
            if use_ffn:
                x, feats = self.backbone.layer(layer, x, mask, bias, return_ffn=True)
            else:
                x = feats = self.backbone.layer(layer, x, mask, bias)
            decides = policy is not None and layer < last and policy.reads(layer)
            layer_scores = {}
            if scoring and (policy is None or (layer < num_layers and (targets is not None or decides))):
                tgt = None if targets is None else targets[active, : x.shape[1]]
                layer_scores = self.heads.scores(layer, feats, mask, tgt, which, weights)
                for name, value in layer_scores.items():
                    if name not in scores:
                        scores[name] = x.new_full((batch, num_layers), float("nan"), dtype=torch.float32)
                    scores[name][active, layer - 1] = value
            if keep_states:
                full = states[-1].clone()
                full[active, : x.shape[1]] = x
                states.append(full)
            if layer == last:  # everyone left exits here
                if final is None:
                    final = x
                else:
                    final[active, : x.shape[1]] = x
                break
            if not decides:
                continue
            if "frames" in policy.needs:  # a batch-level rule pools the valid frames of those still running
                layer_scores["frames"] = mask.sum(1)
            stop = policy.decide(layer, layer_scores)
            if not bool(stop.any()):
                continue
            if final is None:
                final = torch.zeros_like(x)
            done = active[stop]
            final[done, : x.shape[1]] = x[stop]
            exit_layers[done] = layer
            keep = ~stop
            if not bool(keep.any()):
                break
            active, x, mask = active[keep], x[keep], mask[keep]
            longest = int(mask.sum(1).max())  # trim the time axis to the longest utterance left
            x, mask = x[:, :longest], mask[:, :longest]
            bias = self.backbone.attention_bias(mask, x.dtype)
            weights = self.heads.frame_weights(mask) if scoring else None
        if keep_states:  # layers past the last exit repeat its state
            states.extend(states[-1] for _ in range(num_layers + 1 - len(states)))
        return ExitOutput(exit_layers, frames, final, scores, states)

    def forward(
        self,
        wavs: torch.Tensor,
        lengths: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        output_hidden_states: bool = True,
    ) -> ExitOutput:
        """Early exit with compaction under `self.policy`. wavs (B, T), lengths (B,) samples,
        targets (B, T') frame class ids (only the oracle policy needs them)."""
        return self._run(wavs, lengths, targets, self.policy, output_hidden_states)

    @torch.no_grad()
    def trace(
        self,
        wavs: torch.Tensor,
        lengths: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        keep_states: bool = True,
    ):
        """All layers for all utterances, every head scored: the input of offline policy sweeps.
        `keep_states=False` keeps only the scores (hidden_states None), for sweeps that need no features."""
        out = self._run(wavs, lengths, targets, None, keep_states=keep_states)
        return Trace(out.hidden_states, out.lengths, out.scores)

    def require_targets(self, name: str = "this model") -> None:
        """Raise a clear error where the model lacks what its `targets` setting labels frames with."""
        if self.config.targets == "teacher" and self.teacher is None:
            raise ValueError(f"{name} has no pretraining head; use k-means targets (targets='kmeans')")
        if self.config.targets != "teacher" and self.kmeans is None:
            raise ValueError(f"{name} has no k-means codebook")

    @torch.no_grad()
    def teacher_targets(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """DAISY's targets: the model's own prediction per frame (B, T'), no masking."""
        self.require_targets()
        if self.config.targets == "teacher":
            return self.teacher(self.backbone.hidden_states(wavs, lengths)[-1])
        lengths = torch.full((wavs.shape[0],), wavs.shape[1]) if lengths is None else lengths
        # MFCC (on the CPU: the codebook's features are), this backbone's layer, or (HuBERT iteration 2) a layer
        # of the codebook's source model; returned on the model's device, as the teacher's answer is
        wavs, lengths = wavs.cpu(), torch.as_tensor(lengths).cpu()
        ids = self.kmeans.targets(wavs, lengths, self.backbone, frames=self.backbone.frame_lengths(lengths))
        return ids.to(next(self.heads.parameters()).device)

    @torch.no_grad()
    def full_answer(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The full model's own answer per frame (B, T'), what exit agreement is measured against: the teacher
        head's argmax on the last layer (DAISY's targets) or, for a k-means model, its last exit head's argmax
        (its k-means targets cluster the input or a layer: they are not the model's answer)."""
        if self.config.targets == "teacher":
            return self.teacher_targets(wavs, lengths)
        x, mask = self.embed(wavs, lengths)
        bias, ffn = self.backbone.attention_bias(mask, x.dtype), self.config.head_input == "ffn"
        for layer in range(1, self.num_layers + 1):
            out = self.backbone.layer(layer, x, mask, bias, return_ffn=ffn and layer == self.num_layers)
            x = out[0] if isinstance(out, tuple) else out
        feats = out[1] if isinstance(out, tuple) else x
        return self.heads.logits(self.num_layers, feats).argmax(-1)

    # -- persistence --------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float32) -> None:
        """One directory: config.json + model.safetensors + preprocessor_config.json (transformers HubertModel
        and feature extractor), heads.safetensors,
        teacher_head.safetensors / kmeans.safetensors when present, daisy.json (recording the current
        `self.policy`). Written atomically; other files already in `path` (a model card) are kept.
        `dtype=torch.float16` halves the size (loading always computes in float32)."""
        self.config.policy = self.policy.to_dict()

        def cast(module: nn.Module) -> dict[str, torch.Tensor]:
            return {k: v.to(dtype).contiguous() for k, v in module.state_dict().items()}

        with atomic_dir(path) as tmp:
            self.backbone.save_pretrained(tmp, state_dict=cast(self.backbone.model))
            save_file(cast(self.heads), str(tmp / "heads.safetensors"))
            if self.teacher is not None:
                save_file(
                    cast(self.teacher),
                    str(tmp / "teacher_head.safetensors"),
                    metadata={"temperature": str(self.teacher.temperature)},
                )
            if self.kmeans is not None:
                self.kmeans.save(tmp / "kmeans.safetensors")
            (tmp / "daisy.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
            carry_over(Path(path), tmp, MODEL_FILES)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> EarlyExitHubert:
        path = Path(path)
        recover_dir(path)  # a rewrite killed between its two renames left the folder at .NAME.old
        if not (path / "daisy.json").is_file():
            raise FileNotFoundError(f"{path}: not a daisy model directory (no daisy.json); train heads first")
        try:
            config = DaisyConfig(**json.loads((path / "daisy.json").read_text()))
            policies.policy_from_dict(config.policy)
        except (TypeError, ValueError) as e:  # not JSON, unknown or missing fields, bad values
            raise ValueError(f"{path / 'daisy.json'}: {e}") from e
        backbone = load_backbone(path)  # HuBERT, wav2vec 2.0, WavLM or data2vec-audio
        try:
            heads = ExitHeads(backbone.num_layers, backbone.hidden_size, config.num_classes, config.head_rank)
        except ValueError as e:
            raise ValueError(f"{path / 'daisy.json'}: {e}") from e
        heads.load_state_dict(read_weights(path / "heads.safetensors", "exit heads", heads))
        teacher = load_teacher(path / "teacher_head.safetensors")
        kmeans = KMeansTargets.load(path / "kmeans.safetensors") if (path / "kmeans.safetensors").is_file() else None
        try:
            return cls(backbone, heads, config, teacher=teacher, kmeans=kmeans).eval()
        except ValueError as e:  # the saved policy does not fit the backbone
            raise ValueError(f"{path / 'daisy.json'}: {e}") from e


def check_task_name(task: str) -> None:
    """Task names key daisy.json and the CLI's options: letters, digits, '-' and '_'."""
    if not task or not task.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"task names are letters, digits, '-' and '_', got {task!r}")


def stored_dtype(path: str | Path) -> torch.dtype:
    """The float type a daisy model directory keeps its backbone weights in (the shipped model: float16), so
    that rewriting it in place (`daisy calibrate`) keeps its size."""
    from safetensors import safe_open

    with safe_open(str(Path(path) / "model.safetensors"), "pt") as f:
        return f.get_tensor(next(iter(f.keys()))).dtype


def read_weights(path: Path, what: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors in float32, checked against `module`'s shapes; a corrupt or mismatched
    file is a ValueError naming it."""
    try:
        state = {k: v.float() for k, v in load_file(str(path)).items()}
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error type for a corrupt header
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        shapes = "; ".join(f"{k}: {found.get(k)} in the file, {expected.get(k)} in the model" for k in wrong[:3])
        raise ValueError(f"{path}: {what} do not match the model ({shapes})")
    return state


def load_teacher(path: Path) -> TeacherHead | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            temperature = float((f.metadata() or {}).get("temperature", 0.1))
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        proj = state["final_proj.weight"]
    except Exception as e:  # corrupt header, or not a teacher head
        raise ValueError(f"{path}: not a readable teacher head ({e})") from e
    teacher = TeacherHead(proj.shape[1], proj.shape[0], state["label_embs"].shape[0], temperature)
    teacher.load_state_dict(state)
    return teacher
