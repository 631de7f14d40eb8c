"""The one harness of the distributed tests: gloo ranks on the CPU, spawned by :func:`launch`, each running a list
of scenarios against a single-process run of the same global batch, and writing what it measured to JSON.

A scenario trains a small language model (a tied embedding whose 51-row vocabulary does not divide by the world
size, a 1-row parameter, a block and a norm) in float64 for a few steps, under FSDP2 (``fully_shard``, DTensor
parameters) or DDP, with one optimizer on one path, and reports the largest relative difference from the
single-process loop (per tensor: max |a - b| / max |b|) and the graphs compiled after the second step. The
checkpoint scenarios save with ``torch.distributed.checkpoint`` at step ``K`` and load on another world size.

Run as a script by :func:`launch`: ``python dist_harness.py RANK WORLD INIT_FILE SPEC.json OUT_DIR``.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
V, H = 51, 8  # a vocabulary that no world size of 2 divides
STEPS, K = 8, 4  # steps per run; the checkpoint step


def launch(world: int, spec: list[dict], out: Path, timeout: float = 900.0) -> list[dict]:
    """Run ``spec`` on ``world`` ranks; return rank 0's results (every rank's are checked to agree)."""
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "spec.json"
    spec_file.write_text(json.dumps(spec))
    init = out / f"init-{time.monotonic_ns()}"
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    procs = [subprocess.Popen([sys.executable, str(Path(__file__)), str(r), str(world), str(init), str(spec_file),
                               str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    deadline = time.monotonic() + timeout
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"distributed harness ran past {timeout} s") from None
    for r, (p, log) in enumerate(zip(procs, logs)):
        if p.returncode != 0:
            raise AssertionError(f"rank {r} exited {p.returncode}:\n{log[-4000:]}")
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    for r in range(1, world):  # every rank saw the same full parameters
        for a, b in zip(results[0], results[r]):
            assert a.get("digest") == b.get("digest"), (a["id"], r)
    return results[0]


# ---------------------------------------------------------------------------------------------- in the worker
def _model(seed: int = 0):
    import torch
    from torch import nn

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, H)
            self.cls = nn.Parameter(torch.randn(1, H) * 0.1)  # one row: no rows at all on the second rank
            self.block = nn.Sequential(nn.Linear(H, 2 * H), nn.Tanh(), nn.Linear(2 * H, H))
            self.norm = nn.LayerNorm(H)

        def forward(self, x):
            h = self.emb(x) + self.cls
            h = self.norm(h + self.block(h))
            return h @ self.emb.weight.t()  # the LM head tied to the embedding

    torch.manual_seed(seed)
    return LM().double()


def _big_model(seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Embedding(4097, 256)  # float32, 2**20 + 256 elements: the default path compiles it


def _batch(step: int, rank: int, world: int, big: bool = False):
    """The global batch of ``step`` (4 rows) and this rank's share of it (``world`` divides 4)."""
    import torch

    g = torch.Generator().manual_seed(100 + step)
    x = torch.randint(0, 4097 if big else V, (4, 6), generator=g)
    n = 4 // world
    return x, x[rank * n:(rank + 1) * n]


def _loss(model, x, big: bool = False):
    import torch

    if big:
        return model(x).pow(2).mean()
    logits = model(x[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))


def _optimizer(sc: dict, model):
    import torch

    import adamlab

    path = dict(sc.get("path") or {})
    kw = dict(sc["kw"])
    for k, v in list(kw.items()):
        if isinstance(v, list):
            kw[k] = tuple(v)
    if isinstance(kw.get("state_dtype"), str):
        kw["state_dtype"] = getattr(torch, kw["state_dtype"])
    params = model if sc.get("groups") == "model" else list(model.parameters())
    return adamlab.create_optimizer(sc["name"], params, **kw, **path)


def _failing_compiles():
    """Every compiled chunk fails as a compiler failure would (the step falls back to the multi-tensor path)."""
    import torch._dynamo.exc

    from adamlab.optim import _compiled

    def fail(*args, **kwargs):
        raise torch._dynamo.exc.InternalTorchDynamoError("injected compiler failure")

    _compiled.compiled_chunk = fail


def _reference(sc: dict, steps: int):
    """The single-process loop run on the global batches: {name: parameter}."""

    big = sc.get("big", False)
    model = _big_model() if big else _model()
    ref = dict(sc, path={"foreach": False})
    opt = _optimizer(ref, model)
    for t in range(steps):
        x, _ = _batch(t, 0, 1, big)
        opt.zero_grad()
        _loss(model, x, big).backward()
        opt.step()
    return _full(model, opt)


def _plain_state(sc: dict, rank: int, world: int) -> dict:
    """A single-process run saved at step K (``state_dict()``: plain tensors) loads into the sharded optimizer,
    which continues to STEPS; its state dict loads back into a plain optimizer. Both against the one-process run."""
    import copy

    plain = _model()
    ref_opt = _optimizer(sc, plain)
    _train(sc, plain, ref_opt, 0, 1, 0, K)
    saved, weights = copy.deepcopy(ref_opt.state_dict()), copy.deepcopy(plain.state_dict())
    _train(sc, plain, ref_opt, 0, 1, K, STEPS)
    ref = _full(plain, ref_opt)
    model = _model(seed=7)
    model.load_state_dict(weights)
    model = _wrap(sc, model, world)
    opt = _optimizer(sc, model)
    opt.load_state_dict(saved)
    _train(sc, model, opt, rank, world, K, STEPS)
    sharded = _full(model, opt)
    back = _model(seed=7)
    back.load_state_dict(sharded_weights := {n: v for n, v in sharded.items() if "/" not in n})
    back_opt = _optimizer(sc, back)
    back_opt.load_state_dict(opt.state_dict())
    kinds = _state_kinds(back_opt)
    return {"id": sc["id"], "err": _compare(sharded, ref)[0], "missing": _compare(sharded, ref)[1],
            "back": _compare(_full(back, back_opt), sharded)[0], "back_kinds": kinds,
            "digest": _digest(sharded_weights)}


def _priority(sc: dict, world: int, rank: int):
    """The synced priority of the first step, (under the wrap, single process): Σ of the gradients' 2-norms."""
    import torch

    from adamlab.optim.critical import synced_priority

    out = []
    for wrapped in (True, False):
        model = _model()
        if wrapped:
            model = _wrap(sc, model, world)
        x, xb = _batch(0, rank, world)
        _loss(model, xb if wrapped else x).backward()
        grads = [p.grad for p in model.parameters()]
        out.append(float(synced_priority(grads)))
        if not wrapped:
            out.append(float(sum(torch.linalg.vector_norm(g) for g in grads)))
    return out


def _wrap(sc: dict, model, world: int):
    import torch
    from torch.distributed.device_mesh import init_device_mesh

    if sc["mode"] == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    if not sc.get("big"):
        fully_shard(model.block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _whole(t):
    t = t.detach()
    return t.full_tensor() if hasattr(t, "full_tensor") else t.clone()


def _full(model, opt=None) -> dict:
    """Every parameter (and, given ``opt``, every state tensor as ``name/key``) as a whole plain tensor."""
    out = {}
    for n, p in model.named_parameters():
        n = n.removeprefix("module.")
        out[n] = _whole(p)
        if opt is not None:
            for k, v in opt.state.get(p, {}).items():
                out[f"{n}/{k}"] = _whole(v)
    return out


def _compare(got: dict, ref: dict) -> tuple[float, list[str]]:
    """The largest relative difference (per tensor: max |a - b| / max |b|) and the names missing from ``got``."""
    err, missing = 0.0, []
    for n, r in ref.items():
        if n not in got or got[n].shape != r.shape:
            missing.append(n)
            continue
        d = (got[n].double() - r.double()).abs().max() if r.numel() else r.new_zeros(())
        err = max(err, float(d / r.double().abs().max().clamp_min(1e-300)) if r.numel() else 0.0)
    return err, missing


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _train(sc, model, opt, rank, world, start, stop, graphs_after=None):
    big = sc.get("big", False)
    seen = None
    for t in range(start, stop):
        _, xb = _batch(t, rank, world, big)
        opt.zero_grad()
        _loss(model, xb, big).backward()
        opt.step()
        if graphs_after is not None and t == graphs_after:
            seen = _graphs()
    return seen


def _digest(params: dict) -> str:
    import hashlib

    import torch

    h = hashlib.sha256()
    for n in sorted(params):
        h.update(params[n].cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _state_kinds(opt) -> list[str]:
    """How every state tensor is laid out: its type and placements."""
    kinds = set()
    for st in opt.state.values():
        for k, v in st.items():
            placements = getattr(v, "placements", None)
            kinds.add(f"{k}:{type(v).__name__}:{placements}")
    return sorted(kinds)


def _dcp_save(model, opt, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(path))


def _dcp_load(model, opt, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def run_scenario(sc: dict, rank: int, world: int, out: Path, refs: dict) -> dict:

    kind = sc.get("kind", "train")
    if kind == "plain":  # a one-process state dict (plain tensors) into the sharded optimizer, and back
        return _plain_state(sc, rank, world)
    if kind == "priority":
        got, plain, by_hand = _priority(sc, world, rank)
        return {"id": sc["id"], "priority": got, "single": plain, "by_hand": by_hand}
    key = json.dumps([sc["name"], sc["kw"], sc.get("big", False), sc.get("groups")], sort_keys=True)
    if key not in refs:
        refs[key] = _reference(sc, STEPS)
    ref = refs[key]
    big = sc.get("big", False)
    model = _wrap(sc, _big_model() if big else _model(seed=7 if kind == "load" else 0), world)
    opt = _optimizer(sc, model)
    res = {"id": sc["id"]}
    start = _graphs()
    if sc.get("fail_compile"):
        from adamlab.optim import _compiled

        original = _compiled.compiled_chunk
        _failing_compiles()
        try:
            return _run(sc, kind, model, opt, res, rank, world, out, ref, start)
        finally:
            _compiled.compiled_chunk = original
    return _run(sc, kind, model, opt, res, rank, world, out, ref, start)


def _run(sc, kind, model, opt, res, rank, world, out, ref, start):
    import torch

    if kind == "train":
        before = _train(sc, model, opt, rank, world, 0, STEPS, graphs_after=1)
        res["graphs_after_step_2"] = _graphs() - before
        res["graphs"] = _graphs() - start
        res["implementation"] = getattr(opt, "implementation", None)
        res["state"] = _state_kinds(opt)
    elif kind == "save":  # train to K, save; the loading run continues from there
        _train(sc, model, opt, rank, world, 0, K)
        _dcp_save(model, opt, out.parent / "ckpt" / sc["ckpt"])
        res["digest"] = _digest(_full(model, opt))
        return res
    elif kind == "load":  # load the checkpoint saved at K on another world size, continue to STEPS
        _dcp_load(model, opt, out.parent / "ckpt" / sc["ckpt"])
        _train(sc, model, opt, rank, world, K, STEPS)
    elif kind == "roundtrip":  # save at K and load into a fresh model and optimizer, same layout: bit for bit
        _train(sc, model, opt, rank, world, 0, K)
        path = out / f"rt-{sc['id']}"
        _dcp_save(model, opt, path)
        model2 = _wrap(sc, _model(seed=7), world)
        opt2 = _optimizer(sc, model2)
        _dcp_load(model2, opt2, path)
        _train(sc, model, opt, rank, world, K, STEPS)
        _train(sc, model2, opt2, rank, world, K, STEPS)
        a, b = _full(model, opt), _full(model2, opt2)
        res["bitwise"] = sorted(a) == sorted(b) and all(torch.equal(a[n], b[n]) for n in a)
    full = _full(model, opt)
    res["err"], res["missing"] = _compare(full, ref)
    res["digest"] = _digest(full)
    return res


def main(argv: list[str]) -> None:
    rank, world, init, spec_file, out = int(argv[0]), int(argv[1]), argv[2], Path(argv[3]), Path(argv[4])
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=180))
    spec = json.loads(spec_file.read_text())
    refs: dict = {}
    results = []
    for sc in spec:
        try:
            results.append(run_scenario(sc, rank, world, out, refs))
        except Exception as err:  # a failing scenario is a result (the test names it); the others still run
            results.append({"id": sc["id"], "error": f"{type(err).__name__}: {err}"[:2000],
                            "trace": traceback.format_exc()[-3000:]})
            dist.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
