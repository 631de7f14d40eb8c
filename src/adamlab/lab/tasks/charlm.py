"""Character-level GPT on Shakespeare (or any text file): the MinGPT task of the EXAdam paper, CPU-sized.

The corpus ships as package data (adamlab/data/shakespeare.txt); `--text PATH` swaps in any UTF-8 file.
First 90 % of the characters train, the last 10 % are held out. The model ties its input embedding and
output head (nanoGPT), uses a hand-written attention (so Hessian-vector products work for sharpness), and
tracks the loss on the batch it saw at 10 % of training (the AdEMAMix forgetting curve).
"""
from __future__ import annotations

import functools
import math
import os
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DataError
from ..metrics import isotropy, mean_embedding_ratio, sharpness
from .base import RunResult, Task, train_model

__all__ = ["CharLM", "TextTask", "DataError", "read_text", "char_corpus"]


def read_text(path: str | None) -> str:
    if path is None:
        return resources.files("adamlab").joinpath("data/shakespeare.txt").read_text(encoding="utf-8")
    if not os.path.isfile(path):
        raise DataError(f"text file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"text file {path} is not UTF-8 (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise DataError(f"cannot read text file {path}: {e.strerror or e}") from None
    if len(text) < 2000:
        raise DataError(f"text file {path} is too short ({len(text)} characters; need at least 2000)")
    return text


class TextTask(Task):
    """A task on a text file (`--text`; default: the bundled Shakespeare), keyed by the file's content."""

    path_keys = ("text",)

    def __init__(self, text: str | None = None, **config):
        super().__init__(text=text, **config)
        self.text = text

    @property
    def source(self) -> str:
        return "the bundled Shakespeare" if self.text is None else f"text file {self.text}"

    def available(self):
        if self.text is not None and not os.path.isfile(self.text):
            return False, f"text file not found: {self.text}"
        return True, ""

    def data_files(self) -> list[str]:
        return [str(resources.files("adamlab").joinpath("data/shakespeare.txt")) if self.text is None else self.text]

    def corpus(self):
        """(train ids, held-out ids, vocabulary size), cached per file content."""
        raise NotImplementedError

    def check(self) -> None:
        train, val, _ = self.corpus()
        need = self.window + 2
        if min(len(train), len(val)) < need:
            raise DataError(f"{self.source}: only {len(train) + len(val)} {self.unit}, need at least {10 * need}")


@functools.lru_cache(maxsize=4)
def char_corpus(path: str | None, digest: str | None, max_chars: int):
    """`digest` (of the file's bytes) is part of the cache key: an edited file is read again."""
    text = read_text(path)[:max_chars]
    vocab = sorted(set(text))
    idx = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([idx[c] for c in text], dtype=torch.long)
    cut = int(0.9 * len(data))
    return data[:cut], data[cut:], len(vocab)


class Block(nn.Module):
    def __init__(self, d: int, heads: int, block: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.register_buffer("mask", torch.tril(torch.ones(block, block, dtype=torch.bool)), persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)
        att = att.masked_fill(~self.mask[:T, :T], float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, d: int = 48, layers: int = 2, heads: int = 2, block: int = 32):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads, block) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight  # tied
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def lm_loss(model, batch):
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _layers(c: dict) -> str:
    n = int(c.get("layers", 2))
    return f"{n} layer{'' if n == 1 else 's'}"


class CharLM(TextTask):
    name = "char_gpt"
    family = "lm"
    unit = "characters"

    def __init__(self, text: str | None = None, **config):
        super().__init__(text=text, **config)
        c = self.config
        self.window = int(c.get("block", 32))
        self.description = (f"char-level GPT on {'Shakespeare' if text is None else os.path.basename(text)}: "
                            f"{_layers(c)}, d={c.get('d', 48)}, context {c.get('block', 32)}, "
                            f"batch {c.get('batch', 16)}, {c.get('steps', 200)} steps; tied embeddings")

    def corpus(self):
        return char_corpus(self.text, self.data_digest, int(self.config.get("max_chars", 2_000_000)))

    def run(self, make_optimizer, seed: int, final: bool) -> RunResult:
        c = self.config
        block, bs, steps = int(c.get("block", 32)), int(c.get("batch", 16)), int(c.get("steps", 200))
        train, val, vocab = self.corpus()
        g_val = torch.Generator().manual_seed(1234)

        def windows(data, n, gen):
            ix = torch.randint(len(data) - block - 1, (n,), generator=gen)
            return (torch.stack([data[i:i + block] for i in ix.tolist()]),
                    torch.stack([data[i + 1:i + 1 + block] for i in ix.tolist()]))

        val_batch = windows(val, int(c.get("val_batch", 128)), g_val)
        torch.manual_seed(seed)
        model = GPT(vocab, int(c.get("d", 48)), int(c.get("layers", 2)), int(c.get("heads", 2)), block)
        opt = make_optimizer(model)
        gen = torch.Generator().manual_seed(seed)
        early = max(1, steps // 10)
        # forgetting probes: the batch trained on at step `early` (replayed from the same generator) and a
        # training-distribution batch never trained on; their loss gap is what the model still remembers.
        probe_gen = torch.Generator().manual_seed(seed)
        for _ in range(early - 1):
            windows(train, bs, probe_gen)
        probes = {"early_batch_loss": windows(train, bs, probe_gen),
                  "unseen_batch_loss": windows(train, bs, torch.Generator().manual_seed(10_000 + seed))}
        res = train_model(model, opt, steps=steps, eval_every=int(c.get("eval_every", 20)), batch=lambda step: windows(train, bs, gen), loss=lm_loss,
                          evaluate=lambda m: {"val_loss": float(lm_loss(m, val_batch))},
                          probes=probes, probe_from={k: early for k in probes})
        if not res.diverged and res.curves.get("early_batch_loss"):
            # what the model still remembers of the early batch: its loss advantage over an unseen batch
            res.extra["retention"] = res.curves["unseen_batch_loss"][-1][2] - res.curves["early_batch_loss"][-1][2]
        if final and not res.diverged:
            E = model.wte.weight.detach()
            res.extra.update(isotropy=isotropy(E), mean_embedding_ratio=mean_embedding_ratio(E))
            xs = (val_batch[0][:16], val_batch[1][:16])
            res.extra["sharpness"] = sharpness(lambda: lm_loss(model, xs), list(model.parameters()), iters=10)
        return res
