"""Word-level language model with tied embeddings: the Coupled Adam claim (isotropy, mean embedding).

Vocabulary: the `vocab`-1 most frequent lower-cased words of the corpus plus <unk>, so the Zipf tail of rare
words is there (their embeddings are the ones Adam pushes along the mean direction). Model: the previous
`context` word embeddings -> MLP -> logits = h Eᵀ with the same E (tied head, no output bias). Reports the
held-out loss and, at the end, Iso(E) and the mean-embedding ratio (see ``adamlab.lab.metrics``).
"""
from __future__ import annotations

import collections
import functools
import re

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DataError
from ..metrics import isotropy, mean_embedding_ratio, sharpness
from .base import RunResult, train_model
from .charlm import TextTask, read_text

__all__ = ["WordLMTask", "word_corpus", "DataError"]


@functools.lru_cache(maxsize=4)
def word_corpus(path: str | None, digest: str | None, vocab: int, max_words: int):
    """`digest` (of the file's bytes) is part of the cache key: an edited file is read again."""
    words = re.findall(r"[a-z']+", read_text(path).lower())[:max_words]
    common = [w for w, _ in collections.Counter(words).most_common(vocab - 1)]
    idx = {w: i + 1 for i, w in enumerate(common)}  # 0 = <unk>
    data = torch.tensor([idx.get(w, 0) for w in words], dtype=torch.long)
    cut = int(0.9 * len(data))
    return data[:cut], data[cut:], len(common) + 1


class TiedWordLM(nn.Module):
    def __init__(self, vocab: int, d: int = 32, context: int = 4, hidden: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        nn.init.normal_(self.emb.weight, std=0.1)
        self.mlp = nn.Sequential(nn.Linear(context * d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, ctx):  # ctx [B, context] -> logits [B, V]
        h = self.mlp(self.emb(ctx).flatten(1))
        return h @ self.emb.weight.T


class WordLMTask(TextTask):
    name = "word_lm"
    family = "lm"
    unit = "words of letters a-z"

    def __init__(self, text: str | None = None, **config):
        super().__init__(text=text, **config)
        c = self.config
        self.window = int(c.get("context", 4))
        self.description = (f"word-level LM with tied embeddings, vocabulary {c.get('vocab', 2000)}, d={c.get('d', 32)}, "
                            f"context {c.get('context', 4)} words, batch {c.get('batch', 128)}, {c.get('steps', 300)} steps")

    def corpus(self):
        c = self.config
        return word_corpus(self.text, self.data_digest, int(c.get("vocab", 2000)), int(c.get("max_words", 300_000)))

    def run(self, make_optimizer, seed: int, final: bool) -> RunResult:
        c = self.config
        k, bs = int(c.get("context", 4)), int(c.get("batch", 128))
        train, val, vocab = self.corpus()

        def windows(data, n, gen):
            ix = torch.randint(len(data) - k - 1, (n,), generator=gen)
            off = torch.arange(k)
            return data[ix[:, None] + off], data[ix + k]

        val_batch = windows(val, int(c.get("val_batch", 2048)), torch.Generator().manual_seed(99))
        torch.manual_seed(seed)
        model = TiedWordLM(vocab, int(c.get("d", 32)), k, int(c.get("hidden", 64)))
        opt = make_optimizer(model)
        gen = torch.Generator().manual_seed(seed)

        def loss(m, b):
            return F.cross_entropy(m(b[0]), b[1])

        res = train_model(model, opt, steps=int(c.get("steps", 300)), eval_every=int(c.get("eval_every", 25)),
                          batch=lambda step: windows(train, bs, gen), loss=loss,
                          evaluate=lambda m: {"val_loss": float(loss(m, val_batch))})
        E = model.emb.weight.detach()
        if not res.diverged:
            res.extra.update(isotropy=isotropy(E), mean_embedding_ratio=mean_embedding_ratio(E))
            if final:
                xs = (val_batch[0][:256], val_batch[1][:256])
                res.extra["sharpness"] = sharpness(lambda: loss(model, xs), list(model.parameters()), iters=10)
        return res
