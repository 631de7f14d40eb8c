import math

import numpy as np
import pytest
import torch
from scipy import stats as st

from adamlab.lab.metrics import (
    isotropy,
    mean_embedding_ratio,
    performance_profile,
    sharpness,
    steps_to_target,
    target_loss,
)
from adamlab.lab.stats import holm, mean_ci, welch


def test_mean_ci_of_known_samples():
    s = mean_ci([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975, 4} * sd / sqrt(n)
    assert s.mean == 3 and s.n == 5
    assert s.lo == pytest.approx(3 - half, rel=1e-12) and s.hi == pytest.approx(3 + half, rel=1e-12)
    assert s.lo == pytest.approx(1.0367568385224, abs=1e-9)
    one = mean_ci([2.5])
    assert one.lo == one.hi == 2.5


def test_welch_matches_scipy_and_its_ci():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.5, 6.0, 7.5, 9.0]
    c = welch(a, b)
    ref = st.ttest_ind(a, b, equal_var=False)
    assert c.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert c.diff == pytest.approx(2.5 - 5.8)
    # the CI excludes 0 exactly when p < 0.05
    assert (c.hi < 0) == (c.p < 0.05)
    same = welch([1.0, 1.0], [1.0, 1.0])
    assert same.p == 1.0


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([0.2, float("nan"), 0.001])
    assert out[2] == pytest.approx(0.002) and math.isnan(out[1]) and out[0] == pytest.approx(0.2)


def test_isotropy_of_known_matrices():
    cross = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]])
    assert isotropy(cross) == pytest.approx(1.0, abs=1e-12)
    a = 0.7
    same = torch.tensor([[a, 0.0]] * 5, dtype=torch.float64)  # Z(±e1) = 5 e^{±a}, Z(±e2) = 5  -> min/max = e^{-2a}
    assert isotropy(same) == pytest.approx(math.exp(-2 * a), rel=1e-10)
    # shifting every row by a common vector makes it less isotropic
    g = torch.Generator().manual_seed(0)
    E = torch.randn(500, 8, generator=g) * 0.3
    assert isotropy(E) > 0.5
    assert isotropy(E + 1.0) < 0.5 * isotropy(E)


def test_mean_embedding_ratio():
    assert mean_embedding_ratio(torch.tensor([[1.0, 2.0]] * 4)) == pytest.approx(1.0)
    assert mean_embedding_ratio(torch.tensor([[1.0, 0], [-1.0, 0]])) == pytest.approx(0.0)
    E = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # mean (1.5, 2) has norm 2.5; mean row norm 2.5
    assert mean_embedding_ratio(E) == pytest.approx(1.0)


def test_sharpness_of_a_quadratic_is_its_top_eigenvalue():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    H = (q * torch.tensor([7.0, 2.0, 1.0, 0.5, 0.1, 0.01], dtype=torch.float64)) @ q.T
    x = torch.nn.Parameter(torch.randn(6, generator=g, dtype=torch.float64))
    lam = sharpness(lambda: 0.5 * x @ H @ x + x.sum(), [x], iters=100, tol=1e-12)
    assert lam == pytest.approx(7.0, rel=1e-6)


def test_sharpness_of_a_network_matches_the_dense_hessian():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    xb, yb = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    params = list(net.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(vec):
        out, i = xb, 0
        ws = []
        for p in params:
            ws.append(vec[i:i + p.numel()].reshape(p.shape))
            i += p.numel()
        h = torch.tanh(out @ ws[0].T + ws[1])
        return ((h @ ws[2].T + ws[3] - yb) ** 2).mean()

    H = torch.autograd.functional.hessian(loss_of, flat)
    eig = torch.linalg.eigvalsh(H)
    top = eig[eig.abs().argmax()]
    lam = sharpness(lambda: ((net(xb) - yb) ** 2).mean(), params, iters=300, tol=1e-12)
    assert lam == pytest.approx(float(top), rel=1e-4)


def test_steps_to_target_and_target():
    steps = [0, 10, 20, 30, 40]
    vals = [5.0, 3.0, 1.2, 0.9, 1.1]
    assert target_loss(5.0, 1.0, 0.9) == pytest.approx(1.4)
    assert steps_to_target(steps, vals, 1.4) == 20
    assert steps_to_target(steps, vals, 0.9) == 30
    assert steps_to_target(steps, vals, 0.5) == math.inf
    assert steps_to_target(steps, [5.0, float("inf"), 1.0, 1, 1], 1.0) == 20


def test_performance_profile():
    times = {"a": {"t1": 10, "t2": 40, "t3": math.inf}, "b": {"t1": 20, "t2": 20, "t3": 30}}
    prof = performance_profile(times, [1.0, 2.0, 3.0])
    # a: ratios 1, 2, inf ; b: ratios 2, 1, 1
    assert prof["a"] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert prof["b"] == pytest.approx([2 / 3, 1.0, 1.0])
    assert np.all(np.diff(prof["a"]) >= 0)
