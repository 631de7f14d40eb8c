"""Optimizer step speed against the machine's streaming-bandwidth ceiling: the same code as ``adamlab speed``.

    python benchmarks/speed.py --threads 2 --out speed-results
    python benchmarks/speed.py --quick --optimizers adam,ademamix --paths foreach,compiled
"""

import sys

from adamlab.speed import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
