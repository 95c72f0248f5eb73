"""Image encoders: turn RGB images into L2-normalised vectors.

Which encoder a name means is the model registry's business (:mod:`lookalike.models.registry`);
the store records ``name@version`` and refuses to mix vectors of two encoders.
"""

from .base import Encoder, EncoderError
from .efficientnet import BlockMapsEncoder, EfficientNetLiteEncoder, PyramidFeatures
from .fake import FakeEncoder
from .finetuned import FineTunedEncoder

__all__ = ["BlockMapsEncoder", "EfficientNetLiteEncoder", "PyramidFeatures", "Encoder", "EncoderError", "FakeEncoder", "FineTunedEncoder"]
