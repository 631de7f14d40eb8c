"""Train a small language model with FSDP2 and an adamlab optimizer, checkpoint it with torch.distributed.checkpoint,
and resume.

    torchrun --standalone --nproc_per_node 2 examples/fsdp2_dcp.py --steps 8 --save-at 4 --ckpt /tmp/ckpt
    torchrun --standalone --nproc_per_node 2 examples/fsdp2_dcp.py --steps 8 --resume /tmp/ckpt

The second command loads the checkpoint written at step 4 (on any number of ranks: DCP reshards) and continues to
step 8; both print the final loss, which is the same. Runs on CPUs (gloo) or GPUs (nccl).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import adamlab

VOCAB, WIDTH, BATCH, SEQ = 257, 32, 8, 16  # a vocabulary that does not divide by the world size


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(WIDTH), nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(),
                                                  nn.Linear(4 * WIDTH, WIDTH)) for _ in range(2))
        self.norm = nn.LayerNorm(WIDTH)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        for block in self.blocks:
            h = h + block(h)
        return self.norm(h) @ self.emb.weight.t()  # tied LM head


def batch(step: int, rank: int, world: int, device) -> torch.Tensor:
    """This rank's share of the global batch of ``step`` (the same global batch on any world size)."""
    g = torch.Generator().manual_seed(step)
    x = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g)
    per = BATCH // world
    return x[rank * per:(rank + 1) * per].to(device)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizer", default="adamw", help="an adamlab registry name (adamlab.list_optimizers())")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--save-at", type=int, default=None, help="write a DCP checkpoint after this step")
    ap.add_argument("--ckpt", default=None, help="the checkpoint folder to write")
    ap.add_argument("--resume", default=None, help="a checkpoint folder to continue from")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (world,))

    torch.manual_seed(0)
    model = TinyLM().to(device)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # parameters are now DTensors sharded on dim 0
    opt = adamlab.create_optimizer(args.optimizer, model, lr=args.lr)

    start = 0
    if args.resume:
        model_sd, opt_sd = get_state_dict(model, opt)
        state = {"model": model_sd, "optim": opt_sd, "step": torch.tensor(0)}
        dcp.load(state, checkpoint_id=args.resume)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        start = int(state["step"])

    loss = torch.tensor(float("nan"))
    for step in range(start, args.steps):
        x = batch(step, rank, world, device)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        if args.save_at is not None and step + 1 == args.save_at:
            model_sd, opt_sd = get_state_dict(model, opt)
            dcp.save({"model": model_sd, "optim": opt_sd, "step": torch.tensor(step + 1)}, checkpoint_id=args.ckpt)

    total = loss.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)  # the global batch's mean loss
    final = float(total) / world
    if rank == 0:
        print(f"final loss {final!r} after step {args.steps}")
    dist.barrier()  # every rank done with its collectives before the group goes
    dist.destroy_process_group()
    return final


if __name__ == "__main__":
    main()
