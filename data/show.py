"""Drawing a sample's media into a matplotlib axis: the contact sheet (python -m data) and
sample.py's figures both use it."""
import numpy as np

from .sound import SAMPLE_RATE


def strip(frames, gap=2):
    """Images side by side with a white gap between them: (H, W, 3) uint8."""
    h = frames[0].shape[0]
    pieces = [p for f in frames for p in (np.full((h, gap, 3), 255, np.uint8), f)][1:]
    return np.concatenate(pieces, axis=1)


def log_spectrogram(x, n=256, hop=64):
    """Magnitude STFT in dB below the peak, clipped at -60: (n // 2 + 1, frames), low freqs first."""
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop] * np.hanning(n)
    db = 20 * np.log10(np.abs(np.fft.rfft(frames, axis=1)) + 1e-9)
    return np.clip(db - db.max(), -60, 0).T


def show_media(ax, sample):
    """Draw a sample's media into ax: images and video frames as strips, sound as a spectrogram."""
    media = sample["media"]
    ax.set_axis_off()
    if not media:
        ax.text(0.5, 0.5, "(text only)", ha="center", va="center", color="#999999", fontsize=9,
                transform=ax.transAxes)
    elif media[0]["type"] in ("image", "video"):
        frames = [m["data"] for m in media] if media[0]["type"] == "image" else list(media[0]["data"])
        ax.imshow(strip(frames), interpolation="nearest")
    else:
        x = media[0]["data"]
        ax.imshow(log_spectrogram(x), origin="lower", aspect="auto", cmap="magma",
                  extent=(0, len(x) / SAMPLE_RATE, 0, SAMPLE_RATE / 2000))
        ax.set_axis_on()
        ax.set_yticks([0, 4, 8])
        ax.set_xlabel("seconds", fontsize=6, labelpad=1)
        ax.set_ylabel("kHz", fontsize=6, labelpad=1)
        ax.tick_params(labelsize=6, length=2, pad=1)
