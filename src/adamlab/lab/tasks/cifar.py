"""CIFAR-10 from the standard python pickle batches (data_batch_1..5, test_batch) in a user-given folder.

Nothing is downloaded unless asked (`adamlab bench --download-cifar`). A small CNN, sized for a CPU: the
default suite trains on a subset at 16x16 (2x2 average-pooled) so the whole suite stays within budget.
The batches are user files: they are unpickled by a reader that admits only what the format holds (dicts,
lists, bytes, ints, numpy arrays), so a crafted file cannot run code.
"""
from __future__ import annotations

import functools
import os
import pickle
import tarfile
import urllib.request

import numpy as np
import torch
from torch import nn

from ...errors import DataError
from .base import RunResult, Task
from .common import train_classifier

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def resolve_dir(path: str) -> str:
    """The folder holding the batches: `path` itself or its cifar-10-batches-py subfolder."""
    for cand in (path, os.path.join(path, "cifar-10-batches-py")):
        if os.path.isfile(os.path.join(cand, TEST_FILE)):
            return cand
    raise DataError(f"no CIFAR-10 python batches (data_batch_1..5, test_batch) in {path}")


# the globals a CIFAR-10 batch pickle refers to: numpy's array reconstruction (module renamed in numpy 2) and
# how protocol-2 pickles written by Python 3 spell bytes (_codecs.encode, and bytes() for b"")
FORMAT_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("__builtin__", "bytes"),
                  ("builtins", "bytes")}


class BatchUnpickler(pickle.Unpickler):
    """Refuses every global outside FORMAT_GLOBALS, so unpickling a crafted file cannot call anything else."""

    def find_class(self, module: str, name: str):
        if (module, name) in FORMAT_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused {module}.{name} (not part of the CIFAR-10 python format)")


def read_batch(file: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch -> (uint8 images [N, 3, 32, 32], int64 labels [N]); DataError naming the file if it
    is not a CIFAR-10 python batch."""
    def bad(why: str) -> DataError:
        return DataError(f"cannot read CIFAR-10 batch {file}: {' '.join(why.split())[:300]}")

    try:
        with open(file, "rb") as f:
            d = BatchUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise bad(e.strerror or str(e)) from None
    except pickle.UnpicklingError as e:
        raise bad(str(e)) from None
    except Exception as e:  # noqa: BLE001 - whatever a malformed pickle makes the unpickler raise
        raise bad(f"not a pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or b"data" not in d:
        raise bad("not a dict with b'data' and b'labels'")
    labels = d.get(b"labels", d.get(b"fine_labels"))
    if labels is None:
        raise DataError(f"CIFAR-10 batch {file} has no labels")
    try:
        data, labels = np.asarray(d[b"data"], dtype=np.uint8), np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise bad(f"data or labels are not arrays of integers ({e})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != data.shape[:1]:
        raise DataError(f"CIFAR-10 batch {file} has data of shape {data.shape} and labels of shape "
                        f"{labels.shape}, expected [N, 3072] and [N]")
    if not len(data):
        raise DataError(f"CIFAR-10 batch {file} has no images")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"CIFAR-10 batch {file} has labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def batch_files(path: str) -> list[str]:
    """The batch files a run reads: the training batches present, then the test batch."""
    root = resolve_dir(path)
    return [os.path.join(root, f) for f in TRAIN_FILES + [TEST_FILE] if os.path.isfile(os.path.join(root, f))]


@functools.lru_cache(maxsize=2)
def load_cifar10(path: str, digest: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`digest` (of the batch files) is part of the cache key: edited batches are read again."""
    *train, test = batch_files(path)
    if not train:
        raise DataError(f"no CIFAR-10 training batches (data_batch_1..5) in {os.path.dirname(test)}")
    parts = [read_batch(f) for f in train]
    xte, yte = read_batch(test)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xte, yte


def download_cifar10(dest: str) -> str:  # pragma: no cover - needs the network; never called by tests
    os.makedirs(dest, exist_ok=True)
    archive = os.path.join(dest, "cifar-10-python.tar.gz")
    if not os.path.isfile(archive):
        tmp = archive + ".part"
        urllib.request.urlretrieve(URL, tmp)
        os.replace(tmp, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return resolve_dir(dest)


def write_batch(file: str, images: np.ndarray, labels) -> None:
    """Write a batch in the official format (used by tests and for making small CIFAR-shaped sets)."""
    d = {b"batch_label": b"generated", b"labels": [int(v) for v in labels],
         b"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(labels), 3072),
         b"filenames": [f"{i}.png".encode() for i in range(len(labels))]}
    with open(file, "wb") as f:
        pickle.dump(d, f, protocol=2)


class CifarCNN(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(2 * w, 10))

    def forward(self, x):
        return self.net(x)


class Cifar10Task(Task):
    name = "cifar10_cnn"
    family = "vision"
    has_accuracy = True
    path_keys = ("data_dir",)

    def __init__(self, data_dir: str | None = None, **config):
        super().__init__(data_dir=data_dir, **config)
        self.data_dir = data_dir
        c = self.config
        self.description = (f"CIFAR-10 CNN (3 conv, width {c.get('width', 16)}), {c.get('n_train', 10000)} train / "
                            f"{c.get('n_test', 2000)} test images at {32 // int(c.get('downsample', 2))}px, "
                            f"batch {c.get('batch', 64)}, {c.get('steps', 200)} steps")

    def available(self):
        if not self.data_dir:
            return False, "no --cifar-dir given (CIFAR-10 is never downloaded unless --download-cifar)"
        try:
            resolve_dir(self.data_dir)
        except DataError as e:
            return False, str(e)
        return True, ""

    def data_files(self) -> list[str]:
        return batch_files(self.data_dir) if self.data_dir else []

    def check(self) -> None:
        load_cifar10(self.data_dir, self.data_digest)

    @functools.cached_property
    def tensors(self):
        c = self.config
        xtr, ytr, xte, yte = load_cifar10(self.data_dir, self.data_digest)
        ntr, nte = min(int(c.get("n_train", 10000)), len(ytr)), min(int(c.get("n_test", 2000)), len(yte))
        xtr, ytr, xte, yte = xtr[:ntr], ytr[:ntr], xte[:nte], yte[:nte]
        xtr, xte = (torch.tensor(a, dtype=torch.float32) / 255.0 for a in (xtr, xte))
        ds = int(c.get("downsample", 2))
        if ds > 1:
            xtr, xte = (torch.nn.functional.avg_pool2d(a, ds) for a in (xtr, xte))
        mean, std = xtr.mean((0, 2, 3), keepdim=True), xtr.std((0, 2, 3), keepdim=True) + 1e-3
        return (xtr - mean) / std, torch.tensor(ytr), (xte - mean) / std, torch.tensor(yte)

    def run(self, make_optimizer, seed: int, final: bool) -> RunResult:
        xtr, ytr, xte, yte = self.tensors
        torch.manual_seed(seed)
        model = CifarCNN(int(self.config.get("width", 16)))
        opt = make_optimizer(model)
        return train_classifier(model, opt, x_train=xtr, y_train=ytr, x_val=xte, y_val=yte,
                                steps=int(self.config.get("steps", 200)), batch=int(self.config.get("batch", 64)),
                                eval_every=int(self.config.get("eval_every", 25)), seed=seed, final=final,
                                sharp_batch=128)
