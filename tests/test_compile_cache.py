"""The compiled path's graphs are shared between processes through inductor's on-disk cache, whose key does not
cover torch's thread count: a graph compiled while torch ran one thread, loaded by a process running two, gave
wrong results (AdamCG's parallel graph: 1.3e-2 relative error against the loop). adamlab tags the cache keys with
the thread count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adamlab
from adamlab.optim import _compiled

pytestmark = pytest.mark.skipif(not adamlab.optim.compiler_available(), reason="torch.compile is unavailable here")

SCRIPT = """
import sys, torch, adamlab
from trajectory import make_params, fake_grad
torch.set_num_threads(int(sys.argv[1]))
def run(path):
    ps = make_params(0, shapes=((5, 3), (7,), (40_000,)))  # (a tensor for the parallel graph)
    opt = adamlab.AdamCG(ps, lr=0.05, buffer_size=3, weight_decay=0.1, aggregation="mid", **path)
    for t in range(12):
        for i, p in enumerate(ps):
            p.grad = fake_grad(p, t) * (1 + (t * 7 + i) % 5)
        opt.step()
    return torch.cat([p.detach().flatten() for p in ps])
a, b = run(dict(foreach=False)), run(dict(compiled=True))
print(float((a - b).abs().max() / a.abs().max()))
"""


def test_a_graph_cached_by_a_one_thread_process_is_not_reused_by_a_two_thread_one(tmp_path):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    errs = []
    for threads in (1, 2):  # the first process fills the cache, the second loads from it
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(threads)], env=env, capture_output=True, text=True,
                             timeout=600, check=True)
        errs.append(float(out.stdout.strip().splitlines()[-1]))
    assert max(errs) < 1e-12, errs


def test_the_cache_key_tag_names_the_thread_count_and_is_put_back():
    before, threads, tags = torch.compiler.config.cache_key_tag, torch.get_num_threads(), []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with _compiled.no_duck_shapes():
                tags.append(torch.compiler.config.cache_key_tag)
    finally:
        torch.set_num_threads(threads)
    assert tags == [f"{before}adamlab-threads-1", f"{before}adamlab-threads-2"]
    assert torch.compiler.config.cache_key_tag == before
