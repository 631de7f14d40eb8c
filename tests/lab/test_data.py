"""User data files (--text, --cifar-dir): read safely, validated before any training, keyed by their content."""
import os
import pickle

import numpy as np
import pytest

from adamlab.lab.tasks import build_task
from adamlab.lab.tasks.charlm import DataError
from adamlab.lab.tasks.cifar import TEST_FILE, TRAIN_FILES, Cifar10Task, read_batch, write_batch

from .test_cifar import make_cifar

CIFAR_CFG = dict(steps=4, eval_every=2, width=4, n_train=64, n_test=32, batch=16, downsample=4)
WORD_CFG = dict(steps=4, eval_every=2, vocab=100, d=8, batch=8, val_batch=32, max_words=5000)
CHAR_CFG = dict(steps=4, eval_every=2, d=8, layers=1, block=8, batch=4, val_batch=4)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_cifar_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    root = make_cifar(str(tmp_path / "c"), n=8, files=TRAIN_FILES[:1])
    with open(os.path.join(root, TEST_FILE), "wb") as f:
        pickle.dump({b"data": Evil(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataError) as e:
        read_batch(os.path.join(root, TEST_FILE))
    msg = str(e.value)
    assert "\n" not in msg and TEST_FILE in msg and "system" in msg, msg
    assert not marker.exists()
    with pytest.raises(DataError, match=TEST_FILE):
        Cifar10Task(root, **CIFAR_CFG).check()
    assert not marker.exists()


def test_the_reader_admits_only_the_cifar_format(tmp_path):
    """Anything the format does not hold is refused, whatever the pickle protocol."""
    good = tmp_path / "good"
    write_batch(str(good), np.zeros((2, 3, 32, 32), np.uint8), [1, 2])
    x, y = read_batch(str(good))
    assert x.shape == (2, 3, 32, 32) and list(y) == [1, 2]
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        for obj in ({b"data": Evil(tmp_path / "m"), b"labels": []},
                    {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": slice(1)},  # builtins.slice
                    {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": np.float32}):
            bad = tmp_path / f"bad{proto}"
            bad.write_bytes(pickle.dumps(obj, protocol=proto))
            with pytest.raises(DataError, match="bad"):
                read_batch(str(bad))
    assert not (tmp_path / "m").exists()


def _write(root, name, payload: bytes):
    with open(os.path.join(root, name), "wb") as f:
        f.write(payload)


@pytest.mark.parametrize("problem, message", [
    ("truncated", "cannot read"),
    ("not a pickle", "cannot read"),
    ("wrong shape", "shape"),
    ("labels out of range", "labels"),
    ("labels missing", "labels"),
    ("not a dict", "cannot read"),
    ("empty", "no images"),
])
def test_broken_cifar_batches_fail_the_check_naming_the_file(tmp_path, problem, message):
    root = make_cifar(str(tmp_path / "c"), n=16, files=TRAIN_FILES[:2])
    target = os.path.join(root, TRAIN_FILES[1])
    raw = open(target, "rb").read()
    data = np.zeros((4, 3072), np.uint8)
    payload = {
        "truncated": raw[:len(raw) // 2],
        "not a pickle": b"GIF89a" + bytes(300),
        "wrong shape": pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, protocol=2),
        "labels out of range": pickle.dumps({b"data": data, b"labels": [0, 1, 2, 10]}, protocol=2),
        "labels missing": pickle.dumps({b"data": data}, protocol=2),
        "not a dict": pickle.dumps([1, 2, 3], protocol=2),
        "empty": pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, protocol=2),
    }[problem]
    _write(root, TRAIN_FILES[1], payload)
    task = Cifar10Task(root, **CIFAR_CFG)
    assert task.available() == (True, "")  # the folder holds batches ...
    with pytest.raises(DataError) as e:  # ... but they cannot make the task, and that is known before training
        task.check()
    msg = str(e.value)
    assert "\n" not in msg and TRAIN_FILES[1] in msg and message in msg, msg


@pytest.mark.parametrize("text", ["天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。" * 200,  # UTF-8, but no a-z word
                                  "0123456789 42 7 " * 300])
def test_text_without_latin_words_fails_the_word_task_before_training(tmp_path, text):
    p = tmp_path / "corpus.txt"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        build_task("word_lm", WORD_CFG, text=str(p)).check()
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and "a-z" in msg, msg
    build_task("char_gpt", CHAR_CFG, text=str(p)).check()  # characters are fine for the char-level model


def test_text_problems_are_check_failures(tmp_path):
    short, binary = tmp_path / "short.txt", tmp_path / "bin.txt"
    short.write_text("tiny", encoding="utf-8")
    binary.write_bytes(b"\xff\xfe\x00" * 1000)
    for p, what in ((short, "too short"), (binary, "UTF-8")):
        for name, cfg in (("char_gpt", CHAR_CFG), ("word_lm", WORD_CFG)):
            with pytest.raises(DataError, match=what) as e:
                build_task(name, cfg, text=str(p)).check()
            assert str(p) in str(e.value)


def test_the_task_hash_follows_the_content_not_the_file_name(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("to be or not to be " * 200, encoding="utf-8")
    b.write_text("to be or not to be " * 200, encoding="utf-8")
    for name, cfg in (("char_gpt", CHAR_CFG), ("word_lm", WORD_CFG)):
        h = build_task(name, cfg, text=str(a)).hash
        assert build_task(name, cfg, text=str(b)).hash == h  # same bytes elsewhere: the same runs
        a.write_text("to see or not to see " * 200, encoding="utf-8")  # edited in place, same name
        t = build_task(name, cfg, text=str(a))
        assert t.hash != h
        t.check()
        a.write_text("to be or not to be " * 200, encoding="utf-8")
    # the corpus is rebuilt from the new content, not served from a cache keyed by the name
    a.write_text("abc " * 1000, encoding="utf-8")
    from adamlab.lab.tasks.charlm import char_corpus
    t = build_task("char_gpt", CHAR_CFG, text=str(a))
    assert char_corpus(t.text, t.data_digest, 1000)[2] == 4


def test_the_cifar_hash_follows_the_batch_files(tmp_path):
    root = make_cifar(str(tmp_path / "c"), n=8, files=TRAIN_FILES[:1])
    h = Cifar10Task(root, **CIFAR_CFG).hash
    assert Cifar10Task(root, **CIFAR_CFG).hash == h
    write_batch(os.path.join(root, TEST_FILE), np.ones((8, 3, 32, 32), np.uint8), [3] * 8)
    t = Cifar10Task(root, **CIFAR_CFG)
    assert t.hash != h
    t.check()
    _, _, _, yte = t.tensors
    assert yte.tolist() == [3] * 8  # the edited batch is what gets loaded
