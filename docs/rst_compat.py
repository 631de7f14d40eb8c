"""A griffe extension for the docs build: the docstrings' few reStructuredText constructs, read as Markdown.

The docstrings are written for ``help()`` as much as for the site, so they keep ``.. math::`` blocks, ``Example::``
literal blocks and Sphinx roles (:class:`~adamlab.Adam`). Before mkdocstrings parses a docstring this turns a math
block into ``$$ ... $$`` (rendered by arithmatex), ``Example::`` into a Google-style ``Example:`` section, and a role
into inline code linked to the object's documentation.
"""

from __future__ import annotations

import builtins
import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`~?([^`]+)`")


def _role(match: re.Match) -> str:
    """A role as inline code, linked to the object's docs where the site renders it (an optional cross-reference:
    a target the site does not render, like a builtin exception, stays plain code)."""
    target = match.group(1)
    shown = target.rsplit(".", 1)[-1] if "`~" in match.group(0) else target
    if target.startswith("adamlab."):
        identifier = target
    elif "." not in target and target[:1].isupper() and not hasattr(builtins, target):
        identifier = f"adamlab.{target}"  # a bare class name in adamlab's own docstrings: a public class
    else:
        return f"`{shown}`"
    return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def convert(text: str) -> str:
    """The docstring ``text`` with its math blocks, literal blocks and roles turned into Markdown."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(".. math::"):
            base = _indent(line)
            block = [stripped[len(".. math::"):].strip()]
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                block.append(lines[i])
                i += 1
            body = textwrap.dedent("\n".join(block[1:])).strip()
            maths = "\n".join(part for part in (block[0], body) if part)
            out += [" " * base + "$$", *(" " * base + m for m in maths.splitlines()), " " * base + "$$", ""]
            continue
        if stripped in ("Example::", "Examples::"):
            out.append(line.replace("::", ":"))
        else:
            out.append(_ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


class RstCompat(griffe.Extension):
    """Rewrite every docstring once the object tree is built."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
