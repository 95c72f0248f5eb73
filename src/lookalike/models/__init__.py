"""Models: encoders and other networks by name and kind, and trained models as versioned artefacts.

* :mod:`.encoders` — the :class:`Encoder` contract and its implementations (EfficientNet-Lite
  over ONNX Runtime, a trained head over backbones, a hash encoder for tests);
* :mod:`.registry` — names to models, with their kind; importing trained models between stores;
* :mod:`.artefacts` — trained models as checked, versioned folders in ``STORE/models/``;
* :mod:`.int8` — EfficientNet-Lite encoders quantised to INT8: the built-in default (packaged calibration photos) and copies calibrated on a store's photos.
"""

from .artefacts import ModelError, TrainedModel, list_models, load_model
from .encoders import Encoder, EncoderError, FineTunedEncoder
from .int8 import Int8Encoder, Int8Options, quantize_encoder
from .registry import FEATURE_EXTRACTOR, IMAGE_EMBEDDER, adopt_model, available_encoders, get_encoder, import_model, model_kind, register_encoder, register_model

__all__ = ["FEATURE_EXTRACTOR", "IMAGE_EMBEDDER", "Encoder", "adopt_model", "EncoderError", "FineTunedEncoder", "Int8Encoder", "Int8Options", "ModelError",
           "TrainedModel", "quantize_encoder",
           "available_encoders", "get_encoder", "import_model", "list_models", "load_model", "model_kind", "register_encoder",
           "register_model"]
