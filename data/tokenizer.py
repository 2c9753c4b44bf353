"""A word-level tokenizer for the toy grammar, with a byte fallback so any UTF-8 text round-trips.

ids:  [special tokens] [256 bytes] [punctuation] [words]

Encoding splits text into special tokens, runs of letters/digits, and everything else. A run that
is a known word becomes one token, anything else becomes its UTF-8 bytes. Word tokens carry an
implicit single space before them when they follow any non-byte token, so "<image> what colour is
it?" is 6 tokens and decodes back exactly; a word glued to such a token with no space between is
spelled in bytes, so nothing is ever lost. A newline is a token too, and like a byte it adds no space:
"<image>\nwhat colour" is <image> \n what colour.
"""
import json
import re
from collections import Counter

from .tasks import PUNCTUATION, WORDS

SPECIALS = ("<pad>", "<bos>", "<eos>", "<sep>", "<image>", "<audio>", "<speech>", "<video>",
            "<boi>", "<eoi>", "<eoc>")
MEDIA = ("image", "audio", "speech", "video")  # modality -> marker "<modality>"


class Tokenizer:
    def __init__(self, words=WORDS, punctuation=PUNCTUATION, specials=SPECIALS):
        self.specials, self.punctuation, self.words = list(specials), list(punctuation), list(words)
        self.itos = self.specials + [f"<0x{b:02X}>" for b in range(256)] + self.punctuation + self.words
        if len(set(self.itos)) != len(self.itos):
            raise ValueError("tokenizer entries must be unique")
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.byte0 = len(self.specials)
        self.first_word = self.byte0 + 256  # punctuation and words from here on
        for s in self.specials:
            setattr(self, s.strip("<>"), self.stoi[s])  # tok.pad, tok.bos, tok.image, ...
        specials_re = "|".join(re.escape(s) for s in self.specials)
        self.pattern = re.compile(rf"({specials_re})|([A-Za-z0-9]+)|({'|'.join(map(re.escape, punctuation))})")

    def __len__(self):
        return len(self.itos)

    def encode(self, text):
        ids, pos, prev_word = [], 0, False  # prev_word: last token was not a byte
        for m in self.pattern.finditer(text):
            gap = text[pos:m.start()]
            piece = m.group()
            known = m.group(1) or piece in self.stoi
            implicit = prev_word and gap == " " and m.group(2) and known
            if gap and not implicit:
                ids += self._bytes(gap)
            if not known or (m.group(2) and prev_word and not gap):
                ids += self._bytes(piece)  # unknown word, or a word glued to the previous one
                prev_word = False
            else:
                ids.append(self.stoi[piece])
                prev_word = piece != "\n"  # a newline is whitespace itself: no implicit space after it
            pos = m.end()
        return ids + self._bytes(text[pos:])

    def _bytes(self, s):
        return [self.byte0 + b for b in s.encode("utf-8")]

    def decode(self, ids):
        out, buf, prev_word = [], bytearray(), False
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise ValueError(f"token id {i} outside the vocabulary of {len(self.itos)}")
            if self.byte0 <= i < self.first_word:
                buf.append(i - self.byte0)
                prev_word = False
                continue
            if buf:
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
            s = self.itos[i]
            is_word = i >= self.first_word + len(self.punctuation)
            if is_word and prev_word:
                out.append(" ")
            out.append(s)
            prev_word = s != "\n"  # words, punctuation and specials allow a following implicit space
        if buf:
            out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def fit(self, texts, min_count=2):
        """This tokenizer grown by every word seen at least min_count times in `texts` that it lacks
        (most frequent first). The old ids stay what they were and the new words come after them,
        so a checkpoint trained with this tokenizer can be fine-tuned with the grown one: its
        embedding gains rows for the new words and keeps the others."""
        counts = Counter(w for t in texts for w in re.findall(r"[A-Za-z0-9]+", t) if w not in self.stoi)
        new = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return Tokenizer(self.words + new, self.punctuation, self.specials)

    def save(self, path):
        with open(path, "w") as f:
            json.dump({"specials": self.specials, "punctuation": self.punctuation, "words": self.words}, f)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            d = json.load(f)
        return cls(words=d["words"], punctuation=d["punctuation"], specials=d["specials"])
