"""torch's private API behind one door (``adamlab.optim._torch_private``): the probe finds every internal on the
tested torch, ``ADAMLAB_TORCH_PUBLIC=1`` turns them all off, the public fallbacks give the same numbers, and no other
module of ``src/`` touches torch's private API.

The compiled runs go in subprocesses (the probe's answers are kept for a process): one with the internals, one
with every fallback; each steps Adam and AdamCG on a few small float64 tensors on the loop and the compiled path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adamlab
from adamlab.optim import _torch_private as tp

SRC = Path(__file__).resolve().parents[1] / "src"

#: small tensors only (under SMALL_NUMEL: one graph per optimizer, the one-thread one), float64, a few steps; chunks
#: of 4 tensors, not 16, for a graph that compiles in a quarter of the time
SCRIPT = r"""
import sys, torch
torch.set_num_threads(1)
import adamlab
from adamlab.optim import _compiled, torch_internals

_compiled.CHUNK = 4

CASES = {"adam": dict(lr=0.01, weight_decay=0.1), "adamcg": dict(lr=0.01, buffer_size=3)}
SHAPES = [(5, 3), (7,), (4, 2, 2)]
out = {"probe": torch_internals()}
for name, kw in CASES.items():
    for path, impl in (("loop", dict(foreach=False)), ("compiled", dict(compiled=True))):
        g = torch.Generator().manual_seed(0)
        ps = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in SHAPES]
        opt = adamlab.create_optimizer(name, ps, **impl, **kw)
        for _ in range(4):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            opt.step()
        runners = [part.runner for plan in opt._plans.values() for part in plan.parts if part.runner is not None]
        out[name, path] = dict(
            implementation=opt.implementation,
            tensors=[p.detach().clone() for p in ps] + [v.clone() for st in opt.state.values()
                                                        for v in st.values() if torch.is_tensor(v)],
            bound=[bool(gr) for r in runners for gr in r.graphs])
torch.save(out, sys.argv[1])
"""


def _run(tmp_path_factory, public: bool) -> dict:
    out = tmp_path_factory.mktemp("door") / "out.pt"
    env = {k: v for k, v in os.environ.items() if k not in (tp.ENV, "ADAMLAB_IMPL", "ADAMLAB_NO_COMPILE")}
    if public:
        env[tp.ENV] = "1"
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not adamlab.optim.compiler_available():
        pytest.skip("torch.compile is unavailable here")
    return {"internals": _run(tmp_path_factory, False), "public": _run(tmp_path_factory, True)}


def test_the_probe_finds_every_internal_on_the_tested_torch_and_none_when_forced(runs):
    assert set(runs["internals"]["probe"]) == set(tp.ENTRIES) | {"direct_calls"}
    if torch.__version__.startswith("2.13."):  # the torch CI runs: every internal is there and behaves
        assert all(runs["internals"]["probe"].values()), runs["internals"]["probe"]
    assert not any(runs["public"]["probe"].values()), runs["public"]["probe"]


@pytest.mark.parametrize("name", ["adam", "adamcg"])
def test_the_public_fallbacks_give_the_same_numbers(runs, name):
    """float64: the compiled path with every fallback equals the plain loop (1e-12 relative) and, bit for bit, the
    compiled path with the internals (the same inductor graph, called through dynamo instead of directly)."""
    internals, public = runs["internals"], runs["public"]
    for run in (internals, public):
        assert run[name, "compiled"]["implementation"] == "compiled"  # no fallback to the multi-tensor path
    assert internals[name, "compiled"]["bound"] and all(internals[name, "compiled"]["bound"])  # direct calls
    assert not any(public[name, "compiled"]["bound"])  # every call through dynamo
    loop = internals[name, "loop"]["tensors"]
    assert all(torch.equal(a, b) for a, b in zip(loop, public[name, "loop"]["tensors"]))
    fast, slow = internals[name, "compiled"]["tensors"], public[name, "compiled"]["tensors"]
    assert len(loop) == len(fast) == len(slow) > 3
    for i, (a, b, c) in enumerate(zip(loop, fast, slow)):
        assert torch.equal(b, c), f"{name}: tensor {i} differs between the internals and the public fallbacks"
        assert torch.allclose(c, a, rtol=1e-12, atol=1e-300), f"{name}: tensor {i}: public fallbacks vs the loop"


def test_forcing_the_fallbacks_turns_every_entry_off(monkeypatch):
    monkeypatch.setattr(tp, "_FOUND", {})
    monkeypatch.setenv(tp.ENV, "1")
    assert not any(tp.probe().values())
    assert tp.graph_count() is None
    with pytest.raises(KeyError):
        tp.have("no_such_internal")


def test_the_trace_probe_leaves_dynamo_s_statistics_as_they_were(monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setattr(tp, "_FOUND", {})
    monkeypatch.delenv(tp.ENV, raising=False)
    before = {k: dict(v) for k, v in counters.items()}
    found = tp.probe()
    assert {k: dict(v) for k, v in counters.items()} == before
    if torch.__version__.startswith("2.13."):
        assert all(found.values()), found
        assert tp.graph_count() == int(counters["stats"]["unique_graphs"])


#: what counts as torch's private API in a source line: a ``_name`` component of a ``torch`` module path (other
#: than the ``torch._foreach_*`` kernels, which torch.optim itself uses, and dunders), ``torch._C``, or one of the internals the
#: door wraps by name
PRIVATE = re.compile(r"\btorch(?:\.\w+)*\._(?!foreach_|_)\w|\bfrom\s+torch[\w.]*\s+import\s+\(?\s*_(?!foreach_|_)\w"
                     r"|\bgetattr\(\s*torch[\w.]*\s*,\s*['\"]_(?!foreach_|_)|\b_C\.|grapharg|guard_manager"
                     r"|_debug_get_cache_entry_list|use_duck_shape|enable_cpp_symbolic_shape_guards|unique_graphs")


def _private_uses(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if PRIVATE.search(line)]


def test_the_scan_sees_private_uses_and_lets_the_foreach_kernels_pass():
    assert _private_uses("from torch._dynamo.utils import counters\n")
    assert _private_uses("import torch.fx.experimental._config as fx_config\n")
    assert _private_uses("lazy = getattr(torch, '_disable_dynamo', None)\n")
    assert _private_uses("from torch import _TorchCompileInductorWrapper\n")
    assert _private_uses("torch._C._get_tracing_state()\n")
    assert not _private_uses("torch._foreach_add_(xs, ys)\ntorch.compiler.disable(fn)\nimport torch.nn as nn\n"
                             "print(torch.__version__)\n")


def test_only_the_door_touches_torch_s_private_api():
    door = SRC / "adamlab" / "optim" / "_torch_private.py"
    found = {str(p.relative_to(SRC)): uses for p in sorted(SRC.rglob("*.py")) if p != door
             for uses in [_private_uses(p.read_text(encoding="utf-8"))] if uses}
    assert not found, f"torch's private API outside adamlab/optim/_torch_private.py: {found}"
    assert _private_uses(door.read_text(encoding="utf-8"))  # (the scan does see the door's own uses)
