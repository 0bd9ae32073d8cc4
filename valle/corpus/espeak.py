"""eSpeak NG formant synthesis through ctypes, on the library shipped in ``espeakng-loader``.

eSpeak keeps its whole state (voice, parameters, callback) in process-global C variables, and
``phonemizer`` loads the same library in this process for G2P. ``dlopen`` returns the already
loaded handle for the same file, so we copy the ``.so`` into a private temporary directory
first (as phonemizer's ``EspeakAPI`` does): the two users then never share global state.
"""

from __future__ import annotations

import _ctypes
import ctypes
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

import espeakng_loader
import numpy as np

# speak_lib.h constants (espeak-ng API revision 12).
AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
ESPEAK_INITIALIZE_PHONEME_EVENTS = 0x0001  # report each phoneme as an event
ESPEAK_INITIALIZE_PHONEME_IPA = 0x0002  # ... named in IPA (as phonemizer and Piper write them)
EVENT_LIST_TERMINATED, EVENT_PHONEME = 0, 7
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
EE_OK = 0
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE = 1, 2, 3, 4
RATE_MIN, RATE_MAX = 80, 450  # words per minute, espeakRATE_MINIMUM / _MAXIMUM


class _Event(ctypes.Structure):
    """``espeak_EVENT`` (speak_lib.h); ``id`` is the union, read as its ``char string[8]``."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),  # sample index in this utterance's audio
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class EspeakError(RuntimeError):
    """The eSpeak library could not be loaded, initialised, or refused a voice or text."""


def _cleanup(tempdir: str) -> None:
    shutil.rmtree(tempdir, ignore_errors=True)


class EspeakSynth:
    """One private instance of libespeak-ng producing int16 audio through a callback.

    ``synthesize(text, voice, rate, pitch, pitch_range)`` returns ``(wav float32 [T], sr)``;
    ``synthesize_aligned`` also returns when each phoneme starts (eSpeak's own phoneme events,
    named in IPA; turning the events on leaves the samples unchanged). A lock serialises calls
    because the C library is not re-entrant.

    eSpeak carries some synthesis state from one utterance to the next (``espeak_Terminate``,
    re-initialising and ``espeak_ng_SetRandSeed`` do not reset it; output drifts by a few ms),
    so audio is reproducible per instance: a fresh instance (its random generator seeded when it
    is made) given the same calls in the same order produces identical samples, in any process.
    ``close()`` unloads the copy and its state.
    """

    def __init__(self, library: str | Path | None = None, data_path: str | Path | None = None):
        library = Path(library or espeakng_loader.get_library_path())
        data_path = Path(data_path or espeakng_loader.get_data_path())
        if not library.is_file():
            raise EspeakError(f"{library}: eSpeak NG library not found")
        if not data_path.is_dir():
            raise EspeakError(f"{data_path}: eSpeak NG data directory not found")
        self._tempdir = tempfile.mkdtemp(prefix="valle-espeak-")
        weakref.finalize(self, _cleanup, self._tempdir)
        private_copy = Path(self._tempdir) / library.name
        shutil.copy(library, private_copy)
        try:
            self._lib = ctypes.CDLL(str(private_copy))
        except OSError as err:
            raise EspeakError(f"{library}: cannot load eSpeak NG ({err})") from err
        self._declare_signatures()
        options = (
            ESPEAK_INITIALIZE_DONT_EXIT | ESPEAK_INITIALIZE_PHONEME_EVENTS | ESPEAK_INITIALIZE_PHONEME_IPA
        )
        self.sample_rate = self._lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), options
        )
        if self.sample_rate <= 0:
            raise EspeakError(f"{library}: espeak_Initialize failed with data path {data_path}")
        # Some variants (f2, the Klatt voices) add noise from eSpeak's own random generator, whose
        # start is not fixed: seeded here, a fresh instance repeats itself in any process.
        self._lib.espeak_ng_SetRandSeed(ctypes.c_long(0))
        # espeak_SetVoiceByName ignores an unknown "+variant" silently, so check it ourselves.
        variant_dir = data_path / "voices" / "!v"
        self.variants = (
            frozenset(p.name for p in variant_dir.iterdir()) if variant_dir.is_dir() else frozenset()
        )
        self._chunks: list[np.ndarray] = []
        self._phonemes: list[tuple[str, int]] = []  # (IPA, first sample) of this utterance
        # Keep a reference: ctypes frees the trampoline when the Python object dies.
        self._callback = _SYNTH_CALLBACK(self._on_audio)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def _declare_signatures(self) -> None:
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int

    def _on_audio(self, wav, numsamples: int, events) -> int:
        # wav is NULL at the end of synthesis; numsamples may be 0 mid-stream.
        if wav and numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        i = 0
        while events and events[i].type != EVENT_LIST_TERMINATED:
            if events[i].type == EVENT_PHONEME:  # an empty name is a pause
                name = events[i].id.decode("utf-8", errors="replace")
                self._phonemes.append((name, int(events[i].sample)))
            i += 1
        return 0  # 0 = continue

    def synthesize(
        self,
        text: str,
        voice: str = "en-us",
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
    ) -> tuple[np.ndarray, int]:
        """Speak ``text`` with ``voice`` (``"en-us+f3"`` = language voice + variant).

        ``rate`` is in words per minute (80-450); ``pitch`` and ``pitch_range`` are eSpeak's
        0-100 scales (50 = the voice's default). Returns ``(wav float32 [T] in [-1, 1], sr)``.
        """
        wav, sr, _ = self.synthesize_aligned(text, voice, rate, pitch, pitch_range)
        return wav, sr

    def synthesize_aligned(
        self,
        text: str,
        voice: str = "en-us",
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
    ) -> tuple[np.ndarray, int, list[tuple[str, float, float]]]:
        """As :meth:`synthesize`, plus the phonemes: ``[(ipa, start_s, end_s)]`` in order, where
        ``ipa`` is eSpeak's name for the phoneme (``"ˈaʊ"``, ``"dʒ"``; ``""`` for a pause) and each
        phoneme ends where the next starts (the last at the end of the audio)."""
        if not text.strip():
            raise EspeakError(f"voice {voice!r}: empty text")
        if not RATE_MIN <= rate <= RATE_MAX:
            raise EspeakError(f"voice {voice!r}: rate {rate} outside {RATE_MIN}-{RATE_MAX} wpm")
        for name, value in (("pitch", pitch), ("pitch_range", pitch_range)):
            if not 0 <= value <= 100:
                raise EspeakError(f"voice {voice!r}: {name} {value} outside 0-100")
        variant = voice.partition("+")[2]
        if variant and variant not in self.variants:
            raise EspeakError(f"eSpeak NG has no voice variant {variant!r} (in {voice!r})")
        if self._lib is None:
            raise EspeakError("this EspeakSynth was closed")
        data = text.encode("utf-8")
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
                raise EspeakError(f"eSpeak NG has no voice {voice!r}")
            for param, value in ((PARAM_RATE, rate), (PARAM_PITCH, pitch), (PARAM_RANGE, pitch_range)):
                self._lib.espeak_SetParameter(param, int(value), 0)
            self._chunks, self._phonemes = [], []
            status = self._lib.espeak_Synth(
                data, len(data) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None
            )
            chunks, self._chunks = self._chunks, []
            phonemes, self._phonemes = self._phonemes, []
        if status != EE_OK:
            raise EspeakError(f"voice {voice!r}: espeak_Synth returned {status} for {text!r}")
        if not chunks:
            raise EspeakError(f"voice {voice!r}: no audio produced for {text!r}")
        wav = np.concatenate(chunks).astype(np.float32) / 32768.0
        sr = self.sample_rate
        starts = [min(start, len(wav)) / sr for _, start in phonemes]
        ends = [*starts[1:], len(wav) / sr][: len(starts)]
        return wav, sr, [(name, s, e) for (name, _), s, e in zip(phonemes, starts, ends, strict=True)]

    def close(self) -> None:
        """Free eSpeak and unload this private copy of the library (its state goes with it)."""
        lib, self._lib = getattr(self, "_lib", None), None
        if lib is not None:
            with self._lock:
                lib.espeak_Terminate()
                _ctypes.dlclose(lib._handle)
        _cleanup(self._tempdir)

    def __enter__(self) -> EspeakSynth:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
