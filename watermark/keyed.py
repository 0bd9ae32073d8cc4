"""A keyed watermark with an analytic false-alarm bound and a 32-bit payload (no weights).

Public marks (Perth, AudioSeal) can be read, and forged, by anyone who has the model. This one
cannot: where it sits and what it says are drawn from a secret key, so without the key it can be
neither detected nor written, and a second key id gives an independent pattern.

**Layout.** Audio is analysed at 16 kHz with a Hann STFT (512 samples = 32 ms, hop 4 ms). The band
``BAND_HZ`` (inside the telephone band) is cut into ``N_BANDS`` sub-bands of 125 Hz and time into
tiles of ``FRAMES_PER_TILE`` frames (32 ms); ``L[i, b]`` is the log energy of tile ``i`` in band
``b``. ``PERIOD_TILES`` tiles (0.992 s) form one period and the pattern repeats every period, so any
1 s window holds every cell once. Each cell ``(q, b)`` of the period has a dither ``d[q, b]``
uniform in ``[0, 1)`` and a role: *pilot* (2/3 of the cells) or one of ``CODED_BITS`` channel bits.
Dithers and roles come from SHAKE-256 (FIPS 202) of ``HMAC-SHA256(secret, "valle-keyed-wm|" +
key_id)`` (RFC 2104).

**Embedding: distortion-compensated dither modulation** (Chen & Wornell 2001) of the tile-to-tile
change ``f_i = L[i] - L[i-1]``, which no gain and no fixed filter alters. With lattice step ``D``
(``STEP_DB``) and ``c`` the channel bit (0 on pilots), tile ``i`` of cell ``q`` gets the target

    v = L[i] - L'[i-1],   Q(v) = D * (round(v / D - d[q] - c / 2) + d[q] + c / 2),
    L'[i] = L'[i-1] + v + a_i * (Q(v) - v),   a_i = min(1, m * ALPHA * (E_loud / E_i) ** (LEVEL_BOOST / 2))

A loud tile costs the SNR most and a lossy codec or added noise disturbs it least, a quiet one the
reverse, so the quieter a tile the closer it is moved to the lattice (``a_i`` grows to 1). The
strength ``m`` is set per clip by bisection so that the marked clip's SNR is just above ``SNR_DB``:
a clip whose energy is in a few loud tiles gets as strong a mark as one with many quiet tiles, and
no clip falls below the floor. Tile gains scale the STFT bins of the band; the resynthesis is
re-analysed and the gains corrected ``EMBED_ITERATIONS`` times. Only the change is resampled back
and added to the input, so audio outside the band is untouched. The mark follows the speech's own
energy: none in silence.

**Detection.** For each hypothesis ``h`` (a speed factor of ``SPEED_GRID`` and a tile alignment in the
period), tiles are folded onto the period, ``R[q, b] = sum_i w_i exp(2 pi j f_i / D)`` (``w_i`` in
[0, 1] from the audio alone: the tile's level; for audio with clipped samples, whose energy a
clipper has flattened, the search runs twice, once with those tiles at weight 0 and every quieter
tile above the floor counted, since a clipper leaves those alone; the union bound counts both), and

    z_h = sum_pilot Re(R exp(-2 pi j d)) / sqrt(sum_pilot |R|**2 / 2)

For audio not marked with this key the dithers are independent of ``R`` (a function of the audio
alone), so every term is ``|R| cos(U)`` with ``U`` uniform. Since ``E exp(l cos U) = I0(l) <=
exp(l**2 / 4)`` (compare the series term by term), the Chernoff bound gives, for every audio and
without any model of speech,

    P(z_h >= z) <= exp(-z**2 / 2)

and the union bound over the ``K`` hypotheses searched gives the reported p-value ``p = min(1, K *
exp(-max_h z_h**2 / 2))``, an upper bound on the false-alarm probability (stopping the search early
keeps it valid: the maximum found is at most the true one). The default decision is ``p <= 1e-6``.
``p_unsearched = Q(z)`` of the single hypothesis "speed 1, no shift" is uniform under the null (up to
the central-limit error), which the tests and the false-positive benchmark check.

**Payload.** 32 bits (the keyed HMAC payload of :mod:`watermark.keys`) are protected by a rate-1/2
convolutional code (constraint length 7, generators 171/133 octal, the CCSDS code). A channel bit 1
moves the lattice by half a step, which flips the sign of its cells' cosines: the soft value of each
channel bit is its cells' summed ``Re(R exp(-2 pi j d))``, decoded by soft-decision Viterbi, and a
known payload (a manifest's, a ledger entry's) is scored directly by :meth:`KeyedWatermarker.payload_z`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from scipy.signal import resample_poly
from scipy.special import ndtr

from watermark.base import Detection, WatermarkError, check_payload, check_wav, fit_length
from watermark.keys import WatermarkKey

SR = 16_000
N_FFT = 512
HOP = 64  # 4 ms: a tile's energy sums 8 overlapping frames, so a few ms of shift barely move it
BAND_HZ = (300.0, 3300.0)
N_BANDS = 24
FRAMES_PER_TILE = 8  # 32 ms tiles
PERIOD_TILES = 31  # 31 tiles of 32 ms = 0.992 s: any 1 s window holds the whole pattern
PAYLOAD_BITS = 32
CODED_BITS = 2 * (PAYLOAD_BITS + 6)  # rate 1/2, K = 7, zero-terminated
PILOT_SHARE = 2 / 3
STEP_DB = 10.0  # lattice step D of the tile energy differences (dB): coarse, so codec noise rarely crosses it
SNR_DB = 25.0  # each clip's mark is as strong as this SNR (marked vs original) allows
EMBED_ITERATIONS = 3
STRENGTH_SEARCH = 8  # bisection steps on the strength m, in log2 m from -8 to 4 (~6% resolution)
LEVEL_BOOST = 1.5  # quieter tiles get m * alpha * (amplitude ratio to the loud tiles)^LEVEL_BOOST, up to 1
WEIGHT_DB = (-15.0, -30.0)  # tile weight 1 above the first level (dB re loud tiles), 0 below the second
# the same for the statistic that leaves clipped tiles out: a clipper leaves the quiet tiles alone, and
# those are all that is left of the mark (gain x10, 47 real clips >= 3 s, exploratory: smallest z 4.6 -> 12.7)
WEIGHT_DB_CLIPPED = (-60.0, -90.0)
ALPHA = 0.1  # distortion compensation (Chen & Wornell 2001) of the loudest tiles at m = 1
P_THRESHOLD = 1e-6
# speed factors searched (played ``f`` times faster, pitch shifted with it); 1.0 first
SPEED_GRID = tuple(sorted(np.round(np.arange(0.88, 1.1201, 0.01), 3), key=lambda f: (abs(f - 1), f)))
EARLY_EXIT_P = 1e-12  # stop searching once this is reached: the union bound still covers every hypothesis
MIN_SECONDS = 1.0  # one period: shorter audio holds only part of the pattern


@dataclass(frozen=True)
class KeyedEvidence:
    z: float  # pilot correlation of the best hypothesis
    p_value: float  # union-bound false-alarm probability over the hypotheses searched
    z_unsearched: float  # pilot correlation of the single hypothesis speed 1, offset 0
    p_unsearched: float  # its Gaussian tail Q(z_unsearched): uniform under the null
    speed: float
    offset_frames: int
    hypotheses: int
    soft_bits: np.ndarray  # [CODED_BITS] per-channel-bit soft values (positive = bit 1)


class KeyedWatermarker:
    """The keyed mark (see the module docstring); ``key`` is a :class:`watermark.keys.WatermarkKey`.

    ``p_threshold``: decision threshold on the p-value. ``step_db`` and ``alpha``: the
    lattice step and the loud tiles' distortion compensation; ``snr_db``: the SNR each clip's mark is
    fitted to. ``speed_search=False`` searches alignment only (faster; no speed changes)."""

    name = "keyed"
    payload_bits = PAYLOAD_BITS

    def __init__(
        self,
        device: str = "cpu",
        key: WatermarkKey | None = None,
        p_threshold: float = P_THRESHOLD,
        step_db: float = STEP_DB,
        alpha: float = ALPHA,
        snr_db: float = SNR_DB,
        speed_search: bool = True,
    ) -> None:
        if not isinstance(key, WatermarkKey):
            raise WatermarkError(
                "the keyed watermark needs a secret key: give a key file (valle keys new) or set "
                "VALLE_WATERMARK_KEY"
            )
        if not 0 < p_threshold < 1:
            raise WatermarkError(f"p_threshold must be in (0, 1), got {p_threshold}")
        if not (step_db > 0 and 0 < alpha <= 1 and snr_db > 0):
            raise WatermarkError(
                f"need step_db > 0, 0 < alpha <= 1 and snr_db > 0; got {step_db}, {alpha}, {snr_db}"
            )
        self.key_id = key.key_id
        self.threshold = float(p_threshold)
        self.step_db = float(step_db)
        self.alpha = float(alpha)
        self.snr_db = float(snr_db)
        self.speed_search = bool(speed_search)
        self._phase, self._role = layout(key)

    def card(self) -> dict:
        return {
            "name": self.name,
            "key_id": self.key_id,  # the id only: the secret never leaves the key object
            "threshold": self.threshold,
            "decision": "p_value <= threshold (union-bound Hoeffding, see watermark.keyed)",
            "step_db": self.step_db,
            "snr_db": self.snr_db,
            "speed_search": self.speed_search,
            "layout": f"{N_BANDS} bands {BAND_HZ[0]:g}-{BAND_HZ[1]:g} Hz x {PERIOD_TILES} tiles of "
            f"{FRAMES_PER_TILE * HOP / SR * 1000:g} ms",
        }

    # -- embedding ------------------------------------------------------------------------------
    def embed(self, wav: np.ndarray, sr: int, payload: Sequence[int] | None = None) -> np.ndarray:
        bits = check_payload(payload, self.payload_bits, self.name)
        check_wav(wav, sr, "audio to watermark", allow_silent=False)
        if len(wav) < MIN_SECONDS * sr:
            raise WatermarkError(
                f"audio to watermark is {len(wav) / sr:.2f} s; the keyed mark needs at least "
                f"{MIN_SECONDS:g} s (one period of its pattern)"
            )
        # the output is limited to full scale in any case; limiting the input first keeps that loss
        # (decoders can overshoot) out of the SNR the mark's strength is fitted to
        x = np.clip(np.asarray(wav, np.float64), -1.0, 1.0)
        x16 = _resample(x, sr, SR)
        spec = _stft(x16)  # [F, T]
        n_tiles = spec.shape[1] // FRAMES_PER_TILE
        # lattice offset of every tile: the cell's dither, moved by half a step for a channel bit 1
        dither = self._dither(None if bits is None else np.array(bits))  # [P, B] in [0, step)
        offsets = dither[np.arange(n_tiles) % PERIOD_TILES]  # [I, B]
        log_e = _log_tiles(_band_energy(spec)[: n_tiles * FRAMES_PER_TILE])
        db = (log_e - np.percentile(log_e, 95)) * (10 / math.log(10))  # tile level re the loud tiles
        boost = 10 ** (-np.minimum(db, 0) / 20 * LEVEL_BOOST)  # [I, B] >= 1
        in_band = BAND >= 0

        def mark(m: float) -> np.ndarray:
            target = _quantise_chain(log_e, offsets, self.step, np.minimum(m * self.alpha * boost, 1.0))
            gain = np.ones(log_e.shape)
            marked16 = x16
            for it in range(EMBED_ITERATIONS):  # the STFT of the resynthesis is not the edited STFT
                if it:
                    got = _log_tiles(_band_energy(_stft(marked16))[: n_tiles * FRAMES_PER_TILE])
                    gain *= np.exp((target - got) / 2)  # energy ratio -> amplitude ratio
                frame_gain = np.ones(spec.shape)
                per_frame = np.repeat(gain, FRAMES_PER_TILE, axis=0)  # [I * FPT, B]
                frame_gain[np.ix_(in_band, np.arange(len(per_frame)))] = per_frame[:, BAND[in_band]].T
                marked16 = _istft(spec * frame_gain, len(x16))
            delta = fit_length(_resample(marked16 - x16, SR, sr), len(x))
            return np.clip(x + delta, -1.0, 1.0)

        # the strongest m (log2 m in [-8, 4]) whose mark keeps the SNR at or above snr_db
        energy = float(np.sum(x**2))
        lo, hi, best = -8.0, 4.0, None
        for _ in range(STRENGTH_SEARCH):
            mid = (lo + hi) / 2
            y = mark(2.0**mid)
            if energy >= 10 ** (self.snr_db / 10) * float(np.sum((y - x) ** 2)):
                lo, best = mid, y
            else:
                hi = mid
        return (mark(2.0**lo) if best is None else best).astype(np.float32)

    @property
    def step(self) -> float:
        """Lattice step of the log tile energy differences (nats)."""
        return self.step_db / 10 * math.log(10)

    def _dither(self, bits: np.ndarray | None) -> np.ndarray:
        """``[P, B]`` lattice offsets: the key's dither, plus half a step on cells of channel bits 1."""
        coded = np.zeros(CODED_BITS) if bits is None else (conv_encode(bits * 2 - 1.0) > 0)
        half = np.where(self._role < 0, 0.0, coded[np.maximum(self._role, 0)] * 0.5)
        return (self._phase + half) % 1.0 * self.step

    # -- detection ------------------------------------------------------------------------------
    def evidence(self, wav: np.ndarray, sr: int) -> KeyedEvidence:
        """Search speed and alignment; return the best hypothesis and its p-value bound."""
        check_wav(wav, sr, "audio to check")
        x = np.asarray(wav, np.float64)
        clipped = np.flatnonzero(clipped_samples(x))
        speeds = SPEED_GRID if self.speed_search else (1.0,)
        pilot = self._role < 0
        key = np.exp(-2j * np.pi * self._phase)  # conj of the dither phasor, [P, B]
        best = None
        z0 = 0.0
        # with clipped samples, both statistics (all tiles; clipped tiles left out) are searched, and
        # the union bound counts both: the mask never loses what the plain statistic finds
        variants = 2 if clipped.size else 1
        hyps = variants * len(speeds) * FRAMES_PER_TILE * PERIOD_TILES
        for f in speeds:
            energy = _band_energy(_stft(_resample(x, sr, SR * f)))
            masks = [None] + (
                [_frames_touching(clipped * (SR * f / sr), energy.shape[0])] if clipped.size else []
            )
            for bad in masks:
                weights = WEIGHT_DB if bad is None else WEIGHT_DB_CLIPPED
                for o, res in _resultants(energy, self.step, bad, weights):
                    corr = (res * key).real  # [P, B]
                    z = pilot_z(corr[pilot], res[pilot])
                    if f == 1.0 and o == 0 and bad is None:
                        z0 = z
                    if best is None or z > best[0]:
                        best = (z, f, o, corr, res)
            if hyps * tail_bound(best[0]) <= EARLY_EXIT_P:
                break
        z, f, o, corr, res = best
        soft = np.zeros(CODED_BITS)
        np.add.at(soft, self._role[~pilot], corr[~pilot])
        soft /= math.sqrt(float(np.sum(np.abs(res[~pilot]) ** 2)) / 2) or 1.0
        p = min(1.0, hyps * tail_bound(z))
        return KeyedEvidence(z, p, z0, float(ndtr(-z0)), float(f), int(o), hyps, -soft)

    def detect(self, wav: np.ndarray, sr: int) -> Detection:
        ev = self.evidence(wav, sr)
        payload = tuple(int(b) for b in viterbi(ev.soft_bits))
        # score in [0, 1]: -log10(p) / 12, so the default threshold p = 1e-6 sits at 0.5
        score = min(1.0, -math.log10(max(ev.p_value, 1e-300)) / 12)
        return Detection(
            score=score,
            detected=ev.p_value <= self.threshold,
            payload=payload,
            p_value=ev.p_value,
            payload_soft=ev.soft_bits,
        )

    def payload_z(self, payload_soft: np.ndarray, payload: Sequence[int]) -> float:
        """How strongly the audio carries ``payload``: ``sum(code * soft)`` over the channel bits, a
        z-score with mean 0 and variance 1 (sub-Gaussian, ``P(z >= t) <= exp(-t^2 / 2)``) for any
        payload this key did not embed in the audio's ancestry. (Against another payload embedded
        with the same key it is only a ranking: codewords overlap.)"""
        bits = check_payload(payload, self.payload_bits, self.name)
        return float(np.dot(conv_encode(np.array(bits) * 2 - 1.0), payload_soft))


def pilot_z(corr: np.ndarray, res: np.ndarray) -> float:
    """``z = sum(Re(R conj(phasor))) / sqrt(sum |R|^2 / 2)`` over the pilot cells: ``corr`` and ``res``
    are the cells' ``Re(R conj(phasor))`` and ``R``. Under the null each term is ``|R| cos(U)`` with
    ``U`` uniform, so ``z`` has mean 0 and variance 1."""
    den = math.sqrt(float(np.sum(np.abs(res) ** 2)) / 2)
    return float(np.sum(corr)) / den if den > 0 else 0.0


def tail_bound(z: float) -> float:
    """``P(z_h >= z) <= exp(-z^2 / 2)`` for one hypothesis, for every audio: ``E exp(l cos U) = I0(l)
    <= exp(l^2 / 4)`` (compare the series term by term), so the sum is sub-Gaussian with the variance
    used to normalise ``z`` (Chernoff bound)."""
    return math.exp(-(max(z, 0.0) ** 2) / 2)


# -- key-derived layout -------------------------------------------------------------------------
def layout(key: WatermarkKey) -> tuple[np.ndarray, np.ndarray]:
    """Signs ``[P, B]`` (±1) and roles ``[P, B]`` (-1 = pilot, else channel-bit index), from the key."""
    seed = hmac.new(key.secret, f"valle-keyed-wm|{key.key_id}".encode(), hashlib.sha256).digest()
    n = PERIOD_TILES * N_BANDS
    stream = hashlib.shake_256(seed).digest(n + 4 * n)
    phase = np.frombuffer(stream[:n], np.uint8) / 256.0  # dither, in lattice steps
    order = np.argsort(np.frombuffer(stream[n:], "<u4"), kind="stable")
    role = np.full(n, -1)
    n_pilot = n - CODED_BITS * ((n - round(PILOT_SHARE * n)) // CODED_BITS)
    role[order[n_pilot:]] = np.arange(n - n_pilot) % CODED_BITS
    return phase.reshape(PERIOD_TILES, N_BANDS), role.reshape(PERIOD_TILES, N_BANDS)


# -- signal processing --------------------------------------------------------------------------
def _resample(x: np.ndarray, sr_in: float, sr_out: float) -> np.ndarray:
    r = Fraction(sr_out / sr_in).limit_denominator(2000)
    if r == 1:
        return x
    return resample_poly(x, r.numerator, r.denominator)


def _stft(x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.asarray(x, np.float64))
    win = torch.hann_window(N_FFT, dtype=torch.float64)
    return torch.stft(t, N_FFT, HOP, window=win, center=True, return_complex=True).numpy()


def _istft(spec: np.ndarray, n: int) -> np.ndarray:
    win = torch.hann_window(N_FFT, dtype=torch.float64)
    return torch.istft(torch.from_numpy(spec), N_FFT, HOP, window=win, center=True, length=n).numpy()


def _band_of_bin() -> np.ndarray:
    """``[F]`` sub-band index of each STFT bin, -1 outside ``BAND_HZ``."""
    hz = np.arange(N_FFT // 2 + 1) * SR / N_FFT
    edges = np.linspace(BAND_HZ[0], BAND_HZ[1], N_BANDS + 1)
    band = np.searchsorted(edges, hz, side="right") - 1
    return np.where((hz >= edges[0]) & (hz < edges[-1]), band, -1)


BAND = _band_of_bin()  # [F]
_BAND_SUM = (BAND[:, None] == np.arange(N_BANDS)[None]).astype(np.float64)  # [F, B]: bins -> bands


def _band_energy(spec: np.ndarray) -> np.ndarray:
    """``[T, B]`` energy of each STFT frame ``spec [F, T]`` in each sub-band."""
    return (np.abs(spec) ** 2).T @ _BAND_SUM


def _log_tiles(frame_energy: np.ndarray) -> np.ndarray:
    """``[I, B]`` log energy of tiles of ``FRAMES_PER_TILE`` frames (a floor keeps silence finite)."""
    n = frame_energy.shape[0] // FRAMES_PER_TILE
    tiles = frame_energy[: n * FRAMES_PER_TILE].reshape(n, FRAMES_PER_TILE, -1).sum(axis=1)
    return np.log(tiles + _floor(tiles))


def _floor(energy: np.ndarray) -> float:
    positive = energy[energy > 0]
    return 1e-4 * float(np.median(positive)) if positive.size else 1e-20


def _quantise_chain(log_e: np.ndarray, offsets: np.ndarray, step: float, alpha: np.ndarray) -> np.ndarray:
    """Target log energies ``[I, B]``: each tile moved by at most ``step / 2`` so that its difference
    from the previous *target* lies on the lattice ``offsets[i] + step * k`` (dither modulation, Chen
    & Wornell 2001, on the time differences of log tile energies)."""
    target = log_e.copy()
    for i in range(1, len(log_e)):
        v = log_e[i] - target[i - 1]
        q = offsets[i] + step * np.round((v - offsets[i]) / step)
        target[i] = target[i - 1] + v + alpha[i] * (q - v)
    return target


def clipped_samples(x: np.ndarray) -> np.ndarray:
    """``[N]`` bool: samples of a flat top, i.e. runs of >= 2 same-sign samples within 0.1% of the
    peak magnitude (what a clipper leaves; an unclipped peak rarely repeats its value)."""
    x = np.asarray(x)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        return np.zeros(x.shape, bool)
    top = np.abs(x) >= 0.999 * peak
    run = top[1:] & top[:-1] & (np.sign(x[1:]) == np.sign(x[:-1]))
    out = np.zeros(x.shape, bool)
    out[1:] |= run
    out[:-1] |= run
    return out


def _frames_touching(positions: np.ndarray, n_frames: int) -> np.ndarray:
    """``[n_frames]`` bool: STFT frames (``center=True``) whose window covers any of the sample
    ``positions`` (floats, at the STFT's rate)."""
    bad = np.zeros(n_frames + 1, int)
    if positions.size:
        lo = np.clip(np.floor((positions - N_FFT / 2) / HOP).astype(int) + 1, 0, n_frames)
        hi = np.clip(np.floor((positions + N_FFT / 2) / HOP).astype(int) + 1, 0, n_frames)
        np.add.at(bad, lo, 1)
        np.add.at(bad, hi, -1)
    return np.cumsum(bad)[:n_frames] > 0


def _resultants(
    energy: np.ndarray, step: float, bad_frames: np.ndarray | None = None, weight_db: tuple = WEIGHT_DB
):
    """Yield ``(offset_frames, R [P, B])`` for every tile alignment: ``R[q, b]`` is the weighted sum of
    ``exp(2 pi i f / step)`` over the tiles folded onto cell ``(q, b)``, where ``f`` is the tile's log
    energy minus its predecessor's. Tiles start at frame ``phase``; tile ``i`` lands on cell
    ``(i + k) % P`` (``offset_frames = phase + FRAMES_PER_TILE * k``). Differences touching a tile
    with a frame in ``bad_frames [T]`` (clipped audio) get weight 0; ``weight_db``: the tile levels (dB
    re the loud tiles) where the weight of the others starts to fall and reaches 0."""
    for phase in range(FRAMES_PER_TILE):
        tiles = _log_tiles(energy[phase:])
        if len(tiles) < 3:
            continue
        diff = np.diff(tiles, axis=0)  # tile i (>= 1) minus tile i - 1
        level = np.minimum(tiles[1:], tiles[:-1])
        # quiet tiles carry the attack's noise, not the mark: weight 1 down to weight_db[0] dB below
        # the loud tiles, falling to 0 at weight_db[1] dB
        db = (level - np.percentile(level, 95)) * (10 / math.log(10))
        w = np.clip((db - weight_db[1]) / (weight_db[0] - weight_db[1]), 0.0, 1.0)
        if bad_frames is not None and bad_frames.any():
            n = len(tiles) * FRAMES_PER_TILE
            tile_bad = bad_frames[phase : phase + n].reshape(len(tiles), FRAMES_PER_TILE).any(axis=1)
            w = w * ~(tile_bad[1:] | tile_bad[:-1])[:, None]
        phasor = w * np.exp(2j * np.pi * diff / step)
        res0 = np.zeros((PERIOD_TILES, tiles.shape[1]), complex)
        np.add.at(res0, np.arange(1, len(tiles)) % PERIOD_TILES, phasor)
        for k in range(PERIOD_TILES):  # shifting the fold by k cells rolls it
            yield phase + FRAMES_PER_TILE * k, np.roll(res0, k, axis=0)


# -- channel code -------------------------------------------------------------------------------
_G = (0o171, 0o133)
_K = 7


def conv_encode(signs: np.ndarray) -> np.ndarray:
    """Rate-1/2 convolutional code of ±1 ``signs`` [n] (zero-terminated): ±1 ``[2 * (n + 6)]``."""
    bits = [int(s > 0) for s in signs] + [0] * (_K - 1)
    state, out = 0, []
    for b in bits:
        state = ((state << 1) | b) & ((1 << _K) - 1)
        out += [bin(state & g).count("1") & 1 for g in _G]
    return np.array(out, float) * 2 - 1


def viterbi(soft: np.ndarray) -> np.ndarray:
    """Soft-decision Viterbi for :func:`conv_encode`: bits ``[n]`` from correlations ``[2 (n + 6)]``."""
    half = 1 << (_K - 2)  # states s and s + half both move to (2 s + b) mod 2 half
    states = np.arange(2 * half)
    steps = len(soft) // 2
    metric = np.full(2 * half, -np.inf)
    metric[0] = 0.0
    prev = np.zeros((steps, 2 * half), int)
    for i in range(steps):
        new = np.full(2 * half, -np.inf)
        for b in (0, 1):
            cand = metric + _OUT[b] @ soft[2 * i : 2 * i + 2]
            from_hi = cand[half:] > cand[:half]
            nxt = (2 * states[:half] + b) % (2 * half)
            new[nxt] = np.where(from_hi, cand[half:], cand[:half])
            prev[i, nxt] = np.where(from_hi, states[half:], states[:half])
        metric = new
    state, bits = 0, []  # zero-terminated: the path ends in state 0
    for i in range(steps - 1, -1, -1):
        bits.append(state & 1)  # the newest bit is the state's lowest
        state = prev[i, state]
    return np.array(bits[::-1][: steps - (_K - 1)])


def _output_table() -> np.ndarray:
    """``[2, 64, 2]`` ±1 code outputs for input bit b from each 6-bit state."""
    full = (np.arange(1 << (_K - 1))[None] << 1) | np.array([[0], [1]])  # [2, 64] 7-bit registers
    parity = [np.vectorize(lambda v, g=g: bin(v & g).count("1") & 1)(full) for g in _G]
    return np.stack(parity, -1) * 2.0 - 1


_OUT = _output_table()
