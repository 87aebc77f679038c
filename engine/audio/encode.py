"""Audio for Discord: loudness-normalised, encoded (OGG Vorbis or MP3) to fit the upload cap.

`render_audio` is the whole path from MIDI bytes to an attachment.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from engine.audio.synth import get_renderer
from engine.errors import BadMidi

if TYPE_CHECKING:
    import pretty_midi

    from engine.settings import Settings

log = logging.getLogger(__name__)

AudioFormat = Literal["ogg", "mp3"]
MIME = {"ogg": "audio/ogg", "mp3": "audio/mpeg"}

# (soundfile compression_level, bitrate in kbit/s we budget for it), best first.
# Vorbis is VBR: the budget is libvorbis's nominal rate at 44.1 kHz stereo for quality
# 1 - level, plus 20 %; synthesized music measures at ~60 % of nominal. MP3 is CBR (exact).
_LADDER: dict[str, tuple[tuple[float, float], ...]] = {
    "ogg": (
        (0.5, 160 * 1.2),
        (0.6, 128 * 1.2),
        (0.7, 112 * 1.2),
        (0.8, 96 * 1.2),
        (0.9, 80 * 1.2),
        (1.0, 64 * 1.2),
    ),
    "mp3": ((0.5, 160.0), (0.8, 96.0), (0.9, 56.0), (0.99, 32.0)),
}
_CONTAINER_BYTES = 16_384  # headers (Vorbis codebooks ~4 KiB) and page overhead
_MIN_SECONDS = 1.0
_ENCODE_BLOCK = 65_536  # frames per write
_FADE_S = 1.0  # fade-out where we cut, so a shortened file does not stop mid-note
_TRUE_PEAK_OVERSAMPLING = 4
_TRUE_PEAK_BLOCK = 2048
_TRUE_PEAK_MAX_BLOCKS = 64  # ~3 s of audio at 44.1 kHz
# Stereo whose side (L - R) is this far below its mid (L + R) is one channel twice, as synths
# without pan or effects render it (TinySoundFont: -50 dB): encoded as mono, a third faster and
# smaller, and players put it on both speakers, so it sounds the same.
_MONO_SIDE_DB = -40.0


@dataclass(frozen=True, slots=True)
class EncodedAudio:
    data: bytes
    fmt: AudioFormat
    mime: str
    seconds: float
    shortened: bool  # cut to fit the cap (or the renderer's max_seconds, via render_audio)


# --- loudness ------------------------------------------------------------------------------------


def _frames(samples: np.ndarray) -> np.ndarray:
    return samples if samples.ndim == 2 else samples[:, None]  # (n, channels)


def true_peak(samples: np.ndarray) -> float:
    """Peak of the 4x-oversampled signal (BS.1770 true peak), linear.

    Oversampling all of a 5-minute render costs seconds, so only the loudest blocks are measured:
    those within 3 dB of the sample peak (an intersample peak of band-limited audio exceeds its
    neighbouring samples by less than that; 3 dB is a sine at fs/4, worst phase), loudest first,
    at most _TRUE_PEAK_MAX_BLOCKS of them. Blocks left over (noise-like audio) are bounded by
    their sample peak times the largest overshoot measured, at least +0.5 dB.
    """
    from scipy.signal import resample_poly

    x = _frames(samples)
    n = x.shape[0]
    if n == 0:
        return 0.0
    block = _TRUE_PEAK_BLOCK
    n_blocks = -(-n // block)
    padded = np.zeros((n_blocks * block, x.shape[1]), np.float32)
    padded[:n] = x
    block_peaks = np.abs(padded).reshape(n_blocks, -1).max(axis=1)  # (n_blocks,)
    sample_peak = float(block_peaks.max())
    if sample_peak == 0.0:
        return 0.0
    candidates = np.flatnonzero(block_peaks >= sample_peak / math.sqrt(2))
    candidates = candidates[np.argsort(-block_peaks[candidates], kind="stable")]
    measured, rest = candidates[:_TRUE_PEAK_MAX_BLOCKS], candidates[_TRUE_PEAK_MAX_BLOCKS:]
    peak, overshoot = sample_peak, 10 ** (0.5 / 20)
    margin = 32  # filter context either side of a block
    for b in measured:
        seg = x[max(0, b * block - margin) : min(n, (b + 1) * block + margin)]
        up_peak = float(np.abs(resample_poly(seg, _TRUE_PEAK_OVERSAMPLING, 1, axis=0)).max())
        peak = max(peak, up_peak)
        overshoot = max(overshoot, up_peak / float(block_peaks[b]))
    if len(rest):
        peak = max(peak, float(block_peaks[rest].max()) * overshoot)
    return peak


def _biquad_sos(kind: str, fc: float, q: float, gain_db: float, rate: int) -> np.ndarray:
    """One second-order section (b0, b1, b2, 1, a1, a2), the design pyloudnorm uses for
    BS.1770's K-weighting at any rate (RBJ audio-EQ cookbook)."""
    a = 10 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * fc / rate
    alpha = math.sin(w0) / (2.0 * q)
    cos = math.cos(w0)
    if kind == "high_shelf":
        root = 2.0 * math.sqrt(a) * alpha
        b = (
            a * ((a + 1) + (a - 1) * cos + root),
            -2 * a * ((a - 1) + (a + 1) * cos),
            a * ((a + 1) + (a - 1) * cos - root),
        )
        den = (
            (a + 1) - (a - 1) * cos + root,
            2 * ((a - 1) - (a + 1) * cos),
            (a + 1) - (a - 1) * cos - root,
        )
    else:  # high pass
        b = ((1 + cos) / 2, -(1 + cos), (1 + cos) / 2)
        den = (1 + alpha, -2 * cos, 1 - alpha)
    return np.array([*(x / den[0] for x in b), 1.0, den[1] / den[0], den[2] / den[0]])


def _k_weighting(rate: int) -> np.ndarray:
    """(2, 6) sections: the head's high shelf (+4 dB above ~1.5 kHz), then the 38 Hz high pass."""
    return np.stack(
        [
            _biquad_sos("high_shelf", 1500.0, 1 / math.sqrt(2), 4.0, rate),
            _biquad_sos("high_pass", 38.0, 0.5, 0.0, rate),
        ]
    )


def integrated_loudness(samples: np.ndarray, rate: int, *, both_speakers: bool = False) -> float:
    """BS.1770-4 integrated loudness in LUFS (-inf for silence), as pyloudnorm measures it (same
    filters, blocks and gates; within 0.001 LU, tested) at a fraction of its cost: one `sosfilt`
    over all channels and the 400 ms blocks' energies from sums over their 100 ms edges instead
    of a Python loop over blocks. Shorter than one 400 ms gating block: measured on the signal repeated to
    that length. Channels weigh 1 each (mono and stereo; BS.1770's surround weights unused).
    `both_speakers`: mono samples are one_channel_if_mono's mid, measured as the stereo they
    came from (the player puts them on both speakers), 3 dB above the same samples as mono."""
    from scipy.signal import sosfilt

    x = _frames(samples)
    block = int(math.ceil(0.4 * rate)) + 1
    if 0 < x.shape[0] < block:
        x = np.tile(x, (-(-block // x.shape[0]), 1))
    n = x.shape[0]
    if n == 0:
        return float("-inf")
    # One channel twice (see one_channel_if_mono): filter it once and count its power twice
    # (off by the side's power, under 1e-4 of the mid's: < 0.001 LU).
    mid = one_channel_if_mono(x.astype(np.float32, copy=False)) if x.shape[1] == 2 else x
    twice = mid.ndim == 1 or (both_speakers and x.shape[1] == 1)
    # float32, channels as rows: a third faster than float64 along axis 0, and the energies
    # still agree with pyloudnorm's float64 to 1e-4 LU
    channels = np.ascontiguousarray(mid[None] if mid.ndim == 1 else x.T, dtype=np.float32)  # (c, n)
    weighted = sosfilt(_k_weighting(rate).astype(np.float32), channels, axis=-1)
    # pyloudnorm's block bounds, to the sample: 400 ms blocks every 100 ms
    n_blocks = int(np.round((n / rate - 0.4) / 0.1)) + 1
    j = np.arange(n_blocks)
    lower = (0.4 * (j * 0.25) * rate).astype(np.int64)
    upper = np.minimum((0.4 * (j * 0.25 + 1) * rate).astype(np.int64), n)
    before = _power_before(weighted, np.concatenate([np.minimum(lower, upper), upper]))
    z = (before[n_blocks:] - before[:n_blocks]) / (0.4 * rate)  # (n_blocks,) summed
    if twice:
        z *= 2.0
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(z)
        above_absolute = block_lufs >= -70.0
        if not above_absolute.any():
            return float("-inf")
        relative = -0.691 + 10.0 * np.log10(z[above_absolute].mean()) - 10.0
        gated = (block_lufs > relative) & (block_lufs > -70.0)
        return float(-0.691 + 10.0 * np.log10(z[gated].mean())) if gated.any() else float("-inf")


def _power_before(weighted: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The channels' power summed from sample 0 up to each of `bounds` (float64).

    Summed per segment between the bounds (the blocks' edges, every 100 ms), not as a running
    sum over every sample: that wrote and read two float64 arrays as long as the audio (200 MB
    for 5 minutes of stereo) and cost more than the K-weighting filter itself. float32 within a
    segment of ~0.1 s, float64 across them: within 1e-6 of a float64 sum."""
    n = weighted.shape[-1]
    edges, where = np.unique(np.clip(bounds, 0, n), return_inverse=True)  # sorted, distinct
    starts = edges[edges < n]
    before = np.zeros(len(edges))
    if len(starts):
        per_sample = np.einsum("cn,cn->n", weighted, weighted)  # (n,) float32
        # reduceat: from each start to the next, the last to the end; summed before starts[0]
        # is 0 as the first block starts at sample 0
        segments = np.add.reduceat(per_sample, starts, dtype=np.float64)
        before[1:] = np.cumsum(segments)[: len(edges) - 1]
    return before[where]


def normalize_loudness(
    samples: np.ndarray,
    rate: int,
    target_lufs: float = -16.0,
    peak_dbfs: float = -1.0,
    *,
    both_speakers: bool = False,
) -> np.ndarray:
    """Gain `samples` to `target_lufs`, less if the true peak would pass `peak_dbfs`.

    Silent input (nothing above the -70 LUFS gate) comes back unchanged. `both_speakers`: see
    integrated_loudness."""
    loudness = integrated_loudness(samples, rate, both_speakers=both_speakers)
    if not math.isfinite(loudness):
        return samples
    gain = 10 ** ((target_lufs - loudness) / 20)
    ceiling = 10 ** (peak_dbfs / 20)
    peak = true_peak(samples)
    if peak * gain > ceiling:
        log.debug(
            "peak-limited: %.1f dB short of %.1f LUFS",
            20 * math.log10(peak * gain / ceiling),
            target_lufs,
        )
        gain = ceiling / peak
    return np.multiply(samples, np.float32(gain), dtype=np.float32)  # one pass, one new array


# --- encoding ------------------------------------------------------------------------------------


def _encode_once(samples: np.ndarray, rate: int, fmt: AudioFormat, level: float) -> bytes:
    import soundfile

    options = (
        {"format": "OGG", "subtype": "VORBIS"}
        if fmt == "ogg"
        else {"format": "MP3", "subtype": "MPEG_LAYER_III", "bitrate_mode": "CONSTANT"}
    )
    frames = _frames(samples)
    buf = io.BytesIO()
    with soundfile.SoundFile(
        buf, "w", rate, frames.shape[1], compression_level=level, **options
    ) as out:
        # In blocks: libvorbis alloca()s the whole pending input, so one big write overflows
        # the stack (segfault past ~95 s stereo; libsndfile #1095, python-soundfile #426).
        for start in range(0, frames.shape[0], _ENCODE_BLOCK):
            out.write(frames[start : start + _ENCODE_BLOCK])
    return buf.getvalue()


def one_channel_if_mono(samples: np.ndarray) -> np.ndarray:
    """(n,) mid of (n, 2) stereo whose side is under _MONO_SIDE_DB; anything else unchanged."""
    if samples.ndim != 2 or samples.shape[1] != 2 or samples.shape[0] == 0:
        return samples
    left, right = samples[:, 0], samples[:, 1]
    mid, side = left + right, left - right  # (n,) each, float32
    mid_energy, side_energy = float(np.dot(mid, mid)), float(np.dot(side, side))
    if side_energy > mid_energy * 10 ** (_MONO_SIDE_DB / 10) or mid_energy == 0.0:
        return samples
    mid *= 0.5
    return mid


def _estimate_bytes(seconds: float, kbps: float) -> float:
    return seconds * kbps * 1000 / 8 + _CONTAINER_BYTES


def _cut(samples: np.ndarray, rate: int, seconds: float) -> np.ndarray:
    n = max(1, int(seconds * rate))
    out = np.array(samples[:n], dtype=np.float32)
    fade = min(int(_FADE_S * rate), n)
    ramp = np.linspace(1.0, 0.0, fade, dtype=np.float32)
    out[n - fade :] *= ramp if out.ndim == 1 else ramp[:, None]
    return out


def encode(
    samples: np.ndarray,
    rate: int,
    fmt: AudioFormat = "ogg",
    cap_bytes: int = 10 * 1024 * 1024,
    *,
    mono_when_same: bool = True,
) -> EncodedAudio:
    """Encode (n, 2) or (n,) float samples; the result is always at most `cap_bytes`.

    The best quality whose budgeted size fits is chosen; if even the lowest does not fit, the
    audio is cut (with a fade-out) and `shortened` is set so the user can be told. Stereo that
    is one channel twice is encoded as mono (`one_channel_if_mono`) unless `mono_when_same` is
    False."""
    if fmt not in _LADDER:
        raise ValueError(f"unknown audio format {fmt!r}; expected 'ogg' or 'mp3'")
    samples = np.asarray(samples, dtype=np.float32)
    if mono_when_same:
        samples = one_channel_if_mono(samples)
    seconds = samples.shape[0] / rate
    ladder = _LADDER[fmt]
    level, kbps = next(
        ((lv, kb) for lv, kb in ladder if _estimate_bytes(seconds, kb) <= cap_bytes), ladder[-1]
    )
    keep_s = seconds
    if _estimate_bytes(seconds, kbps) > cap_bytes:
        keep_s = (cap_bytes - _CONTAINER_BYTES) * 8 / (kbps * 1000)
    # Estimates are budgets, not promises: measure and cut further until it fits.
    for _attempt in range(8):
        if keep_s < _MIN_SECONDS and keep_s < seconds:
            break
        clip = samples if keep_s >= seconds else _cut(samples, rate, keep_s)
        data = _encode_once(clip, rate, fmt, level)
        if len(data) <= cap_bytes:
            shortened = keep_s < seconds
            if shortened:
                log.info(
                    "audio cut from %.1f s to %.1f s to fit %d bytes", seconds, keep_s, cap_bytes
                )
            return EncodedAudio(data, fmt, MIME[fmt], clip.shape[0] / rate, shortened)
        actual_kbps = (len(data) - _CONTAINER_BYTES) * 8 / 1000 / max(keep_s, 1e-3)
        keep_s = min(keep_s, seconds) * 0.9 * cap_bytes / len(data)
        log.debug(
            "encoded %d bytes > cap %d (%.0f kbit/s); retrying with %.1f s",
            len(data),
            cap_bytes,
            actual_kbps,
            keep_s,
        )
    raise ValueError(
        f"upload cap of {cap_bytes} bytes is too small for even {_MIN_SECONDS:.0f} s of {fmt}"
    )


# --- the whole path ------------------------------------------------------------------------------


def render_audio(midi_bytes: bytes, settings: Settings, program: int | None = None) -> EncodedAudio:
    """MIDI bytes to an attachment: render (capped at settings.max_audio_s), normalise, encode
    in settings.audio_format under settings.upload_cap_bytes."""
    return audio_of(read_midi(midi_bytes), settings, program)


def read_midi(midi_bytes: bytes) -> pretty_midi.PrettyMIDI:
    """The MIDI to render; BadMidi when it cannot be read."""
    import pretty_midi

    try:
        return pretty_midi.PrettyMIDI(io.BytesIO(midi_bytes))
    except Exception as exc:  # pretty_midi/mido raise many types for corrupt files
        raise BadMidi(
            "could not read the MIDI file", detail=f"{type(exc).__name__}: {exc}"
        ) from exc


def audio_of(
    midi: pretty_midi.PrettyMIDI, settings: Settings, program: int | None = None
) -> EncodedAudio:
    """`render_audio` after the MIDI is read. Its long calls (the synthesizer, the loudness
    filter, the encoder) run outside the GIL, so another thread can engrave meanwhile."""
    renderer = get_renderer(settings)
    rendered = renderer.render(midi, program=program, max_seconds=settings.max_audio_s)
    # Mono (if it is) before the loudness: checked, gained and peak-measured on one channel,
    # not on two and then again for the encoder; its loudness is the stereo's, as before
    samples = one_channel_if_mono(rendered.samples)
    loud = normalize_loudness(samples, rendered.sample_rate, both_speakers=samples.ndim == 1)
    encoded = encode(
        loud,
        rendered.sample_rate,
        settings.audio_format,
        settings.upload_cap_bytes,
        mono_when_same=False,  # decided above
    )
    if rendered.shortened and not encoded.shortened:
        encoded = replace(encoded, shortened=True)  # the renderer cut it: tell the user too
    return encoded
