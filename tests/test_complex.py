"""Complex parameters: every optimizer steps their real view (torch.view_as_real), as torch.optim does; state
tensors shaped like the parameter are stored complex, as torch.optim stores them."""

from __future__ import annotations

import pytest
import torch

import adamlab

from conftest import PATH_IDS, PATHS
from optim_db import DB, torch_reference_names

NAMES = adamlab.list_optimizers()


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_a_complex_parameter_is_optimised_as_its_real_view(name, path):
    """Every optimizer refused complex parameters; torch.optim optimises their real view."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(5, 3, dtype=torch.complex128, generator=gen).requires_grad_()
    r = torch.view_as_real(z.detach()).clone().requires_grad_()
    kw = dict(lr=0.01, **path)
    oz = adamlab.create_optimizer(name, [z], **kw)
    orr = adamlab.create_optimizer(name, [r], **kw)
    for _ in range(4):
        gz = torch.randn(5, 3, dtype=torch.complex128, generator=gen)
        z.grad, r.grad = gz, torch.view_as_real(gz).clone()
        oz.step()
        orr.step()
    assert z.dtype == torch.complex128
    assert not torch.equal(torch.view_as_real(z.detach()), torch.view_as_real(torch.zeros_like(z)))
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-12, atol=0)
    assert all(v.is_complex() for k, v in oz.state[z].items() if v.shape == z.shape)  # stored as torch stores it


@pytest.mark.parametrize("name", torch_reference_names())
def test_complex_parameters_match_torch(name):
    row = DB[name]
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(4, 2, dtype=torch.complex128, generator=gen).requires_grad_()
    w = z.detach().clone().requires_grad_()
    ours, theirs = adamlab.create_optimizer(name, [z], lr=0.01), row.reference.make(row, [w], lr=0.01)
    for _ in range(4):
        g = torch.randn(4, 2, dtype=torch.complex128, generator=gen)
        z.grad, w.grad = g, g.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(z, w, rtol=1e-14, atol=0)
