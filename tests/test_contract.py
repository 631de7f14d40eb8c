"""The rule contract: the engine applies maximize and the declared weight decay before every rule, and checks the keys
a rule's scalars and constants declare."""
from __future__ import annotations

import ast
import pathlib
from typing import TypedDict

import pytest
import torch

import adamlab
from adamlab.optim import _contract
from adamlab.optim._base import AdamlabOptimizer, check_common

OPTIM = pathlib.Path(adamlab.__file__).parent / "optim"


class _SGDScalars(TypedDict):
    neg_lr: float


class _PlainSGD(AdamlabOptimizer):
    """θ ← θ − ηg: a rule with no decay or sign of its own; the engine adds both."""

    Scalars = _SGDScalars

    def __init__(self, params, lr=0.1, weight_decay=0.0, maximize=False, **impl):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, maximize=maximize), **impl)

    def _validate(self, group):
        check_common(group)

    def _init_state(self, p, group):
        return {}

    def _scalars(self, group, step):
        return _SGDScalars(neg_lr=-group["lr"])

    @staticmethod
    def _rule(o, p, g, st, s, c):
        o.axpy_(p, g, s["neg_lr"])


class _Decoupled(_PlainSGD):
    _weight_decay = "decoupled"


class _DecoupledAxpy(_PlainSGD):
    _weight_decay, _decay_rounding = "decoupled", "axpy"


def _one_step(cls, path, **kw):
    p = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    p.grad = torch.tensor([0.5, 0.25, -1.0], dtype=torch.float64)
    cls([p], **kw, foreach=path == "foreach").step()
    return p.detach()


@pytest.mark.parametrize("path", ["loop", "foreach"])
def test_engine_applies_maximize_and_each_declared_decay(path):
    theta = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    g = torch.tensor([0.5, 0.25, -1.0], dtype=torch.float64)
    lr, wd = 0.1, 0.3

    def axpy(x, y, a):  # x + a·y, as the vocabulary computes it
        return x.add(y, alpha=a)

    assert torch.equal(_one_step(_PlainSGD, path, lr=lr), axpy(theta, g, -lr))
    assert torch.equal(_one_step(_PlainSGD, path, lr=lr, maximize=True), axpy(theta, -g, -lr))
    assert torch.equal(_one_step(_PlainSGD, path, lr=lr, weight_decay=wd), axpy(theta, axpy(g, theta, wd), -lr))
    assert torch.equal(_one_step(_Decoupled, path, lr=lr, weight_decay=wd), axpy(theta * (1 - lr * wd), g, -lr))
    assert torch.equal(_one_step(_DecoupledAxpy, path, lr=lr, weight_decay=wd),
                       axpy(axpy(theta, theta, lr * -wd), g, -lr))
    # maximize comes first: the L2 term is added to the flipped gradient, as torch.optim orders them
    assert torch.equal(_one_step(_PlainSGD, path, lr=lr, weight_decay=wd, maximize=True),
                       axpy(theta, axpy(-g, theta, wd), -lr))
    assert not torch.equal(_one_step(_PlainSGD, path, lr=lr, weight_decay=wd, maximize=True),
                           axpy(theta, -axpy(g, theta, wd), -lr))


def test_the_two_decoupled_roundings_differ_somewhere():
    """``_decay_rounding`` is a real switch: θ(1 − ηλ) and θ + (−ηλ)θ differ in the last bit for some θ."""
    theta = torch.linspace(-3, 3, 1001, dtype=torch.float64)
    lr, wd = 0.1, 0.3
    assert not torch.equal(theta * (1 - lr * wd), theta.add(theta, alpha=lr * -wd))


def test_undeclared_or_missing_scalars_are_a_type_error_naming_them():
    class Extra(_PlainSGD):
        def _scalars(self, group, step):
            return dict(neg_lr=-group["lr"], typo=1.0)

    class Missing(_PlainSGD):
        def _scalars(self, group, step):
            return {}

    for cls, word in ((Extra, "undeclared ['typo']"), (Missing, "missing ['neg_lr']")):
        p = torch.zeros(3, requires_grad=True)
        p.grad = torch.ones(3)
        with pytest.raises(TypeError, match=word.replace("[", r"\[").replace("]", r"\]")):
            cls([p]).step()
        assert torch.equal(p.detach(), torch.zeros(3))  # nothing was stepped


def test_every_optimizer_declares_its_scalars_and_constants_and_passes_the_check():
    for name in adamlab.list_optimizers():
        info = adamlab.get_optimizer_info(name)
        assert info.cls.Scalars is not None, name
        p = torch.randn(4, 3, requires_grad=True)
        p.grad = torch.randn(4, 3)
        opt = adamlab.create_optimizer(name, [p], weight_decay=0.1)
        opt.step()  # the plan's check ran: a mismatch would raise


def _reads_maximize_or_decays(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and \
                node.slice.value in ("maximize", "decay_factor", "neg_lr_wd", "l2", "decoupled"):
            if isinstance(node.value, ast.Name) and node.value.id in ("c", "s"):
                found.append(f"line {node.lineno}: {node.value.id}[{node.slice.value!r}]")
    return found


def test_rule_modules_hold_only_their_maths():
    """No rule module flips the sign for maximize or applies the engine's decay itself."""
    offenders = {}
    for path in OPTIM.glob("*.py"):
        if path.name.startswith("_"):
            continue
        hits = _reads_maximize_or_decays(ast.parse(path.read_text()))
        if hits:
            offenders[path.name] = hits
    assert offenders == {}


def test_compose_keeps_the_rule_and_names_it():
    update = _contract.compose(_PlainSGD._rule)
    assert "_rule_composed" in update.__name__
    assert _PlainSGD._update is not _PlainSGD._rule
