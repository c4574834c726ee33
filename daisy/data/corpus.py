"""The embedded synthetic corpus: espeak-ng speech from deterministic sentences and speakers.

Speakers are espeak voices x variants x pitch x rate, each with a stable id; sentences come from a
small grammar driven by a seeded RNG. `engine="kokoro"` speaks with Kokoro-82M voices and their mixes
instead (daisy.data.kokoro, the optional `tts` extra), `"mixed"` with half of the speakers from each. The
corpus is cached on disk under a key of its config (wav files + `manifest.jsonl`) and rebuilt only when
the config (or SYNTHESIS_VERSION) changes.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from daisy import audio
from daisy.io import atomic_dir
from daisy.progress import progress

# Part of the cache key: bumped whenever synthesis gives other samples for the same config, so that stale
# caches are rebuilt (2: espeak's breath noise no longer depends on the clock).
SYNTHESIS_VERSION = 2
ENGINES = ("espeak", "kokoro", "mixed")

_NOUNS = (
    "man woman child dog cat bird horse teacher doctor farmer sailor king queen river mountain city village "
    "garden house window door table chair book letter story song music picture market street road bridge "
    "boat train car ship island forest field flower tree apple bread water coffee money paper voice morning "
    "evening winter summer island friend brother sister mother father student captain engine machine "
    "kitchen office station museum library planet ocean desert valley castle tower"
).split()
_ADJECTIVES = (
    "old young small large quiet loud bright dark warm cold happy sad green red blue yellow heavy light "
    "strange famous gentle simple careful lazy clever busy empty golden silver ancient modern narrow"
).split()
_VERBS = (
    "sees finds likes takes keeps makes paints builds carries follows watches opens closes reads writes "
    "remembers visits answers catches throws pulls pushes cleans fixes sells buys needs wants brings"
).split()
_ADVERBS = "slowly quickly quietly happily carefully never always often suddenly today yesterday again".split()
_PLACES = "near the river,in the city,at the station,behind the house,under the bridge,across the field".split(",")
_NUMBERS = "two three four five six seven eight nine ten eleven twelve twenty".split()


def sentence(rng: random.Random) -> str:
    """One grammatical English sentence from the small grammar."""

    def noun_phrase() -> str:
        words = [rng.choice(["the", "a", "every", "my", "our", rng.choice(_NUMBERS)])]
        if rng.random() < 0.6:
            words.append(rng.choice(_ADJECTIVES))
        noun = rng.choice(_NOUNS)
        words.append(noun + "s" if words[0] in _NUMBERS else noun)
        return " ".join(words)

    parts = [noun_phrase()]
    if rng.random() < 0.3:
        parts.append(rng.choice(_ADVERBS))
    parts += [rng.choice(_VERBS), noun_phrase()]
    if rng.random() < 0.4:
        parts.append(rng.choice(_PLACES))
    if rng.random() < 0.2:
        parts += ["and", rng.choice(_VERBS), noun_phrase()]
    text = " ".join(parts)
    return text[0].upper() + text[1:] + "."


@dataclass
class CorpusConfig:
    seed: int = 0
    train: int = 4000
    dev: int = 300
    test: int = 300
    speakers: int = 40
    voices: tuple[str, ...] = ("en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan")
    # human-sounding espeak variants (the wheel also ships robotic and whispering ones)
    variants: tuple[str, ...] = (
        "",
        "m1",
        "m2",
        "m3",
        "m4",
        "m5",
        "m6",
        "m7",
        "f1",
        "f2",
        "f3",
        "f4",
        "f5",
        "adam",
        "Alex",
        "Andy",
        "anika",
        "aunty",
        "benjamin",
        "boris",
        "david",
        "ed",
        "edward",
        "grandma",
        "grandpa",
        "linda",
        "max",
        "michel",
        "paul",
        "quincy",
        "rob",
        "robert",
        "steph",
        "travis",
        "victor",
        "zac",
    )
    pitches: tuple[int, ...] = (30, 42, 54, 66, 78)
    rates: tuple[int, ...] = (130, 155, 180, 205)
    extra: dict = field(default_factory=dict)
    engine: str = "espeak"  # one of ENGINES

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown corpus engine {self.engine!r}; choose one of {', '.join(ENGINES)}")

    def key(self) -> str:
        fields = {**asdict(self), "synthesis": SYNTHESIS_VERSION}
        if self.engine == "espeak":  # espeak corpora keep the keys they had before there were engines
            del fields["engine"]
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]

    @classmethod
    def quick(cls) -> CorpusConfig:
        return cls(train=160, dev=40, test=40, speakers=8)


@dataclass
class Utterance:
    id: str
    path: Path
    text: str
    speaker: str
    split: str
    samples: int

    def load(self) -> np.ndarray:
        return audio.load(self.path)


def choose_speakers(config: CorpusConfig):
    """`config.speakers` distinct voices, drawn deterministically: espeak ones from the available combinations,
    Kokoro ones (daisy.data.kokoro.KokoroVoice) from its style tables and their mixes, as `config.engine` says."""
    from daisy.data import kokoro

    neural = {"espeak": 0, "kokoro": config.speakers, "mixed": config.speakers // 2}[config.engine]
    speakers = _espeak_speakers(config, config.speakers - neural) if neural < config.speakers else []
    if neural:
        speakers += kokoro.random_voices(neural, config.seed)
    return sorted(speakers, key=lambda s: s.id)


def _espeak_speakers(config: CorpusConfig, count: int):
    from daisy.data import synth

    available = set(synth.english_voices())
    voices = [v for v in config.voices if v in available]
    if not voices:
        raise RuntimeError(f"none of the voices {config.voices} is installed; espeak has {sorted(available)}")
    known = set(synth.variants()) | {""}
    combos = [
        synth.Voice(v, var, p, r)
        for v in voices
        for var in config.variants
        if var in known
        for p in config.pitches
        for r in config.rates
    ]
    return sorted(random.Random(config.seed).sample(combos, min(count, len(combos))), key=lambda s: s.id)


def build_corpus(root: str | Path, config: CorpusConfig | None = None) -> Path:
    """Synthesise (or reuse) the corpus for `config` under `root`; returns its folder."""
    from daisy.data import kokoro, synth

    config = config or CorpusConfig()
    folder = Path(root) / f"synthetic-{config.key()}"
    if (folder / "manifest.jsonl").is_file():
        return folder
    speakers = choose_speakers(config)
    rng = random.Random(config.seed)
    splits = ["train"] * config.train + ["dev"] * config.dev + ["test"] * config.test
    with atomic_dir(folder) as tmp:
        rows = []
        with progress() as bar:
            task = bar.add_task("synthesising corpus", total=len(splits))
            for i, split in enumerate(splits):
                speaker = speakers[rng.randrange(len(speakers))]
                text = sentence(rng)
                engine = kokoro if isinstance(speaker, kokoro.KokoroVoice) else synth
                wav = engine.synthesize(text, speaker)
                name = f"{split}/{i:06d}.wav"
                audio.save(tmp / name, wav)
                rows.append(
                    dict(id=f"{i:06d}", path=name, text=text, speaker=speaker.id, split=split, samples=len(wav))
                )
                bar.advance(task)
        (tmp / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
        (tmp / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def load_manifest(folder: str | Path, split: str | None = None) -> list[Utterance]:
    """Utterances listed in `folder/manifest.jsonl` (paths relative to the folder)."""
    folder = Path(folder)
    manifest = folder / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{folder}: no manifest.jsonl (build the corpus or point at a corpus folder)")
    out = []
    for line_no, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            utt = Utterance(
                row["id"],
                folder / row["path"],
                row.get("text", ""),
                row.get("speaker", ""),
                row.get("split", "train"),
                int(row.get("samples", 0)),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{manifest}:{line_no}: bad manifest row ({err})") from err
        if split is None or utt.split == split:
            out.append(utt)
    return out
