"""Registry and factory: every registry name builds, with its defaults, overrides and (in the lab) search space."""

import pytest
import torch

import adamlab
from adamlab.lab.spaces import SEARCH_SPACES, Choice, Float, IntRange, LogFloat, OneMinusLog
from adamlab.registry import get_optimizer_info

from optim_db import DB


def test_names():
    """The registry's names in its order (the test database's rows are written in it)."""
    assert adamlab.list_optimizers() == list(DB)


@pytest.mark.parametrize("name", adamlab.list_optimizers())
def test_create_every_optimizer(name):
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = adamlab.create_optimizer(name, model)
    assert isinstance(opt, get_optimizer_info(name).cls)
    x = model(torch.tensor([1, 2]))
    x.sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    moved = any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    assert moved == DB[name].first_step_moves
    assert "lr" in SEARCH_SPACES[name]
    for spec in SEARCH_SPACES[name].values():
        assert isinstance(spec, (LogFloat, OneMinusLog, Float, IntRange, Choice))


def test_registry_defaults():
    p = [torch.zeros(2, requires_grad=True)]
    assert adamlab.create_optimizer("momentum", p).defaults["momentum"] == 0.9
    nes = adamlab.create_optimizer("nesterov", p).defaults
    assert nes["nesterov"] and nes["momentum"] == 0.9
    assert adamlab.create_optimizer("amsgrad", p).defaults["amsgrad"] is True
    assert adamlab.create_optimizer("ADAM", p).defaults["lr"] == 1e-3


def test_overrides_and_betas():
    p = [torch.zeros(2, requires_grad=True)]
    opt = adamlab.create_optimizer("adam", p, lr=0.1, beta2=0.95)
    assert opt.defaults["lr"] == 0.1 and opt.defaults["betas"] == (0.9, 0.95)
    with pytest.raises(TypeError, match="no betas"):
        adamlab.create_optimizer("sgd", p, beta1=0.9)
    with pytest.raises(ValueError, match="Unknown optimizer 'adamz'"):
        adamlab.create_optimizer("adamz", p)
    with pytest.raises(TypeError, match="bogus"):
        adamlab.create_optimizer("adam", p, bogus=1)


def test_model_gets_no_decay_groups():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = adamlab.create_optimizer("adamw", model, weight_decay=0.1)
    decays = {len(g["params"]): g["weight_decay"] for g in opt.param_groups}
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.1]
    decayed = [p for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert len(decayed) == 1 and decayed[0] is model[0].weight
    assert decays
