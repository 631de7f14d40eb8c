"""CoupledAdam: published test vectors, parity with the float64 port of the authors' code, AdamW ⊆ CoupledAdam,
the fixed mean embedding of a tied-embedding LM, defaults. (The three paths with mixed coupled/uncoupled groups,
maximize, bad arguments and exact resume: the coupledadam row of tests/optim_db.py.)"""

import pytest
import torch
from torch import nn

import adamlab

from reference_coupled import CoupledAdam as RefCoupledAdam
from trajectory import fake_grad, make_params, max_rel

D = torch.float64
E0 = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.5]]
G1 = [[0.3, -0.1], [-0.2, 0.4], [-0.1, -0.3]]
G2 = [[-0.5, 0.2], [0.1, 0.1], [0.4, -0.3]]
SHAPES = ((5, 3), (7,), (1, 4), (2, 2, 3), (9, 4))


def _spec_run(make):
    E = torch.tensor(E0, dtype=D, requires_grad=True)
    opt = make([E])
    for g in (G1, G2):
        E.grad = torch.tensor(g, dtype=D)
        opt.step()
    return E.detach(), opt.state[E]


# ---------------------------------------------------------------------- published test vectors
def test_spec_vectors(path):
    E, st = _spec_run(lambda ps: adamlab.CoupledAdam(ps, lr=0.1, betas=(0.9, 0.95), weight_decay=0.0, **path))
    want = torch.tensor([[0.9004991829, 0.0114590343], [0.1062766810, 0.7699970627], [-1.0067758639, 0.7185439030]],
                        dtype=D)
    torch.testing.assert_close(E, want, rtol=0, atol=1e-9)
    torch.testing.assert_close(E.mean(0), torch.tensor([0.0, 0.5], dtype=D), rtol=0, atol=1e-15)
    v = torch.tensor([[0.016775, 0.002475], [0.0024, 0.0081], [0.008475, 0.008775]], dtype=D)
    torch.testing.assert_close(st["exp_avg_sq"], v, rtol=1e-12, atol=0)  # the stored v stays per element

    Ew, _ = _spec_run(lambda ps: adamlab.AdamW(ps, lr=0.1, betas=(0.9, 0.95), weight_decay=0.0, **path))
    torch.testing.assert_close(Ew.mean(0), torch.tensor([0.0335602621, 0.5265551823], dtype=D), rtol=0, atol=1e-9)

    Es, _ = _spec_run(lambda ps: adamlab.CoupledAdam(ps, lr=0.1, betas=(0.9, 0.95), weight_decay=0.0,
                                                     coupled_scale=0.125, **path))
    want = torch.tensor([[0.7185692167, 0.0324110420], [0.3005958227, 0.3494534962], [-1.0191650394, 1.1181354617]],
                        dtype=D)
    torch.testing.assert_close(Es, want, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------- parity with the authors' code
def _trajectory(make, steps=36, seed=0, groups=None, maximize_sign=1.0, lr_change=True):
    ps = make_params(seed, shapes=SHAPES)
    opt = make(groups(ps) if groups else [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03}])
    for t in range(steps):
        for i, p in enumerate(ps):
            p.grad = None if i == 2 and t % 4 == 3 else maximize_sign * fake_grad(p, t)
        if lr_change and t == 20:
            for g in opt.param_groups:
                g["lr"] *= 0.5
        opt.step()
    return torch.cat([p.detach().flatten() for p in ps]), opt


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("scale", [1.0, 0.125, 3.0])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_matches_reference(foreach, scale, wd):
    """Every tensor coupled (the reference couples all it holds, 1-D and 3-D ones included: mean over dim 0)."""
    a, _ = _trajectory(lambda g: adamlab.CoupledAdam(g, lr=0.05, betas=(0.9, 0.95), weight_decay=wd,
                                                     coupled_scale=scale, foreach=foreach))
    b, _ = _trajectory(lambda g: RefCoupledAdam(g, lr=0.05, betas=(0.9, 0.95), weight_decay=wd, avg_scale=scale))
    assert max_rel(a, b) < 1e-9


def test_matches_reference_maximize():
    a, _ = _trajectory(lambda g: adamlab.CoupledAdam(g, lr=0.05, maximize=True, foreach=False), maximize_sign=-1.0)
    b, _ = _trajectory(lambda g: RefCoupledAdam(g, lr=0.05, maximize=True), maximize_sign=-1.0)
    assert max_rel(a, b) < 1e-9


# ---------------------------------------------------------------------- AdamW ⊆ CoupledAdam
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_uncoupled_is_adamw(path, wd):
    a, _ = _trajectory(lambda g: adamlab.CoupledAdam(g, lr=0.05, weight_decay=wd, coupled=False, **path))
    b, _ = _trajectory(lambda g: torch.optim.AdamW(g, lr=0.05, weight_decay=wd))
    assert max_rel(a, b) <= 1e-12


def test_one_row_tensor_is_adamw():
    """A coupled tensor with a single row averages over one row: AdamW exactly (bit for bit on the loop path)."""
    shapes = ((1, 6), (1, 2, 3))
    outs = []
    for make in (lambda g: adamlab.CoupledAdam(g, lr=0.05, weight_decay=0.1, foreach=False),
                 lambda g: adamlab.AdamW(g, lr=0.05, weight_decay=0.1, foreach=False)):
        ps = make_params(2, shapes=shapes)
        opt = make(ps)
        for t in range(20):
            for p in ps:
                p.grad = fake_grad(p, t)
            opt.step()
        outs.append(torch.cat([p.detach().flatten() for p in ps]))
    assert torch.equal(outs[0], outs[1])


# ---------------------------------------------------------------------- defining behaviour
V, H = 48, 8


class TiedLM(nn.Module):
    """A tiny language model whose LM head is the token embedding (tied). The input side looks embeddings up
    relative to their mean, so the whole gradient of the tied matrix, like the LM-head part of any tied model,
    sums to zero over the vocabulary."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(V, H)
        self.mix = nn.Linear(H, H)
        self.ln = nn.LayerNorm(H)
        self.head = nn.Linear(H, V, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, x):
        e = self.wte(x) - self.wte.weight.mean(0)
        return self.head(self.ln(torch.tanh(self.mix(e))))


def _train_lm(make, steps=40):
    torch.manual_seed(0)
    model = TiedLM().double()
    opt = make(model)
    gen = torch.Generator().manual_seed(1)
    zipf = 1.0 / torch.arange(1, V + 1, dtype=D)  # rare tokens: small v, the drift AdamW shows
    mean0 = model.wte.weight.detach().mean(0).clone()
    for _ in range(steps):
        x = torch.multinomial(zipf / zipf.sum(), 16 * 9, replacement=True, generator=gen).view(16, 9)
        loss = nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, V), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float((model.wte.weight.detach().mean(0) - mean0).abs().max())


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_coupled_adam_keeps_mean_embedding_fixed(foreach):
    coupled = _train_lm(lambda m: adamlab.coupled_adam(m, lr=1e-2, weight_decay=0.1, foreach=foreach))
    adamw = _train_lm(lambda m: adamlab.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0, foreach=foreach))
    assert coupled < 1e-14  # the column sums of the update are 0: the mean embedding does not move
    assert adamw > 1e-3  # Adam's per-token denominators drift it (the anisotropy of the paper)


# ---------------------------------------------------------------------- defaults
def test_defaults():
    d = adamlab.CoupledAdam([torch.zeros(2, 2, requires_grad=True)]).defaults
    assert {k: d[k] for k in ("lr", "betas", "eps", "weight_decay", "coupled", "coupled_scale", "maximize")} == dict(
        lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, coupled=True, coupled_scale=1.0, maximize=False)
