"""PyTorch's optimizer contract, checked on adamlab's SGD, Adagrad, RMSprop, Adam and AdamW.

PyTorch tests its own optimizers (``TestOptimRenewed`` in pytorch's ``test/test_optim.py``) against a database of
settings per optimizer: ``optim_db`` in ``torch/testing/_internal/common_optimizers.py``, which ships in the torch
wheel. This module takes that database's entries for the five classes adamlab shares with ``torch.optim`` (their
settings, LR schedulers and bad inputs) and checks, in its own code, what those tests check:

* the loss goes the right direction (contiguous and non-contiguous parameters, with each LR scheduler);
* the trajectory (parameters and every state tensor, each step) equals ``torch.optim``'s class on the same
  settings in float64, on both adamlab paths (loop and multi-tensor), with and without LR schedulers, with a step
  without gradients and a frozen layer in between: stronger than TestOptimRenewed, which compares torch's paths
  with one another;
* bad inputs raise the exception type torch raises (the wording is adamlab's own, see ``ERROR_DIFFERENCES``);
* state dicts: save, load into a fresh optimizer and continue bit for bit (named and unnamed parameters);
  ``state_dict()`` after a load equals the dict loaded, which the load leaves as it was; an older dict without
  the flags torch added later loads; a ``step`` saved as a Python number loads; ``torch.load(weights_only=True)``
  of a saved dict gives it back; a ``torch.optim`` checkpoint of the same class resumes exactly; ``deepcopy``
  keeps every public attribute and continues bit for bit;
* tensor learning rates, complex parameters (as their real view) and complex numbers split into two real
  parameters, per-group learning rates and weight decay, a step without gradients or with zero gradients,
  printing, state made by the first step;
* step pre/post hooks (global and per optimizer, in torch's order), state_dict and load_state_dict hooks.

Deliberate differences from ``torch.optim`` are listed below with the reason for each; a case excluded for one is
not generated at all, and where adamlab does something else on purpose the test asserts what it does instead.
The generic checks that need no torch reference (state dicts, deepcopy, hooks, tensor lr, no-op steps) also run
on every name in :mod:`adamlab.registry`, the research optimizers included.

``ADAMLAB_CONTRACT_TARGET=torch`` runs the torch-referenced cases on ``torch.optim``'s own classes, as a control:
they pass everything except the cases that assert adamlab's documented differences.

``torch.testing._internal`` is torch's test-only API: it is used here and nowhere else in adamlab.
"""

from __future__ import annotations

import copy
import inspect
import io
import os
import pickle

import pytest
import torch
from torch.nn import Parameter
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

import adamlab
from adamlab.optim import _base


# ---------------------------------------------------------------------- torch's optimizer database
def _import_torch_optim_db():
    """``torch.testing._internal.common_optimizers``, imported without leaving its side effects behind.

    Its ``common_utils`` needs the ``expecttest`` package (a dependency of torch's own test suite, in the ``test``
    extra). The import also freezes ``torch.backends`` flags and wraps TorchScript calls for the whole process;
    both are put back."""
    backends = torch.backends.flags_frozen.__globals__  # (torch.backends is a wrapper of that module)
    flag = backends.get("__allow_nonbracketed_mutation_flag")
    script_calls = (torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__)
    try:
        from torch.testing._internal import common_optimizers
        return common_optimizers
    except Exception as err:
        raise ImportError(
            "tests/test_torch_contract.py checks adamlab against torch's own optimizer database "
            "(torch.testing._internal.common_optimizers: optim_db, OptimizerErrorEnum), which could not be "
            f"imported with torch {torch.__version__}: {type(err).__name__}: {err}") from err
    finally:
        if flag is not None:
            backends["__allow_nonbracketed_mutation_flag"] = flag
        torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__ = script_calls


try:
    _co = _import_torch_optim_db()
except ImportError as _err:
    pytest.fail(str(_err), pytrace=False)

CLASSES = ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW")
INFOS = {o.optim_cls.__name__: o for o in _co.optim_db if o.optim_cls.__name__ in CLASSES}
assert set(INFOS) == set(CLASSES), f"torch's optim_db lacks {set(CLASSES) - set(INFOS)}"

CONTROL = os.environ.get("ADAMLAB_CONTRACT_TARGET", "adamlab") == "torch"
TARGET = torch.optim if CONTROL else adamlab
PATHS = {"loop": dict(foreach=False), "foreach": dict(foreach=True)}  # the compiled path: tests/test_compile.py

#: Flags of torch's optimizers that adamlab does not have. Settings that switch one on are not generated (none of
#: CPU's settings in torch 2.13 do); the constructor refuses them (``test_flags_adamlab_does_not_have``).
DROPPED_FLAGS = {
    "fused": "torch's fused kernels (one kernel per step for all tensors); adamlab's fused step is "
             "compiled=True (tests/test_compile.py)",
    "capturable": "CUDA-graph capture with the step on the device; adamlab keeps step on the CPU",
    "differentiable": "differentiating through step(); adamlab's step runs under no_grad",
}

#: torch's bad inputs that adamlab accepts on purpose, with the reason; the test asserts that it steps as the
#: same setting given as numbers does.
ERROR_DIFFERENCES = {
    "lr as Tensor doesn't work with foreach & not capturable":
        "adamlab passes a tensor lr to every path as a number (README: numbers may be 1-element tensors)",
    "betas must be either both floats or both Tensors":
        "adamlab reads each beta as a number, a tensor or a Python float alike",
    r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True":
        "adamlab reads tensor betas as numbers on every path",
}
#: torch's Adam and AdamW refuse a tensor lr on the multi-tensor path (without capturable); adamlab takes it on
#: every path (``test_tensor_lr_is_the_number``).
TENSOR_LR_FOREACH = dict.fromkeys(("Adam", "AdamW"), "torch refuses a tensor lr with foreach=True")
#: Wording: adamlab's messages name the argument and its accepted range in its own words ("Invalid momentum: -0.5
#: (expected momentum in [0.0, inf])"); the exception type is torch's, the regex is not checked.

#: Sparse gradients: torch's SGD and Adagrad take them; adamlab's optimizers refuse them with a RuntimeError
#: naming the optimizer, before anything changes (``test_sparse_gradients_are_refused_clearly``); torch's
#: sparse Rosenbrock test is therefore not run.
SPARSE_REASON = "adamlab's rules are dense (one formula for every path); a sparse gradient is refused clearly"


def _accepted_kwargs(cls) -> set[str]:
    """The keyword arguments ``cls`` takes, from its signature (and adamlab's implementation options)."""
    params = inspect.signature(cls.__init__).parameters
    names = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind == p.VAR_KEYWORD for p in params.values()) and issubclass(cls, _base.AdamlabOptimizer):
        names |= set(_base._IMPL_DEFAULTS)
    return names - {"self", "params"}


def _settings(name: str, dtype=torch.float32) -> list:
    """torch's settings for ``name`` on the CPU (a fresh list each call: a scheduler edits a tensor lr in place),
    less those that switch on a flag adamlab lacks (an unknown flag is an error here, not a silent skip)."""
    accepted = _accepted_kwargs(getattr(adamlab, name))
    kept = []
    for inp in INFOS[name].optim_inputs_func(device="cpu", dtype=dtype):
        unknown = set(inp.kwargs) - accepted
        assert unknown <= set(DROPPED_FLAGS), f"{name} setting {inp.desc!r}: {unknown} is neither a flag of " \
                                              "adamlab's nor a documented exclusion"
        if not any(inp.kwargs[k] for k in unknown):  # a flag left off is left out
            inp.kwargs = {k: v for k, v in inp.kwargs.items() if k not in unknown}
            kept.append(inp)
    return kept


def _signature_defaults(cls) -> dict:
    return {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _kw(name: str, i: int, dtype=torch.float32, **extra) -> dict:
    kw = copy.deepcopy(_settings(name, dtype)[i].kwargs)
    kw.update(extra)
    return kw


SETTINGS = [(name, i, inp.desc) for name in CLASSES for i, inp in enumerate(_settings(name))]
SETTING_IDS = [f"{name}-{desc.replace(' ', '_')}" for name, _, desc in SETTINGS]
ERRORS = [(name, i, e.optimizer_error_input.desc) for name in CLASSES
          for i, e in enumerate(INFOS[name].optim_error_inputs_func(device="cpu", dtype=torch.float32))]
ERROR_IDS = [f"{name}-{desc.replace(' ', '_')}" for name, _, desc in ERRORS]


def _cases(cases, ids, differs=lambda case: None):
    """pytest params; in the control run, a case that asserts one of adamlab's documented differences
    (``differs(case)`` gives the reason) is expected to fail on torch's class (strict xfail)."""
    out = []
    for case, id_ in zip(cases, ids):
        reason = differs(case) if CONTROL else None
        marks = [pytest.mark.xfail(strict=True, reason=f"torch.optim differs on purpose: {reason}")] if reason else []
        out.append(pytest.param(*case, id=id_, marks=marks))
    return out


# ---------------------------------------------------------------------- helpers
def _target(name):
    return getattr(TARGET, name)


def _closure(opt, w, b, x):
    opt.zero_grad()
    loss = (w.mv(x) + b).pow(2).sum()
    loss.backward()
    return loss


def _wbx(dtype=torch.float32, contiguous=True, shape=(10, 5)):
    if contiguous:
        w, b = Parameter(torch.randn(shape, dtype=dtype)), Parameter(torch.randn(shape[0], dtype=dtype))
    else:
        w = Parameter(torch.randn(*shape, 2, dtype=dtype)[..., 0])
        b = Parameter(torch.randn(shape[0], 2, dtype=dtype)[..., 0])
    return w, b, torch.randn(shape[1], dtype=dtype)


def _clone(ps):
    return [Parameter(p.detach().clone()) for p in ps]


def _sched_step(schedulers, loss):
    for s in schedulers:
        s.step(loss) if isinstance(s, ReduceLROnPlateau) else s.step()


def _equal(a, b, path="") -> None:
    """Exact equality of nested state dicts (tensors bit for bit, dtype and all)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{path}: {a!r} vs {b!r}"
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"{path}: {a} vs {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {list(a)} vs {list(b)}"
        for k in a:
            _equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for k, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{k}]")
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def _same_params(a, b):
    for p, q in zip(a, b):
        assert torch.equal(p, q), (p - q).abs().max()


def _step(opt, ps, t):
    """Step ``opt`` with a gradient that depends on the parameters and on ``t`` (float64 trajectories)."""
    for p in ps:
        x = p.detach()
        p.grad = torch.sin(3 * x + 0.7 * t) + 0.1 * x
    opt.step()


# ---------------------------------------------------------------------- settings × checks
@pytest.mark.parametrize("name,i,desc", SETTINGS, ids=SETTING_IDS)
def test_goes_right_direction(name, i, desc):
    """20 steps lower the loss (raise it with maximize), contiguous or not, alone and under each LR scheduler."""
    info = INFOS[name]
    for schedulers in [[]] + list(info.scheduler_inputs):
        for contiguous in (True, False):
            for path in PATHS.values():
                kw = _kw(name, i, **path)
                w, b, x = _wbx(contiguous=contiguous)
                first, last = _train_20_steps(_target(name)([w, b], **kw), schedulers, w, b, x)
                assert (last > first) if kw.get("maximize", False) else (last < first), (schedulers, contiguous)


def _step_both(opt, params, other, other_params, x) -> None:
    """One step of two optimizers side by side, each on its own copy of the parameters and the same batch."""
    _closure(opt, *params, x)
    _closure(other, *other_params, x)
    opt.step()
    other.step()


def _train_20_steps(opt, schedulers, w, b, x) -> tuple[float, float]:
    """The loss before and after 20 steps, each scheduler stepped after each step."""
    scheds = [s(opt) for s in schedulers]
    first = _closure(opt, w, b, x).item()
    for _ in range(20):
        loss = _closure(opt, w, b, x)
        opt.step()
        _sched_step(scheds, loss.detach())
    return first, _closure(opt, w, b, x).item()


@pytest.mark.parametrize("name", CLASSES)
def test_param_groups_under_lr_schedulers_go_right_direction(name):
    """Two param groups (the second with its own lr) under each of torch's LR schedulers: the loss goes down."""
    for schedulers in INFOS[name].scheduler_inputs:
        for path in PATHS.values():
            w, b, x = _wbx()
            opt = _target(name)([{"params": [w]}, {"params": [b], "lr": 0.01}], **path)
            first, last = _train_20_steps(opt, schedulers, w, b, x)
            assert last < first


def _model_params(dtype):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1),
                                torch.nn.Sigmoid()).to(dtype)
    scalar = Parameter(torch.tensor(0.4, dtype=dtype))  # a 0-d parameter
    strided = Parameter(torch.randn(4, 6, dtype=dtype)[:, ::2])  # a non-contiguous one
    return model, [*model.parameters(), scalar, strided]


def _model_step(model, params, opt, t, x):
    opt.zero_grad()
    if t == 3:
        model[2].requires_grad_(False)  # a frozen layer: no gradient for two steps
    if t == 5:
        model[2].requires_grad_(True)
    if t != 2:  # a step without any gradient is a no-op
        loss = model(x).sum() + (params[-2] * 0.3).sin() + params[-1].pow(2).sum()
        loss.backward()
        return loss.detach()
    return torch.tensor(0.0)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name,i,desc", SETTINGS, ids=SETTING_IDS)
def test_trajectory_is_torchs(name, i, desc, path):
    """Parameters and every state tensor equal torch.optim's (its loop) after each step, in float64, alone and
    under each of torch's LR schedulers for this optimizer."""
    dtype = torch.float64
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
    for schedulers in [[]] + list(INFOS[name].scheduler_inputs):
        ref_model, ref_ps = _model_params(dtype)
        our_model, our_ps = _model_params(dtype)
        ref = getattr(torch.optim, name)(ref_ps, **_kw(name, i, dtype, foreach=False))
        ours = _target(name)(our_ps, **_kw(name, i, dtype, **PATHS[path]))
        ref_s, our_s = [s(ref) for s in schedulers], [s(ours) for s in schedulers]
        for t in range(7):
            ref_loss = _model_step(ref_model, ref_ps, ref, t, x)
            our_loss = _model_step(our_model, our_ps, ours, t, x)
            ref.step()
            ours.step()
            _sched_step(ref_s, ref_loss)
            _sched_step(our_s, our_loss)
            for k, (p, q) in enumerate(zip(ref_ps, our_ps)):
                torch.testing.assert_close(q, p, rtol=1e-13, atol=1e-15, msg=lambda m: f"param {k} step {t}: {m}")
                for key, v in ref.state[p].items():
                    w = ours.state[q][key]
                    if key == "step":
                        assert float(w) == float(v), (k, t)
                    else:
                        torch.testing.assert_close(w, v, rtol=1e-13, atol=1e-15,
                                                   msg=lambda m: f"param {k} state {key} step {t}: {m}")
            assert [g["lr"] for g in ours.param_groups] == pytest.approx([float(g["lr"]) for g in ref.param_groups])


@pytest.mark.parametrize("name,i,desc", SETTINGS, ids=SETTING_IDS)
def test_complex_parameters_step_as_their_real_view(name, i, desc):
    """Complex parameters (mixed with a real one) follow their real views step for step; and a
    complex vector follows its real and imaginary parts given as two real parameters (Rosenbrock's gradient)."""
    for path in PATHS.values():
        torch.manual_seed(0)
        cps = [torch.randn(10, 5, dtype=torch.complex64, requires_grad=True),
               torch.randn(10, dtype=torch.complex64, requires_grad=True),
               torch.randn(10, 5, dtype=torch.float32, requires_grad=True)]
        rps = [(torch.view_as_real(p) if p.is_complex() else p).detach().clone().requires_grad_() for p in cps]
        c_opt, r_opt = _target(name)(cps, **_kw(name, i, **path)), _target(name)(rps, **_kw(name, i, **path))
        for _ in range(3):
            for c, r in zip(cps, rps):
                r.grad = torch.randn_like(r)
                c.grad = torch.view_as_complex(r.grad.clone()) if c.is_complex() else r.grad.clone()
            c_opt.step()
            r_opt.step()
            for c, r in zip(cps, rps):  # (bit for bit in adamlab: tests/test_complex.py)
                torch.testing.assert_close(torch.view_as_real(c) if c.is_complex() else c, r)

        def rosenbrock(z):
            return ((1 - z[0]) ** 2 + 100 * (z[1] - z[0] ** 2) ** 2).abs()

        a = torch.randn(2, dtype=torch.complex64, requires_grad=True)
        re, im = a.real.detach().clone().requires_grad_(), a.imag.detach().clone().requires_grad_()
        o1, o2 = _target(name)([a], **_kw(name, i, **path)), _target(name)([re, im], **_kw(name, i, **path))
        for _ in range(3):
            o1.zero_grad()
            rosenbrock(a).backward()
            # the same gradient for both (autograd's rounding of the two formulas is not the optimizer's business)
            re.grad, im.grad = a.grad.real.clone(), a.grad.imag.clone()
            o1.step()
            o2.step()
            torch.testing.assert_close(a.real, re)
            torch.testing.assert_close(a.imag, im)


@pytest.mark.parametrize("name,i,desc", _cases(SETTINGS, SETTING_IDS, lambda c: TENSOR_LR_FOREACH.get(c[0])))
def test_tensor_lr_is_the_number(name, i, desc):
    """A 0-d tensor lr steps as the same number does, on both paths (torch's tolerance for float32)."""
    for path in PATHS.values():
        w, b, x = _wbx()
        wc, bc = _clone([w, b])
        kw = _kw(name, i, **path)
        kw.pop("lr", None)
        opt = _target(name)([w, b], lr=1e-3, **kw)
        opt_t = _target(name)([wc, bc], lr=torch.tensor(1e-3), **kw)
        for _ in range(5):
            _step_both(opt, (w, b), opt_t, (wc, bc), x)
            torch.testing.assert_close(wc, w)
            torch.testing.assert_close(bc, b)


@pytest.mark.parametrize("name,i,desc", SETTINGS, ids=SETTING_IDS)
def test_param_groups_lr_and_weight_decay(name, i, desc):
    """A group's own lr and weight decay apply to it alone: a group left at lr=1e-28 does not move, and a group
    without weight decay beside one with it still goes the right direction."""
    for path in PATHS.values():
        kw = _kw(name, i, **path)
        if "lr" not in kw or kw["lr"] == 0:
            kw["lr"] = 1e-3
        impl = {k: kw.pop(k) for k in list(kw) if k in PATHS["loop"]}
        w, b, x = _wbx()
        idle = Parameter(torch.randn(2))
        before = idle.detach().clone()
        opt = _target(name)([dict(params=[w, b], **kw), dict(params=[idle])], lr=1e-28, **impl)
        first = (w.mv(x) + b).pow(2).sum().item()
        for _ in range(20):
            loss = _closure(opt, w, b, x)
            idle.grad = torch.rand_like(idle)
            opt.step()
        assert (loss.item() > first) if kw.get("maximize", False) else (loss.item() < first)
        assert torch.equal(idle, before)

        w, b, x = _wbx()
        opt = _target(name)([dict(params=[w], **kw), dict(params=[b], **dict(kw, weight_decay=0.0))], **impl)
        first = (w.mv(x) + b).pow(2).sum().item()
        for _ in range(20):
            loss = _closure(opt, w, b, x)
            opt.step()
        assert (loss.item() > first) if kw.get("maximize", False) else (loss.item() < first)


@pytest.mark.parametrize("name,i,desc", SETTINGS, ids=SETTING_IDS)
def test_no_op_steps_printing_and_state(name, i, desc):
    """Parameters without gradients are left alone; zero gradients move nothing (without weight decay); the
    optimizer prints its settings; a parameter's state made by the first step is not empty."""
    for path in PATHS.values():
        ps = [torch.randn(2, 3) for _ in range(2)]
        before = [p.clone() for p in ps]
        opt = _target(name)(ps, **_kw(name, i, **path))
        assert opt.step(lambda: torch.tensor([1.0])) == torch.tensor([1.0])
        _same_params(ps, before)

        kw = _kw(name, i, **path)
        if kw.get("weight_decay", 0) == 0:
            if name == "AdamW":  # decays by lr * 1e-2 with its default weight decay: torch's test makes lr small
                kw["lr"] = torch.tensor(1e-5) if isinstance(kw.get("lr"), torch.Tensor) else 1e-5
            p = torch.randn(5, 1, requires_grad=True)
            before = p.detach().clone()
            opt = _target(name)([p], **kw)
            p.grad = torch.zeros_like(p)
            opt.step()
            torch.testing.assert_close(p.detach(), before)

        opt = _target(name)([Parameter(torch.randn(2, 3)), Parameter(torch.randn(2, 3))], **_kw(name, i, **path))
        text = repr(opt)
        assert type(opt).__name__ in text and "lr" in text and "Parameter Group 0" in text

        model = torch.nn.Linear(5, 5)
        opt = _target(name)(model.parameters(), **_kw(name, i, **path))
        model(torch.rand(2, 5)).sum().backward()
        opt.step()
        assert all(len(st) > 0 for st in opt.state.values())  # (plain SGD keeps no state, as torch's)


def _primed(name, kw, named=False, steps=10, dtype=torch.float32):
    torch.manual_seed(0)
    w, b, x = _wbx(dtype, shape=(2, 3))
    ps = [("name0", w), ("name1", b)] if named else [w, b]
    opt = _target(name)(ps, **kw)
    for _ in range(steps):
        _closure(opt, w, b, x)
        opt.step()
    return opt, w, b, x


def _without_names(sd):
    sd = copy.deepcopy(sd)
    for g in sd["param_groups"]:
        g.pop("param_names", None)
    return sd


@pytest.mark.parametrize("name,i,desc", SETTINGS, ids=SETTING_IDS)
def test_state_dict_load_continues_bit_for_bit(name, i, desc):
    """Save, load into a fresh optimizer over copies of the parameters, continue both: bit for bit; the loaded
    dict is left as it was and ``state_dict()`` right after the load equals it; both optimizers' state dicts
    agree afterwards; a repeated param group is saved as the same group; parameter names survive a load."""
    for path in PATHS.values():
        for named0, named1 in [(False, False), (True, False), (False, True), (True, True)]:
            kw = _kw(name, i, **path)
            opt, w, b, x = _primed(name, kw, named0)
            wc, bc = _clone([w, b])
            opt_c = _target(name)([("name0", wc), ("name1", bc)] if named1 else [wc, bc], **_kw(name, i, **path))
            saved = copy.deepcopy(opt.state_dict())
            loaded = copy.deepcopy(saved)
            opt_c.load_state_dict(loaded)
            _equal(loaded, saved, "loaded dict")
            again = opt_c.state_dict()
            if named0 or not named1:
                _equal(again, saved, "state_dict() after load")
            else:  # the new optimizer's own names are kept when the loaded dict has none
                _equal(_without_names(again), saved, "state_dict() after load")
                assert again["param_groups"][0]["param_names"] == ["name0", "name1"]
            for _ in range(10):
                _step_both(opt, (w, b), opt_c, (wc, bc), x)
                _same_params([w, b], [wc, bc])
            _equal(_without_names(opt.state_dict()), _without_names(opt_c.state_dict()), "after steps")
            opt_c.param_groups.extend(opt_c.param_groups)
            _equal(_without_names(opt.state_dict())["param_groups"][-1],
                   _without_names(opt_c.state_dict())["param_groups"][-1], "repeated group")


@pytest.mark.parametrize("name,i,desc", SETTINGS, ids=SETTING_IDS)
def test_state_dict_round_trips(name, i, desc):
    """Older dicts (without the flags torch added later) and a ``step`` saved as a number load and continue as
    the dict they came from; torch.save + ``torch.load(weights_only=True)`` gives the dict back; deepcopy keeps
    the public attributes and continues bit for bit; a torch.optim checkpoint of the same class resumes exactly."""
    info = INFOS[name]
    for path in PATHS.values():
        kw = _kw(name, i, **path)
        opt, w, b, x = _primed(name, kw, steps=3)
        saved = copy.deepcopy(opt.state_dict())

        def resumed(sd):
            wc, bc = _clone([w, b])
            o = _target(name)([wc, bc], **_kw(name, i, **path))
            o.load_state_dict(sd)
            for _ in range(3):
                _closure(o, wc, bc, x)
                o.step()
            return [wc, bc]

        expected = resumed(copy.deepcopy(saved))
        # a flag missing from an older dict means what it meant before it existed: the class's default (maximize
        # False, ...), as torch's classes fill it, whatever this optimizer was made with
        old, as_old = copy.deepcopy(saved), copy.deepcopy(saved)
        class_defaults = _signature_defaults(_target(name))
        for g, h in zip(old["param_groups"], as_old["param_groups"]):
            for flag in info.not_og_supported_flags:
                if flag in g:
                    del g[flag]
                    h[flag] = class_defaults[flag]
        torch.testing.assert_close(resumed(old), resumed(as_old))
        plain_step = copy.deepcopy(saved)
        for st in plain_step["state"].values():
            if isinstance(st.get("step"), torch.Tensor):
                st["step"] = st["step"].item()
        _same_params(resumed(plain_step), expected)

        for named in (False, True):
            sd = _primed(name, _kw(name, i, **path), named, steps=3)[0].state_dict()
            buf = io.BytesIO()
            torch.save(sd, buf)
            buf.seek(0)
            _equal(torch.load(buf, weights_only=True), sd, "weights_only load")

        twin = copy.deepcopy(opt)
        public = {k for k in opt.__dict__ if not k.startswith("_")}
        assert {k for k in twin.__dict__ if not k.startswith("_")} == public
        for other in (twin, pickle.loads(pickle.dumps(opt))):
            tw, tb = other.param_groups[0]["params"]
            ow, ob = _clone([w, b])
            mine = _target(name)([ow, ob], **_kw(name, i, **path))
            mine.load_state_dict(copy.deepcopy(opt.state_dict()))
            for _ in range(3):
                _step_both(other, (tw, tb), mine, (ow, ob), x)
            _same_params([tw, tb], [ow, ob])

        # a torch.optim checkpoint of the same class, resumed here: the same trajectory as torch's own resume
        torch.manual_seed(0)
        w64, b64, x64 = _wbx(torch.float64, shape=(2, 3))
        theirs = getattr(torch.optim, name)([w64, b64], **_kw(name, i, torch.float64, foreach=False))
        for _ in range(3):
            _closure(theirs, w64, b64, x64)
            theirs.step()
        wc, bc = _clone([w64, b64])
        ours = _target(name)([wc, bc], **_kw(name, i, torch.float64, **path))
        ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
        for _ in range(4):
            _closure(theirs, w64, b64, x64)
            _closure(ours, wc, bc, x64)
            theirs.step()
            ours.step()
            torch.testing.assert_close(wc, w64, rtol=1e-13, atol=1e-15)
            torch.testing.assert_close(bc, b64, rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------------- per optimizer
@pytest.mark.parametrize("name,i,desc", _cases(ERRORS, ERROR_IDS, lambda c: ERROR_DIFFERENCES.get(c[2])))
def test_bad_input_raises_torchs_exception_type(name, i, desc):
    """Each of torch's bad inputs raises (or warns) what torch's class does, at construction or at the step; the
    wording is adamlab's (see ERROR_DIFFERENCES). Inputs adamlab accepts on purpose step as the numbers do."""
    err = INFOS[name].optim_error_inputs_func(device="cpu", dtype=torch.float32)[i]
    inp = err.optimizer_error_input
    cls = _target(name)
    if desc in ERROR_DIFFERENCES:
        w, b, x = _wbx()
        wc, bc = _clone([w, b])
        opt = cls([w, b], **inp.kwargs)
        plain = {k: (float(v) if isinstance(v, torch.Tensor) else
                     tuple(float(t) for t in v) if isinstance(v, tuple) else v) for k, v in inp.kwargs.items()}
        ref = cls([wc, bc], **plain)
        for _ in range(3):
            _step_both(opt, (w, b), ref, (wc, bc), x)
        torch.testing.assert_close(w, wc)
        return
    on_step = err.error_on == _co.OptimizerErrorEnum.STEP_ERROR
    expect = pytest.warns if issubclass(err.error_type, Warning) else pytest.raises
    if on_step:
        opt = cls(inp.params, **inp.kwargs)
        with expect(err.error_type):
            opt.step()
    else:
        with expect(err.error_type):
            cls(inp.params, **inp.kwargs)


@pytest.mark.parametrize("name", _cases([(n,) for n in CLASSES], CLASSES, lambda c: "torch has these flags"))
def test_flags_adamlab_does_not_have(name):
    """torch's fused / capturable / differentiable flags: a TypeError naming the flag (they are not generated)."""
    for flag in DROPPED_FLAGS:
        with pytest.raises(TypeError, match=flag):
            _target(name)([Parameter(torch.randn(2))], **{flag: True})


@pytest.mark.parametrize("name", _cases([(n,) for n in CLASSES], CLASSES,
                                         lambda c: INFOS[c[0]].supports_sparse and SPARSE_REASON))
def test_sparse_gradients_are_refused_clearly(name):
    """A sparse gradient: a RuntimeError that says "sparse" (adamlab's names the optimizer too), with parameters and
    state as they were (torch's SGD and Adagrad take sparse gradients; see SPARSE_REASON)."""
    for path in PATHS.values():
        p = Parameter(torch.tensor([1.5, 1.5]))
        opt = _target(name)([p], **_kw(name, 0, **path))
        p.grad = torch.tensor([0.5, -0.5])
        opt.step()
        before, state = p.detach().clone(), copy.deepcopy(opt.state_dict())
        p.grad = torch.sparse_coo_tensor(torch.tensor([[0, 0]]), torch.tensor([0.25, 0.75]), (2,),
                                         check_invariants=True)
        with pytest.raises(RuntimeError, match="sparse"):
            opt.step()
        assert torch.equal(p, before)
        _equal(opt.state_dict(), state)


def _hook_checks(make):
    """torch's hook contract on an optimizer made by ``make(params)``."""
    params = [torch.tensor([1.0, 1.0])]
    opt = make(params)
    calls = []
    h1 = opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    h2 = opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    opt.step()
    opt.step()
    h1.remove()
    h2.remove()
    opt.step()
    assert calls == ["pre", "post", "pre", "post"]

    data = []
    other = torch.optim.SGD(params)
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: data.append(0)),
               register_optimizer_step_post_hook(lambda o, a, k: data.append(5))]
    try:
        for o in (opt, other):
            handles += [o.register_step_pre_hook(lambda o, a, k: data.append(1)),
                        o.register_step_post_hook(lambda o, a, k: data.append(2))]
        opt.step()
        other.step()
        opt.step()
        assert data == [0, 1, 2, 5] * 3
    finally:
        for h in handles:
            h.remove()
    opt.step()
    other.step()
    assert data == [0, 1, 2, 5] * 3

    def pre(o):
        o.state["test"] = 1

    def post(o, sd):
        sd["ran_pre"] = "test" in sd["state"]
        sd["state"].pop("test", None)
        return sd

    opt = make([torch.rand(2, 3, requires_grad=True)])
    opt.register_state_dict_pre_hook(pre)
    assert opt.state_dict()["state"]["test"] == 1
    opt.register_state_dict_post_hook(post)
    sd = opt.state_dict()
    assert sd["ran_pre"] and "test" not in sd["state"]
    opt = make([torch.rand(2, 3, requires_grad=True)])
    opt.register_state_dict_post_hook(post)
    assert opt.state_dict()["ran_pre"] is False

    opt = make([torch.rand(2, 3, requires_grad=True)])
    sd = opt.state_dict()

    def lr2(o, sd):
        sd["param_groups"][0]["lr"] = 0.002

    def lr3(o, sd):
        sd = copy.deepcopy(sd)
        sd["param_groups"][0]["lr"] = 0.003
        return sd

    opt.register_load_state_dict_pre_hook(lr2)
    opt.load_state_dict(copy.deepcopy(sd))
    assert opt.param_groups[0]["lr"] == 0.002
    opt.register_load_state_dict_pre_hook(lr3, prepend=True)
    opt.load_state_dict(copy.deepcopy(sd))
    assert opt.param_groups[0]["lr"] == 0.002  # the prepended hook ran first, lr2 after it

    ran = {}
    opt = make([torch.rand(2, 3, requires_grad=True)])
    opt.register_load_state_dict_pre_hook(lr3)
    opt.register_load_state_dict_post_hook(lambda o: ran.update(lr=o.param_groups[0]["lr"]))
    opt.load_state_dict(opt.state_dict())
    assert ran == {"lr": 0.003}


@pytest.mark.parametrize("name,i,desc", SETTINGS, ids=SETTING_IDS)
def test_hooks(name, i, desc):
    """Step pre/post hooks (per optimizer and global, in torch's order, removable), state_dict pre/post hooks and
    load_state_dict pre/post hooks (prepend too)."""
    _hook_checks(lambda ps: _target(name)(ps, **_kw(name, i)))


# ---------------------------------------------------------------------- every adamlab optimizer
REGISTRY = adamlab.registry.list_optimizers() if not CONTROL else [
    pytest.param(None, marks=pytest.mark.skip(reason="control run on torch's classes: the registry is adamlab's"))]


def _make_named(name, path, **kw):
    return lambda ps: adamlab.create_optimizer(name, ps, **dict(kw, **PATHS[path]))


@pytest.mark.filterwarnings("ignore:CoupledAdam. a coupled group holds:UserWarning")
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", REGISTRY)
def test_every_optimizer_state_dict_and_deepcopy(name, path):
    """The contract checks that need no torch reference, on every registry name: load and continue bit for bit,
    ``state_dict()`` after a load equals the dict loaded, deepcopy and pickle continue bit for bit and keep the
    public attributes, a ``step`` saved as a number loads, weights_only torch.load gives the dict back, a setting
    missing from an older dict takes the class's default."""
    torch.manual_seed(0)
    ps = [Parameter(torch.randn(4, 3, dtype=torch.float64)), Parameter(torch.randn(3, dtype=torch.float64))]
    opt = _make_named(name, path, lr=0.01)([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.02}])
    for t in range(4):
        _step(opt, ps, t)
    saved = copy.deepcopy(opt.state_dict())
    buf = io.BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    _equal(torch.load(buf, weights_only=True), saved, "weights_only load")

    def fresh(sd):
        qs = _clone(ps)
        o = _make_named(name, path, lr=0.01)([{"params": qs[:1]}, {"params": qs[1:], "lr": 0.02}])
        o.load_state_dict(sd)
        return o, qs

    old = copy.deepcopy(saved)  # an older dict, before maximize existed: minimizing, whatever this one was made with
    for g in old["param_groups"]:
        del g["maximize"]
    maximizing = _make_named(name, path, lr=0.01, maximize=True)([{"params": _clone(ps[:1])},
                                                                   {"params": _clone(ps[1:]), "lr": 0.02}])
    maximizing.load_state_dict(old)
    assert [g["maximize"] for g in maximizing.param_groups] == [False, False]

    loaded = copy.deepcopy(saved)
    opt_c, qs = fresh(loaded)
    _equal(loaded, saved, "loaded dict")
    _equal(opt_c.state_dict(), saved, "state_dict() after load")
    plain = copy.deepcopy(saved)
    for st in plain["state"].values():
        st["step"] = st["step"].item()
    opt_n, ns = fresh(plain)
    twin = copy.deepcopy(opt)
    assert {k for k in twin.__dict__ if not k.startswith("_")} == {k for k in opt.__dict__ if not k.startswith("_")}
    unpickled = pickle.loads(pickle.dumps(opt))
    runs = [(opt_c, qs), (opt_n, ns), (twin, [p for g in twin.param_groups for p in g["params"]]),
            (unpickled, [p for g in unpickled.param_groups for p in g["params"]])]
    for t in range(4, 8):
        _step(opt, ps, t)
        for o, rs in runs:
            _step(o, rs, t)
            _same_params(rs, ps)
    for o, _ in runs[:2]:
        _equal(o.state_dict(), opt.state_dict(), "after steps")


@pytest.mark.filterwarnings("ignore:CoupledAdam. a coupled group holds:UserWarning")
@pytest.mark.parametrize("name", REGISTRY)
def test_every_optimizer_hooks_tensor_lr_and_no_op_steps(name):
    """Hooks as torch's; a bad lr is a ValueError whatever the params; a 0-d tensor lr steps as the number on both
    paths; parameters without gradients are left alone; a first step with zero gradients (no weight decay) moves
    nothing."""
    _hook_checks(_make_named(name, "loop"))
    cls = adamlab.get_optimizer_info(name).cls
    with pytest.raises(ValueError):  # settings are checked before the parameters, as torch checks them
        cls(None, lr=torch.tensor([1e-3, 1e-3]))
    for path in PATHS:
        torch.manual_seed(0)
        ps = [Parameter(torch.randn(4, 3, dtype=torch.float64)), Parameter(torch.randn(3, dtype=torch.float64))]
        qs = _clone(ps)
        a = _make_named(name, path, lr=0.01)(ps)
        b = _make_named(name, path, lr=torch.tensor(0.01, dtype=torch.float64))(qs)
        for t in range(5):
            _step(a, ps, t)
            _step(b, qs, t)
            _same_params(qs, ps)

        ps = [torch.randn(2, 3) for _ in range(2)]
        before = [p.clone() for p in ps]
        opt = _make_named(name, path)(ps)
        opt.step()
        _same_params(ps, before)
        assert not opt.state

        p = torch.randn(5, 1, requires_grad=True)
        before = p.detach().clone()
        opt = _make_named(name, path, weight_decay=0.0)([p])
        p.grad = torch.zeros_like(p)
        opt.step()
        assert torch.equal(p.detach(), before)
        assert "lr" in repr(opt)
