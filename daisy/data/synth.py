"""Offline English speech synthesis with espeak-ng.

Uses the shared library and voice data shipped in the ``espeakng-loader`` wheel through ctypes (no root, no system
package); falls back to an ``espeak-ng`` executable on PATH. Output is mono float32 at 16 kHz, and the same for the
same text and voice (with the executable fallback, except for the BREATHY_VARIANTS).
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import io
import shutil
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from elftools.elf.elffile import ELFFile

from daisy.upstream.geometry import SAMPLE_RATE

# Constants from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report missing data instead of calling exit() inside our process
_EE_OK = 0
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_POS_CHARACTER = 1
_CHARS_UTF8 = 1

_SILENCE = 1e-3  # about -60 dBFS; espeak's pauses are digital zeros, so this only cuts resampler ringing
_MARGIN = int(0.05 * SAMPLE_RATE)

# Variants that are effects rather than a human speaker (robots, heavy echo, whisper, test files), plus "Mr serious",
# whose space would leak into speaker ids.
_UNUSABLE_VARIANTS = frozenset(
    {"Demonic", "Mr serious", "RicishayMax", "RicishayMax2", "RicishayMax3", "Tweaky", "UniRobot", "anikaRobot"}
    | {"announcer", "caleb", "croak", "fast", "whisper", "whisperf"}
    | {"robosoft", *(f"robosoft{i}" for i in range(2, 9))}
)
# Variants whose voice file sets `breath`: espeak-ng draws that noise from generators seeded by time(NULL) or rand(),
# which _private_library and _synth_library pin so that synthesis is reproducible.
BREATHY_VARIANTS = ("Alicia", "Reed", "f2", "f3", "f5", "sandro", "victor")
# en-shaw only differs from "en" for text in the Shavian alphabet.
_UNUSABLE_VOICES = frozenset({"en-shaw"})


@dataclass(frozen=True)
class Voice:
    name: str  # espeak voice name, e.g. "en-us"
    variant: str = ""  # espeak variant, e.g. "m3", "f2"; "" for none
    pitch: int = 50  # espeak base pitch 0..100
    rate: int = 175  # words per minute 80..450

    def __post_init__(self) -> None:
        if not self.name or "+" in self.name or "+" in self.variant:
            raise ValueError(f"bad espeak voice name/variant: {self.name!r}/{self.variant!r}")
        if not 0 <= self.pitch <= 100:
            raise ValueError(f"pitch must be in 0..100, got {self.pitch}")
        if not 80 <= self.rate <= 450:
            raise ValueError(f"rate must be in 80..450 words per minute, got {self.rate}")

    @property
    def spec(self) -> str:
        """What espeak's SetVoiceByName / -v expects, e.g. "en-us+m3"."""
        return f"{self.name}+{self.variant}" if self.variant else self.name

    @property
    def id(self) -> str:
        return f"{self.spec}-p{self.pitch}-r{self.rate}"


@dataclass(frozen=True)
class _Backend:
    library: str | None  # path of libespeak-ng, or None to run `executable`
    executable: str | None
    data_dir: Path  # the espeak-ng-data directory


@lru_cache(maxsize=1)
def _backend() -> _Backend:
    try:
        import espeakng_loader
    except ImportError:
        pass
    else:
        return _Backend(espeakng_loader.get_library_path(), None, Path(espeakng_loader.get_data_path()))
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "espeak-ng is not available: `pip install espeakng-loader` (bundles the library and voice data), "
            "or install an espeak-ng executable on PATH"
        )
    # `espeak-ng --version` prints "eSpeak NG text-to-speech: 1.51  Data at: /usr/.../espeak-ng-data".
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    if "Data at:" not in version:
        raise RuntimeError(f"cannot find the espeak-ng data directory in `{exe} --version` output: {version!r}")
    return _Backend(None, exe, Path(version.split("Data at:", 1)[1].strip()))


def english_voices() -> list[str]:
    """English-family espeak voice names (lower case, as espeak matches them case-insensitively), sorted."""
    names = {p.name.lower() for p in (_backend().data_dir / "lang").rglob("en*") if p.is_file()}
    return sorted(n for n in names if (n == "en" or n.startswith("en-")) and n not in _UNUSABLE_VOICES)


def _all_variants() -> set[str]:
    return {p.name for p in (_backend().data_dir / "voices" / "!v").iterdir() if p.is_file()}


def variants() -> list[str]:
    """Human-sounding espeak variant names (case matters: they are file names), sorted."""
    return sorted(_all_variants() - _UNUSABLE_VARIANTS)


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """Speak `text` with `voice`: mono float32 in [-1, 1] at SAMPLE_RATE, silence trimmed to 50 ms margins."""
    if not text.strip():
        raise ValueError("cannot synthesise empty text")
    backend = _backend()
    # espeak silently ignores an unknown variant, which would give a speaker id that does not match the audio.
    if voice.variant and voice.variant not in _all_variants():
        raise RuntimeError(f"espeak variant {voice.variant!r} not found (voice {voice.spec!r})")
    if backend.library is not None:
        audio, rate = _synth_library(backend, text, voice)
    else:
        audio, rate = _synth_executable(backend, text, voice)
    audio = np.clip(soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ"), -1.0, 1.0).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > _SILENCE)
    if loud.size == 0:
        raise ValueError(f"espeak produced no audio for {text!r} with voice {voice.spec!r}")
    # Re-pad rather than keep espeak's own edges: its lead-in is only ~12 ms, and exact margins are predictable.
    return np.pad(audio[loud[0] : loud[-1] + 1], _MARGIN)


# --- ctypes backend ---------------------------------------------------------------------------------------------

_LOCK = threading.Lock()  # espeak keeps global state and is not thread-safe
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_chunks: list[np.ndarray] = []
# espeak_Synth(text, size, position, position_type, end_position, flags, unique_identifier, user_data)
_SYNTH_ARGTYPES = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint]
_SYNTH_ARGTYPES += [ctypes.c_void_p, ctypes.c_void_p]


@_CALLBACK
def _on_audio(wav, n_samples, _events):  # module-level so the C callback is never garbage collected
    if wav and n_samples > 0:
        _chunks.append(np.ctypeslib.as_array(wav, (n_samples,)).copy())
    return 0  # 0 = continue synthesis


@lru_cache(maxsize=1)
def _private_library(path: str) -> str:
    # A private copy is dlopen'ed by nobody else, so dlclose really unloads it (see _synth_library) and we never
    # clobber another user's espeak state in this process (phonemizer does the same).
    folder = tempfile.mkdtemp(prefix="daisy-espeak-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    copy = Path(folder) / Path(path).name
    data = bytearray(Path(path).read_bytes())
    if not _pin_clock(data):
        warnings.warn(
            f"cannot pin the clock of {path}: espeak variants with breath noise ({', '.join(BREATHY_VARIANTS)}) "
            "will differ from run to run",
            stacklevel=2,
        )
    copy.write_bytes(data)
    return str(copy)


def _pin_clock(library: bytearray) -> bool:
    """Rebind the library's `time` import to libc's `labs`, so espeak's time(NULL) seed is labs(0) = 0.

    Without it the breath noise depends on the wall-clock second and the corpus is not reproducible (srand does not
    help: the generator is espeak's own). Both names have four letters, so the dynamic string table keeps its layout,
    and both are one word in, one word out, from the same glibc version. Returns False where there is no `time`
    import to rebind (another build), leaving the bytes unchanged.
    """
    elf = ELFFile(io.BytesIO(bytes(library)))
    symbols, strings = elf.get_section_by_name(".dynsym"), elf.get_section_by_name(".dynstr")
    if symbols is None or strings is None:
        return False
    found = [
        strings["sh_offset"] + sym["st_name"]
        for sym in symbols.iter_symbols()
        if sym.name == "time" and sym["st_shndx"] == "SHN_UNDEF"
    ]
    # The linker may store "time" as the tail of a longer name; renaming it there would break that symbol.
    if not found or any(library[at - 1] != 0 for at in found):
        return False
    for at in found:
        library[at : at + 4] = b"labs"
    return True


def _check(code: int, what: str, voice: Voice) -> None:
    if code != _EE_OK:
        raise RuntimeError(f"espeak {what} failed with code {code} for voice {voice.spec!r}")


def _synth_library(backend: _Backend, text: str, voice: Voice) -> tuple[np.ndarray, int]:
    # The library is loaded fresh for every utterance: espeak keeps static state (the pitch-flutter phase, the noise
    # generator) that carries over between utterances, so a long-lived instance gives different samples for the
    # same text. Loading and initialising costs under a millisecond.
    with _LOCK:
        lib = ctypes.CDLL(_private_library(backend.library))
        try:
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_Synth.argtypes = _SYNTH_ARGTYPES
            # Bad data makes espeak return 0 (not -1) after printing to stderr.
            path = str(backend.data_dir).encode()
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, path, _INITIALIZE_DONT_EXIT)
            if rate <= 0:
                raise RuntimeError(f"espeak_Initialize failed ({rate}) with data at {backend.data_dir}")
            lib.espeak_SetSynthCallback(_on_audio)
            _check(lib.espeak_SetVoiceByName(voice.spec.encode()), "SetVoiceByName", voice)
            _check(lib.espeak_SetParameter(_ESPEAK_RATE, voice.rate, 0), "SetParameter(rate)", voice)
            _check(lib.espeak_SetParameter(_ESPEAK_PITCH, voice.pitch, 0), "SetParameter(pitch)", voice)
            data = text.encode("utf-8") + b"\0"
            _chunks.clear()
            # Klatt voices (Reed) draw their breath noise from libc's rand(): reseed, so that an utterance does not
            # depend on what else called rand() in this process before it.
            ctypes.CDLL(None).srand(1)
            _check(lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None), "Synth", voice)
            _check(lib.espeak_Synchronize(), "Synchronize", voice)
            samples = np.concatenate(_chunks) if _chunks else np.zeros(0, np.int16)
        finally:
            _chunks.clear()
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)
    return samples.astype(np.float32) / 32768.0, rate


# --- executable backend -----------------------------------------------------------------------------------------


def _synth_executable(backend: _Backend, text: str, voice: Voice) -> tuple[np.ndarray, int]:
    # Each run is a fresh process, so this path is deterministic too. "--" keeps text starting with "-" from
    # being read as an option.
    cmd = [backend.executable, "--stdout", "-b", "1", "-v", voice.spec, "-s", str(voice.rate), "-p", str(voice.pitch)]
    result = subprocess.run([*cmd, "--", text], capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        stderr = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"espeak-ng failed for voice {voice.spec!r} (exit {result.returncode}): {stderr}")
    # The WAV header on a pipe carries a placeholder length; libsndfile clamps it to the bytes actually present.
    audio, rate = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    return audio[:, 0], rate
