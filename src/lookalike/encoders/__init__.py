"""Image encoders: turn RGB images into L2-normalised vectors, chosen by name.

New models (fine-tuned heads, CLIP-family models for users who have the weights) register
a factory here; the store records ``name`` and ``version`` and refuses to mix vectors.
"""

from __future__ import annotations

from typing import Callable

from ..config import Settings
from .base import Encoder, EncoderError
from .efficientnet import EfficientNetLiteEncoder

_FACTORIES: dict[str, Callable[[Settings], Encoder]] = {
    "efficientnet-lite0": lambda s: EfficientNetLiteEncoder("efficientnet-lite0", s),
    "efficientnet-lite2": lambda s: EfficientNetLiteEncoder("efficientnet-lite2", s),
}


def register_encoder(name: str, factory: Callable[[Settings], Encoder]) -> None:
    """Make an encoder available by name (to settings, the CLI and the store)."""
    _FACTORIES[name] = factory


def available_encoders() -> list[str]:
    return sorted(_FACTORIES)


def get_encoder(name: str, settings: Settings | None = None) -> Encoder:
    if name not in _FACTORIES:
        raise EncoderError(f"unknown encoder {name!r}; available: {', '.join(available_encoders())}")
    return _FACTORIES[name](settings or Settings())


__all__ = ["Encoder", "EncoderError", "EfficientNetLiteEncoder", "available_encoders", "get_encoder", "register_encoder"]
