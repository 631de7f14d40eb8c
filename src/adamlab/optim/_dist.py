"""Sharded parameters (FSDP2, tensor parallelism: ``torch.distributed.tensor.DTensor``) and the one place where a
reduction over a tensor's elements crosses processes.

The engine steps a DTensor parameter on its local shard, with plain tensors on every path (the loop, the
multi-tensor and the compiled path alike: an elementwise rule does not care how the rows are split). What is not
elementwise goes through :class:`Sharding`:

* **State layout.** A state tensor shaped like the parameter is a DTensor placed like it; one with leading dims
  (AdamCM's buffer ``[C, *shape]``) is sharded on the parameter's dims shifted by them; the rest (step, priorities,
  counts) are plain tensors, the same on every rank (replicated). So ``torch.distributed.checkpoint`` saves and
  reloads them in any layout.
* **Reductions.** A 2-norm is the square root of the all-reduced sum of the shards' squared norms; a mean over a
  sharded dim is the all-reduced sum over it divided by the all-reduced count of rows. Every tensor of a list is
  reduced in one collective per mesh dim, so every rank issues the same collectives in the same order whatever
  its shard sizes.

Nothing here is imported unless a parameter is a DTensor (:func:`is_dtensor` checks without importing
torch.distributed when nobody else has).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import Tensor

__all__ = ["Sharding", "is_dtensor", "local", "sharding_of", "global_norms", "to_layout"]

_LOW = (torch.bfloat16, torch.float16)


def _dtensor_type():
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None) if mod is not None else None


def is_dtensor(t: Any) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a tensor sharing its storage); any other tensor as it is."""
    return t.to_local() if is_dtensor(t) else t


def sharding_of(p: Tensor) -> Sharding | None:
    return Sharding(p) if is_dtensor(p) else None


def _shard_on(pl, dim: int):
    """The placement ``pl`` (a ``Shard``, or a subclass such as the strided shard of FSDP2 over tensor
    parallelism) on tensor dim ``dim``."""
    split = getattr(pl, "split_factor", None)
    return type(pl)(dim) if split is None else type(pl)(dim, split_factor=split)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def _sumsq(x: Tensor) -> Tensor:
    flat = x.reshape(-1)
    if flat.dtype in _LOW:
        flat = flat.float()
    return torch.dot(flat, flat) if flat.numel() else flat.new_zeros(())


class Sharding:
    """How a DTensor parameter lies on its device mesh: its placements (``Shard`` or ``Replicate`` per mesh dim),
    global shape, and the process groups a reduction over its elements must all-reduce over."""

    def __init__(self, p: Tensor) -> None:
        from torch.distributed.tensor import Replicate, Shard

        self.mesh = p.device_mesh
        self.shape = tuple(p.shape)
        self.stride = tuple(p.stride())
        placements = []
        for pl in p.placements:
            if isinstance(pl, Shard):
                dim = pl.dim if pl.dim >= 0 else pl.dim + len(self.shape)
                placements.append(_shard_on(pl, dim) if dim != pl.dim else pl)
            elif isinstance(pl, Replicate):
                placements.append(pl)
            else:
                raise ValueError(f"a DTensor parameter with placement {pl!r} cannot be optimised: parameters are "
                                 "sharded (Shard) or replicated (Replicate) on each mesh dim")
        self.placements = tuple(placements)
        self.key = (self.mesh, self.placements)

    # -- layout of state tensors -------------------------------------------------------------------------
    def _placements(self, lead: int) -> tuple:
        from torch.distributed.tensor import Shard

        return tuple(_shard_on(pl, pl.dim + lead) if isinstance(pl, Shard) else pl for pl in self.placements)

    def wrap(self, t: Tensor, lead: int = 0) -> Tensor:
        """The DTensor whose local shard is ``t``: a state tensor ``[lead dims..., *local shape]`` of a parameter
        with this sharding."""
        from torch.distributed.tensor import DTensor

        shape = tuple(t.shape[:lead]) + self.shape
        stride = self.stride if lead == 0 else _contiguous_strides(shape)
        return DTensor.from_local(t, self.mesh, self._placements(lead), run_check=False, shape=shape, stride=stride)

    def sharded_mesh_dims(self, dims: set[int] | None = None) -> list[int]:
        """The mesh dims that shard the parameter (on one of ``dims`` of it, if given)."""
        from torch.distributed.tensor import Shard

        return [k for k, pl in enumerate(self.placements)
                if isinstance(pl, Shard) and (dims is None or pl.dim in dims)]

    def _all_reduce(self, t: Tensor, mesh_dims: list[int]) -> Tensor:
        import torch.distributed as dist

        for k in mesh_dims:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.mesh.get_group(k))
        return t

    # -- reductions --------------------------------------------------------------------------------------
    def norms(self, xs: list[Tensor]) -> list[Tensor]:
        """The global 2-norm of each local shard in ``xs`` (one all-reduce per sharded mesh dim for all of them)."""
        if not xs:
            return []
        sq = torch.stack([_sumsq(x) for x in xs])
        return list(self._all_reduce(sq, self.sharded_mesh_dims()).sqrt().unbind(0))

    def means(self, xs: list[Tensor], dim: int) -> list[Tensor]:
        """The mean over the global ``dim`` of each local shard in ``xs`` (one all-reduce per mesh dim that shards
        ``dim``, for all of them: the sums over ``dim`` and the row counts travel together)."""
        if not xs:
            return []
        dim = dim if dim >= 0 else dim + len(self.shape)
        mesh_dims = self.sharded_mesh_dims({dim})
        if not mesh_dims:
            return [torch.mean(x, dim=dim) for x in xs]
        sums = [x.sum(dim=dim) for x in xs]
        dtype = torch.promote_types(sums[0].dtype, torch.float32)
        packed = torch.cat([s.reshape(-1).to(dtype) for s in sums]
                           + [torch.tensor([float(x.shape[dim]) for x in xs], dtype=dtype, device=xs[0].device)])
        self._all_reduce(packed, mesh_dims)
        counts = packed[-len(xs):]
        out, at = [], 0
        for j, s in enumerate(sums):
            n = s.numel()
            out.append(packed[at:at + n].view(s.shape).div(counts[j]).to(s.dtype))
            at += n
        # as _ops.finite_mean: where a global mean is NaN, the mean of the elements that are not NaN (every rank
        # sees the same global means, so every rank takes this branch, and its collective, or none)
        fix = [j for j, m in enumerate(out) if bool(torch.isnan(m).any())]
        if fix:
            oks = [~torch.isnan(xs[j]) for j in fix]
            parts = [torch.where(ok, xs[j], 0).sum(dim=dim).to(dtype) for j, ok in zip(fix, oks)]
            parts += [ok.sum(dim=dim).to(dtype) for ok in oks]
            packed = torch.cat([q.reshape(-1) for q in parts])
            self._all_reduce(packed, mesh_dims)
            chunks = packed.split([q.numel() for q in parts])
            for k, j in enumerate(fix):
                kept = (chunks[k] / chunks[len(fix) + k]).view(out[j].shape).to(out[j].dtype)
                out[j] = torch.where(torch.isnan(out[j]), kept, out[j])
        return out


def global_norms(tensors: list[Tensor]) -> list[Tensor]:
    """The 2-norm of each tensor as a 0-d tensor (computed in at least float32); a DTensor's over all its shards.
    Plain tensors take the multi-tensor norm; DTensors of one sharding, one collective."""
    from . import _ops

    out: list[Tensor | None] = [None] * len(tensors)
    plain = [i for i, t in enumerate(tensors) if not is_dtensor(t)]
    if plain:
        for i, n in zip(plain, _ops.F.norm([tensors[i] for i in plain])):
            out[i] = n
    kinds: dict[Any, tuple[Sharding, list[int]]] = {}
    for i, t in enumerate(tensors):
        if out[i] is None:
            sh = Sharding(t)
            kinds.setdefault((sh.key, t.dtype), (sh, []))[1].append(i)
    for sh, idx in kinds.values():
        for i, n in zip(idx, sh.norms([local(tensors[i]) for i in idx])):
            out[i] = n
    return out  # type: ignore[return-value]


def to_layout(v: Tensor, p: Tensor, lead: int | None) -> Tensor:
    """A loaded state tensor ``v`` in the layout the parameter ``p`` needs: for a DTensor ``p``, a DTensor placed
    like it (``lead`` leading dims shift the shard dims; a full plain tensor is split without communication, a
    DTensor of another layout redistributed); None as ``lead`` (or a plain ``p``): a plain tensor, gathered from
    its shards if ``v`` is a DTensor."""
    if lead is None or not is_dtensor(p):
        return v.full_tensor() if is_dtensor(v) else v
    sh = Sharding(p)
    placements = sh._placements(lead)
    if is_dtensor(v):
        if tuple(v.placements) == placements and v.device_mesh == sh.mesh:
            return v
        return v.redistribute(sh.mesh, placements)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(v.to(device=local(p).device), sh.mesh, placements, src_data_rank=None)


def numel(t: Tensor) -> int:
    """Elements of the whole tensor (a DTensor's global count)."""
    return math.prod(t.shape)
