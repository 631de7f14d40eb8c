"""An adamlab optimizer in a Lightning ``configure_optimizers``, with checkpoints and an exact resume.

    python examples/lightning_module.py --out /tmp/pl --steps 16                   # checkpoints every 8 steps
    python examples/lightning_module.py --out /tmp/pl --steps 16 --resume /tmp/pl/step=8.ckpt

``configure_optimizers`` returns ``adamlab.create_optimizer(name, self, ...)``: given the module, it keeps weight
decay off biases and normalisation weights, and for ``coupledadam`` couples the embedding matrices only.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import nn

import adamlab

VOCAB, WIDTH, SEQ = 97, 32, 16


class TinyLM(L.LightningModule):
    def __init__(self, optimizer: str = "ademamix", lr: float = 3e-3, steps: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.emb = nn.Embedding(VOCAB, WIDTH)
        self.mlp = nn.Sequential(nn.LayerNorm(WIDTH), nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        return self.head(h + self.mlp(h))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = nn.functional.cross_entropy(self(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        self.log("loss", loss, prog_bar=False)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        opt = adamlab.create_optimizer(hp.optimizer, self, lr=hp.lr)
        schedule = adamlab.train.warmup_cosine(opt, warmup_steps=2, total_steps=hp.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def main(argv: list[str] | None = None) -> dict[str, torch.Tensor]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the checkpoint folder")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--optimizer", default="ademamix", help="an adamlab registry name")
    ap.add_argument("--resume", default=None, help="a checkpoint to continue from")
    args = ap.parse_args(argv)

    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    # 8 batches an epoch, so the checkpoints (every 8 steps) fall between epochs: a resumed run sees the same batches
    data = torch.utils.data.TensorDataset(torch.randint(0, VOCAB, (64, SEQ + 1), generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    model = TinyLM(args.optimizer, steps=args.steps)
    every = L.pytorch.callbacks.ModelCheckpoint(dirpath=args.out, filename="{step}", every_n_train_steps=8,
                                                save_top_k=-1)
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False, callbacks=[every],
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader, ckpt_path=args.resume)
    print(f"final loss {float(trainer.callback_metrics['loss'])!r} after step {trainer.global_step}")
    return {n: p.detach().clone() for n, p in model.named_parameters()}


if __name__ == "__main__":
    main()
