"""
The sound half of the toy world: short mono clips made from scratch with numpy.

Two kinds of clip:
- tones: 1 s of 1-4 beeps separated by silence. Each beep has its own pitch band
  (low/mid/high) and its own timbre (sine/square/saw: how much energy sits in the
  overtones), so "the first beep" and "the last beep" can differ.
- speech: 1.5 s of 1-3 spoken digit words from a toy "speech synthesizer".
  Every word is a fixed string of phones (vowels, nasals, noise bursts), and
  each utterance gets its own random speaker: pitch, speaking rate, loudness.

sample_*() draws the discrete content (the labels); render_*() turns content
into a waveform, drawing all the continuous nuisance variation from the rng.
Same rng state in -> same bytes out.
"""

from typing import NamedTuple

import numpy as np

SAMPLE_RATE = 16000
AUDIO_SECONDS = 1.0     # tones clips are exactly this long
SPEECH_SECONDS = 1.5    # speech clips are exactly this long
PITCHES = ("low", "mid", "high")
TIMBRES = ("sine", "square", "saw")
BEEPS = (1, 2, 3, 4)    # how many beeps a tones clip may hold
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_DIGITS = 3

# -----------------------------------------------------------------------------
# tones

PITCH_BANDS = {"low": (200, 300), "mid": (500, 700), "high": (1200, 1600)}  # Hz

class Beep(NamedTuple):
    pitch: str
    timbre: str

def sample_tones(rng, pairs=None):
    """Discrete content of a tones clip: a tuple of 1-4 Beeps in the order they sound. The count
    is uniform, and each beep is uniform over `pairs` (default: all nine pitch-timbre pairs)."""
    pairs = pairs or [Beep(p, t) for p in PITCHES for t in TIMBRES]
    n = BEEPS[rng.integers(len(BEEPS))]
    return tuple(pairs[k] for k in rng.integers(len(pairs), size=n))

def _fade(n, edge):
    """Gain window of n samples with raised-cosine ramps of `edge` samples at both ends (no clicks)."""
    edge = min(edge, n // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(edge) / edge)
    w = np.ones(n)
    w[:edge] = ramp
    w[n - edge:] = ramp[::-1]
    return w

def _harmonic_wave(timbre, freq, t):
    """Band-limited periodic wave with peak 1. The timbre picks the harmonics:
    sine = fundamental only, square = odd harmonics at 1/k, saw = all harmonics at 1/k."""
    k = np.arange(1, int(SAMPLE_RATE / 2 / freq) + 1)  # harmonics below Nyquist
    if timbre == "sine":
        k = k[:1]
    elif timbre == "square":
        k = k[k % 2 == 1]
    wave = (np.sin(2 * np.pi * freq * k[:, None] * t) / k[:, None]).sum(0)
    return wave / np.abs(wave).max()

def render_tones(beeps, rng):
    """float32 (SAMPLE_RATE*AUDIO_SECONDS,) in [-1, 1]: the beeps in order, separated by silence,
    each at its own pitch and timbre."""
    n = int(SAMPLE_RATE * AUDIO_SECONDS)
    amp = rng.uniform(0.3, 0.9)
    noise = rng.uniform(0.001, 0.01)
    x = np.zeros(n)
    # worst case 0.08 + 4*0.14 + 3*0.10 = 0.94 s, so all beeps fit
    t = rng.uniform(0.02, 0.08)  # onset of the first beep, seconds
    for b in beeps:
        freq = rng.uniform(*PITCH_BANDS[b.pitch])  # exact frequency jittered inside the band
        dur = rng.uniform(0.08, 0.14)
        a, m = int(t * SAMPLE_RATE), int(dur * SAMPLE_RATE)
        wave = _harmonic_wave(b.timbre, freq, np.arange(m) / SAMPLE_RATE)
        x[a:a + m] = wave * _fade(m, int(0.005 * SAMPLE_RATE))
        t += dur + rng.uniform(0.06, 0.10)  # silent gap before the next beep
    x = amp * x + noise * rng.standard_normal(n)
    return np.clip(x, -1, 1).astype(np.float32)

# -----------------------------------------------------------------------------
# toy speech

# The phone inventory. Voiced phones are a glottal pulse train at the speaker's f0
# shaped by formant resonances (Hz, roughly the classic adult vowel formants);
# noise phones are white noise cut to a frequency band (Hz).
# name: (seconds at rate 1, gain, kind, formants or band)
PHONES = {
    "a": (0.10, 1.0, "voiced", (730, 1090, 2440)),
    "e": (0.10, 1.0, "voiced", (530, 1840, 2480)),
    "i": (0.10, 1.0, "voiced", (270, 2290, 3010)),
    "o": (0.10, 1.0, "voiced", (570, 840, 2410)),
    "u": (0.10, 1.0, "voiced", (300, 870, 2240)),
    "n": (0.06, 0.3, "voiced", (250, 1700)),    # nasal: a quiet low murmur
    "s": (0.07, 0.3, "noise", (4000, 7000)),    # hiss
    "f": (0.07, 0.2, "noise", (300, 7500)),     # weak broadband friction
    "t": (0.03, 0.5, "noise", (3000, 6000)),    # short high burst
    "k": (0.04, 0.5, "noise", (1500, 3000)),    # short mid burst
}
FORMANT_GAINS = (1.0, 0.5, 0.25)  # first formant loudest, higher ones weaker
FORMANT_WIDTH = 100.0             # Hz, half-width of each resonance

# Each digit word is a fixed phone string, loosely after the English word. Some
# words reuse the same vowels in the opposite order (five a-i / nine i-a, eight
# e-i / seven i-e) so the vowels alone, without their order, do not tell them apart.
WORDS = {
    "zero": "sio",
    "one": "uan",
    "two": "tu",
    "three": "ti",
    "four": "fo",
    "five": "fai",
    "six": "siks",
    "seven": "sien",
    "eight": "eit",
    "nine": "nian",
}

def sample_utterance(rng):
    """{"digits": list[str]} of 1..MAX_DIGITS digit words (uniform length, uniform digits)."""
    n = int(rng.integers(1, MAX_DIGITS + 1))
    return {"digits": [DIGITS[i] for i in rng.integers(len(DIGITS), size=n)]}

def _voiced(formants, pitch, phase):
    """Sum of harmonics of the (time-varying) f0 up to 4 kHz, each weighted by the
    formant envelope at its current frequency. pitch and phase are per-sample arrays."""
    k = np.arange(1, int(4000 // pitch.max()) + 1)[:, None]  # (harmonics, 1)
    freqs = k * pitch                                        # (harmonics, samples)
    amp = sum(g / (1 + ((freqs - f) / FORMANT_WIDTH) ** 2) for f, g in zip(formants, FORMANT_GAINS))
    return (amp * np.sin(k * phase)).sum(0)

def _noise(band, n, rng):
    """n samples of white noise with everything outside band zeroed in the spectrum."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec[(f < band[0]) | (f > band[1])] = 0
    return np.fft.irfft(spec, n)

def _word(phones, f0, slope, rate, rng):
    """Synthesize one word. f0 glides linearly by `slope` (relative) across the word;
    the glottal phase runs continuously through all its voiced phones."""
    lens = [round(PHONES[p][0] / rate * SAMPLE_RATE) for p in phones]
    n = sum(lens)
    pitch = f0 * (1 + slope * (np.arange(n) / n - 0.5))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    out, start = [], 0
    for p, m in zip(phones, lens):
        _, gain, kind, spec = PHONES[p]
        seg = slice(start, start + m)
        x = _voiced(spec, pitch[seg], phase[seg]) if kind == "voiced" else _noise(spec, m, rng)
        x = x / np.sqrt(np.mean(x ** 2))  # every phone at unit RMS before its gain
        out.append(gain * x * _fade(m, int(0.01 * SAMPLE_RATE)))
        start += m
    return np.concatenate(out)

def render_speech(content, rng):
    """float32 (SAMPLE_RATE*SPEECH_SECONDS,) in [-1, 1]: the digit words spoken by a random speaker.
    Longest word (seven, 0.33 s) at the slowest rate (0.8) is 0.41 s, so the worst case is
    0.05 onset + 3 * 0.41 + 2 * 0.06 gaps = 1.41 s < 1.5 s: utterances always fit."""
    n = int(SAMPLE_RATE * SPEECH_SECONDS)
    # the speaker, drawn first so that a fixed seed gives a fixed speaker for any content
    f0 = rng.uniform(90, 250)         # Hz
    slope = rng.uniform(-0.15, 0.15)  # pitch contour across each word
    rate = rng.uniform(0.8, 1.25)     # speaking rate, divides phone durations
    loud = rng.uniform(0.3, 0.9)      # peak amplitude
    noise = rng.uniform(0.001, 0.01)  # std of the background white noise
    x = np.zeros(n)
    t = int(rng.uniform(0.0, 0.05) * SAMPLE_RATE)  # start offset
    for i, digit in enumerate(content["digits"]):
        if i > 0:
            t += int(rng.uniform(0.02, 0.06) * SAMPLE_RATE)  # pause between words
        w = _word(WORDS[digit], f0, slope, rate, rng)
        x[t:t + len(w)] = w
        t += len(w)
    x = loud * x / np.abs(x).max() + noise * rng.standard_normal(n)
    return np.clip(x, -1, 1).astype(np.float32)
