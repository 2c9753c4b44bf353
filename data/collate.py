"""From samples to batches: the task mixture, the collate function and the loader.

A conversation becomes one token sequence

    <bos> human <sep> gpt <eos> human <sep> gpt <eos> ...      (a text-only sample: <bos> gpt <eos>)

and each media marker in it is repeated `media_tokens[modality]` times: that is how many sequence
positions the model wants for one item (LLaVA: its patch count, Flamingo: 1, ...). The model fills
those positions. `tokens` and `targets` are the sequence shifted by one. Which targets carry loss
is the phase's choice: `loss="answers"` (the default) keeps gpt tokens only, so the model learns to
answer, not to ask; `loss="all"` keeps every token (Chameleon's pre-training). Everywhere else a
target is -100. Media placeholders carry loss only for a modality in the model's `media_targets`
(Chameleon's images), and only where their turn does: their target is the marker id, which the
model swaps for its own ids (the VQ codes) inside forward.
"""
import itertools

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .errors import UserError
from .tasks import get_sample
from .tokenizer import MEDIA

IGNORE = -100


class Mixture(Dataset):
    """`length` samples of a weighted task mixture: item i is task t(i) at index i, a pure
    function of (tasks, split, i, seed), so the data position is just an index."""

    def __init__(self, tasks, split="train", length=10**6, seed=0):
        self.tasks = tasks if isinstance(tasks, dict) else {t: 1.0 for t in tasks}
        w = np.array(list(self.tasks.values()), dtype=np.float64)
        if len(w) == 0 or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"task weights must be non-negative with a positive sum, got {self.tasks}")
        self.cum = np.cumsum(w / w.sum())
        self.names, self.split, self.length, self.seed = list(self.tasks), split, length, seed

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        u = np.random.default_rng([self.seed, 7, i]).random()
        task = self.names[min(int(np.searchsorted(self.cum, u, side="right")), len(self.names) - 1)]
        return get_sample(task, self.split, i, self.seed)


class Epochs(Dataset):
    """`length` items read from a dataset in epochs: every item once per epoch, in an order shuffled
    anew each epoch from the seed. Item g is a pure function of (g, seed), so the data position of
    a resumed run is just an index, as with Mixture."""

    def __init__(self, dataset, length, seed=0):
        self.dataset, self.length, self.seed, self.order = dataset, length, seed, {}

    def __len__(self):
        return self.length

    def __getitem__(self, g):
        epoch, k = divmod(g, len(self.dataset))
        if epoch not in self.order:
            self.order = {epoch: np.random.default_rng([self.seed, 11, epoch]).permutation(len(self.dataset))}
        return self.dataset[int(self.order[epoch][k])]


def media_tensor(kind, data):
    """A media item as the models take it: images (3, H, W) and videos (F, 3, H, W) float in
    [0, 1] from uint8 HWC; audio and speech (N,) float waveforms."""
    return media_batch(kind, [data])[0]


def media_batch(kind, items):
    """Items of one modality stacked into one tensor: (N, 3, H, W) images, (N, F, 3, H, W) videos,
    (N, L) waveforms. One conversion for the whole batch is several times faster than per item."""
    x = torch.from_numpy(np.stack([np.asarray(d, dtype=np.uint8 if kind in ("image", "video") else np.float32)
                                   for d in items]))
    if kind == "image":
        return x.permute(0, 3, 1, 2).contiguous().float() / 255
    if kind == "video":
        return x.permute(0, 1, 4, 2, 3).contiguous().float() / 255
    return x


LOSSES = ("answers", "all")


class Collator:
    """Turns a list of samples into {"tokens", "targets", "media", "kinds", "tasks"}."""

    def __init__(self, tokenizer, media_tokens, max_len=None, media_targets=(), loss="answers"):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.tok, self.media_tokens, self.max_len = tokenizer, dict(media_tokens), max_len
        self.media_targets, self.loss = set(media_targets), loss
        self.marker = {tokenizer.stoi[f"<{m}>"]: m for m in MEDIA}

    def encode(self, sample):
        """The sequence ids of one sample and, per id, whether it carries loss."""
        ids, loss = [self.tok.bos], [False]
        for turn in sample["conversations"]:
            gpt = turn["from"] == "gpt"
            part = self.tok.encode(turn["value"]) + [self.tok.eos if gpt else self.tok.sep]
            ids += part
            loss += [gpt or self.loss == "all"] * len(part)
        kinds = [self.marker[i] for i in ids if i in self.marker]
        given = [m["type"] for m in sample["media"]]
        if kinds != given:
            raise UserError(f"sample {sample.get('id')}: the text's media markers {kinds} do not match its "
                             f"media {given}; write one <{'>/<'.join(MEDIA)}> marker per media item, in order")
        out_ids, out_loss = [], []
        for i, l in zip(ids, loss):
            n = 1
            if i in self.marker:
                if self.marker[i] not in self.media_tokens:
                    raise UserError(f"sample {sample.get('id')}: this model takes no {self.marker[i]} "
                                     f"(it accepts {sorted(self.media_tokens)})")
                # the model fills these; they carry loss only if the model predicts this modality
                n, l = self.media_tokens[self.marker[i]], l and self.marker[i] in self.media_targets
            out_ids += [i] * n
            out_loss += [l] * n
        if self.max_len and len(out_ids) > self.max_len + 1:
            raise UserError(f"sample {sample.get('id')}: {len(out_ids)} positions, more than the model's max_seq="
                            f"{self.max_len} + 1; shorten it, or raise --max_seq")
        return out_ids, out_loss

    def length(self, text):
        """Sequence positions of a turn's text once its media markers are expanded."""
        return sum(self.media_tokens.get(self.marker[i], 1) if i in self.marker else 1 for i in self.tok.encode(text))

    @staticmethod
    def prompt(sample):
        """Split off the final answer for evaluation: (the sample without it, the answer text).
        Encoding the first gives the prompt ids, ending in <sep>: where the model must answer."""
        *head, last = sample["conversations"]
        if last["from"] != "gpt" or not head:
            raise UserError(f"sample {sample.get('id')}: evaluation needs a prompt then a final gpt answer")
        n = sum(t["value"].count(f"<{m}>") for t in head for m in MEDIA)
        return {**sample, "conversations": head, "media": sample["media"][:n]}, last["value"]

    def pack_media(self, samples):
        """Stack each modality's items in order of appearance across the batch (row-major)."""
        items = {}
        for s in samples:
            for m in s["media"]:
                items.setdefault(m["type"], []).append(m["data"])
        return {k: media_batch(k, v) for k, v in items.items()}

    def __call__(self, samples):
        return self.pad(samples, [self.encode(s) for s in samples])

    def by_length(self, samples, groups=1):
        """The samples sorted by length and split into `groups` batches, each padded only to its own
        longest row. train.py steps on all of them at once, weighting each by its target tokens, so the
        gradient is the one batch's (up to float rounding) while less of the work is padding. One group
        is the batch as it comes, unsorted, so a recipe without groups trains exactly as before."""
        seqs = [self.encode(s) for s in samples]
        order = sorted(range(len(samples)), key=lambda i: len(seqs[i][0])) if groups > 1 else range(len(samples))
        return [self.pad([samples[i] for i in part], [seqs[i] for i in part])
                for part in np.array_split(order, groups)]

    def pad(self, samples, seqs):
        """One batch from samples and their encodings: rows padded on the right to the longest."""
        T = max(len(ids) for ids, _ in seqs) - 1
        tokens = np.full((len(samples), T), self.tok.pad, dtype=np.int64)
        targets = np.full((len(samples), T), IGNORE, dtype=np.int64)
        for b, (ids, loss) in enumerate(seqs):
            ids = np.array(ids)
            tokens[b, :len(ids) - 1] = ids[:-1]
            targets[b, :len(ids) - 1] = np.where(loss[1:], ids[1:], IGNORE)
        return {"tokens": torch.from_numpy(tokens), "targets": torch.from_numpy(targets),
                "media": self.pack_media(samples),
                "tasks": [s["task"] for s in samples], "kinds": [s.get("kind", s["task"]) for s in samples]}


class SkipSampler(Sampler):
    """A DistributedSampler that starts `start` items into its sequence: exact resume."""

    def __init__(self, sampler, start=0):
        self.sampler, self.start = sampler, start

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.start, None)

    def __len__(self):
        return max(len(self.sampler) - self.start, 0)


def make_loader(dataset, collator, batch_size, rank=0, world_size=1, start=0, workers=0, shuffle=False, seed=0):
    """Batches for one rank. Rank r reads items r, r+W, r+2W, ... so the W ranks together read the
    same global batches as one process with batch_size*W. `start` counts this rank's items already
    consumed."""
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=SkipSampler(sampler, start), collate_fn=collator,
                      num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers else None)
