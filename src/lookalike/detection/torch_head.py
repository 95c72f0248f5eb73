"""The head of :mod:`.head` in PyTorch, for training only; ``export`` gives the NumPy arrays.

The per-channel normalisation of the backbone maps is a fixed input transform during training
and is folded into the lateral 1×1 convolutions on export, so the served head reads raw maps.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .head import TAPS, interpolation_matrix


class TorchHead(nn.Module):
    def __init__(self, channels: Sequence[int], width: int, classes: int, stats: Sequence[tuple[np.ndarray, np.ndarray]]):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Linear(c, width) for c in channels])
        self.context = nn.Linear(channels[-1], width)
        self.mix8 = nn.Conv2d(width, width, 3, padding=1)
        self.mix4 = nn.Conv2d(width, width, 3, padding=1)
        self.classes = nn.Linear(width, classes)
        for index, (mean, std) in enumerate(stats):
            self.register_buffer(f"mean{index}", torch.from_numpy(np.asarray(mean, np.float32)))
            self.register_buffer(f"std{index}", torch.from_numpy(np.asarray(std, np.float32)))
        self._matrices: dict[tuple[int, int], torch.Tensor] = {}

    def _resize(self, maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
        rows = self._matrix(maps.shape[1], height)
        cols = self._matrix(maps.shape[2], width)
        return torch.einsum("hi,nijc,wj->nhwc", rows, maps, cols)

    def _matrix(self, size_in: int, size_out: int) -> torch.Tensor:
        key = (size_in, size_out)
        if key not in self._matrices:
            self._matrices[key] = torch.from_numpy(interpolation_matrix(size_in, size_out))
        return self._matrices[key]

    def _normalised(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [(m - getattr(self, f"mean{i}")) / getattr(self, f"std{i}") for i, m in enumerate(maps)]

    def _conv(self, layer: nn.Conv2d, maps: torch.Tensor) -> torch.Tensor:
        return layer(maps.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        s4, s8, s16, s32 = self._normalised(maps)
        context = self.context(s32.mean(dim=(1, 2)))
        p32 = self.lateral[3](s32) + context[:, None, None, :]
        p16 = self.lateral[2](s16) + self._resize(p32, s16.shape[1], s16.shape[2])
        p8 = self.lateral[1](s8) + self._resize(p16, s8.shape[1], s8.shape[2])
        f8 = torch.relu(self._conv(self.mix8, torch.relu(p8)))
        p4 = self.lateral[0](s4) + self._resize(f8, s4.shape[1], s4.shape[2])
        f4 = torch.relu(self._conv(self.mix4, torch.relu(p4)))
        return self.classes(f4)

    def _stats(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = getattr(self, f"mean{index}"), getattr(self, f"std{index}")
        assert isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)
        return mean, std

    @torch.no_grad()
    def export(self) -> dict[str, np.ndarray]:
        """NumPy arrays of :class:`~lookalike.detection.head.SegmentationHead`, normalisation folded in."""
        arrays: dict[str, np.ndarray] = {}
        for index, tap in enumerate(TAPS):
            mean, std = self._stats(index)
            layer = self.lateral[index]
            assert isinstance(layer, nn.Linear)
            weight = layer.weight.T / std[:, None]  # (channels, width)
            bias = layer.bias - mean @ weight
            arrays[f"lateral_{tap}_weight"], arrays[f"lateral_{tap}_bias"] = weight.numpy().copy(), bias.numpy().copy()
        mean, std = self._stats(3)
        weight = self.context.weight.T / std[:, None]
        arrays["context_weight"] = weight.numpy().copy()
        arrays["context_bias"] = (self.context.bias - mean @ weight).numpy().copy()
        for name in ("mix8", "mix4"):
            layer = getattr(self, name)
            arrays[f"{name}_weight"] = layer.weight.permute(2, 3, 1, 0).numpy().copy()
            arrays[f"{name}_bias"] = layer.bias.numpy().copy()
        arrays["classes_weight"] = self.classes.weight.T.numpy().copy()
        arrays["classes_bias"] = self.classes.bias.numpy().copy()
        return {k: v.astype(np.float32) for k, v in arrays.items()}
