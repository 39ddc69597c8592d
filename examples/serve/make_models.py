"""Writes the two small TorchScript models that serve.toml serves (random weights, seeded):

- ``doubler.pt``: y = 2x, FP32 [4] -> FP32 [4] (the tiny model of the serving benchmark);
- ``classifier.pt``: an MLP, FP32 [16] -> logits FP32 [10] and the label INT64 [] (two outputs).

Usage: python examples/serve/make_models.py [DIR]   (default: this directory)
"""

import sys
from pathlib import Path
from typing import Tuple

import torch
from torch import nn


class Doubler(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, logits.argmax(dim=-1)


def main(out: Path) -> None:
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    for name, module in (("doubler", Doubler()), ("classifier", Classifier())):
        torch.jit.save(torch.jit.script(module.eval()), str(out / f"{name}.pt"))
        print(f"wrote {out / f'{name}.pt'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
