"""AdamCM and AdamCG: published test vectors, parity with the float64 port of the authors' code (slot by slot),
the compiled path's offers, the Adam ⊆ AdamCM/AdamCG rows, the defining behaviour, state memory, buffer changes.
(The three paths on the richest settings, maximize, bad arguments and exact resume with full buffers: the adamcm
and adamcg rows of tests/optim_db.py.)"""

import math

import pytest
import torch

import adamlab

from reference_cm import Adam_C, Adam_CM
from trajectory import fake_grad, make_params, max_rel
from trajectory import scale as _scale  # priorities cross: full buffers replace and discard
from trajectory import skipped as _no_grad  # (1,) starts late, then skips: its first offer comes mid-run

D = torch.float64
G5 = [1.0, -2.0, 0.5, 3.0, -1.0]
SHAPES = ((5, 3), (7,), (1,), (2, 2, 3), (6,))


def _spec_run(make, shape):
    p = torch.ones(shape, dtype=torch.float64, requires_grad=True)
    opt = make([p])
    out = []
    for g in G5:
        p.grad = torch.full(shape, g, dtype=torch.float64)
        opt.step()
        out.append(p.detach().flatten()[0].item())
    return out


# ---------------------------------------------------------------------- published test vectors
@pytest.mark.parametrize("shape", [(), (3,)], ids=["scalar", "vector"])
def test_spec_vectors(path, shape):
    # with one tensor of equal entries every priority scales by the same √n, so the vectors hold for any n
    cm2 = _spec_run(lambda ps: adamlab.AdamCM(ps, lr=0.1, buffer_size=2, priority_decay=0.7, **path), shape)
    cm5 = _spec_run(lambda ps: adamlab.AdamCM(ps, lr=0.1, buffer_size=5, priority_decay=0.7, **path), shape)
    cg2 = _spec_run(lambda ps: adamlab.AdamCG(ps, lr=0.1, buffer_size=2, priority_decay=0.7, **path), shape)
    assert cm2 == pytest.approx([1.0, 0.2558631896, 0.0514924905, 0.0390947172, 0.0028222906], abs=1e-9)
    assert cm5 == pytest.approx([1.0, 0.2558631896, 0.0514924905, -0.2007047184, -0.3560144441], abs=1e-9)
    assert cg2 == pytest.approx([0.900000001, 0.9052631588, 0.9093315951, 0.8618848905, 0.8325686681], abs=1e-9)


# ---------------------------------------------------------------------- parity with the authors' code
def _trajectory(make, steps=36, none_grad=True, lr_change=True, record=None, shapes=SHAPES):
    ps = make_params(0, shapes=shapes)
    opt = make([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03}])
    for t in range(steps):
        for i, p in enumerate(ps):
            p.grad = None if none_grad and _no_grad(i, t) else fake_grad(p, t) * _scale(t, i)
        if lr_change and t == 20:
            for g in opt.param_groups:
                g["lr"] *= 0.5
        opt.step()
        if record is not None:
            record(t, ps, opt)
    return torch.cat([p.detach().flatten() for p in ps]), opt


CM_CASES = [dict(buffer_size=c, synced=s, weight_decay=wd, priority_decay=d)
            for c in (1, 2, 5) for s in (True, False) for wd, d in ((0.0, 0.7), (0.1, 0.9))]
CG_CASES = [dict(buffer_size=c, synced=s, weight_decay=wd, aggregation=a)
            for c in (1, 3) for s in (True, False) for wd in (0.0, 0.1) for a in ("sum", "mean", "mid")]


def _ref_kw(kw):
    out = dict(topC=kw["buffer_size"], synced=kw["synced"], weight_decay=kw["weight_decay"])
    if "priority_decay" in kw:
        out["decay"] = kw["priority_decay"]
    if "aggregation" in kw:
        out["aggr"] = kw["aggregation"]
    return out


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("kw", CM_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_adamcm_matches_reference(kw, foreach):
    a, _ = _trajectory(lambda g: adamlab.AdamCM(g, lr=0.05, foreach=foreach, **kw))
    b, _ = _trajectory(lambda g: Adam_CM(g, lr=0.05, **_ref_kw(kw)))
    assert max_rel(a, b) < 1e-9


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("kw", CG_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_adamcg_matches_reference(kw, foreach):
    a, _ = _trajectory(lambda g: adamlab.AdamCG(g, lr=0.05, foreach=foreach, **kw))
    b, _ = _trajectory(lambda g: Adam_C(g, lr=0.05, **_ref_kw(kw)))
    assert max_rel(a, b) < 1e-9


@pytest.mark.parametrize("cls,ref", [(adamlab.AdamCM, Adam_CM), (adamlab.AdamCG, Adam_C)], ids=["CM", "CG"])
@pytest.mark.parametrize("synced", [True, False])
def test_buffer_matches_reference_slot_by_slot(cls, ref, synced):
    """After every step the stored tensors, their priorities and the fill count equal the reference's TensorList
    slot for slot; both replacement and discard of a full buffer happen on the way."""
    size = 3
    ours, theirs, events = [], [], {"replace": 0, "discard": 0}

    def snap(store):
        def record(t, ps, opt):
            rows = []
            for p in ps:
                st = opt.state[p]
                if not st:  # no gradient yet
                    rows.append((0, torch.zeros(size, dtype=D), torch.zeros(size, *p.shape, dtype=D)))
                elif isinstance(opt, cls):
                    rows.append((int(st["count"]), st["priorities"].clone(), st["buffer"].clone()))
                else:
                    tl = st["critical gradients"]
                    rows.append((tl.curr_k, tl._heap_key.clone(), tl._heap.clone()))
            store.append(rows)
        return record

    _trajectory(lambda g: cls(g, lr=0.05, buffer_size=size, synced=synced, priority_decay=0.9), record=snap(ours))
    _trajectory(lambda g: ref(g, lr=0.05, topC=size, synced=synced, decay=0.9), record=snap(theirs))
    for t, (a_rows, b_rows) in enumerate(zip(ours, theirs)):
        for i, ((ca, pa, ba), (cb, pb, bb)) in enumerate(zip(a_rows, b_rows)):
            assert ca == cb
            torch.testing.assert_close(pa, pb, rtol=1e-12, atol=0)
            torch.testing.assert_close(ba, bb, rtol=1e-12, atol=1e-300)
            if t > 0 and ours[t - 1][i][0] == size and not _no_grad(i, t):
                changed = int((ours[t - 1][i][2] != ba).flatten(1).any(1).sum())
                events["replace" if changed else "discard"] += 1
    assert events["replace"] > 0 and events["discard"] > 0, events


# ---------------------------------------------------------------------- the three paths
# the first two are the richest settings of the adamcm and adamcg rows of tests/optim_db.py, whose three paths
# test_all_optimizers compares on this problem; the third compiles aggregation "mean", unsynced, as well
PATH_CASES = [
    (adamlab.AdamCM, dict(buffer_size=3, synced=False, weight_decay=0.1, maximize=True)),
    (adamlab.AdamCG, dict(buffer_size=3, synced=True, weight_decay=0.1, aggregation="mid")),
    (adamlab.AdamCG, dict(buffer_size=2, synced=False, aggregation="mean")),
]


@pytest.mark.parametrize("cls,kw", PATH_CASES[2:], ids=["CG-mean"])
def test_paths_agree(cls, kw):
    ref, _ = _trajectory(lambda g: cls(g, lr=0.05, foreach=False, **kw))
    fe, _ = _trajectory(lambda g: cls(g, lr=0.05, foreach=True, **kw))
    co, opt = _trajectory(lambda g: cls(g, lr=0.05, compiled=True, **kw))
    assert max_rel(fe, ref) < 1e-12
    assert max_rel(co, ref) < 1e-12
    # no silent fallback: the compiled path ran wherever this machine can compile
    assert opt.implementation == ("compiled" if adamlab.optim.compiler_available() else "foreach")


@pytest.mark.skipif(not adamlab.optim.compiler_available(), reason="torch.compile is unavailable here")
@pytest.mark.parametrize("cls,kw", PATH_CASES[:2], ids=["CM", "CG-mid"])
def test_compiled_offer_into_big_tensors_matches_the_loop_slot_by_slot(cls, kw):
    """On a CPU the compiled step decides every offer before its graphs and the graphs write the offered tensors
    into their slots; after every step the buffers, priorities and counts of small and big tensors (the one-thread
    and the parallel graph) equal the loop's, and both replacement and discard of a full buffer happen on the way.
    Two threads: a parallel graph that took the decisions itself got the priorities wrong now and then."""
    from adamlab.optim._compiled import SMALL_NUMEL

    shapes = ((5, 3), (SMALL_NUMEL + 7,), (1,), (2, 2, 3), (SMALL_NUMEL // 128, 129))
    big = [math.prod(s) >= SMALL_NUMEL for s in shapes]
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for path in (dict(foreach=False), dict(compiled=True)):
            states = []

            def record(t, ps, opt):
                states.append([{k: v.clone() for k, v in opt.state[p].items()} for p in ps])

            out = _trajectory(lambda g: cls(g, lr=0.05, **path, **kw), steps=24, record=record, shapes=shapes)
            runs[tuple(path)] = (out, states)
    finally:
        torch.set_num_threads(threads)
    ((loop, _), loop_states), ((co, opt), co_states) = runs[("foreach",)], runs[("compiled",)]

    assert opt.implementation == "compiled"
    assert _normwise(co, loop) < 1e-12
    events = {"replace": 0, "discard": 0}
    for t, (a_rows, b_rows) in enumerate(zip(co_states, loop_states)):
        for i, (a, b) in enumerate(zip(a_rows, b_rows)):
            assert a.keys() == b.keys()
            if "count" in a:
                assert int(a["count"]) == int(b["count"]), (t, i)
            for k in a:
                assert _normwise(a[k].double(), b[k].double()) < 1e-12, (t, i, k)
            if t > 0 and big[i] and int(co_states[t - 1][i]["count"]) == kw["buffer_size"]:
                changed = bool((co_states[t - 1][i]["buffer"] != a["buffer"]).any())
                events["replace" if changed else "discard"] += 1
    assert events["replace"] > 0 and events["discard"] > 0, events


def _normwise(a, b) -> float:
    """The largest difference relative to the largest entry (round-off over many steps on big tensors, where some
    entries come near 0)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if b.numel() else 0.0


def _offer_op_calls(step) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return sum(e.count for e in prof.key_averages() if e.key == "adamlab::critical_offer")


@pytest.mark.skipif(not adamlab.optim.compiler_available(), reason="torch.compile is unavailable here")
@pytest.mark.parametrize("cls,kw", PATH_CASES[:2], ids=["CM", "CG-mid"])  # (the graphs of the test above)
def test_compiled_cpu_step_offers_in_its_graphs_and_through_the_op(cls, kw, monkeypatch):
    """A compiled CPU step calls no offer op: its graphs write the offers. With the decisions before the graph
    switched off (as on an accelerator) the parallel graph's tensors offer through the opaque op. Both match the
    loop in float64 throughout, two threads, both graphs; a buffer the user replaced (storage offset 0, where dynamo
    would specialise the rows' order) and a state_dict loaded into a new optimizer are put back in place."""
    from adamlab.optim import _buffer

    shapes = SHAPES + ((40_000,),)  # and one tensor for the parallel graph
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for name, path, rows in (("loop", dict(foreach=False), True), ("rows", dict(compiled=True), True),
                                 ("op", dict(compiled=True), False)):
            monkeypatch.setattr(_buffer, "ROWS", rows)
            ps = make_params(0, shapes=shapes)
            opt = cls(ps, lr=0.05, **path, **kw)
            calls = []
            for t in range(12):
                for i, p in enumerate(ps):
                    p.grad = fake_grad(p, t) * _scale(t, i)
                calls.append(_offer_op_calls(opt.step))
                if t == 5:
                    for st in opt.state.values():
                        st["buffer"] = st["buffer"].clone()  # at storage offset 0
                if t == 8:
                    fresh = cls(ps, lr=0.05, **path, **kw)
                    fresh.load_state_dict(opt.state_dict())
                    opt = fresh
            assert all(st["buffer"].storage_offset() >= _buffer.BUF_OFFSET for st in opt.state.values())
            runs[name] = (torch.cat([p.detach().flatten() for p in ps]), calls, opt)
    finally:
        torch.set_num_threads(threads)
    loop, loop_calls, _ = runs["loop"]
    assert loop_calls == [0] * 12
    assert runs["rows"][1] == [0] * 12
    assert min(runs["op"][1]) >= 1
    for name in ("rows", "op"):
        out, _, opt = runs[name]
        assert opt.implementation == "compiled"
        assert _normwise(out, loop) < 1e-12, name


# ---------------------------------------------------------------------- Adam ⊆ AdamCM, Adam ⊆ AdamCG
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamcm_kappa0_is_adam(path, wd):
    a, _ = _trajectory(lambda g: adamlab.AdamCM(g, lr=0.05, kappa=0.0, weight_decay=wd, **path), none_grad=False)
    b, _ = _trajectory(lambda g: torch.optim.Adam(g, lr=0.05, weight_decay=wd, decoupled_weight_decay=True),
                       none_grad=False)
    assert max_rel(a, b) <= 1e-12


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamcg_kappa0_is_adam(wd):
    for foreach in (False, True):
        a, opt = _trajectory(lambda g: adamlab.AdamCG(g, lr=0.05, kappa=0.0, weight_decay=wd, foreach=foreach))
        b, _ = _trajectory(lambda g: torch.optim.Adam(g, lr=0.05, weight_decay=wd))
        assert max_rel(a, b) <= 1e-12
        assert "buffer" not in next(iter(opt.state.values()))  # no buffer memory when it is off


# ---------------------------------------------------------------------- defining behaviour
@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_adamcm_first_step_leaves_params_unchanged(eps):
    ps = make_params(3, shapes=SHAPES)
    before = [p.detach().clone() for p in ps]
    opt = adamlab.AdamCM(ps, lr=0.1, eps=eps)
    for p in ps:
        p.grad = fake_grad(p, 0)
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, before))
    # only the gradient went into the buffer; m and v stayed 0
    for p in ps:
        st = opt.state[p]
        assert int(st["count"]) == 1 and torch.equal(st["buffer"][0], p.grad)
        assert not st["exp_avg"].any() and not st["exp_avg_sq"].any()


def test_adamcm_first_step_with_weight_decay_only_decays():
    ps = make_params(3, shapes=SHAPES)
    before = [p.detach().clone() for p in ps]
    opt = adamlab.AdamCM(ps, lr=0.1, weight_decay=0.2)
    for p in ps:
        p.grad = fake_grad(p, 0)
    opt.step()
    assert all(torch.equal(p, q * (1 - 0.1 * 0.2)) for p, q in zip(ps, before))


@pytest.mark.parametrize("cls,size", [(adamlab.AdamCM, 5), (adamlab.AdamCG, 10)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_memory(cls, size, dtype):
    """Per tensor: m, v and C stored tensors, (C+2)·numel·itemsize, plus C priorities, the count and the step."""
    p = torch.zeros(4, 6, dtype=dtype, requires_grad=True)
    opt = cls([p])
    p.grad = torch.ones_like(p)
    opt.step()
    st = opt.state[p]
    assert set(st) == {"step", "exp_avg", "exp_avg_sq", "buffer", "priorities", "count"}
    item = p.element_size()
    assert sum(st[k].nbytes for k in ("exp_avg", "exp_avg_sq", "buffer")) == (size + 2) * p.numel() * item
    assert st["priorities"].shape == (size,) and st["priorities"].dtype == dtype
    total = sum(t.nbytes for t in st.values())
    assert total == (size + 2) * p.numel() * item + size * item + st["count"].nbytes + st["step"].nbytes


def test_bf16_params_keep_float32_priorities():
    ps = [torch.randn(8, 3, dtype=torch.bfloat16, requires_grad=True) for _ in range(2)]
    outs = []
    for foreach in (False, True):
        qs = [p.detach().clone().requires_grad_() for p in ps]
        opt = adamlab.AdamCM(qs, lr=0.01, buffer_size=2, foreach=foreach)
        for t in range(6):
            for q in qs:
                q.grad = (torch.sin(q.detach().float() + t) * (1 + t % 3)).bfloat16()
            opt.step()
        st = opt.state[qs[0]]
        assert st["priorities"].dtype == torch.float32 and st["buffer"].dtype == torch.bfloat16
        outs.append(torch.cat([q.detach().flatten() for q in qs]))
    assert torch.equal(outs[0], outs[1])


# ---------------------------------------------------------------------- defaults, param groups, buffer changes
def test_defaults():
    p = [torch.zeros(2, requires_grad=True)]
    cm, cg = adamlab.AdamCM(p).defaults, adamlab.AdamCG(p).defaults
    assert {k: cm[k] for k in ("lr", "betas", "eps", "weight_decay", "buffer_size", "priority_decay", "kappa",
                               "synced", "maximize")} == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                                              buffer_size=5, priority_decay=0.7, kappa=1.0,
                                                              synced=True, maximize=False)
    assert cg["buffer_size"] == 10 and cg["aggregation"] == "sum"


def test_lr_scheduler_and_param_groups():
    ps = make_params(0, shapes=SHAPES)
    opt = adamlab.AdamCM(ps[:3], lr=0.05)
    opt.add_param_group({"params": ps[3:], "buffer_size": 2, "synced": False})
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for t in range(5):
        for p in ps:
            p.grad = fake_grad(p, t)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.25)
    assert opt.state[ps[3]]["buffer"].shape == (2, 2, 2, 3) and int(opt.state[ps[3]]["count"]) == 2
    with pytest.raises(ValueError, match="buffer_size"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "buffer_size": 0})


@pytest.mark.parametrize("cls", [adamlab.AdamCM, adamlab.AdamCG])
@pytest.mark.parametrize("change", [dict(buffer_size=3), dict(kappa=0.0)])
def test_changing_the_buffer_mid_run_is_a_clear_error_and_changes_nothing(cls, change):
    ps = make_params(seed=0)
    opt = cls(ps, lr=1e-2, buffer_size=5)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    before = [p.detach().clone() for p in ps]
    opt.param_groups[0].update(change)
    with pytest.raises(ValueError, match="buffer_size=5"):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, ps))
    opt.param_groups[0].update(kappa=1.0, buffer_size=5)
    opt.step()  # and it goes on once the settings are back


def test_switching_the_buffer_on_mid_run_is_a_clear_error():
    ps = make_params(seed=0)
    opt = adamlab.AdamCM(ps, lr=1e-2, kappa=0.0)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    opt.param_groups[0]["kappa"] = 1.0
    with pytest.raises(ValueError, match="kappa=0"):
        opt.step()
