"""``import adamlab`` costs what ``import torch`` costs, and little more: it does not import dynamo, inductor or
sympy (about a second together), nor the lab's dependencies (Optuna, matplotlib, scipy). The graph break that
keeps an optimizer step whole under a user's ``torch.compile`` is made lazily, and the public fallback makes the
same break."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from adamlab.optim import _compiled

HEAVY = ("torch._dynamo", "torch._inductor", "sympy", "optuna", "matplotlib", "scipy", "sklearn")


def test_import_adamlab_leaves_the_compiler_and_the_lab_unimported():
    code = ("import sys, torch; before = set(sys.modules); import adamlab; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules and m not in before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "public"])
def test_graph_break_runs_the_function_eagerly_under_torch_compile(monkeypatch, lazy):
    monkeypatch.setattr(_compiled, "LAZY_GRAPH_BREAK", lazy)
    seen = []

    def body(x):
        seen.append(torch.compiler.is_compiling())  # traced by dynamo, this would record True
        return x + 1

    wrapped = _compiled.graph_break(body)
    outer = torch.compile(lambda x: wrapped(x) * 2, backend="eager")
    assert torch.equal(outer(torch.ones(3)), torch.full((3,), 4.0))
    assert torch.equal(wrapped(torch.ones(2)), torch.full((2,), 2.0))
    assert seen == [False, False]
    plain = torch.compile(lambda x: body(x) * 2, backend="eager")  # the control: without the break, dynamo traces
    seen.clear()
    plain(torch.ones(3))
    assert seen == [True]
