"""Float64 ports of the authors' reference optimizers, used only by the parity tests.

Each module reproduces one reference ``step`` operation by operation (same torch calls in the same order, same
Python float arithmetic for the per-step scalars), cites the repository, file and commit it was read from, and
fixes nothing but what its docstring names. They are test fixtures, not part of the adamlab package.
"""
