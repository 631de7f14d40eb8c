"""Figures for the report (matplotlib, Agg backend). Each function returns PNG bytes or None (no data)."""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .analysis import TaskResult, overhead, profiles  # noqa: E402
from .tasks.landscapes import LANDSCAPES  # noqa: E402


def _finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def _log_y(ax) -> bool:
    """A log y axis, if something positive and finite is drawn (else matplotlib cannot place its ticks)."""
    ys = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()]
    if not any((np.isfinite(y) & (y > 0)).any() for y in ys):
        return False
    ax.set_yscale("log")
    return True


#: the optimizers a figure draws out, by role: the claim it illustrates is about the "subject", compared with the
#: "baseline"s (every other optimizer is drawn thin, or grey)
HIGHLIGHT: dict[str, dict[str, str]] = {
    "forgetting": {"ademamix": "subject", "adamw": "baseline"},
    "embeddings": {"coupledadam": "subject", "adam": "baseline", "adamw": "baseline"},
}
_ROLE_COLOR = {"subject": "tab:red", "baseline": "tab:blue"}


def colors(names: list[str]) -> dict[str, dict]:
    """Line style per optimizer: ten distinct colours, then the same colours dashed."""
    cmap = plt.get_cmap("tab10")
    return {n: {"color": cmap(i % 10), "ls": "-" if i < 10 else "--"} for i, n in enumerate(sorted(names))}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _grid(n: int, w: float = 4.2, h: float = 3.3):
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.subplots_adjust(hspace=0.45, wspace=0.25)
    return fig, list(axes.flat)


def _legend(fig, col: dict, spare=None):
    """The legend goes in an unused panel when there is one, else under the figure."""
    handles = [plt.Line2D([], [], lw=2, label=n, **st) for n, st in col.items()]
    if spare is not None:
        spare.legend(handles=handles, loc="center", ncol=2, fontsize=9, frameon=False)
    else:
        fig.legend(handles=handles, loc="upper center", ncol=min(7, len(handles)), fontsize=8,
                   bbox_to_anchor=(0.5, -0.04))


def landscapes(tasks: dict[str, TaskResult]) -> bytes | None:
    items = [t for t in tasks.values() if t.family == "landscape" and t.opts]
    if not items:
        return None
    col = colors(sorted({o for t in items for o in t.opts}))
    fig, axes = _grid(len(items), 4.6, 4.0)
    for ax, t in zip(axes, items):
        spec = LANDSCAPES[t.name]
        x0, x1, y0, y1 = spec.box
        xs, ys = np.linspace(x0, x1, 200), np.linspace(y0, y1, 200)
        X, Y = np.meshgrid(xs, ys)
        Z = spec.fn(torch.tensor(X), torch.tensor(Y)).numpy()
        Z = np.log1p(Z - Z.min())
        ax.contourf(X, Y, Z, levels=30, cmap="Greys", alpha=0.6)
        ax.contour(X, Y, Z, levels=15, colors="k", linewidths=0.3, alpha=0.4)
        for o in t.opts.values():
            path = next((r["extra"]["path"] for r in o.runs if r["extra"].get("path")), None)
            if path:
                p = np.asarray(path, dtype=float)
                ax.plot(p[:, 0], p[:, 1], lw=1.0, alpha=0.8, **col[o.name])
                ax.plot(p[-1, 0], p[-1, 1], "o", color=col[o.name]["color"], ms=4)
        ax.plot(*spec.minimum, "*", color="gold", ms=14, mec="k")
        ax.plot(*spec.start, "s", color="white", ms=6, mec="k")
        if spec.sharp:
            ax.plot(*spec.sharp, "x", color="red", ms=9)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title(f"{t.name} (log scale; ★ global min, □ start)", fontsize=9)
    _legend(fig, col, axes[len(items)] if len(axes) > len(items) else None)
    return _png(fig)


def curves(tasks: dict[str, TaskResult]) -> bytes | None:
    items = [t for t in tasks.values() if t.opts]
    if not items:
        return None
    col = colors(sorted({o for t in items for o in t.opts}))
    fig, axes = _grid(len(items))
    for ax, t in zip(axes, items):
        for o in t.opts.values():
            series = [c["val_loss"] for c in o.curves if "val_loss" in c]
            if not series:
                continue
            n = min(len(s[0]) for s in series)
            steps = np.asarray(series[0][0][:n])
            vals = np.asarray([s[2][:n] for s in series], dtype=float)
            ok = np.isfinite(vals)
            mean = np.where(ok, vals, 0).sum(0) / np.where(ok.any(0), ok.sum(0), np.nan)  # over finite seeds
            ax.plot(steps, np.maximum(mean, 1e-6) if t.family == "landscape" else mean, lw=1.2, **col[o.name])
        if _finite(t.target):
            ax.axhline(t.target, color="k", ls=":", lw=0.8)
        lo = min((o.best_loss.mean for o in t.opts.values() if _finite(o.best_loss.mean)), default=math.nan)
        if t.family == "landscape":  # f - f*, floored at 1e-6 for the log axis
            if _log_y(ax) and _finite(t.initial) and t.initial > 0:
                ax.set_ylim(top=t.initial * 3)
        elif _finite(lo, t.initial) and lo < t.initial:  # else (no finite numbers, no progress) autoscale
            ax.set_ylim(lo - 0.05 * (t.initial - lo), t.initial * 1.05 if t.initial > 0 else None)
        ax.set_title(f"{t.name}: held-out loss (mean of seeds; ⋯ target)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    _legend(fig, col, axes[len(items)] if len(axes) > len(items) else None)
    return _png(fig)


def lr_sensitivity(tasks: dict[str, TaskResult]) -> bytes | None:
    items = [t for t in tasks.values() if t.opts]
    if not items:
        return None
    col = colors(sorted({o for t in items for o in t.opts}))
    fig, axes = _grid(len(items))
    for ax, t in zip(axes, items):
        cap = t.initial * 1.5 if _finite(t.initial) and t.initial > 0 else None
        for o in t.opts.values():
            pts = sorted((r["params"]["lr"], r["value"]) for r in o.tune if _finite(r["params"].get("lr")))
            if not pts:
                continue
            lr = np.array([p[0] for p in pts])
            v = np.array([p[1] for p in pts], dtype=float)
            # diverged or worse-than-untrained trials are drawn at the cap (not at all without one)
            v = np.minimum(np.where(np.isfinite(v), v, cap), cap) if cap else np.where(np.isfinite(v), v, np.nan)
            ax.plot(lr, np.maximum(v, 1e-6) if t.family == "landscape" else v, "o", ms=3,
                    lw=0.8, alpha=0.85, **col[o.name])
        ax.set_xscale("log")
        if t.family == "landscape":
            _log_y(ax)
        ax.set_title(f"{t.name}: tuning trials, loss vs lr (diverged at top)", fontsize=9)
        ax.set_xlabel("learning rate", fontsize=8)
    _legend(fig, col, axes[len(items)] if len(axes) > len(items) else None)
    return _png(fig)


def performance_profiles(tasks: dict[str, TaskResult]) -> bytes | None:
    if not any(t.opts for t in tasks.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    col = colors(sorted({o for t in tasks.values() for o in t.opts}))
    for ax, by in zip(axes, ("steps", "time")):
        taus, prof = profiles(tasks, by)
        for n, rho in sorted(prof.items()):
            ax.step(taus, rho, where="post", lw=1.3, **col[n])
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"τ (× best optimizer's {by} to target)")
        ax.set_ylabel("fraction of tasks")
        ax.set_title(f"performance profile by {by}", fontsize=10)
    _legend(fig, col)
    return _png(fig)


def forgetting(tasks: dict[str, TaskResult]) -> bytes | None:
    t = tasks.get("char_gpt")
    if t is None or not t.opts:
        return None
    col = colors(list(t.opts))
    fig, ax = plt.subplots(figsize=(7, 4))
    for o in t.opts.values():
        gaps = []
        for c in o.curves:
            if "early_batch_loss" in c and "unseen_batch_loss" in c:
                e, u = np.asarray(c["early_batch_loss"][2]), np.asarray(c["unseen_batch_loss"][2])
                gaps.append((np.asarray(c["early_batch_loss"][0]), u - e))
        if gaps:
            n = min(len(g[1]) for g in gaps)
            ax.plot(gaps[0][0][:n], np.mean([g[1][:n] for g in gaps], 0),
                    lw=2.5 if o.name in HIGHLIGHT["forgetting"] else 0.8, **col[o.name])
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss(unseen) − loss(early batch)")
    ax.set_title("char GPT forgetting: what is still remembered of the batch seen at 10 %", fontsize=10)
    _legend(fig, col)
    return _png(fig)


def embeddings(tasks: dict[str, TaskResult]) -> bytes | None:
    t = tasks.get("word_lm")
    if t is None or not t.opts:
        return None
    names = sorted(t.opts)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key in zip(axes, ("isotropy", "mean_embedding_ratio")):
        s = [t.opts[n].summary_of(key) for n in names]
        m = [x.mean if x else np.nan for x in s]
        e = [x.half_width if x and math.isfinite(x.half_width) else 0 for x in s]
        roles = HIGHLIGHT["embeddings"]
        ax.bar(names, m, yerr=e, color=[_ROLE_COLOR.get(roles.get(n, ""), "0.6") for n in names])
        ax.tick_params(axis="x", rotation=60, labelsize=8)
        ax.set_title(f"word LM embeddings: {key} (95 % CI)", fontsize=10)
    return _png(fig)


def overhead_plot(tasks: dict[str, TaskResult]) -> bytes | None:
    oh = overhead(tasks, "adam", "opt_step_time")
    if not oh:
        return None
    names = sorted(oh, key=lambda n: oh[n]["ratio"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    r = np.array([oh[n]["ratio"] for n in names])
    err = np.array([[r[i] - oh[n]["lo"], oh[n]["hi"] - r[i]] for i, n in enumerate(names)]).T
    err = np.where(np.isfinite(err), err, 0)
    ax.bar(names, r, yerr=err, color="tab:gray")
    ax.axhline(1, color="k", lw=0.8)
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    ax.set_ylabel("× Adam")
    ax.set_title("optimizer.step() time relative to Adam (interleaved micro-benchmark; geometric mean over tasks, "
                 "95 % CI)", fontsize=9)
    return _png(fig)


FIGURES = {"landscapes": landscapes, "curves": curves, "lr_sensitivity": lr_sensitivity,
           "profiles": performance_profiles, "forgetting": forgetting, "embeddings": embeddings,
           "overhead": overhead_plot}
