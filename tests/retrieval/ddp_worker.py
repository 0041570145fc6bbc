"""One rank of the 2-process gloo check in test_loss.py (run as a script, not collected by pytest).

Usage: python ddp_worker.py RANK WORLD INIT_FILE OUT_FILE. Builds the same tiny two-tower model on
every rank, feeds the rank's slice of a fixed batch, computes the gathered symmetric InfoNCE loss,
back-propagates, averages the parameter gradients over ranks as DistributedDataParallel does (by
hand: importing DDP pulls in torch._dynamo, seconds per process) and saves the loss and gradients.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

from s4v_retrieval.loss import all_gather_with_grad, symmetric_infonce


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict({"text": nn.Linear(6, 4), "video": nn.Linear(5, 4)})


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=gen), torch.randn(8, 5, generator=gen)


class TwoTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.towers = build_model()

    def forward(self, text: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        t = nn.functional.normalize(self.towers["text"](text), dim=-1)
        v = nn.functional.normalize(self.towers["video"](video), dim=-1)
        return 10.0 * all_gather_with_grad(t) @ all_gather_with_grad(v).T


def main() -> None:
    rank, world, init_file, out_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = TwoTower()
    text, video = batch()
    per_rank = text.shape[0] // world
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    loss = symmetric_infonce(model(text[mine], video[mine]))
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        grads[name] = p.grad / world
    torch.save({"loss": loss.detach(), "grads": grads}, out_file)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
