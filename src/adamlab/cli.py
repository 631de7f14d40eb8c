"""Command line: `adamlab bench`, `adamlab report`, `adamlab tasks` and `adamlab speed`. Thin: parses arguments
and calls the lab (or the speed benchmark)."""
from __future__ import annotations

import argparse
import os
import sys


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (`PROG: error: MESSAGE`) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="adamlab", description="Train small real models with every adamlab optimizer under an equal "
               "tuning budget and report which of the papers' claims held.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    b = sub.add_parser("bench", help="tune, re-run over seeds, write the report (resumable)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Tune every optimizer with the same quasi-random budget on every task, re-run the "
                       "best setting over several seeds and write report.html / summary.md / PNGs / adamlab.db to "
                       "--out. Interrupting (even kill -9) and re-running the same command continues where it stopped.",
                       epilog="Exit status: 0 done; 1 done, but a task was not run because its data (--text, "
                       "--cifar-dir) cannot make it (said on stderr and in the report); 2 bad arguments or files, "
                       "nothing run.")
    b.add_argument("--suite", choices=["smoke", "default", "full"], default="default",
                   help="smoke: <1 min check; default: ~6-8 min on 2 cores; full: bigger models, for bigger machines")
    b.add_argument("--tasks", default=None, help="comma-separated task names (default: every task of the suite whose "
                   "data is present); see `adamlab tasks`")
    b.add_argument("--optimizers", default=None, help="comma-separated registry names (default: all)")
    b.add_argument("--out", default="adamlab-results", help="output folder (report, plots, database)")
    b.add_argument("--storage", default=None, help="where the studies and the runs live, shared by every bench that "
                   "names it: postgresql://USER:PASSWORD@HOST/DB (pip install \"adamlab[postgres]\"), "
                   "postgresql+psycopg2://..., sqlite:///PATH (one machine) or journal:PATH (a file on a file system "
                   "the machines share; runs go to PATH.adamlab.db); default: sqlite:///OUT/adamlab.db")
    b.add_argument("--heartbeat", type=int, default=10, help="seconds between a running trial's heartbeats; a "
                   "trial silent for 3 heartbeats is taken as dead and run again")
    b.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="local processes sharing the studies")
    b.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    b.add_argument("--trials", type=int, default=0, help="tuning trials per optimizer and task (0: the suite's)")
    b.add_argument("--seeds", type=int, default=0, help="seeds for the best setting (0: the suite's, >= 2)")
    b.add_argument("--until-decided", type=int, default=0, metavar="MAX_SEEDS", help="after the seeds, add --seeds "
                   "more at a time only where a claim's comparison is still open, up to MAX_SEEDS seeds (the verdicts "
                   "are corrected for looking more than once); 0: off")
    b.add_argument("--protocols", default=None, help="comma-separated papers' protocols run beside the tuned one "
                   "(default: the suite's; 'none' for none); see `adamlab tasks`")
    b.add_argument("--text", default=None, help="UTF-8 text file for the language-model tasks (default: bundled "
                   "Shakespeare)")
    b.add_argument("--cifar-dir", default=None, help="folder with the CIFAR-10 python batches (data_batch_1..5, "
                   "test_batch); without it the CIFAR task is skipped")
    b.add_argument("--download-cifar", action="store_true", help="download CIFAR-10 (170 MB) into --cifar-dir "
                   "(default OUT/cifar-10) first; the only network access adamlab ever makes")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    r = sub.add_parser("report", help="rebuild report.html and summary.md from a results folder's database")
    r.add_argument("dir", help="a folder written by `adamlab bench`; with --storage, the folder to write the "
                   "report into")
    r.add_argument("--storage", default=None, help="read the studies and runs from this storage (the URL the "
                   "benches were given) instead of DIR/adamlab.db")
    sub.add_parser("tasks", help="list the tasks")
    sub.add_parser("speed", add_help=False, help="time every optimizer step against the memory-bandwidth ceiling, "
                   "torch.optim and pytorch_optimizer (see `adamlab speed --help`)")
    return p


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def _report(folder: str, storage: str | None = None) -> int:
    """`adamlab report DIR`: rebuild the report, or a one-line error with nothing written."""
    import sqlite3

    from adamlab.errors import LabError
    from adamlab.lab.files import check_db, writable
    from adamlab.lab.report import build_report

    if storage is not None:
        return _report_storage(folder, storage)
    db = os.path.join(folder, "adamlab.db")
    if not os.path.isfile(db):
        raise LabError(f"no adamlab.db in {folder} (for a bench run with --storage URL: adamlab report --storage "
                       f"URL {folder})")
    if not writable(folder):
        raise LabError(f"{folder}: not writable (the report is written beside adamlab.db)")
    check_db(db, results=True)
    try:
        print(build_report(folder))
    except sqlite3.DatabaseError as e:
        raise LabError(f"{db}: damaged database ({e})") from None
    return 0


def _report_storage(folder: str, storage: str) -> int:
    from adamlab.errors import LabError
    from adamlab.lab.files import check_out
    from adamlab.lab.report import build_report
    from adamlab.lab.storages import mask, open_storage, scrub
    from adamlab.lab.store import Store

    check_out(folder)
    optuna_storage = open_storage(storage)  # LabError (masked) if it cannot be opened
    try:
        store = Store(optuna_storage.target.store, wal=optuna_storage.target.wal)
        has = store.get_meta("config") is not None
        store.close()
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LabError(scrub(f"--storage {mask(storage)}: cannot read the lab tables: {msg}", storage)) from None
    if not has:
        raise LabError(f"--storage {mask(storage)}: no adamlab bench has written there")
    os.makedirs(folder, exist_ok=True)
    print(build_report(folder, storage))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["speed"]:
        from adamlab.speed import main as speed_main

        return speed_main(argv[1:])
    args = _parser().parse_args(argv)
    from adamlab.errors import DataError, LabError

    try:
        if args.command == "tasks":
            from adamlab.lab.protocols import PROTOCOLS
            from adamlab.lab.suites import SUITES, all_task_names
            from adamlab.lab.tasks import build_task
            for n in all_task_names():
                spec = next(s["tasks"][n] for s in (SUITES["default"], SUITES["full"]) if n in s["tasks"])
                print(f"{n:<16} {build_task(n, spec).description}")
            print("\nprotocols (--protocols):")
            for p in PROTOCOLS.values():
                print(f"{p.name:<16} {p.description}")
            return 0
        if args.command == "report":
            return _report(args.dir, args.storage)
        from adamlab.lab.bench import run_bench
        from adamlab.lab.files import check_out
        from adamlab.lab.protocol import BenchConfig

        cifar = args.cifar_dir
        if args.download_cifar:
            from adamlab.lab.tasks.cifar import download_cifar10
            check_out(args.out)
            cifar = cifar or os.path.join(args.out, "cifar-10")
            try:
                download_cifar10(cifar)
            except OSError as e:
                raise LabError(f"CIFAR-10 download failed: {e}") from None
        cfg = BenchConfig(out=args.out, suite=args.suite, tasks=_split(args.tasks), optimizers=_split(args.optimizers),
                          trials=args.trials, seeds=args.seeds, storage=args.storage, workers=args.workers,
                          threads=args.threads, text=args.text, cifar_dir=cifar, heartbeat=args.heartbeat,
                          until_decided=args.until_decided,
                          protocols=None if args.protocols is None else
                          [p for p in _split(args.protocols) if p != "none"])
        _, failed = run_bench(cfg, explicit_tasks=bool(args.tasks), quiet=args.quiet)
        return 1 if failed else 0
    except (LabError, DataError) as e:
        print(f"adamlab: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("adamlab: interrupted; re-run the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
