"""Learning from the shop's own catalogue: fine-tuned embeddings and compact codes.

* :mod:`.augment` — street-like views of catalogue photos;
* :mod:`.features` — backbone features of those views, cached with resume;
* :mod:`.losses` — triplet (hard / semi-hard), multi-similarity and proxy-anchor losses;
* :mod:`.embedding` — training the head and the codebooks, with held-out validation;
* :mod:`.street` — street garment boxes as cross-domain positives;
* :mod:`.quantizer` — additive codebooks, ADC / SDC search, sign-binarised baseline;
* :mod:`.models` — versioned model folders in the store.
"""

from ..models.artefacts import ModelError, TrainedModel, list_models, load_model
from ..vectors.quantizer import AdditiveQuantizer
from .embedding import EmbeddingOptions, QuantizerOptions, train_embedding, train_quantizer
from .features import TrainingDataError
from .street import StreetOptions

__all__ = ["AdditiveQuantizer", "EmbeddingOptions", "ModelError", "QuantizerOptions", "StreetOptions", "TrainedModel", "TrainingDataError",
           "list_models", "load_model", "train_embedding", "train_quantizer"]
