"""A bridge from sentence vectors to the catalogue's image vectors, learned from its own titles.

No CLIP-family weights can be had here, so words and photos meet through two linear heads
trained contrastively on the shop's (title, photo) pairs, as LiT does with a frozen image tower:
the image encoder and MiniLM stay frozen, only the heads learn (seconds on a CPU, the features
are already stored).  Products without a title are then found by their photo: a query's
sentence vector and every photo's image vector land in one shared space.

Like scikit-learn estimators: ``fit`` learns, ``text_side``/``image_side`` transform, and the
fitted bridge is saved as a versioned folder (``STORE/text/bridge-vN``) that serving reads with
NumPy alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..common.folders import next_version_name, read_descriptions, write_folder
from .encoder import TextError

BRIDGE_FILE = "bridge.json"
WEIGHTS_FILE = "weights.npz"
TEXT_DIR = "text"
MIN_PAIRS = 50


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


@dataclass
class BridgeOptions:
    dim: int = 256           # the shared space
    epochs: int = 15         # (set on a validation share of the training products: more overfits the titles)
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1.0    # (chosen on the development split with the words read: 0.1 -> 1, free text 0.880 -> 0.894)
    validation: float = 0.1  # share of pairs kept out to report retrieval (never trained on)
    seed: int = 0
    where: tuple[str, ...] = ()  # learn only from products matching these filters
    colour_weight: float = 0.05  # the garment-pixel colour descriptor beside the image vector (0: image vector only);
    #                              ImageNet features ignore colour, titles name it (validation R@10 0.84 -> 0.88)
    word_weight: float = 1.0     # the title's words (TF-IDF over the shop's own title vocabulary) beside its sentence
    #                              vector (0: sentence vector only); see TitleWords
    word_min_count: int = 3      # a word is in the vocabulary when this many training titles use it


class TitleWords:
    """A title's words as TF-IDF features over the shop's own title vocabulary (scikit-learn's
    vectoriser; saved as the words and their weights, never pickled).

    MiniLM reads "Puma", "Roadster" or "slim fit" as near-neighbours of any other brand or fit;
    a learned weight per word lets the bridge tie a brand or a fabric to how its photos look.
    Cross-validated on Myntra (3 folds, 1,000 titles each finding their own photo): R@10 0.835
    -> 0.867, R@1 0.400 -> 0.451; the weight made no difference between 0.5 and 2."""

    def __init__(self, words: list[str], idf: np.ndarray):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.words, self.idf = list(words), np.asarray(idf, np.float64)
        self._index = {w: i for i, w in enumerate(self.words)}
        self._vectoriser = TfidfVectorizer(vocabulary=self._index, binary=True)
        self._vectoriser.idf_ = self.idf
        self._analyse = self._vectoriser.build_analyzer()  # scikit-learn's own reading of a text into words

    @classmethod
    def fit(cls, titles: list[str], min_count: int) -> TitleWords | None:
        """The vocabulary of ``titles`` (None when no word is used ``min_count`` times)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        try:
            fitted = TfidfVectorizer(min_df=max(1, min(min_count, len(titles))), binary=True).fit(titles)
        except ValueError:  # no word at all, or none frequent enough
            return None
        words = sorted(fitted.vocabulary_, key=fitted.vocabulary_.__getitem__)
        return cls(words, fitted.idf_)

    def __len__(self) -> int:
        return len(self.words)

    def transform(self, texts: list[str]) -> np.ndarray:
        """(len(texts), len(self)) unit rows (all zero for a text with no known word)."""
        return np.asarray(self.sparse(texts).toarray(), np.float32)

    def sparse(self, texts: list[str]) -> Any:
        """:meth:`transform` as a SciPy sparse matrix (a query names a handful of the words).

        Built here from the vectoriser's own analyser (binary counts × idf, unit rows): what its
        ``transform`` gives, without its input validation, which took 2 ms of a 23 ms text query."""
        from scipy.sparse import csr_matrix

        columns: list[int] = []
        values: list[float] = []
        offsets = [0]
        for text in texts:
            found = sorted({self._index[w] for w in self._analyse(text) if w in self._index})
            weights = self.idf[found]
            norm = float(np.sqrt(weights @ weights)) if found else 1.0
            columns.extend(found)
            values.extend((weights / norm).tolist())
            offsets.append(len(columns))
        return csr_matrix((np.asarray(values, np.float32), np.asarray(columns, np.int32), np.asarray(offsets, np.int64)),
                          shape=(len(texts), len(self.words)))


@dataclass
class TextImageBridge:
    """Two linear heads: sentence vector -> shared space, image vector -> shared space."""

    text_weights: np.ndarray   # (text_dim, dim)
    image_weights: np.ndarray  # (image_dim, dim)
    text_model: str
    encoder: str               # identity of the image encoder whose vectors it reads
    info: dict[str, Any] = field(default_factory=dict)
    colour_scale: np.ndarray | None = None  # (2, colour features): mean and spread, when colour is read beside the image
    words: TitleWords | None = None  # the title vocabulary, when words are read beside the sentence vector

    @property
    def uses_colour(self) -> bool:
        return self.colour_scale is not None

    def text_side(self, text_vectors: np.ndarray, texts: list[str] | None = None) -> np.ndarray:
        """The shared-space points of sentence vectors; ``texts``, the words they were made from,
        are needed when the bridge reads words too."""
        vectors = _unit(text_vectors)
        weight = float(self.info.get("word_weight", 0.0))
        words = self.words if weight > 0 else None
        width = vectors.shape[1] + (len(words) if words is not None else 0)
        if width != self.text_weights.shape[0]:
            raise TextError(f"text bridge {self.info.get('name', '')!r} reads {self.text_weights.shape[0]} text features; "
                            f"its sentence model and vocabulary give {width} (train another with `lookalike train text`)")
        points = vectors @ self.text_weights[:vectors.shape[1]]
        if words is not None:
            # The few words a query has, as a sparse product: a dense one over the whole vocabulary
            # woke OpenBLAS's threads, whose spinning then slowed the next MiniLM call from 9 to 26-47 ms.
            points = points + weight * np.asarray(words.sparse(_texts_for(texts, len(vectors))) @ self.text_weights[vectors.shape[1]:])
        return _unit(points)

    def image_side(self, image_vectors: np.ndarray, colours: np.ndarray | None = None) -> np.ndarray:
        return _unit(_image_input(image_vectors, colours, self.colour_scale, float(self.info.get("colour_weight", 0.0))) @ self.image_weights)

    # ---- learning ---------------------------------------------------------------------------
    @classmethod
    def fit(cls, text_vectors: np.ndarray, image_vectors: np.ndarray, text_model: str, encoder: str,
            options: BridgeOptions | None = None, log: Callable[[str], None] = lambda _: None, colours: np.ndarray | None = None,
            titles: list[str] | None = None) -> TextImageBridge:
        """Learn the heads from row-aligned (title vector, image vector[, colour descriptor]) pairs with a
        symmetric InfoNCE loss; a validation share reports title -> own photo R@1/R@10 among those pairs.
        ``titles`` (the titles' text) adds their words beside the sentence vectors (``word_weight``);
        the vocabulary comes from the training share only."""
        options = options or BridgeOptions()
        if titles is not None and len(titles) != len(text_vectors):
            raise TextError(f"{len(titles)} titles but {len(text_vectors)} title vectors")
        scale = None
        if colours is not None and options.colour_weight > 0:
            colours = np.asarray(colours, np.float32)
            scale = np.stack([colours.mean(0), colours.std(0) + 1e-6]).astype(np.float32)
        weight = options.colour_weight if scale is not None else 0.0
        inputs = _image_input(image_vectors, colours, scale, weight)
        if len(text_vectors) != len(image_vectors):
            raise TextError(f"{len(text_vectors)} title vectors but {len(image_vectors)} image vectors")
        if len(text_vectors) < MIN_PAIRS:
            raise TextError(f"a text bridge needs at least {MIN_PAIRS} products with a title and a photo; the store has {len(text_vectors)}")
        try:
            import torch
        except ImportError as exc:
            raise TextError("training the text bridge needs PyTorch: pip install torch==2.13.0") from exc
        rng = np.random.default_rng(options.seed)
        order = rng.permutation(len(text_vectors))
        n_val = int(len(order) * options.validation) if len(order) >= 10 * MIN_PAIRS else 0
        val, train = order[:n_val], order[n_val:]
        torch.manual_seed(options.seed)
        words = TitleWords.fit([titles[i] for i in train], options.word_min_count) if titles is not None and options.word_weight > 0 else None
        word_weight = options.word_weight if words is not None else 0.0
        t_all = torch.from_numpy(_text_input(text_vectors, titles, words, word_weight))
        i_all = torch.from_numpy(inputs)
        text_head = torch.nn.Linear(t_all.shape[1], options.dim, bias=False)
        image_head = torch.nn.Linear(i_all.shape[1], options.dim, bias=False)
        log_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
        params = [*text_head.parameters(), *image_head.parameters(), log_scale]
        optimiser = torch.optim.AdamW(params, lr=options.learning_rate, weight_decay=options.weight_decay)
        started = time.time()
        for epoch in range(options.epochs):
            shuffled = train[rng.permutation(len(train))]
            total = 0.0
            for start in range(0, len(shuffled), options.batch_size):
                batch = torch.from_numpy(shuffled[start:start + options.batch_size])
                if len(batch) < 2:
                    continue
                t = torch.nn.functional.normalize(text_head(t_all[batch]), dim=1)
                i = torch.nn.functional.normalize(image_head(i_all[batch]), dim=1)
                logits = log_scale.clamp(max=np.log(100.0)).exp() * t @ i.T
                target = torch.arange(len(batch))
                loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(batch)
            if epoch % 10 == 9 or epoch == options.epochs - 1:
                log(f"text bridge epoch {epoch + 1}/{options.epochs}: loss {total / max(len(train), 1):.3f}")
        bridge = cls(text_head.weight.detach().numpy().T.copy(), image_head.weight.detach().numpy().T.copy(), text_model, encoder,
                     colour_scale=scale, words=words)
        bridge.info = {"pairs": int(len(train)), "validation_pairs": int(n_val), "dim": options.dim, "epochs": options.epochs,
                       "train_seconds": round(time.time() - started, 1), "seed": options.seed, "colour_weight": weight,
                       "word_weight": word_weight, "words": len(words) if words is not None else 0, "where": list(options.where)}
        if n_val:
            bridge.info["validation"] = bridge.retrieval(text_vectors[val], image_vectors[val], None if colours is None else colours[val],
                                                         None if titles is None else [titles[i] for i in val])
        return bridge

    def retrieval(self, text_vectors: np.ndarray, image_vectors: np.ndarray, colours: np.ndarray | None = None,
                  texts: list[str] | None = None) -> dict[str, float]:
        """Each text finding its own image among the given ones: R@1 and R@10."""
        scores = self.text_side(text_vectors, texts) @ self.image_side(image_vectors, colours).T
        rank = (scores > np.diag(scores)[:, None]).sum(1)
        return {"r_at_1": round(float(np.mean(rank < 1)), 4), "r_at_10": round(float(np.mean(rank < 10)), 4), "among": len(scores)}

    # ---- artefacts --------------------------------------------------------------------------
    def save(self, store_directory: Path, name: str | None = None) -> Path:
        parent = store_directory / TEXT_DIR
        parent.mkdir(parents=True, exist_ok=True)
        name = name or next_version_name(parent, "bridge")
        description = {"kind": "text-bridge", "format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "text_model": self.text_model,
                       "encoder": self.encoder, **self.info}

        def fill(folder: Path) -> None:
            arrays: dict[str, Any] = {"text": self.text_weights, "image": self.image_weights}
            if self.colour_scale is not None:
                arrays["colour_scale"] = self.colour_scale
            if self.words is not None:
                arrays["words"], arrays["word_idf"] = np.array(self.words.words, dtype=str), self.words.idf
            np.savez(folder / WEIGHTS_FILE, **arrays)
            (folder / BRIDGE_FILE).write_text(json.dumps(description, indent=2))

        return write_folder(parent / name, fill)

    @classmethod
    def load(cls, folder: Path) -> TextImageBridge:
        try:
            info = json.loads((folder / BRIDGE_FILE).read_text())
            with np.load(folder / WEIGHTS_FILE, allow_pickle=False) as weights:
                text, image = np.asarray(weights["text"], np.float32), np.asarray(weights["image"], np.float32)
                scale = np.asarray(weights["colour_scale"], np.float32) if "colour_scale" in weights else None
                vocabulary = (np.asarray(weights["words"]), np.asarray(weights["word_idf"], np.float64)) if "words" in weights else None
        except (OSError, ValueError, KeyError) as exc:
            raise TextError(f"text bridge {folder.name!r} is unreadable ({exc}); train another with `lookalike train text`") from exc
        if text.ndim != 2 or image.ndim != 2 or text.shape[1] != image.shape[1] or (scale is not None and scale.ndim != 2):
            raise TextError(f"text bridge {folder.name!r} has heads of shapes {text.shape} and {image.shape}; train another")
        words = None
        if vocabulary is not None:
            names, idf = vocabulary
            if names.ndim != 1 or names.dtype.kind != "U" or idf.shape != names.shape or not np.isfinite(idf).all() \
                    or len(set(names.tolist())) != len(names) or text.shape[0] <= len(names):
                raise TextError(f"text bridge {folder.name!r} has a damaged word vocabulary; train another with `lookalike train text`")
            words = TitleWords(names.tolist(), idf)
        if not isinstance(info, dict):
            raise TextError(f"text bridge {folder.name!r} has an unreadable description; train another with `lookalike train text`")
        info.setdefault("name", folder.name)
        return cls(text, image, str(info.get("text_model", "")), str(info.get("encoder", "")), info, scale, words)


def _texts_for(texts: list[str] | None, count: int) -> list[str]:
    if texts is None or len(texts) != count:
        raise TextError("this text bridge reads the words themselves beside their sentence vectors; none were given")
    return list(texts)


def _text_input(vectors: np.ndarray, texts: list[str] | None, words: TitleWords | None, weight: float) -> np.ndarray:
    """The text head's input: the unit sentence vector, then (when the bridge reads words) the
    text's TF-IDF word features scaled by ``weight``."""
    vectors = _unit(vectors)
    if words is None or weight <= 0:
        return vectors
    return np.hstack([vectors, weight * words.transform(_texts_for(texts, len(vectors)))]).astype(np.float32)


def _image_input(vectors: np.ndarray, colours: np.ndarray | None, scale: np.ndarray | None, weight: float) -> np.ndarray:
    """The image head's input: the unit image vector, then (when the bridge reads colour) the
    standardised colour descriptor scaled by ``weight``."""
    vectors = _unit(vectors)
    if scale is None:
        return vectors
    if colours is None or len(colours) != len(vectors):
        raise TextError("this text bridge reads the photos' colour descriptors; none were given")
    return np.hstack([vectors, weight * (np.asarray(colours, np.float32) - scale[0]) / scale[1]]).astype(np.float32)


def current_bridge_folder(store_directory: Path, encoder: str) -> Path | None:
    """The newest bridge trained on this encoder's vectors, if any."""
    found = [name for name, info in read_descriptions(store_directory / TEXT_DIR, BRIDGE_FILE) if info.get("encoder") == encoder]
    return store_directory / TEXT_DIR / found[-1] if found else None
