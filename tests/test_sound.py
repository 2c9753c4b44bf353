"""Tests for data/sound.py: the toy tones and toy speech clips."""

import numpy as np

from data.sound import (
    AUDIO_SECONDS, BEEPS, DIGITS, MAX_DIGITS, PITCHES, SAMPLE_RATE, SPEECH_SECONDS, TIMBRES,
    PITCH_BANDS, Beep, render_speech, render_tones, sample_tones, sample_utterance,
)

def rng(seed):
    return np.random.default_rng(seed)

def spectrogram(x, n=512, hop=256):
    """Magnitude STFT, (frames, n // 2 + 1)."""
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop] * np.hanning(n)
    return np.abs(np.fft.rfft(frames, axis=1))

def cosine(a, b):
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

def tones(seed):
    r = rng(seed)
    content = sample_tones(r)
    return content, render_tones(content, r)

def beep_segments(x):
    """The beeps of a clip as windowed sample arrays: stretches where the RMS envelope (5 ms
    frames) is above 30% of its peak, separated by silence. Also whether the clip ends silent."""
    hop = SAMPLE_RATE // 200
    env = np.sqrt((x.reshape(-1, hop) ** 2).mean(1))
    on = np.concatenate([[False], env > 0.3 * env.max(), [False]])
    starts, ends = np.nonzero(on[1:] & ~on[:-1])[0], np.nonzero(on[:-1] & ~on[1:])[0]
    return [x[a * hop:b * hop] * np.hanning((b - a) * hop) for a, b in zip(starts, ends)], not on[-2]

def spectrum(seg):
    """Power spectrum of a segment zero-padded to 1 s (1 Hz bins), and its frequencies."""
    return np.abs(np.fft.rfft(seg, SAMPLE_RATE)) ** 2, np.fft.rfftfreq(SAMPLE_RATE, 1 / SAMPLE_RATE)

# -----------------------------------------------------------------------------

def test_sampled_content_is_valid_and_covers_everything():
    t = [sample_tones(rng(s)) for s in range(300)]
    assert {len(c) for c in t} == set(BEEPS)
    assert all(type(b) is Beep for c in t for b in c)
    assert {b for c in t for b in c} == {(p, q) for p in PITCHES for q in TIMBRES}  # all nine beeps
    assert {b for s in range(50) for b in sample_tones(rng(s), [Beep("low", "sine")])} == {("low", "sine")}
    u = [sample_utterance(rng(s))["digits"] for s in range(300)]
    assert {len(d) for d in u} == set(range(1, MAX_DIGITS + 1))
    assert {w for d in u for w in d} == set(DIGITS)

def test_determinism_shapes_and_ranges():
    clips = {
        "tones": (int(SAMPLE_RATE * AUDIO_SECONDS), sample_tones, render_tones),
        "speech": (int(SAMPLE_RATE * SPEECH_SECONDS), sample_utterance, render_speech),
    }
    for n, sample, render in clips.values():
        def make(seed):
            r = rng(seed)
            return render(sample(r), r)
        a, b, c = make(0), make(0), make(1)
        assert a.tobytes() == b.tobytes()  # same seed -> identical bytes
        assert not np.array_equal(a, c)
        for x in (a, c):
            assert x.dtype == np.float32 and x.shape == (n,)
            assert np.all(np.isfinite(x)) and np.abs(x).max() <= 1.0
            assert np.abs(x).max() > 0.2  # not silent

def test_tones_beep_count_and_pitch():
    for seed in range(80):
        content, x = tones(seed)
        if seed % 2:  # the longest clips too: four beeps
            r = rng(seed)
            content = tuple(Beep(PITCHES[r.integers(3)], TIMBRES[r.integers(3)]) for _ in range(4))
            x = render_tones(content, r)
        segments, ends_silent = beep_segments(x)
        assert len(segments) == len(content), (seed, content)
        assert ends_silent  # the last beep has ended inside the clip
        for seg, beep in zip(segments, content):
            # each beep's strongest frequency is its fundamental, inside its own pitch band
            power, f = spectrum(seg)
            lo, hi = PITCH_BANDS[beep.pitch]
            assert lo - 5 <= f[power.argmax()] <= hi + 5, (seed, content, f[power.argmax()])

def overtones(seg):
    """Fractions of a beep's harmonic energy in odd (3, 5, ...) and even (2, 4, ...) overtones."""
    power, f = spectrum(seg)
    f0 = f[power.argmax()]
    energy = {k: power[np.abs(f - k * f0) < f0 / 4].sum() for k in range(1, int(f[-1] / f0) + 1)}
    total = sum(energy.values())
    odd = sum(e for k, e in energy.items() if k > 1 and k % 2 == 1) / total
    even = sum(e for k, e in energy.items() if k % 2 == 0) / total
    return odd, even

def test_timbres_are_distinguishable():
    # sine has no overtones, square only odd ones (~12-20% of the energy), saw also even ones (~20%+);
    # each beep of a clip has its own timbre
    for seed in range(40):
        r = rng(seed)
        n = int(r.integers(1, 5))
        content = tuple(Beep(PITCHES[r.integers(3)], TIMBRES[(seed + k) % 3]) for k in range(n))
        segments, _ = beep_segments(render_tones(content, r))
        assert len(segments) == len(content), (seed, content)
        for seg, beep in zip(segments, content):
            odd, even = overtones(seg)
            if beep.timbre == "sine":
                assert odd + even < 0.02, (seed, content, odd, even)
            elif beep.timbre == "square":
                assert odd > 0.08 and even < 0.02, (seed, content, odd, even)
            else:
                assert even > 0.1, (seed, content, odd, even)

def test_speech_needs_the_time_axis():
    # the same words in another order, same speaker: the same sounds, at different times
    pairs = [(["one", "two"], ["two", "one"]),
             (["five", "nine"], ["nine", "five"]),
             (["zero", "six", "eight"], ["eight", "zero", "six"])]
    for seed, (a, b) in enumerate(pairs):
        A = spectrogram(render_speech({"digits": a}, rng(seed)))
        B = spectrogram(render_speech({"digits": b}, rng(seed)))
        assert cosine(A.mean(0), B.mean(0)) > 0.98, (a, b)  # time-averaged: nearly identical
        assert cosine(A, B) < 0.7, (a, b)                    # frame by frame: clearly different

def test_every_digit_has_its_own_spectrum():
    # Mean log spectrum of each digit alone, fixed speaker, in 32 bands of 250 Hz (coarse, so
    # the pitch harmonics do not matter). Subtracting the average over the ten digits removes
    # what they all share; what is left must point in clearly different directions for every
    # pair. Measured: the real words score <= ~0.84 over 40 speakers, while two words with the
    # same phones (even in another order) score > 0.98. So 0.92 separates the two cases.
    for seed in range(3):
        F = np.stack([spectrogram(render_speech({"digits": [d]}, rng(seed))).mean(0) for d in DIGITS])
        F = np.log(F[:, :256].reshape(len(DIGITS), 32, 8).mean(2) + 1e-3)
        F -= F.mean(0)
        for i in range(len(DIGITS)):
            for j in range(i):
                assert cosine(F[i], F[j]) < 0.92, (seed, DIGITS[i], DIGITS[j])

def test_utterances_always_fit():
    tail = int(0.01 * SAMPLE_RATE * SPEECH_SECONDS)
    for seed in range(200):
        r = rng(seed)
        digits = [DIGITS[i] for i in r.integers(len(DIGITS), size=MAX_DIGITS)]
        x = render_speech({"digits": digits}, r)
        # background noise has std <= 0.01; any speech there would be far louder
        assert np.sqrt(np.mean(x[-tail:] ** 2)) < 0.015, (seed, digits)
