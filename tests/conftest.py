import pytest
import torch

# Small problems: one thread is fastest and keeps parallel CI runs from fighting over the two cores.
torch.set_num_threads(1)

PATHS = [dict(foreach=False), dict(foreach=True), dict(compiled=True)]
PATH_IDS = ["loop", "foreach", "compiled"]


@pytest.fixture(params=PATHS, ids=PATH_IDS)
def path(request):
    return request.param
