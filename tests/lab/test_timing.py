import math

import torch

from adamlab.lab.tasks import build_task
from adamlab.lab.timing import capture_parameters, step_times


def test_capture_parameters_does_not_train():
    t = build_task("digits_mlp", {"steps": 5})
    m = capture_parameters(t)
    assert isinstance(m, torch.nn.Module) and all(p.grad is None for p in m.parameters())
    p = capture_parameters(build_task("rosenbrock", {"steps": 5}))
    assert isinstance(p, list) and p[0].shape == (2,)


def test_step_times_are_measured_per_optimizer_and_leave_the_model_alone():
    torch.set_num_threads(1)
    t = build_task("digits_mlp", {"steps": 5})
    before = [q.detach().clone() for q in capture_parameters(t).parameters()]
    times = step_times(t, {"sgd": {}, "adam": {}, "adamcm": {"buffer_size": 20}}, rounds=3, steps=5)
    assert set(times) == {"sgd", "adam", "adamcm"}
    assert all(0 < v < 0.5 and math.isfinite(v) for v in times.values())
    # plain SGD does strictly less work per step than Adam with a 20-slot critical-momenta buffer
    assert times["sgd"] < times["adamcm"]
    after = list(capture_parameters(t).parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))
