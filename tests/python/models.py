"""Small TorchScript models used by the tests (random weights, no downloads)."""

from typing import List, Tuple

import torch
from torch import nn


class Affine(nn.Module):
    """2x + 1 elementwise: easy to check exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0


class Busy(nn.Module):
    """Returns x + 1 after `iters` rounds of matmul work, so batches take measurable time."""

    def __init__(self, iters: int) -> None:
        super().__init__()
        self.iters = iters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.ones(160, 160)
        for _ in range(self.iters):
            a = torch.tanh(a @ a * 0.01)
        return x + 1.0 + a.sum() * 0.0


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TokenClassifier(nn.Module):
    """int64 token ids in, float logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).mean(dim=1))


class TwoInputsTupleOut(nn.Module):
    """Two inputs of different shapes and dtypes; a tuple of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y = self.lin(x) * mask.to(torch.float32).unsqueeze(-1)
        return y, y.sum(dim=-1)


class ListOut(nn.Module):
    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [x + 1.0, x * x]


class Picky(nn.Module):
    """Raises when any sample of the batch is negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise RuntimeError("negative input")
        return x + 1.0


def scripted(module: nn.Module) -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return torch.jit.script(module.eval())
