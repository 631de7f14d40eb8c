"""An adamlab optimizer in the Hugging Face ``Trainer``, with checkpoints and an exact resume.

    python examples/hf_trainer.py --out /tmp/hf --steps 16            # trains, saving checkpoints every 8 steps
    python examples/hf_trainer.py --out /tmp/hf --steps 16 --resume   # continues from the last checkpoint

The model is a tiny GPT-2 built from its config (nothing is downloaded). Two ways to hand the Trainer an optimizer:

* ``optimizer_cls_and_kwargs=(adamlab.AdamW, {...})``: the Trainer builds it over its own param groups (weight decay
  off biases and norms). Fine for every optimizer whose update is elementwise.
* ``optimizers=(optimizer, None)``: an optimizer you built yourself. Coupled Adam needs this: it couples the second
  moment of the tensors of its coupled groups over their rows, which is meant for the embedding matrices only, and
  the Trainer's groups do not say which tensors those are (``CoupledAdam`` warns when a coupled group holds tensors
  that are not matrices). ``adamlab.groups.coupled_adam(model)`` couples the embeddings (a tied head once) and
  leaves the rest plain AdamW.
"""

from __future__ import annotations

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import adamlab

VOCAB, SEQ = 97, 16


class RandomText(torch.utils.data.Dataset):
    """Token sequences from a fixed seed (a stand-in for a tokenised corpus)."""

    def __init__(self, n: int = 256) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(argv: list[str] | None = None) -> dict[str, torch.Tensor]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the Trainer's output folder (checkpoints)")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--optimizer", default="coupledadam", help="coupledadam, or any adamlab registry name")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2))
    training = TrainingArguments(output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=8,
                                 learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=2, save_steps=8,
                                 save_strategy="steps", logging_steps=4, report_to=[], use_cpu=True,
                                 dataloader_num_workers=0, seed=0, disable_tqdm=True)
    if args.optimizer == "coupledadam":  # the embeddings coupled, everything else AdamW
        kw = {"optimizers": (adamlab.groups.coupled_adam(model, lr=training.learning_rate, weight_decay=0.01), None)}
    else:
        info = adamlab.get_optimizer_info(args.optimizer)
        kw = {"optimizer_cls_and_kwargs": (info.cls, dict(info.defaults))}
    trainer = Trainer(model=model, args=training, train_dataset=RandomText(), **kw)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    print(f"final loss {trainer.state.log_history[-1].get('train_loss')!r} after step {trainer.state.global_step}")
    return {n: p.detach().clone() for n, p in model.named_parameters()}


if __name__ == "__main__":
    main()
