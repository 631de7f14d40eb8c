"""Writes report.html (self-contained: tables and base64 PNGs), summary.md and the PNGs, atomically."""
from __future__ import annotations

import base64
import datetime
import html
import math
import os
import re
import tempfile

from . import axes, plots
from .analysis import TaskResult, lattice, leaderboard, load, overhead
from .claims import ledger


def atomic_write(path: str, data: bytes | str) -> None:
    """Write to a temporary file beside `path`, fsync, then os.replace: readers see old or new, never half."""
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _f(x, digits=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "∞" if x > 0 else "–"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def task_table(t: TaskResult) -> tuple[list[str], list[list[str]]]:
    head = ["optimizer", "final loss (95 % CI)", "best loss"]
    head += ["final acc"] if t.has_accuracy else []
    head += ["steps→target", "time→target s", "opt.step ms", "sharpness", "default-setting loss", "tuned lr", "diverged"]
    rows = []
    for o in sorted(t.opts.values(), key=lambda o: o.final_loss.mean):
        sharp = o.summary_of("sharpness")
        r = [("**" if o.name in t.top_group else "") + o.name + ("**" if o.name in t.top_group else ""),
             o.final_loss.fmt(4), o.best_loss.fmt(4)]
        if t.has_accuracy:
            r.append(o.final_acc.fmt(3) if o.final_acc else "–")
        r += [_f(o.steps_to_target), _f(o.time_to_target, 2), _f(o.opt_step_time * 1e3, 2),
              sharp.fmt(3) if sharp else "–", _f(o.default_value, 4), _f(o.params.get("lr"), 2),
              f"{o.diverged}/{len(o.runs)}"]
        rows.append(r)
    return head, rows


def landscape_table(tasks) -> tuple[list[str], list[list[str]]]:
    head = ["task", "optimizer", "final value − min", "reached global min (seeds)", "escaped sharp basin (seeds)",
            "escape rate over tuning trials"]
    rows = []
    for t in tasks.values():
        if t.family != "landscape":
            continue
        for o in sorted(t.opts.values(), key=lambda o: o.final_loss.mean):
            g = o.extra("reached_global")
            e = o.extra("escaped_sharp")
            te = [r["extra"].get("escaped_sharp", r["extra"].get("reached_global")) for r in o.tune]
            te = [bool(x) for x in te if x is not None]
            rows.append([t.name, o.name, o.final_loss.fmt(3), f"{sum(g)}/{len(g)}",
                         f"{sum(e)}/{len(e)}" if e else "–", f"{sum(te)}/{len(te)}" if te else "–"])
    return head, rows


def embedding_table(tasks) -> tuple[list[str], list[list[str]]]:
    head = ["task", "optimizer", "isotropy (95 % CI)", "mean-embedding ratio", "final loss"]
    rows = []
    for name in ("word_lm", "char_gpt"):
        t = tasks.get(name)
        if t is None:
            continue
        for o in sorted(t.opts.values(), key=lambda o: -(o.summary_of("isotropy").mean if o.summary_of("isotropy") else 0)):
            iso, ratio = o.summary_of("isotropy"), o.summary_of("mean_embedding_ratio")
            rows.append([name, o.name, iso.fmt(3) if iso else "–", ratio.fmt(3) if ratio else "–", o.final_loss.fmt(4)])
    return head, rows


def md_escape(text: str) -> str:
    """Text (a file name, a message) shown literally in Markdown: no raw HTML, no accidental markup (an
    underscore inside a word, as in word_lm, never is markup and stays as it is)."""
    return re.sub(r"([\\`*\[\]<>&|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))", r"\\\1", str(text))


def md_table(head, rows) -> str:
    esc = [[re.sub(r"([|<])", r"\\\1", str(c)) for c in r] for r in rows]  # no cell breaks the row or is HTML
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in esc])


def html_table(head, rows) -> str:
    def cell(c):  # "**name**" (the top group) is bold
        c = html.escape(str(c))
        return f"<b>{c[2:-2]}</b>" if len(c) > 4 and c.startswith("**") and c.endswith("**") else c.replace("**", "")
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f0f0f0}img{max-width:100%;border:1px solid #eee}.supported{color:#176d17;font-weight:bold}
.notsupported{color:#b00;font-weight:bold}.inconclusive{color:#a60}code{background:#f5f5f5}"""


def build_report(out_dir: str, storage: str | None = None) -> str:
    """Write the report into `out_dir` from its adamlab.db, or from the `--storage` database when given."""
    data = load(out_dir, storage)
    if data["config"].get("protocols"):
        axes.attach_protocols(data, out_dir, storage)  # before the ledger: some claims are about a protocol
    cfg, tasks, meta = data["config"], data["tasks"], data["meta"]
    tasks = {n: t for n, t in tasks.items() if t.opts}
    board = leaderboard(tasks)
    oh = overhead(tasks, "adam", "step_time")
    looked = {**{k: cfg.get(k) for k in ("looks", "max_looks")}, **(data["meta"].get("looks") or {})}
    max_looks = max(int(looked.get("max_looks") or 1), 1)  # --until-decided: the verdicts spend alpha over the looks
    look = min(max(int(looked.get("look") or looked.get("looks") or max_looks), 1), max_looks)
    claims = ledger(tasks, looks=look, max_looks=max_looks)
    lat = lattice(tasks)
    figs = {}
    for name, fn in plots.FIGURES.items():
        png = fn(tasks)
        if png:
            figs[name] = png
            atomic_write(os.path.join(out_dir, f"{name}.png"), png)

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    intro = (f"Suite **{cfg.get('suite')}**: {len(tasks)} tasks × {len(cfg.get('optimizers', []))} optimizers. Every "
             f"optimizer got the same tuning budget per task: {cfg.get('trials')} quasi-random (Sobol, Optuna "
             f"QMCSampler) trials over its whole search space, trial 0 being its registry default, tuned on the "
             f"final held-out loss with seed 0 (optimizers with the same search space see the same points); the best "
             f"setting was then re-run with {cfg.get('seeds')} fresh seeds. "
             f"All ± are 95 % t-intervals over those seeds. Target = {90} % of the way from the initial loss to "
             f"the best mean loss any optimizer reached. Bold = not significantly worse than the task's leader "
             f"(paired by seed, p ≥ 0.05). Diverged runs score the untrained loss. Generated {when}; "
             f"compute time {(meta.get('elapsed') or 0) / 60:.1f} min.")
    not_run = {**{n: f"not run: {why}" for n, why in (meta.get("skipped") or {}).items()},
               **{n: f"failed, its data cannot make it: {why}" for n, why in (meta.get("failed") or {}).items()}}
    skip_txt = "".join(f"\n- **{md_escape(n)}** {md_escape(why)}" for n, why in not_run.items())
    lb_head = ["optimizer", "mean rank", "tasks in top group", "wins", "diverged final runs", "training step × Adam",
               "optimizer.step × Adam"]
    oh_opt = overhead(tasks, "adam", "opt_step_time")
    lb_rows = [[r["optimizer"], f"{r['mean_rank']:.2f}", f"{r['top']}/{r['tasks']}", str(r["wins"]), str(r["diverged"]),
                f"{oh[r['optimizer']]['ratio']:.3f}" if r["optimizer"] in oh else "–",
                f"{oh_opt[r['optimizer']]['ratio']:.2f}" if r["optimizer"] in oh_opt else "–"] for r in board]
    cl_head = ["seed", "claim", "verdict", "effect [CI]", "MDE", "seeds needed", "protocol", "measured", "rule"]
    cl_rows = [[c.seed, c.claim, c.verdict, _effect(c), _f(c.mde, 2), _seeds(c.seeds_needed), c.protocol, c.measured,
                c.rule] for c in claims]
    lat_bad = [r for r in lat if r["status"] != "within noise"]
    lat_head = ["specialisation", "generalisation", "task", "mean loss diff (spec − gen)", "95 % CI", "Holm p", "status"]
    lat_rows = [[r["special"], r["general"], r["task"], _f(r["diff"]), f"[{_f(r['lo'])}, {_f(r['hi'])}]",
                 _f(r["p_holm"], 2), r["status"]] for r in lat_bad]
    lat_txt = (f"{len(lat)} comparisons; {sum(r['status'] == 'VIOLATION' for r in lat)} violations, "
               f"{sum(r['status'] == 'general better' for r in lat)} where the generalisation is significantly "
               f"better, the rest within noise. Rows that are not within noise:")

    sections = [("Leaderboard", "Mean rank of the final held-out loss over tasks (1 = best).", md_table(lb_head, lb_rows),
                 html_table(lb_head, lb_rows), None),
                ("Claims ledger", "Each claim the optimizers' papers make (and, under Notes, what a tuned "
                 "generalisation should do), tested at this small scale. The verdict is computed from the runs by "
                 "the rule in its row: supported, not supported (the claimed effect is ruled out), inconclusive, or "
                 "not tested (a task or optimizer it needs did not run). Final runs of all optimizers share their "
                 "seeds, so two optimizers are compared paired by seed. Effect [CI]: the row's first comparison "
                 "(improvement, in the row's units; Holm-corrected level where a row combines comparisons). MDE: "
                 "the smallest true effect that comparison's test detects with 80 % power. Seeds needed: seeds "
                 "for 80 % power against the paper's stated effect (or, where it states none, the observed one).",
                 md_table(cl_head, cl_rows), _claims_html(cl_head, cl_rows), None),
                ("Inclusion lattice (sanity check)", lat_txt, md_table(lat_head, lat_rows), html_table(lat_head, lat_rows),
                 None)]
    sections += axes.sections(data, out_dir, storage, md_table, html_table)
    sections.append(("Landscapes", "Paths of the first final seed of every optimizer.", md_table(*landscape_table(tasks)),
                     html_table(*landscape_table(tasks)), "landscapes"))
    if "word_lm" in tasks or "char_gpt" in tasks:
        sections.append(("Embeddings (Coupled Adam)", "Of the tied embedding matrix E at the end: isotropy "
                         "Iso(E) = min over directions c of Z(c) / max Z(c), Z(c) = Σᵢ exp(cᵀeᵢ), c the eigenvectors "
                         "of EᵀE (1 = isotropic); mean-embedding ratio ‖mean of eᵢ‖ / mean of ‖eᵢ‖ (0 = centred, "
                         "1 = all rows equal).", md_table(*embedding_table(tasks)), html_table(*embedding_table(tasks)),
                         "embeddings"))
    sections.append(("Learning curves", "", "", "", "curves"))
    sections.append(("Performance profiles", "AlgoPerf-style: fraction of tasks an optimizer reaches the target "
                     "within τ × the fastest optimizer (steps, and training seconds). Training seconds are wall time in the "
                     "worker processes and move with whatever else the machine runs; the step-time overhead columns "
                     "come from an interleaved micro-benchmark instead.", "", "", "profiles"))
    sections.append(("Learning-rate sensitivity", "Every tuning trial's final held-out loss against its learning rate "
                     "(other hyperparameters vary too).", "", "", "lr_sensitivity"))
    sections.append(("Forgetting (char GPT)", "", "", "", "forgetting"))
    sections.append(("Step-time overhead", "", "", "", "overhead"))
    for t in tasks.values():
        sections.append((f"Task: {t.name}", t.description.replace("**", "") + f". Target loss {_f(t.target, 4)} "
                         f"(initial {_f(t.initial, 4)}).", md_table(*task_table(t)), html_table(*task_table(t)), None))
    spaces = meta.get("spaces") or {}
    sp_rows = [[o, s] for o, s in spaces.items()]
    sections.append(("Search spaces", "From the optimizer registry.", md_table(["optimizer", "space"], sp_rows),
                     html_table(["optimizer", "space"], sp_rows), None))

    md = [f"# adamlab bench report\n\n{_md_text(intro)}{skip_txt}\n"]
    body = [f"<h1>adamlab bench report</h1><p>{_md_inline(intro)}</p>"
            + ("<ul>" + "".join(f"<li><b>{html.escape(n)}</b> {html.escape(w)}</li>" for n, w in not_run.items())
               + "</ul>" if not_run else "")]
    for title, text, mdt, htt, fig in sections:
        if fig and fig not in figs and not mdt:
            continue
        md.append(f"## {title}\n\n{_md_text(text)}\n\n{mdt}\n" + (f"\n![{fig}]({fig}.png)\n" if fig in figs else ""))
        img = (f'<img alt="{fig}" src="data:image/png;base64,{base64.b64encode(figs[fig]).decode()}">'
               if fig in figs else "")
        body.append(f"<h2>{html.escape(title)}</h2><p>{_md_inline(text)}</p>{htt}{img}")
    atomic_write(os.path.join(out_dir, "summary.md"), "\n".join(md))
    atomic_write(os.path.join(out_dir, "report.html"), f"<!doctype html><html><head><meta charset='utf-8'>"
                 f"<title>adamlab bench report</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    return screen_summary(board, claims, out_dir, storage)


def _md_text(text: str) -> str:
    """Section text (plain, `**bold**`) as Markdown: everything but the bold markers shown literally."""
    return "**".join(md_escape(p) for p in text.split("**"))


def _md_inline(text: str) -> str:
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _effect(c) -> str:
    if not math.isfinite(c.effect):
        return "–"
    if not (math.isfinite(c.lo) and math.isfinite(c.hi)):
        return f"{c.effect:+.3g}"
    level = "" if abs(c.level - 0.95) < 1e-9 else f" ({100 * c.level:.3g} %)"
    return f"{c.effect:+.3g} [{c.lo:+.3g}, {c.hi:+.3g}]{level}"


def _seeds(n: float) -> str:
    return "–" if math.isnan(n) else f"{n:.0f}" if math.isfinite(n) else "> 10⁶"


def _claims_html(head, rows) -> str:
    cls = {"supported": "supported", "not supported": "notsupported", "inconclusive": "inconclusive"}
    out = "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    for r in rows:
        out += "<tr>" + "".join(
            f"<td class='{cls.get(c, '')}'>{html.escape(c)}</td>" if head[i] == "verdict" else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(r)) + "</tr>"
    return out + "</table>"


def screen_summary(board, claims, out_dir, storage: str | None = None) -> str:
    lines = ["", "Leaderboard (mean rank of final held-out loss; top = tasks not significantly worse than the best):"]
    for r in board:
        lines.append(f"  {r['optimizer']:<12} rank {r['mean_rank']:5.2f}   top {r['top']:>2}/{r['tasks']:<2}  "
                     f"wins {r['wins']:>2}   diverged {r['diverged']}")
    lines.append("Claims:")
    for c in claims:
        under = "" if c.protocol == "tuned" else f" ({c.protocol})"
        lines.append(f"  [{c.verdict:^14}] {c.seed}{under}: {c.claim[:80]}")
    if storage is None:
        lines.append(f"Report: {os.path.join(out_dir, 'report.html')}  (summary.md, *.png, adamlab.db beside it)")
    else:
        from .storages import mask
        lines.append(f"Report: {os.path.join(out_dir, 'report.html')}  (summary.md, *.png beside it; the data: "
                     f"{mask(storage)})")
    return "\n".join(lines)
