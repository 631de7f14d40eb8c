"""Checks of the folders and files the user names, made before anything is written (no torch, no optuna here:
`adamlab speed` uses them too)."""
from __future__ import annotations

import os
import sqlite3
import tempfile
import urllib.parse

from ..errors import LabError

__all__ = ["LabError", "writable", "check_out", "check_db"]


def writable(folder: str) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_out(out: str) -> None:
    """--out must be a writable folder or a path where one can be made (nothing is created here)."""
    if os.path.isdir(out):
        if not writable(out):
            raise LabError(f"--out {out}: not writable")
        return
    if os.path.lexists(out):
        raise LabError(f"--out {out}: not a directory")
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise LabError(f"--out {out}: cannot create it ({parent} is not a directory)")
    if not writable(parent):
        raise LabError(f"--out {out}: cannot create it ({parent} is not writable)")


def check_db(path: str, *, results: bool) -> None:
    """LabError unless `path` is an intact SQLite file; with `results`, one written by `adamlab bench` (for a
    bench, an absent or empty file is a new database). Reads only."""
    if not results and (not os.path.exists(path) or os.path.getsize(path) == 0):
        return
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro", uri=True)
        try:
            status = con.execute("PRAGMA quick_check").fetchone()[0]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error as e:
        raise LabError(f"{path}: not a readable SQLite database ({e})") from None
    if status != "ok":
        raise LabError(f"{path}: damaged database ({' '.join(status.split())[:200]})")
    if results and "lab_meta" not in tables:
        raise LabError(f"{path}: not a database written by adamlab bench")
