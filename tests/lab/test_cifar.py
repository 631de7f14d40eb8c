import os

import numpy as np
import pytest
import torch

from adamlab.lab.tasks.base import Task
from adamlab.lab.tasks.charlm import DataError
from adamlab.lab.tasks.cifar import (
    TEST_FILE,
    TRAIN_FILES,
    Cifar10Task,
    load_cifar10,
    read_batch,
    resolve_dir,
    write_batch,
)


def make_cifar(root, n=64, seed=0, files=TRAIN_FILES):
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for f in list(files) + [TEST_FILE]:
        y = rng.integers(0, 10, n)
        # class-dependent colour so a CNN can learn it
        x = (rng.integers(0, 60, (n, 3, 32, 32)) + 18 * y[:, None, None, None]).astype(np.uint8)
        write_batch(os.path.join(root, f), x, y)
    return root


def test_reader_on_generated_pickles(tmp_path):
    root = make_cifar(str(tmp_path / "cifar-10-batches-py"), n=50)
    x, y = read_batch(os.path.join(root, "data_batch_1"))
    assert x.shape == (50, 3, 32, 32) and x.dtype == np.uint8 and y.shape == (50,)
    # the official layout: 1024 red, then 1024 green, then 1024 blue values, row-major
    import pickle
    with open(os.path.join(root, "data_batch_1"), "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert np.array_equal(x[3, 1, 2, 5], raw[b"data"][3][1024 + 2 * 32 + 5])
    assert list(y) == raw[b"labels"]
    assert resolve_dir(str(tmp_path)) == root  # the parent folder works too
    load_cifar10.cache_clear()
    xtr, ytr, xte, yte = load_cifar10(str(tmp_path))
    assert xtr.shape == (250, 3, 32, 32) and xte.shape == (50, 3, 32, 32)


def test_reader_errors(tmp_path):
    with pytest.raises(DataError):
        resolve_dir(str(tmp_path))
    (tmp_path / TEST_FILE).write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read"):
        read_batch(str(tmp_path / TEST_FILE))


def test_cifar_task_trains_on_generated_data(tmp_path):
    root = make_cifar(str(tmp_path / "c"), n=128, files=TRAIN_FILES[:2])
    load_cifar10.cache_clear()
    t = Cifar10Task(root, steps=40, eval_every=10, width=4, n_train=256, n_test=128, batch=32, downsample=4)
    assert isinstance(t, Task) and t.available() == (True, "")
    assert not Cifar10Task(None).available()[0]
    res = t.run(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), seed=0, final=True)
    assert res.final_val_acc > 0.25  # colour encodes the class (chance: 0.1)
    assert res.final_val_loss < res.initial_val_loss
    assert res.extra["sharpness"] > 0
