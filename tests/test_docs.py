"""The documentation's examples run: every docstring example of the public modules (doctest), and every
```python block of the docs site's pages, on the CPU in a few seconds."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest
import torch

import adamlab
import adamlab.optim

DOCS = Path(__file__).resolve().parents[1] / "docs"

#: every public module: the package, its optimizer modules (found, so a new one is covered) and the helpers
MODULES = ["adamlab", "adamlab.optim", "adamlab.optim._base", "adamlab.registry", "adamlab.groups", "adamlab.train",
           *sorted(f"adamlab.optim.{m.name}" for m in pkgutil.iter_modules(adamlab.optim.__path__)
                   if not m.name.startswith("_"))]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    # the examples may use torch and adamlab without importing them, as a reader's session would have them
    for test in finder.find(module, name, extraglobs={"torch": torch, "adamlab": adamlab}):
        if test.filename and Path(test.filename).resolve() != Path(module.__file__).resolve():
            continue  # an object imported from another module is tested there
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) of {name} failed (output above)"


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


PAGES = sorted(p for p in DOCS.rglob("*.md") if _python_blocks(p))


def test_docs_pages_have_examples():
    assert len(PAGES) >= 6, "the optimizer pages each carry a runnable ```python example"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_docs_page_examples(page):
    """A page's ```python blocks run in order, in one namespace (a page reads top to bottom)."""
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(_python_blocks(page)):
        exec(compile(block, f"{page.name}[block {i}]", "exec"), namespace)
