"""What bf16 optimizer state (and bf16 parameters with Kahan or stochastic rounding) costs in loss on a small
char-level GPT trained on the Shakespeare corpus shipped with adamlab.

    python benchmarks/state_dtype_gpt.py --steps 600 --seeds 0,1 --out state-dtype.json

Each configuration trains the same model from the same initialisation on the same batches; the table reports the
final training loss (mean of the last 50 steps), the validation loss, the optimizer state in bytes per parameter
and the step time. A benchmark measures; tests/test_lowp.py checks.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import adamlab
from adamlab.optim._lowp import state_bytes

CONFIGS = {
    # name: (optimizer, optimizer kwargs, parameter dtype)
    "adamw-fp32": ("adamw", {}, torch.float32),
    "adamw-bf16state": ("adamw", dict(state_dtype=torch.bfloat16), torch.float32),
    "ademamix-fp32": ("ademamix", dict(alpha=5.0, beta3_warmup=None), torch.float32),
    "ademamix-bf16state": ("ademamix", dict(alpha=5.0, state_dtype=torch.bfloat16), torch.float32),
    "ademamix-bf16state-slowfp32": ("ademamix", dict(alpha=5.0, state_dtype={"*": torch.bfloat16,
                                                                            "exp_avg_slow": torch.float32}),
                                    torch.float32),
    "adamw-bf16params-nearest": ("adamw", dict(param_update="nearest"), torch.bfloat16),
    "adamw-bf16params-kahan": ("adamw", dict(param_update="kahan"), torch.bfloat16),
    "adamw-bf16params-stochastic": ("adamw", dict(param_update="stochastic"), torch.bfloat16),
}


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc(self.ln2(x))))


class CharGPT(nn.Module):
    def __init__(self, vocab: int, d: int = 128, layers: int = 4, heads: int = 4, ctx: int = 64) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        for m in self.modules():  # GPT-2 initialisation
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x) @ self.tok.weight.T  # tied LM head


def corpus() -> tuple[torch.Tensor, torch.Tensor, int]:
    text = (Path(adamlab.__file__).parent / "data" / "shakespeare.txt").read_text()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text] if len(text) < 10_000 else
                        list(map({c: i for i, c in enumerate(chars)}.__getitem__, text)), dtype=torch.long)
    n = int(0.9 * len(data))
    return data[:n], data[n:], len(chars)


def batches(data: torch.Tensor, n: int, bs: int, ctx: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ix = torch.randint(len(data) - ctx - 1, (bs,), generator=g)
        yield torch.stack([data[i:i + ctx] for i in ix]), torch.stack([data[i + 1:i + ctx + 1] for i in ix])


def train(cfg: str, seed: int, steps: int, lr: float, bs: int = 32, ctx: int = 64) -> dict:
    name, kw, pdtype = CONFIGS[cfg]
    tr, va, vocab = corpus()
    torch.manual_seed(seed)
    model = CharGPT(vocab, ctx=ctx).to(pdtype)
    opt = adamlab.create_optimizer(name, model, lr=lr, weight_decay=0.1, **kw)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1.0, (t + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)))
    losses, times = [], []
    for x, y in batches(tr, steps, bs, ctx, seed):
        loss = F.cross_entropy(model(x).float().view(-1, vocab), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
        sched.step()
        losses.append(loss.item())
    with torch.no_grad():
        val = statistics.mean(F.cross_entropy(model(x).float().view(-1, vocab), y.view(-1)).item()
                              for x, y in batches(va, 20, 64, ctx, 1234))
    return dict(config=cfg, seed=seed, steps=steps, train_loss=statistics.mean(losses[-50:]), val_loss=val,
                state_bytes_per_param=state_bytes(opt).per_param, step_ms=1e3 * statistics.median(times),
                finite=all(math.isfinite(v) for v in losses))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="state-dtype.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for cfg in args.configs.split(","):
        for seed in map(int, args.seeds.split(",")):
            r = train(cfg, seed, args.steps, args.lr)
            rows.append(r)
            print(f"{cfg:30s} seed {seed}: train {r['train_loss']:.4f}  val {r['val_loss']:.4f}  "
                  f"state {r['state_bytes_per_param']:.0f} B/param  step {r['step_ms']:.2f} ms", flush=True)
    print(f"\n{'config':30s} {'train':>8s} {'val':>8s} {'B/param':>8s}   (mean over seeds)")
    for cfg in dict.fromkeys(r["config"] for r in rows):
        rs = [r for r in rows if r["config"] == cfg]
        print(f"{cfg:30s} {statistics.mean(r['train_loss'] for r in rs):8.4f} "
              f"{statistics.mean(r['val_loss'] for r in rs):8.4f} {rs[0]['state_bytes_per_param']:8.0f}")
    Path(args.out).write_text(json.dumps(dict(args=vars(args), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
