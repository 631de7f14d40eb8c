"""Every optimizer under FSDP2 (DTensor parameters, a vocabulary that does not divide by the world size) and DDP,
on every path, against one process on the same global batch; distributed checkpoints from 2 ranks to 1 and from
1 to 2. Two gloo ranks on the CPU, run by the one harness in ``dist_harness.py`` (three launches in all)."""

from __future__ import annotations

import pytest
import torch.distributed as dist

import adamlab

from dist_harness import launch
from optim_db import CASES, DB, IDS

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is unavailable")

NAMES = list(DB)
PATHS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "compiled": {"compiled": True}, "default": {}}
TOL = 1e-12  # float64, relative (per tensor: max |a - b| / max |b|), parameters and every state tensor


def _train_specs() -> list[dict]:
    specs = []
    for case, (name, kw) in zip(IDS, CASES):  # every setting of the test table on the two eager paths
        for path in ("loop", "foreach"):
            specs.append(dict(id=f"fsdp-{path}-{case}", name=name, kw=kw, path=PATHS[path], mode="fsdp"))
    for name in NAMES:  # the compiled and default paths on each optimizer's richest setting (the one
        kw = DB[name].richest.kwargs  # test_all_optimizers compiles: the compile cache serves both)
        for path in ("compiled", "default"):
            specs.append(dict(id=f"fsdp-{path}-{name}", name=name, kw=kw, path=PATHS[path], mode="fsdp"))
            specs.append(dict(id=f"ddp-{path}-{name}", name=name, kw=kw, path=PATHS[path], mode="ddp"))
    for name in ("adam", "adamcm", "ademamix"):
        for path in ("loop", "foreach"):
            specs.append(dict(id=f"fsdp-{path}-{name}-bf16state", name=name, kw=dict(lr=0.01, state_dtype="bfloat16"),
                              path=PATHS[path], mode="fsdp"))
    specs.append(dict(id="fsdp-default-coupledadam-model-groups", name="coupledadam", kw=dict(lr=0.01), path={},
                      mode="fsdp", groups="model"))
    for name in ("adam", "adamcm"):  # (AdamCM synced: its sharded tensors compile)
        specs.append(dict(id=f"fsdp-compiled-{name}-failing-compiler", name=name, kw=DB[name].settings[0].kwargs,
                          path=PATHS["compiled"], mode="fsdp", fail_compile=True))
    # the everyday case that crashed: a bucket of 2**20 elements whose rows do not divide by 2, default settings
    specs.append(dict(id="fsdp-default-adamw-4097x256", name="adamw", kw={}, path={}, mode="fsdp", big=True))
    return specs


def _checkpoints(kind: str, world: int) -> list[dict]:
    return [dict(id=f"{mode}-{kind}-from{world}-{name}", name=name, kw=DB[name].richest.kwargs, path={}, mode=mode,
                 kind=kind, ckpt=f"{mode}-{name}-w{world}") for name in NAMES for mode in ("fsdp", "ddp")]


TRAIN = _train_specs()
ROUNDTRIP = [dict(id=f"fsdp-roundtrip-{name}", name=name, kw=DB[name].richest.kwargs, path={}, mode="fsdp",
                  kind="roundtrip") for name in NAMES]
PRIORITY = [dict(id="fsdp-priority", name="adamcm", kw={}, path={}, mode="fsdp", kind="priority")]
PLAIN = [dict(id=f"fsdp-plain-state-{name}", name=name, kw=DB[name].richest.kwargs, path={}, mode="fsdp", kind="plain")
         for name in ("adam", "adamcm", "coupledadam")]
LOAD_ON_2 = _checkpoints("load", 1)
LOAD_ON_1 = _checkpoints("load", 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("dist")
    out = launch(1, _checkpoints("save", 1), root / "one")
    out += launch(2, TRAIN + ROUNDTRIP + PRIORITY + PLAIN + LOAD_ON_2 + _checkpoints("save", 2), root / "two")
    out += launch(1, LOAD_ON_1, root / "three")
    return {r["id"]: r for r in out}


def _ok(r: dict) -> dict:
    assert "error" not in r, f"{r['id']}: {r['error']}\n{r.get('trace', '')}"
    return r


def test_table_covers_every_optimizer():
    assert sorted(NAMES) == sorted(adamlab.list_optimizers())


@pytest.mark.parametrize("sc", TRAIN, ids=[s["id"] for s in TRAIN])
def test_sharded_training_matches_one_process(runs, sc):
    r = _ok(runs[sc["id"]])
    assert r["missing"] == []
    tol = 1e-5 if sc.get("big") else TOL  # the big case is float32
    assert r["err"] < tol, r["err"]
    assert r["graphs_after_step_2"] == 0  # no rank recompiles, whatever its shard sizes
    if sc["path"] == PATHS["compiled"] and not sc.get("fail_compile"):
        assert r["implementation"] == "compiled"
    if sc.get("fail_compile"):
        assert r["implementation"] == "foreach"  # fell back, and kept training
    if sc.get("big"):
        assert r["graphs"] > 0  # the default path compiled the 2**20-element bucket


def test_state_is_laid_out_like_the_parameter(runs):
    adamcm = set(_ok(runs["fsdp-loop-adamcm-0"])["state"])
    assert {"exp_avg:DTensor:(Shard(dim=0),)", "exp_avg_sq:DTensor:(Shard(dim=0),)",
            "buffer:DTensor:(Shard(dim=1),)", "priorities:Tensor:None", "count:Tensor:None",
            "step:Tensor:None"} == adamcm
    bf16 = set(_ok(runs["fsdp-foreach-adam-bf16state"])["state"])
    assert "exp_avg:DTensor:(Shard(dim=0),)" in bf16
    assert set(_ok(runs["ddp-default-adamcm"])["state"]) == {
        "exp_avg:Tensor:None", "exp_avg_sq:Tensor:None", "buffer:Tensor:None", "priorities:Tensor:None",
        "count:Tensor:None", "step:Tensor:None"}


def test_synced_priority_sums_the_global_norms(runs):
    r = _ok(runs["fsdp-priority"])
    assert abs(r["priority"] - r["by_hand"]) <= 1e-12 * r["by_hand"]
    assert abs(r["single"] - r["by_hand"]) <= 1e-12 * r["by_hand"]


@pytest.mark.parametrize("sc", LOAD_ON_2 + LOAD_ON_1, ids=[s["id"] for s in LOAD_ON_2 + LOAD_ON_1])
def test_checkpoint_resumes_on_another_world_size(runs, sc):
    """DCP saved at step 4 on one world size, loaded into a model of another initialisation on the other, continued
    to step 8: the single-process trajectory to round-off."""
    r = _ok(runs[sc["id"]])
    assert r["missing"] == []
    assert r["err"] < TOL, r["err"]


@pytest.mark.parametrize("sc", ROUNDTRIP, ids=[s["id"] for s in ROUNDTRIP])
def test_checkpoint_in_the_same_layout_continues_bit_for_bit(runs, sc):
    r = _ok(runs[sc["id"]])
    assert r["bitwise"] is True
    assert r["err"] < TOL


@pytest.mark.parametrize("sc", PLAIN, ids=[s["id"] for s in PLAIN])
def test_a_plain_state_dict_loads_into_the_sharded_optimizer_and_back(runs, sc):
    """load_state_dict lays out a one-process (plain) state for DTensor parameters, and gathers a sharded one for
    plain parameters."""
    r = _ok(runs[sc["id"]])
    assert r["missing"] == [] and r["err"] < TOL and r["back"] < TOL
    assert all(":Tensor:None" in k for k in r["back_kinds"])
