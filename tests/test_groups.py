"""Param-group helpers: weight-decay groups (timm style) and Coupled Adam's embedding groups on a tiny tied LM."""

import pytest
import torch
from torch import nn

import adamlab
from adamlab.groups import coupled_adam, coupled_param_groups, embedding_parameters, param_groups_weight_decay


class TinyLM(nn.Module):
    def __init__(self, vocab=32, hidden=8, block=6, tied=True):
        super().__init__()
        self.wte = nn.Embedding(vocab, hidden)
        self.wpe = nn.Embedding(block, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.mlp = nn.Linear(hidden, hidden)
        self.scale = nn.Parameter(torch.ones(()))
        self.frozen = nn.Parameter(torch.zeros(hidden, hidden), requires_grad=False)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight

    def forward(self, x):
        h = self.wte(x) + self.wpe(torch.arange(x.shape[1]))
        return self.lm_head(self.ln(torch.relu(self.mlp(h))) * self.scale)


def _ids(group):
    return {id(p) for p in group["params"]}


def _all_once(model, groups):
    """Every trainable parameter in exactly one group, once."""
    listed = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    return len(listed) == len(set(listed)) and set(listed) == trainable


# ---------------------------------------------------------------------- weight-decay groups
def test_weight_decay_groups():
    m = TinyLM()
    groups = param_groups_weight_decay(m, 0.1)
    assert _all_once(m, groups)
    no_decay, decay = groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert _ids(no_decay) == {id(m.ln.weight), id(m.ln.bias), id(m.mlp.bias), id(m.scale)}
    assert _ids(decay) == {id(m.wte.weight), id(m.wpe.weight), id(m.mlp.weight)}  # tied head counted once


def test_weight_decay_groups_options():
    m = TinyLM()
    groups = param_groups_weight_decay(m, 0.1, no_decay_names=["mlp.weight"], decay_embeddings=False)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0 and _all_once(m, groups)  # empty group dropped
    groups = param_groups_weight_decay(m, 0.1, no_decay_names=["*.weight"])  # glob patterns
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0


def test_weight_decay_groups_drive_an_optimizer():
    m = TinyLM()
    opt = adamlab.AdamW(param_groups_weight_decay(m, 0.1), lr=1e-2)
    before = m.ln.weight.detach().clone()
    m.ln.weight.grad = torch.zeros_like(m.ln.weight)
    opt.step()
    assert torch.equal(m.ln.weight, before)  # no decay on a norm weight with zero gradient


# ---------------------------------------------------------------------- coupled groups
def test_embedding_parameters_include_tied_head():
    m = TinyLM()
    assert embedding_parameters(m) == {id(m.wte.weight), id(m.wpe.weight)}
    assert id(m.lm_head.weight) in embedding_parameters(m)


def test_coupled_param_groups():
    m = TinyLM()
    groups = coupled_param_groups(m, weight_decay=0.1)
    assert _all_once(m, groups) and len(groups) == 2
    emb, rest = groups
    assert emb["coupled"] is True and emb["weight_decay"] == 0.0 and emb["coupled_scale"] == 1.0
    assert _ids(emb) == {id(m.wte.weight), id(m.wpe.weight)} and len(emb["params"]) == 2
    assert rest["coupled"] is False and rest["weight_decay"] == 0.1
    assert _ids(rest) == {id(m.ln.weight), id(m.ln.bias), id(m.mlp.weight), id(m.mlp.bias), id(m.scale)}


def test_coupled_param_groups_options():
    m = TinyLM()
    groups = coupled_param_groups(m, 0.1, embedding_names=["wte.weight"], coupled_scale=0.5,
                                  no_decay_names=["*.bias", "ln.*", "scale"])
    assert _all_once(m, groups) and len(groups) == 3
    emb, decay, no_decay = groups
    assert _ids(emb) == {id(m.wte.weight)} and emb["coupled_scale"] == 0.5  # the reference's nanoGPT choice
    assert _ids(decay) == {id(m.wpe.weight), id(m.mlp.weight)} and decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0 and no_decay["coupled"] is False and len(no_decay["params"]) == 4


def test_untied_head_is_not_coupled_unless_named():
    m = TinyLM(tied=False)
    emb = coupled_param_groups(m)[0]
    assert id(m.lm_head.weight) not in _ids(emb)
    emb = coupled_param_groups(m, embedding_names=["wte.weight", "lm_head.weight"])[0]
    assert _ids(emb) == {id(m.wte.weight), id(m.lm_head.weight)}


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_coupled_adam_one_call(foreach):
    m = TinyLM().double()
    opt = coupled_adam(m, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), foreach=foreach)
    assert isinstance(opt, adamlab.CoupledAdam)
    assert [g["coupled"] for g in opt.param_groups] == [True, False]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.1]
    assert all(g["betas"] == (0.9, 0.95) and g["lr"] == 1e-2 for g in opt.param_groups)
    x = torch.randint(0, 32, (4, 6))
    loss = nn.functional.cross_entropy(m(x[:, :-1]).reshape(-1, 32), x[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    assert len(opt.state) == 7  # every trainable tensor once: the tied head shares the embedding's state


def test_coupled_adam_is_exported():
    assert adamlab.coupled_adam is coupled_adam
    assert adamlab.coupled_param_groups is coupled_param_groups
    assert adamlab.param_groups_weight_decay is param_groups_weight_decay
