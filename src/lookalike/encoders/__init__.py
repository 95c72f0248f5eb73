"""Image encoders: turn RGB images into L2-normalised vectors, chosen by name.

New models (fine-tuned heads, CLIP-family models for users who have the weights) register
a factory here; the store records ``name`` and ``version`` and refuses to mix vectors.
"""

from __future__ import annotations

from typing import Callable

from ..config import Settings
from .base import Encoder, EncoderError
from .efficientnet import BlockMapsEncoder, EfficientNetLiteEncoder
from .finetuned import FineTunedEncoder

_FACTORIES: dict[str, Callable[[Settings], Encoder]] = {
    "efficientnet-lite0": lambda s: EfficientNetLiteEncoder("efficientnet-lite0", s),
    "efficientnet-lite2": lambda s: EfficientNetLiteEncoder("efficientnet-lite2", s),
    # last-block feature maps, for training with an unfrozen head (not for a store)
    "efficientnet-lite0-maps": lambda s: BlockMapsEncoder("efficientnet-lite0", s),
    "efficientnet-lite2-maps": lambda s: BlockMapsEncoder("efficientnet-lite2", s),
}


def register_encoder(name: str, factory: Callable[[Settings], Encoder]) -> None:
    """Make an encoder available by name (to settings, the CLI and the store)."""
    _FACTORIES[name] = factory


def available_encoders() -> list[str]:
    return sorted(_FACTORIES)


def get_encoder(name: str, settings: Settings | None = None, allow_paths: bool = True) -> Encoder:
    """A pretrained encoder by name, or a fine-tuned model (a name in the store's models folder, or,
    unless ``allow_paths`` is False as for remote requests, a folder path)."""
    settings = settings or Settings()
    if name in _FACTORIES:
        return _FACTORIES[name](settings)
    from pathlib import Path

    from ..training.models import ModelError, load_model, resolve_model_path

    path = resolve_model_path(name, Path(settings.store).expanduser(), allow_paths)
    if path is None:
        raise EncoderError(f"unknown encoder {name!r}; available: {', '.join(available_encoders())}, or a model trained with 'lookalike train embedding'")
    try:
        model = load_model(path)
        return FineTunedEncoder(model, lambda backbone: get_encoder(backbone, settings))
    except (ModelError, ValueError) as exc:
        raise EncoderError(str(exc)) from exc


__all__ = ["Encoder", "EncoderError", "EfficientNetLiteEncoder", "FineTunedEncoder", "available_encoders", "get_encoder", "register_encoder"]
