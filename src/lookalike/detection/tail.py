"""The backbone's last blocks, fine-tuned with the garment finder and served with NumPy.

Frozen ImageNet features tell "a garment is here" far better than "a dress, not a top over a
skirt"; letting the last two inverted-bottleneck blocks of EfficientNet-Lite adapt (from their
cached input, at stride 32, so training stays cheap) gains about three points of mIoU.  Each
block is expand 1×1 → ReLU6 → depthwise k×k → ReLU6 → project 1×1 (+ the input when shapes
agree); batch norms are folded into the convolutions on export, so serving is a few matrix
products and one depthwise sum per block.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

_TAIL_KEY = re.compile(r"^tail(\d+)_(expand_weight|expand_bias|depthwise_weight|depthwise_bias|project_weight|project_bias|skip)$")


def is_tail_array(name: str) -> bool:
    return bool(_TAIL_KEY.match(name))


def dense(maps: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """A 1×1 convolution of NHWC maps as one matrix product over every pixel.  ``maps @ weight``
    on the 4-D array would run one small product per image row (numpy broadcasts the leading
    axes), several times slower on the small maps a glance makes."""
    flat = np.ascontiguousarray(maps, dtype=np.float32).reshape(-1, maps.shape[-1]) @ weight
    if bias is not None:
        flat += bias
    return flat.reshape(*maps.shape[:-1], weight.shape[-1])


def depthwise(maps: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Same-padded depthwise convolution of NHWC maps; ``weight`` is (k, k, channels)."""
    k = weight.shape[0]
    n, h, w, c = maps.shape
    pad = k // 2
    padded = np.pad(maps, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.broadcast_to(bias, (n, h, w, c)).astype(np.float32).copy()
    for dy in range(k):
        for dx in range(k):
            out += padded[:, dy:dy + h, dx:dx + w, :] * weight[dy, dx]
    return out


def tail_blocks(arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The tail's blocks, in order, from a head's arrays (none for a frozen-backbone finder)."""
    blocks: dict[int, dict[str, np.ndarray]] = {}
    for name, value in arrays.items():
        match = _TAIL_KEY.match(name)
        if match:
            blocks.setdefault(int(match.group(1)), {})[match.group(2)] = np.ascontiguousarray(value)
    ordered = [blocks[i] for i in sorted(blocks)]
    for index, block in enumerate(ordered):
        missing = {"expand_weight", "expand_bias", "depthwise_weight", "depthwise_bias", "project_weight", "project_bias", "skip"} - set(block)
        if missing:
            raise ValueError(f"tail block {index} lacks {', '.join(sorted(missing))}")
        cin, cexp = block["expand_weight"].shape
        k = block["depthwise_weight"].shape[0]
        if block["depthwise_weight"].shape != (k, k, cexp) or k % 2 == 0 or block["project_weight"].shape[0] != cexp:
            raise ValueError(f"tail block {index}: its layers do not fit together")
        if bool(block["skip"]) and block["project_weight"].shape[1] != cin:
            raise ValueError(f"tail block {index}: a skip connection needs equal input and output channels")
    return ordered


def run_tail(blocks: list[dict[str, np.ndarray]], maps: np.ndarray) -> np.ndarray:
    x = np.asarray(maps, dtype=np.float32)
    for block in blocks:
        y = np.clip(dense(x, block["expand_weight"], block["expand_bias"]), 0.0, 6.0)
        y = np.clip(depthwise(y, block["depthwise_weight"], block["depthwise_bias"]), 0.0, 6.0)
        y = dense(y, block["project_weight"], block["project_bias"])
        x = y + x if bool(block["skip"]) else y
    return x


def export_blocks(blocks: Any) -> dict[str, np.ndarray]:
    """NumPy arrays of trained torch MBConv blocks (efficientnet_lite_pytorch), batch norms folded."""
    arrays: dict[str, np.ndarray] = {}

    def folded(conv: Any, bn: Any) -> tuple[np.ndarray, np.ndarray]:
        scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().numpy()
        shift = (bn.bias - bn.running_mean * bn.weight / (bn.running_var + bn.eps).sqrt()).detach().numpy()
        return conv.weight.detach().numpy() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1))), shift

    for index, block in enumerate(blocks):
        args = block._block_args
        if args.expand_ratio == 1 or getattr(block, "has_se", False):
            raise ValueError("only expanding blocks without squeeze-excitation (EfficientNet-Lite) can be exported")
        stride = args.stride[0] if isinstance(args.stride, (list, tuple)) else args.stride
        if int(stride) != 1:
            raise ValueError("only stride-1 blocks can be fine-tuned as the tail")
        expand, expand_bias = folded(block._expand_conv, block._bn0)
        dw, dw_bias = folded(block._depthwise_conv, block._bn1)
        project, project_bias = folded(block._project_conv, block._bn2)
        skip = bool(block.id_skip and args.input_filters == args.output_filters)
        arrays[f"tail{index}_expand_weight"] = expand[:, :, 0, 0].T.astype(np.float16)
        arrays[f"tail{index}_expand_bias"] = expand_bias.astype(np.float32)
        arrays[f"tail{index}_depthwise_weight"] = dw[:, 0].transpose(1, 2, 0).astype(np.float16)
        arrays[f"tail{index}_depthwise_bias"] = dw_bias.astype(np.float32)
        arrays[f"tail{index}_project_weight"] = project[:, :, 0, 0].T.astype(np.float16)
        arrays[f"tail{index}_project_bias"] = project_bias.astype(np.float32)
        arrays[f"tail{index}_skip"] = np.array(skip)
    return arrays
