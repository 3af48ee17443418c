"""A small text encoder for the captions of procedural datasets (ShapeWorld's ``"a red cube moving left"``).

The captions use a closed vocabulary, so a fixed word list replaces a learned tokenizer and a bag
of learned word embeddings, pooled and passed through a small MLP, replaces a transformer. It is
trained jointly with the diffusion network and gives one pooled vector per caption,
``[B, dim]`` (the ``context`` of ``pyengine.nn.video.UNet3D``).

The empty caption ``""`` is a token of its own (``EMPTY``) with a learned embedding: the
unconditional input of classifier-free guidance, learned by replacing a fraction of the training
captions with it (caption dropout). A negative prompt is any other caption used in its place.

Example:
    >>> tok = Tokenizer(["a", "red", "cube", "moving", "left"])
    >>> tok(["a red cube", ""])
    tensor([[2, 3, 4],
            [1, 0, 0]])
    >>> enc = BagOfWordsEncoder(len(tok), dim=8)
    >>> enc(tok(["a red cube", ""])).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

import re

import torch

PAD, EMPTY = 0, 1
SPECIAL = ("<pad>", "<empty>")


class Tokenizer:
    """Words of a fixed vocabulary -> integer ids; ``""`` -> ``[EMPTY]``.

    Lower-cases and splits on anything that is not a letter, digit or apostrophe, and makes "a" /
    "an" agree with the next word (``_agree``). Ids 0 and 1 are
    ``<pad>`` and ``<empty>``; word ``k`` of ``vocab`` is id ``k + 2``.

    Args:
        vocab: the words (unique, lower case).
    """

    def __init__(self, vocab):
        vocab = [str(w) for w in vocab]
        if len(set(vocab)) != len(vocab) or any(w != w.lower() or not w or w in SPECIAL for w in vocab):
            raise ValueError("Tokenizer: vocab must be unique, non-empty, lower-case words (not <pad>/<empty>)")
        self.vocab = vocab
        self.ids = {w: i + len(SPECIAL) for i, w in enumerate(vocab)}

    def __len__(self) -> int:
        return len(self.vocab) + len(SPECIAL)

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z0-9']+", text.lower())

    def unknown(self, text: str) -> list[str]:
        """The words of ``text`` outside the vocabulary."""
        return [w for w in self.words(text) if w not in self.ids]

    def encode(self, text: str) -> list[int]:
        """Ids of one caption; ValueError naming any word outside the vocabulary."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer: a caption must be a str, got {type(text).__name__}")
        bad = self.unknown(text)
        if bad:
            raise ValueError(f"Tokenizer: unknown word(s) {', '.join(repr(w) for w in bad)} in {text!r}; "
                             f"the vocabulary is: {' '.join(self.vocab)}")
        ids = [self.ids[w] for w in self._agree(self.words(text))]
        return ids or [EMPTY]

    def _agree(self, words: list[str]) -> list[str]:
        """"a" before a vowel becomes "an", "an" before a consonant "a", when the vocabulary has
        both: captions are written grammatically ("an orange cube"), so a model trained on them
        must not read "a orange cube" as another caption."""
        if "a" not in self.ids or "an" not in self.ids:
            return words
        out = list(words)
        for i in range(len(out) - 1):
            if out[i] in ("a", "an"):
                out[i] = "an" if out[i + 1][0] in "aeiou" else "a"
        return out

    def __call__(self, texts, device=None) -> torch.Tensor:
        """[B, L] int64 ids of ``texts`` (a str or a list of them), right-padded with ``PAD``."""
        if isinstance(texts, str):
            texts = [texts]
        seqs = [self.encode(t) for t in texts]
        out = torch.full((len(seqs), max((len(s) for s in seqs), default=1)), PAD, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        return out.to(device) if device is not None else out


class BagOfWordsEncoder(torch.nn.Module):
    """Mean of learned word embeddings (padding ignored), then an MLP: ``[B, L] ids -> [B, dim]``.

    Args:
        vocab_size: ``len(tokenizer)``.
        dim: output size (the U-Net's ``context_dim``).
        hidden: width of the MLP (default ``dim``).
    """

    def __init__(self, vocab_size: int, dim: int, hidden: int | None = None):
        super().__init__()
        if vocab_size <= len(SPECIAL) or dim <= 0:
            raise ValueError(f"BagOfWordsEncoder: need vocab_size > {len(SPECIAL)} and dim > 0, "
                             f"got {vocab_size}, {dim}")
        hidden = hidden or dim
        self.embed = torch.nn.EmbeddingBag(vocab_size, hidden, mode="mean", padding_idx=PAD)
        self.mlp = torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype != torch.long or ids.dim() != 2:
            raise TypeError(f"BagOfWordsEncoder: ids must be [B, L] int64, got {tuple(ids.shape)} {ids.dtype}")
        return self.mlp(self.embed(ids))


def drop_captions(ids: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``ids`` [B, L] with each row replaced by the empty caption with probability ``p`` (caption dropout)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop_captions: p must be in [0, 1], got {p}")
    if p == 0:
        return ids
    drop = torch.rand(ids.shape[0], generator=generator, device=generator.device if generator else "cpu") < p
    drop = drop.to(ids.device)
    empty = torch.full_like(ids, PAD)
    empty[:, 0] = EMPTY
    return torch.where(drop[:, None], empty, ids)
