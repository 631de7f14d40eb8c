"""The examples run as users run them: FSDP2 with distributed checkpoints under torchrun, the Hugging Face Trainer
and Lightning, each resumed from a checkpoint and continuing exactly as the uninterrupted run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import adamlab

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))


def _torchrun(world: int, *args: str) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                          str(EXAMPLES / "fsdp2_dcp.py"), *args], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return float(re.search(r"final loss (\S+) after step", out.stdout).group(1))


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no gloo")
def test_fsdp2_example_resumes_from_its_checkpoint_on_any_world_size(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    straight = _torchrun(2, "--optimizer", "adamcm", "--steps", "6", "--save-at", "3", "--ckpt", ckpt)
    assert _torchrun(2, "--optimizer", "adamcm", "--steps", "6", "--resume", ckpt) == straight  # the same layout
    on_one = _torchrun(1, "--optimizer", "adamcm", "--steps", "6", "--resume", ckpt)  # resharded: float32 round-off
    assert on_one == pytest.approx(straight, rel=1e-5)


def test_hf_trainer_example_resumes_exactly(tmp_path):
    import hf_trainer

    out = tmp_path / "hf"
    straight = hf_trainer.main(["--out", str(out), "--steps", "16"])
    shutil.rmtree(out / "checkpoint-16")
    resumed = hf_trainer.main(["--out", str(out), "--steps", "16", "--resume"])
    assert sorted(straight) == sorted(resumed)
    for name, p in straight.items():
        assert torch.equal(p, resumed[name]), name
    start = torch.load(out / "checkpoint-8" / "optimizer.pt", weights_only=True)
    assert any(g.get("coupled") for g in start["param_groups"])  # the embeddings were coupled


def test_trainer_style_groups_warn_that_coupling_is_for_matrices():
    """The Trainer hands over every tensor in its own groups, biases included: CoupledAdam says what to use."""
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))
    with pytest.warns(UserWarning, match=r"coupled_param_groups"):
        adamlab.CoupledAdam([{"params": list(model.parameters()), "weight_decay": 0.0}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adamlab.groups.coupled_adam(model)  # the embedding coupled, the rest AdamW: no warning


def test_lightning_example_resumes_exactly(tmp_path):
    import lightning_module

    out = tmp_path / "pl"
    straight = lightning_module.main(["--out", str(out), "--steps", "16"])
    resumed = lightning_module.main(["--out", str(tmp_path / "pl2"), "--steps", "16",
                                     "--resume", str(out / "step=8.ckpt")])
    for name, p in straight.items():
        assert torch.equal(p, resumed[name]), name
    lightning_module.L.seed_everything(0, verbose=False)  # as main() starts: the weights did train
    assert not torch.equal(straight["emb.weight"], lightning_module.TinyLM().emb.weight.detach())
