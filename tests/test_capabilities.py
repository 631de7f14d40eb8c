"""Capabilities as data: what code needs to know of an optimizer is declared by its class (memory traffic) or its
registry row (param groups, baselines), so that nothing under ``src/adamlab`` branches on an optimizer's name."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adamlab
from adamlab import speed
from adamlab.lab import comparators
from adamlab.lab.spaces import SEARCH_SPACES
from adamlab.registry import Baseline, coupled_groups, get_optimizer_info

SRC = Path(adamlab.__file__).resolve().parent
#: the tables, where optimizer names are the data (paths relative to src/adamlab)
TABLES = {"registry.py", "lab/spaces.py", "lab/comparators.py", "lab/protocols.py", "lab/claims.py"}
NAMES = set(adamlab.list_optimizers()) | set(comparators.names())


def _literals(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return set()


def name_branches(source: str) -> list[str]:
    """Comparisons of a value with an optimizer-name literal: ``x == "adam"``, ``x != "adam"``,
    ``x in ("adam", "adamw")`` (a lookup such as ``"adam" in results`` is no branch on a name)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            hit: set[str] = set()
            if isinstance(op, (ast.Eq, ast.NotEq)):
                hit = _literals(left) | _literals(right) if not all(
                    isinstance(x, ast.Constant) for x in (left, right)) else set()
                hit = hit if any(isinstance(x, ast.Constant) for x in (left, right)) else set()
            elif isinstance(op, (ast.In, ast.NotIn)) and not isinstance(left, ast.Constant):
                hit = _literals(right) if isinstance(right, (ast.Tuple, ast.List, ast.Set)) else set()
            if hit & NAMES:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
            left = right
    return found


def test_the_scan_finds_name_branches():
    src = ('if name == "coupledadam": pass\n'
           'if name in ("adamcm", "adamcg") and k > 0: pass\n'
           'color = "tab:red" if n != "sam" else "0.6"\n'
           'ok = "adam" in results or name == "char_gpt" or x in ("loop", "foreach")\n')
    assert [f.split(":")[0] for f in name_branches(src)] == ["line 1", "line 2", "line 3"]


def test_no_module_branches_on_an_optimizer_name():
    hits = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in TABLES:
            continue
        found = name_branches(path.read_text(encoding="utf-8"))
        if found:
            hits[rel] = found
    assert not hits, f"declare it on the registry row or the class instead: {hits}"


# ---------------------------------------------------------------------- the rows' declared fields
def test_every_registry_row_has_a_search_space_and_no_other():
    assert list(SEARCH_SPACES) == adamlab.list_optimizers()
    assert not set(SEARCH_SPACES) & set(comparators.names())


def test_rows_declare_groups_and_baselines():
    assert get_optimizer_info("coupledadam").param_groups is coupled_groups
    assert get_optimizer_info("coupledadam").bench_groups is not None
    assert all(get_optimizer_info(n).bench_groups is None for n in adamlab.list_optimizers() if n != "coupledadam")
    assert get_optimizer_info("adamw").torch_equivalent == Baseline("AdamW", dict(lr=1e-3, weight_decay=1e-2))
    assert get_optimizer_info("ademamix").pytorch_optimizer.class_name == "AdEMAMix"
    for n in adamlab.list_optimizers():
        base = get_optimizer_info(n).torch_equivalent
        assert base is None or isinstance(getattr(torch.optim, base.class_name), type)
        assert bool(speed.torch_baselines(n)) == (base is not None)
    assert speed.torch_baselines("nosuch") == {} and speed.po_baselines("nosuch") == {}


def test_coupled_policy_reaches_create_optimizer_and_speed():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))
    opt = adamlab.create_optimizer("coupledadam", model, weight_decay=0.1)
    assert [(g["coupled"], g["weight_decay"]) for g in opt.param_groups] == [(True, 0.0), (False, 0.1)]
    opt = speed.make_adamlab("coupledadam", speed.make_params([(8, 4), (4,), (3, 4)]), "loop")
    assert [(len(g["params"]), g["coupled"]) for g in opt.param_groups] == [(1, True), (2, False)]


# ---------------------------------------------------------------------- memory traffic declared by the class
def test_traffic_reads_the_classes_extra_reads():
    ps = speed.make_params([(8, 4), (4,)])
    opt = speed.make_adamlab("coupledadam", ps, "loop")
    opt.step()
    r, w, n = speed.traffic(opt)
    assert n == 36 and w == 4 * 3 * n  # write p, m, v
    assert r == 4 * 4 * n + 4 * 32  # read p, g, m, v, and the coupled tensor's moment once more
    assert speed.traffic(opt, "coupledadam") == (r, w, n)  # the old signature still works
    ps = speed.make_params([(4, 3)])
    for kappa, extra in ((1.0, 4), (0.0, 0)):
        opt = speed.make_adamlab("adamcg", ps, "loop", kappa=kappa, buffer_size=2)
        opt.step()
        r, w, n = speed.traffic(opt)
        assert r / n == 4 * (2 + 2 + (2 if kappa else 0)) + extra
    base = torch.optim.Adam(speed.make_params([(4, 3)]))
    base.step()
    assert speed.traffic(base) == (4 * 4 * 12, 4 * 3 * 12, 12)  # a torch optimizer declares nothing extra


# ---------------------------------------------------------------------- the errors, light
def test_errors_live_in_one_light_module():
    from adamlab import errors
    from adamlab.lab.files import LabError
    from adamlab.lab.tasks import DataError
    from adamlab.lab.tasks.charlm import DataError as DataError2

    assert LabError is errors.LabError and DataError is DataError2 is errors.DataError
    imports = [n for n in ast.walk(ast.parse(Path(errors.__file__).read_text())) if isinstance(n, ast.Import)
               or isinstance(n, ast.ImportFrom) and n.module != "__future__"]
    assert not imports  # nothing to import: any command can raise and catch these cheaply


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_adamlab_tasks_imports_no_optuna():
    code = ("import contextlib, io, sys\nimport adamlab.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n    rc = adamlab.cli.main(['tasks'])\n"
            "assert rc == 0 and 'char_gpt' in out.getvalue(), rc\n"
            "print(sorted(m for m in ('optuna', 'sqlalchemy', 'matplotlib') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC.parent), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
