"""Two tiny operation vocabularies that let each update rule be written once.

An update rule is a function ``rule(o, p, g, st, s, c)`` written against ``o``:

* :data:`T` applies each operation to one tensor. It serves both the plain per-tensor loop (the ground
  truth, where per-step scalars arrive as Python floats) and the compiled path (``torch.compile`` of the
  same loop, where scalars arrive as 0-d tensors so that a changing learning rate never recompiles).
* :data:`F` applies each operation to a list of tensors with ``torch._foreach_*`` kernels where torch has
  one, and tensor by tensor otherwise (the multi-tensor path).
* :func:`sharded` gives :data:`T` or :data:`F` for the local shards of DTensor parameters: the same operations,
  with the reductions over a tensor's elements (``norm``, ``mean``) taken over every shard
  (:mod:`adamlab.optim._dist`). A rule reduces over a tensor only through ``norm`` and ``mean``.
* :data:`C` is :data:`T` as the compiled path traces it: the same maths in an order that costs the kernel
  fewer instructions per element (a division by a per-step scalar becomes a multiplication by its reciprocal,
  computed once per call; ``lerp`` loses its branch). Each rewrite moves a result by at most an ulp or two, so
  the compiled path agrees with the loop to round-off, not bit for bit (the tests hold it to that).

Scalars may be Python numbers, 0-d tensors, or (in :data:`F`) one of those per tensor in a list.
Every in-place operation returns its first argument, so calls can be chained like tensor methods.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Number
from typing import Any

import torch
from torch import Tensor

__all__ = ["T", "F", "C", "sharded"]


_LOW = (torch.bfloat16, torch.float16)


def _is_num(a: Any) -> bool:
    return isinstance(a, Number)


#: from this many elements on, a CPU tensor's 2-norm is ``sqrt(x . x)`` (see :func:`_norm`)
_DOT_NUMEL = 1 << 15


def _dot_norm(x: Tensor) -> bool:
    return x.numel() >= _DOT_NUMEL and x.dtype in (torch.float32, torch.float64) and x.device.type == "cpu"


def _vector_norm(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dtype=torch.float32 if x.dtype in _LOW else None)


def _dot_sqrt(x: Tensor) -> Tensor:
    flat = x.reshape(-1)
    return torch.dot(flat, flat).sqrt()


def _norm(x: Tensor) -> Tensor:
    """The 2-norm of ``x`` as a 0-d tensor, computed in at least float32.

    On a CPU, float32 and float64 tensors of :data:`_DOT_NUMEL` elements or more take ``sqrt(x . x)`` (BLAS):
    torch's ``vector_norm`` runs there on one thread (2 threads, 25M float32: 9.5 ms against 4.0 ms for the dot)
    and was the less accurate of the two in that measurement (relative error 1e-3 against 2e-5, float64 reference;
    benchmarks/README.md)."""
    return _dot_sqrt(x) if _dot_norm(x) else _vector_norm(x)


class _TensorOps:
    """Operations on single tensors (loop and compiled paths)."""

    # -- new tensors -------------------------------------------------------------------------------
    @staticmethod
    def add(x, y):
        return x + y

    @staticmethod
    def sub(x, y):
        return x - y

    @staticmethod
    def mul(x, y):
        return x * y

    @staticmethod
    def div(x, y):
        return x / y

    @staticmethod
    def neg(x):
        return -x

    @staticmethod
    def sqrt(x):
        return torch.sqrt(x)

    @staticmethod
    def abs(x):
        return torch.abs(x)

    @staticmethod
    def maximum(x, y):
        return torch.maximum(x, y)

    @staticmethod
    def clone(x):
        return x.clone()

    @staticmethod
    def clamp_max(x, a):
        """``min(x, a)`` for a number ``a`` (a NaN stays NaN)."""
        return torch.clamp(x, max=a)

    @staticmethod
    def axpy(x, y, a):
        """``x + a * y`` as a new tensor."""
        return x.add(y, alpha=a) if _is_num(a) else x + y * a

    @staticmethod
    def addcmul(x, y, z, a):
        """``x + a * y * z`` as a new tensor."""
        return torch.addcmul(x, y, z, value=a) if _is_num(a) else x + a * y * z

    @staticmethod
    def norm(x):
        """The 2-norm of each tensor, as a 0-d tensor (computed in at least float32)."""
        return _norm(x)

    @staticmethod
    def mean(x, dim):
        """The mean over ``dim`` (a reduction over the tensor: where a sharded parameter would all-reduce), of the
        elements that are not NaN where ``dim`` holds a NaN (see :func:`finite_mean`)."""
        return finite_mean(x, dim)

    # -- in place ----------------------------------------------------------------------------------
    @staticmethod
    def add_(x, y):
        return x.add_(y)

    @staticmethod
    def sub_(x, y):
        return x.sub_(y)

    @staticmethod
    def mul_(x, y):
        return x.mul_(y)

    @staticmethod
    def div_(x, y):
        return x.div_(y)

    @staticmethod
    def sqrt_(x):
        return x.sqrt_()

    @staticmethod
    def copy_(x, y):
        return x.copy_(y)

    @staticmethod
    def maximum_(x, y):
        return torch.maximum(x, y, out=x) if not torch.compiler.is_compiling() else x.copy_(torch.maximum(x, y))

    @staticmethod
    def clamp_max_(x, a):
        return x.clamp_(max=a)

    @staticmethod
    def axpy_(x, y, a):
        """``x += a * y``."""
        return x.add_(y, alpha=a) if _is_num(a) else x.add_(y * a)

    @staticmethod
    def lerp_(x, y, w):
        """``x += w * (y - x)`` (torch's lerp rounding)."""
        return x.lerp_(y, w)

    @staticmethod
    def addcmul_(x, y, z, a):
        """``x += a * y * z``."""
        return x.addcmul_(y, z, value=a) if _is_num(a) else x.add_(a * y * z)

    @staticmethod
    def addcdiv_(x, y, z, a):
        """``x += a * y / z``."""
        return x.addcdiv_(y, z, value=a) if _is_num(a) else x.add_(a * y / z)

    # -- escape hatch ------------------------------------------------------------------------------
    @staticmethod
    def per(fn: Callable, *args):
        """Apply ``fn`` to one tensor's arguments (the :data:`F` twin maps it over the lists)."""
        return fn(*args)


def _lists(args):
    n = next(len(a) for a in args if isinstance(a, (list, tuple)))
    return [[a[i] if isinstance(a, (list, tuple)) else a for a in args] for i in range(n)]


def _per_tensor_scalars(x, y) -> bool:
    """True when ``y`` is a list of 0-d tensors to broadcast against the tensors of ``x``."""
    return isinstance(y, (list, tuple)) and bool(y) and isinstance(y[0], Tensor) and y[0].dim() == 0 \
        and x[0].dim() != 0


class _ForeachOps:
    """Operations on lists of tensors (the multi-tensor path)."""

    @staticmethod
    def add(x, y):
        return torch._foreach_add(x, y)

    @staticmethod
    def sub(x, y):
        return torch._foreach_sub(x, y)

    @staticmethod
    def mul(x, y):
        if _per_tensor_scalars(x, y):
            return [a.mul(b) for a, b in zip(x, y)]
        return torch._foreach_mul(x, y)

    @staticmethod
    def div(x, y):
        if _per_tensor_scalars(x, y):
            return [a.div(b) for a, b in zip(x, y)]
        return torch._foreach_div(x, y)

    @staticmethod
    def neg(x):
        return torch._foreach_neg(x)

    @staticmethod
    def sqrt(x):
        return torch._foreach_sqrt(x)

    @staticmethod
    def abs(x):
        return torch._foreach_abs(x)

    @staticmethod
    def maximum(x, y):
        return torch._foreach_maximum(x, y)

    @staticmethod
    def clone(x):
        return [t.clone() for t in x]

    @staticmethod
    def clamp_max(x, a):
        return torch._foreach_clamp_max(x, a)

    @staticmethod
    def axpy(x, y, a):
        if _is_num(a):
            return torch._foreach_add(x, y, alpha=a)
        return torch._foreach_add(x, torch._foreach_mul(y, a))

    @staticmethod
    def addcmul(x, y, z, a):
        if _is_num(a):
            return torch._foreach_addcmul(x, y, z, value=a)
        return [_TensorOps.addcmul(*t) for t in _lists((x, y, z, a))]

    @staticmethod
    def norm(x):
        """One multi-tensor norm for the small tensors, :func:`_norm` for the big CPU ones."""
        if any(t.dtype in _LOW for t in x):
            return [_norm(t) for t in x]
        big = [_dot_norm(t) for t in x]
        if not any(big):
            return list(torch._foreach_norm(x))
        small = [i for i, b in enumerate(big) if not b]
        out = [_dot_sqrt(t) if b else None for t, b in zip(x, big)]
        if small:
            for i, n in zip(small, torch._foreach_norm([x[i] for i in small])):
                out[i] = n
        return out

    @staticmethod
    def mean(x, dim):
        return [_TensorOps.mean(t, dim) for t in x]

    @staticmethod
    def add_(x, y):
        torch._foreach_add_(x, y)
        return x

    @staticmethod
    def sub_(x, y):
        torch._foreach_sub_(x, y)
        return x

    @staticmethod
    def mul_(x, y):
        if _per_tensor_scalars(x, y):
            for a, b in zip(x, y):
                a.mul_(b)
        else:
            torch._foreach_mul_(x, y)
        return x

    @staticmethod
    def div_(x, y):
        if _per_tensor_scalars(x, y):
            for a, b in zip(x, y):
                a.div_(b)
        else:
            torch._foreach_div_(x, y)
        return x

    @staticmethod
    def sqrt_(x):
        torch._foreach_sqrt_(x)
        return x

    @staticmethod
    def copy_(x, y):
        torch._foreach_copy_(x, y)
        return x

    @staticmethod
    def maximum_(x, y):
        torch._foreach_maximum_(x, y)
        return x

    @staticmethod
    def clamp_max_(x, a):
        torch._foreach_clamp_max_(x, a)
        return x

    @staticmethod
    def axpy_(x, y, a):
        if _is_num(a):
            torch._foreach_add_(x, y, alpha=a)
        else:
            for t in _lists((x, y, a)):
                _TensorOps.axpy_(*t)
        return x

    @staticmethod
    def lerp_(x, y, w):
        if _is_num(w):
            torch._foreach_lerp_(x, y, w)
        else:
            for t in _lists((x, y, w)):
                _TensorOps.lerp_(*t)
        return x

    @staticmethod
    def addcmul_(x, y, z, a):
        if _is_num(a):
            torch._foreach_addcmul_(x, y, z, value=a)
        else:
            for t in _lists((x, y, z, a)):
                _TensorOps.addcmul_(*t)
        return x

    @staticmethod
    def addcdiv_(x, y, z, a):
        if _is_num(a):
            torch._foreach_addcdiv_(x, y, z, value=a)
        else:
            for t in _lists((x, y, z, a)):
                _TensorOps.addcdiv_(*t)
        return x

    @staticmethod
    def per(fn: Callable, *args):
        out = [fn(*t) for t in _lists(args)]
        if out and isinstance(out[0], tuple):
            return tuple(list(col) for col in zip(*out))
        return out


def _reciprocal(a: Any) -> Any:
    """``1 / a`` for a scalar ``a`` (a number other than 0, or a 0-d tensor); None for anything else."""
    if _is_num(a):
        return 1.0 / a if a != 0 else None
    return torch.reciprocal(a) if isinstance(a, Tensor) and a.dim() == 0 else None


class _CompiledOps(_TensorOps):
    """:class:`_TensorOps` for the compiled path. On a CPU a vector division costs several multiplications'
    time, and a step already computes one or more divisions by tensors per element: with two threads that
    arithmetic, not memory, is what keeps a step from the bandwidth limit."""

    @staticmethod
    def div(x, y):
        r = _reciprocal(y) if isinstance(x, Tensor) and x.dim() > 0 else None
        return x / y if r is None else x * r

    @staticmethod
    def div_(x, y):
        r = _reciprocal(y) if x.dim() > 0 else None
        return x.div_(y) if r is None else x.mul_(r)

    @staticmethod
    def norm(x):
        """In a graph: the compiler's own reduction (a dot would leave the graph for a library call)."""
        return _vector_norm(x)

    @staticmethod
    def mean(x, dim):
        """Over an outer dim: one opaque ATen mean (inductor's reduction over an outer dim walks the tensor a block
        of columns at a time, one row's stride between loads; ATen's reads it row by row)."""
        if x.dim() > 1 and dim in (0, -x.dim()):
            return _mean0(x)
        return torch.mean(x, dim=dim)

    @staticmethod
    def lerp_(x, y, w):
        """``x += w * (y - x)`` in one form for every ``w`` (torch's lerp switches forms at ``w = 0.5``)."""
        if _is_num(w) or (isinstance(w, Tensor) and w.dim() == 0):
            return x.add_((y - x) * w)
        return x.lerp_(y, w)


def finite_mean(x: Tensor, dim: int) -> Tensor:
    """``torch.mean(x, dim)``; where that mean is NaN, the mean of the elements along ``dim`` that are not NaN
    (``torch.nanmean``; NaN where all are). A NaN gradient element thus poisons its own element and state only, as
    in ``torch.optim``, not every element it is averaged with (Coupled Adam's second moment is one mean per column).
    An Inf stays in the mean, which is then Inf, as the maths says: that column takes no step while it lasts, as
    Adam's element with an infinite second moment takes none. Finite input costs one more look at the means (a host
    sync on an accelerator), nothing else."""
    m = torch.mean(x, dim=dim)
    bad = torch.isnan(m)
    if bool(bad.any()):
        m = torch.where(bad, torch.nanmean(x, dim=dim), m)
    return m


@torch.library.custom_op("adamlab::mean0", mutates_args=())
def _mean0(x: Tensor) -> Tensor:
    """:func:`finite_mean` over dim 0, opaque to the compiler (see :meth:`_CompiledOps.mean`)."""
    return finite_mean(x, 0)


@_mean0.register_fake
def _(x):
    return x.new_empty(x.shape[1:])


class _ShardedTensorOps(_TensorOps):
    """:class:`_TensorOps` on the local shards of DTensor parameters of one sharding (the loop path)."""

    def __init__(self, sharding) -> None:
        self.sharding = sharding

    def norm(self, x):
        return self.sharding.norms([x])[0]

    def mean(self, x, dim):
        return self.sharding.means([x], dim)[0]


class _ShardedForeachOps(_ForeachOps):
    """:class:`_ForeachOps` on the local shards of DTensor parameters of one sharding (the multi-tensor path): one
    collective per reduction for the whole list."""

    def __init__(self, sharding) -> None:
        self.sharding = sharding

    def norm(self, x):
        return self.sharding.norms(list(x))

    def mean(self, x, dim):
        return self.sharding.means(list(x), dim)


def sharded(ops, sharding):
    """``ops`` (:data:`T` or :data:`F`) for tensors that are the local shards of DTensors laid out as ``sharding``
    (an :class:`adamlab.optim._dist.Sharding`); ``ops`` itself for ``sharding=None``."""
    if sharding is None:
        return ops
    if isinstance(ops, _ForeachOps):
        return _ShardedForeachOps(sharding)
    if type(ops) is _TensorOps:
        return _ShardedTensorOps(sharding)
    raise TypeError(f"no sharded form of {type(ops).__name__}")


T = _TensorOps()
F = _ForeachOps()
C = _CompiledOps()
