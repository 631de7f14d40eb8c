"""The compiled path never recompiles: not when an LR scheduler changes the learning rate every step, not during
AdEMAMix's alpha/beta3 warmups, not for a second model of other sizes, not for a chunk that is not full.

One graph per optimizer configuration and chunk size: buckets of up to 16 tensors use chunks of 16, bigger ones
chunks of 32."""

from __future__ import annotations

import pytest
import torch

import adamlab
from adamlab.optim._base import compiler_available

from internals import auto_compile_numel, chunk_runners, group_runner, record_compiled_runs
from optim_db import DB, state_keys

pytestmark = pytest.mark.skipif(not compiler_available(), reason="torch.compile is unavailable here")

# sizes that cover a full chunk of 16 plus a partial one, several ranks, and a 1-element tensor (eager)
SHAPES = [(7, 3), (5,), (2, 3, 4), (1,), (16, 8)] + [(3 + i,) for i in range(14)]
OTHER = [(11, 2), (9,), (4, 4, 4)] + [(5 + i, 2) for i in range(20)]

#: each optimizer's float32 settings here: its row's compile_kwargs in tests/optim_db.py
SETTINGS = {name: row.compile_kwargs for name, row in DB.items()}


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _params(shapes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _groups(name, ps):
    if name == "coupledadam":  # as for a real model: the embedding matrix coupled, the rest plain AdamW
        return [{"params": ps[:1], "coupled": True, "weight_decay": 0.0}, {"params": ps[1:], "coupled": False}]
    return ps


def _steps(opt, ps, n, sched=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()
        if sched is not None:
            sched.step()


@pytest.mark.parametrize("name", list(SETTINGS))
def test_no_recompilation_across_steps(name):
    ps = _params(SHAPES)
    opt = adamlab.create_optimizer(name, _groups(name, ps), compiled=True, **SETTINGS[name])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))  # a new lr every step
    _steps(opt, ps, 2, sched)
    before = _graphs()
    _steps(opt, ps, 10, sched)  # AdEMAMix: alpha and beta3 warm up through step 6, then hold
    assert _graphs() == before, f"{name} recompiled after step 2"
    # a second model with other sizes and fewer tensors (one partial chunk) reuses the same graph (CoupledAdam's
    # coupled tensors keep their shape, so there the graph depends on their ranks: 2-D embeddings here)
    qs = _params(OTHER, seed=3)
    opt2 = adamlab.create_optimizer(name, _groups(name, qs), compiled=True, **SETTINGS[name])
    _steps(opt2, qs, 3, seed=4)
    assert _graphs() == before, f"{name} compiled again for a model of other sizes"


def test_one_graph_per_configuration():
    """A fresh configuration compiles exactly one graph, whatever the number and sizes of its tensors."""
    before = _graphs()
    ps = _params([(13,), (6, 6)] + [(2 + i, 3) for i in range(40)])
    opt = adamlab.Adam(ps, lr=0.01, betas=(0.8, 0.95), weight_decay=0.3, compiled=True, maximize=True)
    _steps(opt, ps, 4)
    assert _graphs() - before == 1


def test_state_dtype_and_bf16_params_do_not_recompile():
    ps = _params(SHAPES, dtype=torch.bfloat16)
    opt = adamlab.AdamW(ps, lr=0.01, compiled=True, param_update="kahan", state_dtype=torch.bfloat16)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.9)
    _steps(opt, ps, 2, sched)
    before = _graphs()
    _steps(opt, ps, 6, sched)
    assert _graphs() == before


def test_compiled_step_after_load_state_dict_does_not_recompile():
    ps = _params(SHAPES)
    opt = adamlab.Adam(ps, lr=0.01, compiled=True)
    _steps(opt, ps, 3)
    before = _graphs()
    opt2 = adamlab.Adam(ps, lr=0.01, compiled=True)
    opt2.load_state_dict(opt.state_dict())
    _steps(opt2, ps, 3)
    assert _graphs() == before


def test_default_path_skips_compiling_a_single_pass_rule(monkeypatch):
    """'auto' compiles big buckets, except when the rule is one multi-tensor operation (plain SGD), which the
    multi-tensor path already runs in one pass over memory."""
    monkeypatch.delenv("ADAMLAB_IMPL", raising=False)
    calls = []
    record_compiled_runs(monkeypatch, lambda opt, ps: calls.append(type(opt).__name__ + str(opt.defaults.get("momentum"))))
    for kw in (dict(momentum=0.0), dict(momentum=0.9)):
        ps = [torch.zeros(auto_compile_numel(), requires_grad=True)]
        opt = adamlab.SGD(ps, lr=0.1, **kw)
        ps[0].grad = torch.ones_like(ps[0])
        opt.step()
    assert calls == ["SGD0.9"]


def test_small_tensors_take_the_one_thread_graph_and_the_order_is_restored():
    """On a CPU a bucket splits into tensors under SMALL_NUMEL elements (a graph without parallel loops) and the
    rest; the split reorders the tensors internally, and every tensor still gets its own update (float64 vs the
    loop)."""
    from adamlab.optim import _compiled

    big = _compiled.SMALL_NUMEL
    shapes = [(big + 5,), (3, 4), (2, big // 2 + 1), (7,), (5, 5)]
    out = {}
    for path in (dict(foreach=False), dict(compiled=True)):
        ps = _params(shapes, dtype=torch.float64)
        opt = adamlab.Adam(ps, lr=0.01, weight_decay=0.1, **path)
        _steps(opt, ps, 4)
        out[opt.implementation] = ps
    for a, b in zip(out["loop"], out["compiled"]):
        assert torch.allclose(a, b, rtol=1e-12, atol=0)
    runner = group_runner(opt)
    assert runner.order == [1, 3, 4, 0, 2]
    assert sorted({(chunk.serial, chunk.size) for chunk in runner.chunks}) == [(False, 16), (True, 16)]


@pytest.mark.parametrize("name", [n for n in SETTINGS if DB[n].compiles_a_graph])  # (plain SGD: one foreach op)
def test_after_the_first_step_each_chunk_calls_its_graph_directly(name, monkeypatch):
    """Every chunk goes through dynamo once; later steps call the graph dynamo picked for it, without dynamo, and
    give bit for bit what the calls through dynamo give (an LR scheduler and AdEMAMix's warmups on; float32, so the
    graphs are those test_no_recompilation_across_steps compiles)."""
    from adamlab.optim import _compiled

    out = []
    # direct first: its first step goes through dynamo with the bookkeeping on, so the graphs are bound even when
    # this test runs alone (run second, it found them only if an earlier test had compiled them with bookkeeping)
    for direct in (True, False):
        monkeypatch.setattr(_compiled, "DIRECT", direct)
        ps = _params(SHAPES)
        opt = adamlab.create_optimizer(name, _groups(name, ps), compiled=True, **SETTINGS[name])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
        _steps(opt, ps, 2, sched)
        runners = chunk_runners(opt)
        assert runners
        if direct:
            assert all(g and callable(g[0]) for r in runners for g in r.graphs), f"{name}: a chunk was not bound"
            with monkeypatch.context() as m:  # from now on, any call through dynamo fails the test
                m.setattr(_compiled, "compiled_chunk", lambda *a, **k: pytest.fail("went through dynamo"))
                _steps(opt, ps, 8, sched, seed=2)
        else:
            assert all(g is None for r in runners for g in r.graphs)
            _steps(opt, ps, 8, sched, seed=2)
        out.append([p.detach().clone() for p in ps] + [t.clone() for st in opt.state.values()
                                                       for t in st.values() if torch.is_tensor(t)])
    for a, b in zip(*out):
        assert torch.equal(a, b)


def test_shaped_chunks_find_their_own_graph_among_several():
    """Coupled tensors keep their shape, so a group of 2-D and 3-D tensors has two graphs; each chunk calls the
    one that fits it, a non-contiguous gradient goes through dynamo, and the result is the loop's (float64)."""
    shapes = [(6, 3), (4, 2, 3), (5, 4), (3, 3, 2)] * 5  # 20 tensors: a chunk of 16, then 4 one by one
    out = {}
    for path in (dict(foreach=False), dict(compiled=True)):
        ps = _params(shapes, dtype=torch.float64)
        opt = adamlab.CoupledAdam(ps, lr=0.05, weight_decay=0.1, coupled_scale=0.5, **path)
        g = torch.Generator().manual_seed(5)
        for step in range(6):
            for p in ps:
                grad = torch.randn(p.shape[::-1], generator=g, dtype=p.dtype)
                p.grad = grad.permute(*reversed(range(p.dim()))) if step == 3 else grad.reshape(p.shape)
            opt.step()
        out[opt.implementation] = ps
        if path.get("compiled"):
            (runner,) = chunk_runners(opt)
            assert runner.flatten is False and all(runner.graphs)
            assert len({id(g[0]) for g in runner.graphs}) == 2  # the 2-D and the 3-D graph
    for a, b in zip(out["loop"], out["compiled"]):
        assert torch.allclose(a, b, rtol=1e-12, atol=0)


def test_a_training_step_under_torch_compile_keeps_the_compiled_path():
    """Under the user's own torch.compile the optimizer's work is a graph break and runs as it does outside (dynamo
    cannot trace the compiled chunks into its graph: it used to fall back to the multi-tensor path with a warning,
    and rebuilt the per-group plans every step)."""
    import warnings

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    ref = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    ref.load_state_dict(model.state_dict())
    opt = adamlab.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, compiled=True)
    ref_opt = adamlab.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    x = torch.randn(32, 16, dtype=torch.float64)

    @torch.compile
    def train_step():
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(3):
            train_step()
            ref(x).pow(2).mean().backward()
            ref_opt.step()
            ref_opt.zero_grad()
    assert opt.implementation == "compiled"
    (runner,) = chunk_runners(opt)  # the plan and its runner are kept across steps, the chunks call their graphs
    assert all(runner.graphs)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


def test_changing_a_compile_time_setting_mid_run_finds_the_new_graph():
    """Settings compiled in as constants (here AdamW's maximize) select another graph; the chunks find it, and the
    run matches the loop (float64)."""
    out = {}
    for path in (dict(foreach=False), dict(compiled=True)):
        ps = _params(SHAPES, dtype=torch.float64)
        opt = adamlab.AdamW(ps, lr=0.01, weight_decay=0.1, **path)
        _steps(opt, ps, 2)
        opt.param_groups[0]["maximize"] = True
        _steps(opt, ps, 2, seed=2)
        opt.param_groups[0]["maximize"] = False
        _steps(opt, ps, 2, seed=3)
        out[opt.implementation] = ps
    (runner,) = chunk_runners(opt)
    assert runner.key[1]["maximize"] is False and all(runner.graphs)
    for a, b in zip(out["loop"], out["compiled"]):
        assert torch.allclose(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", [n for n in SETTINGS if "buffer" in state_keys(n, **SETTINGS[n])])
def test_buffer_rows_in_any_order_take_one_graph(name, monkeypatch):
    """On a CPU, AdamCM/AdamCG's compiled step passes each buffer's rows to the graph with this step's target slot
    first, so the order changes with the slot. With every call going through dynamo (no direct calls), no step after
    the first compiles again (dynamo would specialise a row at storage offset 0 or 1 to its place in the order)."""
    from adamlab.optim import _compiled

    monkeypatch.setattr(_compiled, "DIRECT", False)
    big = _compiled.SMALL_NUMEL  # the rows go to the parallel graph's tensors
    ps = _params([(big + 3,), (5, 3), (2, big // 2 + 5)])
    opt = adamlab.create_optimizer(name, ps, compiled=True, **SETTINGS[name])
    _steps(opt, ps, 1)
    before = _graphs()
    targets = set()
    for t in range(10):
        old = opt.state[ps[0]]["buffer"].clone()
        _steps(opt, ps, 1, seed=2 + t)
        changed = (opt.state[ps[0]]["buffer"] != old).flatten(1).any(1).nonzero().flatten().tolist()
        targets.update(changed)
    assert _graphs() == before
    assert targets == {0, 1, 2}


# (settings whose float64 graphs other tests compile too: tests/test_critical.py PATH_CASES, the small-tensor test)
@pytest.mark.parametrize("name,kw", [("adam", dict(lr=0.01, weight_decay=0.1)),
                                     ("adamcm", dict(lr=0.05, buffer_size=3, synced=False, weight_decay=0.1,
                                                     maximize=True))], ids=["adam", "adamcm"])
def test_a_graph_that_fails_to_compile_mid_step_steps_the_rest_once(name, kw, monkeypatch):
    """When the parallel graph fails to compile after the one-thread graph has stepped the small tensors, the
    optimizer warns, switches to the multi-tensor path, and steps only the tensors not yet stepped: the run matches
    the loop (float64), with no tensor stepped twice (AdamCM: the big tensors' offers, decided before the graphs,
    are taken again by the multi-tensor path)."""
    from adamlab.optim import _compiled

    real = _compiled.compiled_chunk

    def failing(cls, c, mode, names, size=_compiled.CHUNK, serial=False):
        fn = real(cls, c, mode, names, size, serial)
        if serial:
            return fn

        def boom(**_):
            raise torch._dynamo.exc.InternalTorchDynamoError("no compiler for the parallel graph")
        return boom

    shapes = [(3, 4), (_compiled.SMALL_NUMEL + 5,), (7,), (2, _compiled.SMALL_NUMEL // 2 + 1)]
    out = {}
    for path in ("loop", "compiled"):
        ps = _params(shapes, dtype=torch.float64)
        impl = dict(foreach=False) if path == "loop" else dict(compiled=True)
        opt = adamlab.create_optimizer(name, ps, **kw, **impl)
        with monkeypatch.context() as m:
            m.setattr(_compiled, "compiled_chunk", failing)
            if path == "compiled":
                with pytest.warns(RuntimeWarning, match="falling back to the multi-tensor path"):
                    _steps(opt, ps, 1)
                assert opt.implementation == "foreach"
            else:
                _steps(opt, ps, 1)
            _steps(opt, ps, 5, seed=2)
        out[path] = [p.detach().clone() for p in ps] + [t.clone() for st in opt.state.values()
                                                         for t in st.values() if torch.is_tensor(t)]
    if name == "adam":  # the same number of steps everywhere
        assert all(float(st["step"]) == 6 for st in opt.state.values())
    for a, b in zip(out["loop"], out["compiled"]):
        assert torch.allclose(a, b, rtol=1e-12, atol=0)
