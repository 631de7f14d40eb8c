"""The test database: one row per registry optimizer (torch's ``OptimizerInfo`` / ``optim_db`` is the model).

A row holds what the generated tests of ``test_all_optimizers.py`` and the tests that loop over every optimizer
need to know about it: its constructor settings (the last one the richest, the one the compiled path runs), its
bad arguments (keyword arguments, the exception, a regex of the message), its tolerances, its reference
implementation, the paths it runs on, and the facts a generic test would otherwise special-case by name (parabola
lr, weight-decay kind, state memory, ...). The names come from the registry (``test_db_covers_every_optimizer``):
a new optimizer needs a row here and nowhere else.

Facts only the library knows (the class, its signature defaults, its number of betas) are read from
:mod:`adamlab.registry`, not repeated here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import adamlab
from adamlab.registry import get_optimizer_info

from reference.adamnx_ref import RefAdamNX
from reference.ademamix_ref import RefAdEMAMix
from reference.exadam_ref import RefEXAdam
from reference.signum_ref import RefSignum
from reference_cm import Adam_C, Adam_CM
from reference_coupled import CoupledAdam as RefCoupledAdam

PATHS = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "compiled": dict(compiled=True)}
EAGER = ("loop", "foreach")


# ---------------------------------------------------------------------- the fields
@dataclass(frozen=True)
class ErrorInput:
    """Constructor keyword arguments that must raise ``error`` with a message matching ``match`` (and, for group
    settings, do the same in ``add_param_group``, leaving the param groups as they were)."""
    kwargs: dict[str, Any]
    error: type[Exception]
    match: str

    @property
    def id(self) -> str:
        return "-".join(f"{k}={_short(v)}" for k, v in self.kwargs.items())


@dataclass(frozen=True)
class Setting:
    """Constructor settings over the test problem; ``groups(params)`` splits the parameters into param groups
    with settings of their own (None: ``trajectory.two_groups``, the second group at lr 0.03)."""
    kwargs: dict[str, Any]
    groups: Callable[[list], list] | None = None

    def group_keys(self) -> set[str]:
        if self.groups is None:
            return {"lr"}
        dummy = [torch.zeros(1) for _ in range(8)]
        return {k for g in self.groups(dummy) for k in g if k != "params"}


@dataclass(frozen=True)
class Reference:
    """An independent implementation the row reproduces in float64 (relative difference ``tol``, bit for bit on
    the loop path where ``tol`` is 0): ``cls(groups, **kwargs)`` with adamlab's keyword names translated by
    ``rename``. ``where``: the file that compares at length (more settings, slot by slot, paper vectors)."""
    cls: Callable[..., torch.optim.Optimizer]
    tol: float
    where: str
    rename: dict[str, str] = field(default_factory=dict)

    @property
    def what(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"

    def accepts(self, row: OptimRow, setting: Setting) -> bool:
        """Whether it can express ``setting``: its constructor takes every setting, its param groups every
        group setting."""
        takes = set(inspect.signature(self.cls).parameters) - {"params"}
        per_group = set(self.cls([torch.zeros(1, requires_grad=True)]).defaults)
        return (all(self.rename.get(k, k) in takes for k in {**row.info.defaults, **setting.kwargs})
                and all(self.rename.get(k, k) in per_group for k in setting.group_keys()))

    def make(self, row: OptimRow, groups, **kw) -> torch.optim.Optimizer:
        def tr(d):
            return {self.rename.get(k, k): v for k, v in d.items()}
        groups = [tr(g) if isinstance(g, dict) else g for g in groups]
        return self.cls(groups, **tr({**row.info.defaults, **kw}))


@dataclass(frozen=True)
class OptimRow:
    name: str
    settings: tuple[Setting, ...]  # the last is the richest: the compiled path runs it
    errors: tuple[ErrorInput, ...]  # besides COMMON_ERRORS (added where the class takes the argument)
    weight_decay: str  # "l2" (λθ added to the gradient) or "decoupled" (θ ← θ(1 − ηλ), or θ − ηλθ)
    state_bytes: tuple[tuple[dict, int], ...]  # (settings, the algorithm's minimum state per element, fp32 bytes)
    compile_kwargs: dict[str, Any]  # tests/test_compile.py: float32 settings that must never recompile
    reference: Reference | None = None
    tol: float = 1e-12  # loop, foreach and compiled agree to this, relative, float64
    bf16_tol: float = 0.05  # bf16 parameters stay this close to a float32 run (rtol and atol)
    paths: tuple[str, ...] = tuple(PATHS)
    maximize: bool = True  # takes maximize=True (maximize f is minimize −f, bit for bit)
    parabola_lr: float = 0.05  # solves the parabola of test_solves_a_parabola 100x in 400 steps
    compiles_a_graph: bool = True  # False: its compiled step with compile_kwargs is one multi-tensor op
    first_step_moves: bool = True  # False: the first step only fills a buffer (AdamCM)
    reduces: bool = False  # the rule reduces over a tensor dim (a non-finite element reaches its column)
    resume_overrides: dict[str, Any] = field(default_factory=dict)  # the fresh optimizer of a resume has these
    at_checkpoint: Callable[[torch.optim.Optimizer], bool] | None = None  # holds where the resume test saves

    @property
    def info(self):
        return get_optimizer_info(self.name)

    @property
    def cls(self) -> type:
        return self.info.cls

    @property
    def richest(self) -> Setting:
        return self.settings[-1]

    def takes(self, key: str) -> bool:
        return key in inspect.signature(self.cls).parameters

    def signature_default(self, key: str) -> Any:
        return inspect.signature(self.cls).parameters[key].default

    def make(self, **kw) -> Callable:
        return lambda groups: adamlab.create_optimizer(self.name, groups, **kw)

    def all_errors(self) -> list[ErrorInput]:
        own = {repr(e.kwargs) for e in self.errors}
        common = [e for e in COMMON_ERRORS if all(self.takes(k) or k in _ANY for k in e.kwargs)
                  and repr(e.kwargs) not in own]
        return list(self.errors) + common


def _short(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor{list(v.shape)}{v.dtype}".replace("torch.", "")
    if isinstance(v, type):
        return v.__name__
    return str(v).replace(" ", "")


# ---------------------------------------------------------------------- bad arguments
def E(error, match, **kwargs) -> ErrorInput:
    return ErrorInput(kwargs, error, match)


_ANY = {"lr", "foo", "foreach", "compiled", "state_dtype", "param_update", "beta1"}  # every row
#: checked on every row (weight_decay, eps and maximize where the class takes them)
COMMON_ERRORS = (
    E(ValueError, r"Invalid lr: -1\.0 \(expected lr in \[0\.0, inf\]\)", lr=-1.0),
    E(TypeError, r"lr must be a real number, got str", lr="big"),
    E(ValueError, r"Invalid lr: nan", lr=float("nan")),
    E(ValueError, r"Invalid lr: a tensor of \(2,\)", lr=torch.tensor([0.1, 0.2])),
    E(TypeError, r"lr must be a real number, got a torch\.bool tensor", lr=torch.tensor(True)),
    E(ValueError, r"Invalid weight_decay: -0\.1", weight_decay=-0.1),
    E(ValueError, r"Invalid eps: -1\.0", eps=-1.0),
    E(TypeError, r"maximize must be a bool", maximize="yes"),
    E(TypeError, r"unexpected keyword argument 'foo'", foo=1),
    E(ValueError, "exclusive", foreach=True, compiled=True),
    E(ValueError, r"Invalid state_dtype", state_dtype=torch.int32),
    E(ValueError, r"Invalid param_update: 'up'", param_update="up"),
    E(ValueError, r"keeps no state 'exp_avgg'", state_dtype={"exp_avgg": torch.bfloat16}),
    E(TypeError, "beta1", beta1="x"),  # create_optimizer's beta folding: not a number, or no betas at all
)
_SGD_ERRORS = (E(ValueError, "momentum", momentum=-0.1), E(ValueError, "dampening", dampening=2.0))
_ADAM_ERRORS = (  # the Adam class (adam, adamw, amsgrad)
    E(ValueError, "eps", eps=-1e-8),
    E(ValueError, r"betas\[0\]", betas=(1.0, 0.999)),
    E(ValueError, r"betas\[1\]", betas=(0.9, 1.5)),
    E(ValueError, "expected 2 values", betas=(0.9,)),
    E(ValueError, "initial_accumulator_value", betas=(0.9, 1.0)),
    E(TypeError, "amsgrad", amsgrad="yes"),
)
_CRITICAL_ERRORS = (  # AdamCM and AdamCG
    E(ValueError, r"buffer_size.*>= 1", buffer_size=0),
    E(TypeError, "buffer_size", buffer_size=2.5),
    E(TypeError, "buffer_size", buffer_size=True),
    E(ValueError, r"priority_decay.*\[0\.0, 1\.0\]", priority_decay=-0.1),
    E(ValueError, r"priority_decay.*\[0\.0, 1\.0\]", priority_decay=1.5),
    E(ValueError, r"kappa.*\[0\.0, inf\]", kappa=-1.0),
    E(TypeError, "synced", synced="yes"),
    E(ValueError, r"betas\[0\]", betas=(1.0, 0.9)),
    E(ValueError, r"betas\[1\]", betas=(0.9, 1.0)),
    E(ValueError, "lr", lr=-1.0),
    E(ValueError, "eps", eps=-1.0),
    E(ValueError, "weight_decay", weight_decay=-0.1),
    E(TypeError, "topC", topC=3),
)


# ---------------------------------------------------------------------- param groups with settings of their own
def exadam_groups(ps):
    return [{"params": ps[:1]},
            {"params": ps[1:3], "lr": 0.03, "weight_decay": 0.1},
            {"params": ps[3:], "betas": (0.8, 0.99), "eps": 1e-6}]


def adamx_groups(ps):
    return [{"params": ps[:1]},
            {"params": ps[1:3], "lr": 0.03, "weight_decay": 0.0},
            {"params": ps[3:], "betas": (0.0, 0.9), "eps": 1e-6}]


def ademamix_groups(ps):
    return [{"params": ps[:1]},
            {"params": ps[1:3], "lr": 0.03, "weight_decay": 0.0, "alpha_warmup": None},
            {"params": ps[3:], "betas": (0.0, 0.99, 0.999), "eps": 1e-6, "beta3_warmup": 7}]


def coupled_groups(ps):
    """Coupled groups of their own scale and decay, an uncoupled group (AdamW), a group at its own lr."""
    if len(ps) < 5:
        return [{"params": ps[:1], "coupled_scale": 0.5, "weight_decay": 0.0}, {"params": ps[1:], "coupled": False}]
    return [{"params": [ps[0], ps[4]], "coupled_scale": 0.5, "weight_decay": 0.0},
            {"params": [ps[1], ps[3]], "coupled": False},
            {"params": [ps[2]], "lr": 0.03}]


def _buffers_filled(opt) -> bool:
    """Every buffer took an offer at each of its tensor's steps until full: with buffer_size 3 the checkpoint holds
    full buffers, which later steps replace into."""
    return all(int(opt.state[p]["count"]) == min(g["buffer_size"], int(opt.state[p]["step"]))
               for g in opt.param_groups for p in g["params"])


def S(groups=None, **kwargs) -> Setting:
    return Setting(kwargs, groups)


def _torch(cls, where="tests/test_classic.py") -> Reference:
    return Reference(cls, 0.0, where)


# ---------------------------------------------------------------------- the rows
_ROWS = [
    OptimRow(
        "sgd", (S(lr=0.05), S(lr=0.05, weight_decay=0.1, maximize=True)),
        _SGD_ERRORS + (E(ValueError, "nesterov", nesterov=True),),
        "l2", (({}, 0),), dict(lr=0.05), _torch(torch.optim.SGD), parabola_lr=0.1, compiles_a_graph=False),
    OptimRow(
        "momentum", (S(lr=0.05), S(lr=0.05, dampening=0.5, weight_decay=0.01)), _SGD_ERRORS,
        "l2", (({}, 4),), dict(lr=0.05), _torch(torch.optim.SGD), parabola_lr=0.02),
    OptimRow(
        "nesterov", (S(lr=0.05), S(lr=0.05, weight_decay=0.1)), _SGD_ERRORS,
        "l2", (({}, 4),), dict(lr=0.05), _torch(torch.optim.SGD), parabola_lr=0.02),
    OptimRow(
        "adagrad", (S(lr=0.1), S(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.1)),
        (E(ValueError, "lr_decay", lr_decay=-1.0),
         E(ValueError, "initial_accumulator_value", initial_accumulator_value=-1.0)),
        "l2", (({}, 4),), dict(lr=0.1), _torch(torch.optim.Adagrad), parabola_lr=0.5),
    OptimRow(
        "rmsprop", (S(lr=0.01), S(lr=0.01, centered=True, momentum=0.9, weight_decay=0.1, maximize=True)),
        (E(ValueError, "alpha", alpha=1.5), E(ValueError, "momentum", momentum=-1.0)),
        "l2", (({}, 4), (dict(centered=True, momentum=0.9), 12)), dict(lr=0.01, centered=True, momentum=0.5),
        _torch(torch.optim.RMSprop), parabola_lr=0.02),
    OptimRow(
        "adam", (S(lr=0.01), S(lr=0.01, weight_decay=0.1, initial_accumulator_value=0.5)), _ADAM_ERRORS,
        "l2", (({}, 8),), dict(lr=0.01), _torch(torch.optim.Adam)),
    OptimRow(
        "adamw", (S(lr=0.01), S(lr=0.01, weight_decay=0.5, betas=(0.5, 0.9))),
        _ADAM_ERRORS + (E(ValueError, "weight_decay", weight_decay=-1.0),),
        "decoupled", (({}, 8),), dict(lr=0.01), _torch(torch.optim.AdamW)),
    OptimRow(
        "amsgrad", (S(lr=0.01), S(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)), _ADAM_ERRORS,
        "l2", (({}, 12),), dict(lr=0.01), _torch(torch.optim.Adam)),
    OptimRow(
        "exadam",
        (S(lr=0.01), S(lr=0.01, weight_decay=0.1),
         S(exadam_groups, lr=0.01, weight_decay=0.05, dynamic_step_size=True)),
        (E(ValueError, r"Invalid lr", lr=-1.0),
         E(ValueError, "expected 2 values", betas=(0.9,)),
         E(ValueError, "expected 2 values", betas=(0.9, 0.99, 0.999)),
         E(ValueError, r"betas\[0\]", betas=(1.0, 0.999)),
         E(ValueError, r"betas\[1\]", betas=(0.9, 1.0)),
         E(ValueError, "eps", eps=-1e-8),
         E(ValueError, "weight_decay", weight_decay=-0.1),
         E(TypeError, "dynamic_step_size", dynamic_step_size=1),
         E(TypeError, "maximize", maximize="no"),
         E(TypeError, "amsgrad", amsgrad=True)),
        "decoupled", (({}, 8),), dict(lr=0.01, dynamic_step_size=True),
        Reference(RefEXAdam, 1e-9, "tests/test_exadam.py"), parabola_lr=0.005),
    OptimRow(
        "adamx", (S(lr=0.01), S(lr=0.01, weight_decay=0.0, betas=(0.8, 0.9)), S(adamx_groups, lr=0.02,
                                                                               weight_decay=0.05)),
        (E(ValueError, r"Invalid lr", lr=-1.0),
         E(ValueError, "expected 2 values", betas=(0.9,)),
         E(ValueError, "expected 2 values", betas=(0.9, 0.99, 0.999)),
         E(ValueError, r"betas\[0\]", betas=(-0.1, 0.99)),
         E(ValueError, r"betas\[1\]", betas=(0.9, 1.0)),
         E(ValueError, "eps", eps=-1.0),
         E(ValueError, "weight_decay", weight_decay=-1e-2),
         E(TypeError, "maximize", maximize=1),
         E(TypeError, "nesterov", nesterov=True)),
        "decoupled", (({}, 8),), dict(lr=0.01), Reference(RefAdamNX, 1e-9, "tests/test_adamx.py")),
    OptimRow(
        "ademamix",
        (S(lr=0.01), S(lr=0.01, alpha=8.0, alpha_warmup=10, beta3_warmup=10, weight_decay=0.1),
         S(ademamix_groups, lr=0.01, betas=(0.0, 0.99, 0.999), alpha=5.0, alpha_warmup=10, beta3_warmup=15),
         S(ademamix_groups, lr=0.01, alpha=8.0, alpha_warmup=20, beta3_warmup=25, weight_decay=0.1)),
        (E(ValueError, r"Invalid lr", lr=-1.0),
         E(ValueError, "expected 3 values", betas=(0.9, 0.999)),
         E(ValueError, "expected 3 values", betas=(0.9, 0.999, 0.9999, 0.5)),
         E(TypeError, "betas", betas=0.9),
         E(ValueError, r"betas\[2\]", betas=(0.9, 0.999, 1.0)),
         E(ValueError, r"betas\[1\]", betas=(0.9, -0.1, 0.9999)),
         E(ValueError, r"Invalid alpha: -1\.0 \(expected alpha in \[0\.0, inf\]\)", alpha=-1.0),
         E(ValueError, r"Invalid alpha_warmup: 0\.0 \(expected alpha_warmup in \(0\.0, inf\]\)", alpha_warmup=0),
         E(ValueError, "beta3_warmup", beta3_warmup=-5),
         E(TypeError, "alpha_warmup", alpha_warmup="10"),
         E(ValueError, "eps", eps=-1e-8),
         E(ValueError, "weight_decay", weight_decay=-0.1),
         E(TypeError, "maximize", maximize=None),
         E(TypeError, "t_alpha_beta3", t_alpha_beta3=100)),
        "decoupled", (({}, 12), (dict(betas=(0.0, 0.999, 0.9999)), 8)),
        dict(lr=0.01, alpha=8.0, alpha_warmup=6, beta3_warmup=6, weight_decay=0.1),
        Reference(RefAdEMAMix, 1e-9, "tests/test_ademamix.py")),
    OptimRow(
        "adamcm",
        (S(lr=0.01), S(lr=0.05, buffer_size=3, synced=False, weight_decay=0.1, maximize=True)),
        _CRITICAL_ERRORS + (E(TypeError, "aggregation", aggregation="sum"),),
        "decoupled", (({}, (5 + 2) * 4), (dict(buffer_size=3), (3 + 2) * 4), (dict(kappa=0.0), 8)),
        dict(lr=0.01, buffer_size=3),
        Reference(Adam_CM, 1e-9, "tests/test_critical.py",
                  dict(buffer_size="topC", priority_decay="decay")),
        first_step_moves=False, resume_overrides=dict(buffer_size=7), at_checkpoint=_buffers_filled),
    OptimRow(
        "adamcg",
        (S(lr=0.01), S(lr=0.01, buffer_size=3, aggregation="mean", synced=False, weight_decay=0.1),
         S(lr=0.05, buffer_size=3, synced=True, weight_decay=0.1, aggregation="mid")),
        _CRITICAL_ERRORS + (E(ValueError, r"aggregation.*'sum', 'mean', 'mid'", aggregation="max"),),
        "l2", (({}, (10 + 2) * 4),), dict(lr=0.01, buffer_size=3),
        Reference(Adam_C, 1e-9, "tests/test_critical.py",
                  dict(buffer_size="topC", priority_decay="decay", aggregation="aggr")),
        resume_overrides=dict(buffer_size=7), at_checkpoint=_buffers_filled),
    OptimRow(
        "coupledadam",
        (S(lr=0.01), S(lr=0.01, coupled_scale=0.5, weight_decay=0.0), S(coupled_groups, lr=0.05)),
        (E(ValueError, r"coupled_scale.*\(0\.0, inf\]", coupled_scale=0.0),
         E(ValueError, "coupled_scale", coupled_scale=-1.0),
         E(TypeError, "coupled", coupled="yes"),
         E(ValueError, r"betas\[1\]", betas=(0.9, 1.0)),
         E(ValueError, "weight_decay", weight_decay=-0.1),
         E(ValueError, "eps", eps=-1.0),
         E(TypeError, "avg_scale", avg_scale=1.0),
         E(TypeError, "amsgrad", amsgrad=True)),
        "decoupled", (({}, 8),), dict(lr=0.01),
        Reference(RefCoupledAdam, 1e-9, "tests/test_coupled.py", dict(coupled_scale="avg_scale")),
        reduces=True),
    OptimRow(
        "signum",
        (S(lr=0.01), S(lr=0.01, momentum=0.0, weight_decay=0.05, maximize=True),
         S(lr=0.01, momentum=0.5, weight_decay=0.1)),
        (E(ValueError, "lr", lr=-1.0),
         E(ValueError, "momentum", momentum=1.0),
         E(ValueError, "momentum", momentum=-0.1),
         E(ValueError, "weight_decay", weight_decay=-0.1),
         E(TypeError, "maximize", maximize="yes"),
         E(TypeError, "momentum", momentum="x"),
         E(TypeError, "betas", betas=(0.9, 0.99))),
        "decoupled", (({}, 4), (dict(momentum=0.0), 0)), dict(lr=0.01, momentum=0.5, weight_decay=0.1),
        Reference(RefSignum, 1e-12, "tests/test_signum.py"), parabola_lr=0.02),
]
DB: dict[str, OptimRow] = {row.name: row for row in _ROWS}


# ---------------------------------------------------------------------- optimizers that wrap another
@dataclass(frozen=True)
class WrapperRow:
    """An optimizer outside the registry that wraps a registry one (SAM): its bad arguments only."""
    name: str
    cls: Callable
    errors: tuple[ErrorInput, ...]

    def all_errors(self) -> list[ErrorInput]:
        return list(self.errors)


WRAPPERS: dict[str, WrapperRow] = {
    "sam": WrapperRow("sam", adamlab.SAM, (
        E(ValueError, "rho", rho=-0.1),
        E(TypeError, "adaptive", adaptive=1),
        E(ValueError, "lr", lr=-1.0),
        E(TypeError, "base_optimizer_cls", base_optimizer_cls=int))),
}


def build(name: str, params, **kw) -> torch.optim.Optimizer:
    """Optimizer ``name`` (a row of DB or WRAPPERS) over ``params``."""
    if name in WRAPPERS:
        return WRAPPERS[name].cls(params, **kw)
    return adamlab.create_optimizer(name, params, **kw)


# ---------------------------------------------------------------------- views for the tests
def make(name: str, **kw) -> Callable:
    return lambda groups: adamlab.create_optimizer(name, groups, **kw)


#: (name, setting) for every setting of every row, and their ids
SETTING_CASES = [(name, s) for name, row in DB.items() for s in row.settings]
IDS = [f"{name}-{i}" for name, row in DB.items() for i in range(len(row.settings))]
#: (name, constructor kwargs): for tests that build their own param groups
CASES = [(name, s.kwargs) for name, s in SETTING_CASES]
#: every bad argument, by row (the registry's and the wrappers')
ERRORS = {name: row.all_errors() for table in (DB, WRAPPERS) for name, row in table.items()}


def torch_reference_names() -> list[str]:
    """Rows whose reference is torch.optim's class of the same algorithm."""
    return [n for n, r in DB.items() if r.reference is not None and r.reference.cls.__module__.startswith("torch.")]


def state_keys(name: str, **kw) -> set[str]:
    """The state keys of ``name`` after one step with ``kw`` (float32, one tensor)."""
    p = torch.zeros(2, 2, requires_grad=True)
    opt = adamlab.create_optimizer(name, [p], **kw)
    p.grad = torch.ones_like(p)
    opt.step()
    return set(opt.state[p])
