"""Fine-tune an embedding head (and compact codebooks) on the shop's own catalogue.

    model = train_embedding(view, EmbeddingOptions(positives=["article_type"]))
    coded = train_quantizer(view, QuantizerOptions(model="article_type-v1", bits=64))

Both stages train only a small head on cached backbone features of several views per
product (:mod:`lookalike.training.features`), so they run in minutes on two CPU cores.
Batches hold ``batch_classes`` classes × ``per_class`` items, each item a random view of a
random product of its class: positives are same-label products *and* augmented views of the
same photo, negatives are mined inside the batch by the loss.  A seeded share of products
(``holdout``) is kept out of training and measured before and after, so every model records
honest validation metrics.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..common.metrics import ranking_metrics
from ..common.progress import Log, Progress
from ..models import FEATURE_EXTRACTOR, IMAGE_EMBEDDER, get_encoder
from ..models.artefacts import EmbeddingHead, ModelError, TrainedModel, load_model, next_name, resolve_model_path, save_model
from ..search.view import CatalogueView
from .features import ProductImage, TrainingDataError, ViewFeatureCache
from .street import StreetOptions, StreetSet, load_street_set

if TYPE_CHECKING:
    import torch

ID_POSITIVES = "id"  # --positives id: only views of the same product are positives
MISSING = {"", "na", "n/a", "nan", "none", "null", "unknown"}


@dataclass
class EmbeddingOptions:
    positives: list[str] = field(default_factory=lambda: ["article_type"])  # columns whose shared value makes a positive; "id" for views only
    where: list[str] | None = None
    backbones: list[str] | None = None  # None: the store's own encoder
    unfreeze_head: bool = False         # also train the backbone's last 1×1 convolution (cached feature maps; slower)
    views: int = 4                      # clean photo + 3 street-like views
    holdout: float = 0.2
    loss: str = "proxy-anchor"
    instance_weight: float = 1.0        # weight of the same-product loss (view against view) next to the class loss
    backbone_share: float = 0.0         # share of each similarity kept from the backbone features (exact-product matching; see EmbeddingHead)
    clean_share: float = 0.5            # share of batch items that are the clean photo rather than a street-like view
    dim: int = 128
    hidden: int = 1024
    steps: int = 1500
    batch_classes: int = 32
    per_class: int = 4
    lr: float = 1e-3
    margin: float = 0.2
    min_class_count: int = 2
    seed: int = 0
    name: str | None = None
    keep_out: list[str] = field(default_factory=list)  # product ids always held out (e.g. an evaluation's duplicate pairs)
    street: StreetOptions | None = None  # street garment boxes as cross-domain positives (see training.street)

    def __post_init__(self) -> None:
        if isinstance(self.street, dict):  # read back from a model's parameters
            self.street = StreetOptions(**self.street)


@dataclass
class QuantizerOptions:
    model: Any = ""                     # the fine-tuned (float) model to start from: a name, a folder or a TrainedModel
    bits: int = 64                      # 8 bits per codebook
    steps: int = 1000
    lr: float = 3e-4
    margin: float = 0.2
    quantization_weight: float = 1.0
    orthogonality_weight: float = 0.1
    batch_classes: int = 32
    per_class: int = 4
    seed: int = 0
    name: str | None = None


# ---- data -------------------------------------------------------------------------------------------
@dataclass
class TrainingSet:
    """Products with a usable label, their view features, and the held-out split."""

    ids: list[str]
    labels: np.ndarray          # int class per product
    classes: list[str]
    features: np.ndarray        # (n, views, dim) float16
    holdout: np.ndarray         # bool per product
    skipped: list[tuple[str, str]]
    metadata: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        train = ~self.holdout
        counts = np.bincount(self.labels[train], minlength=len(self.classes))
        return {"products": len(self.ids), "train_products": int(train.sum()), "holdout_products": int(self.holdout.sum()),
                "classes": len(self.classes), "smallest_class": int(counts[counts > 0].min()) if counts.any() else 0,
                "largest_class": int(counts.max()) if counts.any() else 0, "skipped_images": len(self.skipped),
                "views": int(self.features.shape[1]), "feature_dim": int(self.features.shape[2])}


def _label_of(metadata: dict[str, Any], product_id: str, columns: list[str]) -> str | None:
    parts = []
    for column in columns:
        value = product_id if column == ID_POSITIVES else metadata.get(column)
        text = "" if value is None else str(value).strip()
        if text.lower() in MISSING:
            return None
        parts.append(text)
    return " / ".join(parts)


def split_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded, per-class share of products kept out of training (never a class's last two)."""
    rng = np.random.default_rng(seed)
    holdout = np.zeros(len(labels), dtype=bool)
    if fraction <= 0:
        return holdout
    singletons = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) == 1:
            singletons.append(members[0])
            continue
        rng.shuffle(members)
        take = min(int(round(len(members) * fraction)), len(members) - 2)
        holdout[members[:max(0, take)]] = True
    if singletons:  # product-level classes (positives = id): hold out whole products
        order = np.array(singletons)
        rng.shuffle(order)
        holdout[order[: int(round(len(order) * fraction))]] = True
    return holdout


def load_training_set(view: CatalogueView, positives: list[str], where: list[str] | None, cache: ViewFeatureCache,
                      holdout: float, min_class_count: int, seed: int, progress: Progress | None, log: Log,
                      keep_out: list[str] | None = None) -> TrainingSet:
    if not positives:
        raise TrainingDataError("name at least one --positives column (or 'id' for views of the same product)")
    known = set(view.column_names()) | {ID_POSITIVES}
    unknown = [c for c in positives if c not in known]
    if unknown:
        raise TrainingDataError(f"unknown positives column(s) {', '.join(unknown)}; the catalogue has: {', '.join(sorted(view.column_names()))}")
    rowids = view.matching_rowids(where).tolist()
    products = view.store.get_by_rowids(rowids)
    thumbs = view.store.thumbnails(rowids)
    labelled = [(p, label) for p in (products[r] for r in rowids if r in products)
                if (label := _label_of(p.metadata, p.id, positives)) is not None]
    counts: dict[str, int] = {}
    for _, label in labelled:
        counts[label] = counts.get(label, 0) + 1
    min_count = 1 if positives == [ID_POSITIVES] else min_class_count
    dropped = sorted(label for label, n in counts.items() if n < min_count)
    if dropped:
        log(f"left out {len(dropped)} class(es) with fewer than {min_count} products: {', '.join(dropped[:8])}{' …' if len(dropped) > 8 else ''}")
    labelled = [(p, label) for p, label in labelled if counts[label] >= min_count]
    if len(labelled) < 8 or len({label for _, label in labelled}) < 2:
        raise TrainingDataError(f"too little labelled data to learn from: {len(labelled)} products in "
                                f"{len({label for _, label in labelled})} classes of {' + '.join(positives)} (need at least 8 products in 2 classes)")
    items = [ProductImage(p.id, p.image_hash, p.image, thumbs.get(p.rowid)) for p, _ in labelled]
    rowid_of = {p.id: p.rowid for p, _ in labelled}

    def stored_clean(todo: list[ProductImage]) -> dict[str, np.ndarray]:
        found = _stored_clean_features(view, cache, [(rowid_of[i.id], i) for i in todo])
        if found:
            log(f"clean-photo features of {len(found)} products read from the store's vectors; the backbone runs on their augmented views only")
        return found

    features, skipped = cache.compute(items, progress, stored_clean)
    for product_id, reason in skipped:
        log(f"skipped {product_id}: {reason}")
    kept = [(p, label) for p, label in labelled if p.id in features]
    classes = sorted({label for _, label in kept})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[label] for _, label in kept], dtype=np.int64)
    held = split_holdout(labels, holdout, seed)
    if keep_out:
        held |= np.isin([p.id for p, _ in kept], list(keep_out))
    return TrainingSet([p.id for p, _ in kept], labels, classes, np.stack([features[p.id] for p, _ in kept]),
                       held, skipped, [p.metadata for p, _ in kept])


def _stored_clean_features(view: CatalogueView, cache: ViewFeatureCache, products: list[tuple[int, ProductImage]]) -> dict[str, np.ndarray]:
    """id -> the backbones' features of the product's own photo, where the store holds vectors of
    every backbone computed from the image the product has now (its serving or a kept encoder's):
    the same numbers the cache would compute for view 0, read instead of run."""
    rowids = [rowid for rowid, _ in products]
    stored = [view.store.model_vectors(backbone.identity, rowids) for backbone in cache.backbones]
    found: dict[str, np.ndarray] = {}
    for rowid, item in products:
        parts = [vectors.get(rowid) for vectors in stored]
        if item.image_hash and all(part is not None and part[0] == item.image_hash and len(part[1]) == b.dim
                                   for part, b in zip(parts, cache.backbones)):
            found[item.id] = np.concatenate([part[1] for part in parts if part is not None])
    return found


def _backbone(view: CatalogueView, name: str) -> Any:
    """A backbone by name: the serving encoder itself, or one resolved as a store resolves it."""
    return view.encoder if name == view.encoder.name else get_encoder(name, view.settings, kinds=(IMAGE_EMBEDDER, FEATURE_EXTRACTOR))


def open_cache(view: CatalogueView, backbones: list[str], views: int, seed: int) -> ViewFeatureCache:
    encoders = [_backbone(view, name) for name in backbones]
    return ViewFeatureCache(view.directory / "training" / "features", encoders, views, seed, view.limits, view.settings.loader_threads)


# ---- batches and validation ---------------------------------------------------------------------
class BatchSampler:
    """``batch_classes`` classes × ``per_class`` items per batch, seeded.  Items come in pairs:
    two views of one product (so every product has a same-product positive), each view the
    clean photo with probability ``clean_share``, else a random street-like view."""

    def __init__(self, labels: np.ndarray, views: int, batch_classes: int, per_class: int, seed: int, clean_share: float = 0.5):
        self.rng = np.random.default_rng(seed)
        self.members = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
        self.members = [m for m in self.members if len(m)]
        self.views = views
        self.batch_classes = min(batch_classes, len(self.members))
        self.products_per_class = max(1, per_class // 2)
        self.clean_share = clean_share

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        chosen = self.rng.choice(len(self.members), self.batch_classes, replace=False)
        n = self.products_per_class
        products = np.concatenate([self.rng.choice(self.members[c], n, replace=len(self.members[c]) < n) for c in chosen])
        rows = np.repeat(products, 2)
        if self.views == 1:
            return rows, np.zeros(len(rows), dtype=np.int64)
        views = self.rng.integers(1, self.views, size=len(rows))
        views[self.rng.random(len(rows)) < self.clean_share] = 0
        return rows, views


def retrieval_metrics(vectors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Leave-one-out nearest-neighbour accuracy and mean average precision within a set."""
    x = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return ranked_metrics(x @ x.T, labels)


def view_recall(queries: np.ndarray, gallery: np.ndarray) -> float:
    """R@1 of street-like views against clean photos (row i of each is the same product)."""
    return round(float(((queries @ gallery.T).argmax(axis=1) == np.arange(len(queries))).mean()), 4)


def validate(data: TrainingSet, embed: Callable[[np.ndarray], np.ndarray], street: StreetSet | None = None) -> dict[str, float]:
    """Metrics on held-out products: clean photos against each other, street-like views against
    clean photos, and held-out street crops against them (P@10 of a mapped class)."""
    held = np.flatnonzero(data.holdout)
    if len(held) < 2:
        return {}
    clean = embed(data.features[held, 0].astype(np.float32))
    out = retrieval_metrics(clean, data.labels[held])
    if data.features.shape[1] > 1:
        out["view_recall_at_1"] = view_recall(embed(data.features[held, 1].astype(np.float32)), clean)
    if street is not None and street.holdout.any():
        queries = embed(street.features[street.holdout, 0].astype(np.float32))
        relevant = street.classes[street.holdout][:, data.labels[held]]
        out["street_p_at_10"] = street_precision(queries @ clean.T, relevant)
    return out


def street_precision(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> float:
    """Mean precision at ``k`` of street crops against catalogue products (relevant: a mapped class)."""
    top = np.argsort(-scores, axis=1)[:, :k]
    return round(float(np.take_along_axis(relevant, top, axis=1).mean()), 4)


def _identity(features: np.ndarray) -> np.ndarray:
    """Off the shelf: the backbone features as they are (each backbone's part is unit length)."""
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


# ---- torch parts ---------------------------------------------------------------------------------------
def _torch():
    try:
        import torch
    except ImportError as exc:
        raise TrainingDataError("training needs PyTorch: pip install torch==2.13.0 (CPU wheel), or pip install 'lookalike[train]'") from exc
    return torch


def _head_module(torch, input_dim: int, hidden: int, dim: int, conv: tuple[np.ndarray, np.ndarray] | None = None):
    """The trainable head; with ``conv`` (pretrained 1×1 convolution weights) it starts from the
    backbone's last feature map instead of its pooled features."""
    if hidden > 0:
        mlp = torch.nn.Sequential(torch.nn.Linear(input_dim, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(hidden, dim))
    else:
        mlp = torch.nn.Sequential(torch.nn.Linear(input_dim, dim))
    if conv is None:
        return mlp
    weight, bias = conv

    class UnfrozenHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Linear(weight.shape[0], weight.shape[1])  # a 1×1 convolution on position-major maps
            with torch.no_grad():
                self.conv.weight.copy_(torch.from_numpy(weight.T.copy()))
                self.conv.bias.copy_(torch.from_numpy(bias))
            self.mlp = mlp

        def forward(self, maps):
            x = self.conv(maps.reshape(len(maps), -1, self.conv.in_features)).clamp(0.0, 6.0).mean(dim=1)
            return self.mlp(torch.nn.functional.normalize(x, dim=1))

    return UnfrozenHead()


def _to_head(module, backbone_share: float = 0.0, pretrained_conv: tuple[np.ndarray, np.ndarray] | None = None) -> EmbeddingHead:
    """The trained module as NumPy weights; the backbone share is mixed in after training, since
    a head trained through the mix learns to cancel the backbone's detail (on Myntra at 0.5:
    view R@1 0.56 trained through it, 0.62 mixed after, 0.64 off the shelf).  An unfrozen head
    keeps the convolution it started from (``pretrained_conv``) for the exact-first rule."""
    conv = getattr(module, "conv", None)
    mlp = module.mlp if conv is not None else module
    linears = [layer for layer in mlp if hasattr(layer, "weight")]
    return EmbeddingHead([(l.weight.detach().numpy().T.copy(), l.bias.detach().numpy().copy()) for l in linears],
                         None if conv is None else (conv.weight.detach().numpy().T.copy(), conv.bias.detach().numpy().copy()), backbone_share,
                         pretrained_conv if conv is not None else None)


def _from_head(torch, head: EmbeddingHead):
    hidden = head.layers[0][0].shape[1] if len(head.layers) > 1 else 0
    module = _head_module(torch, head.input_dim, hidden, head.head_dim, head.conv)
    mlp = module.mlp if head.conv is not None else module
    linears = [layer for layer in mlp if hasattr(layer, "weight")]
    with torch.no_grad():
        for layer, (weight, bias) in zip(linears, head.layers):
            layer.weight.copy_(torch.from_numpy(weight.T.copy()))
            layer.bias.copy_(torch.from_numpy(bias))
    return module


def _seed_everything(torch, seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


# ---- stage 1: the float embedding ---------------------------------------------------------------------
def train_embedding(view: CatalogueView, options: EmbeddingOptions, progress: Progress | None = None, log: Log = lambda _: None,
                    save: bool = True) -> TrainedModel:
    """Learn a head from the catalogue's labels and views; saved as a new model in the store."""
    from .losses import ranking_loss

    torch = _torch()
    _check_embedding_options(options)
    if options.name:
        _check_new_name(view, options.name)
    backbones = options.backbones or [view.encoder.name]
    conv = None
    if options.unfreeze_head:
        conv, backbones = _unfrozen_start(view, backbones)
    cache = open_cache(view, backbones, options.views, options.seed)
    data = load_training_set(view, options.positives, options.where, cache, options.holdout, options.min_class_count, options.seed, progress, log,
                             options.keep_out)
    log(f"training on {int((~data.holdout).sum())} products in {len(data.classes)} classes, {int(data.holdout.sum())} held out")
    street = _street_set(options, data, cache, progress, log)
    _seed_everything(torch, options.seed)
    train_rows = np.flatnonzero(~data.holdout)
    features = torch.from_numpy(data.features[train_rows].astype(np.float32))
    labels = torch.from_numpy(data.labels[train_rows])
    head = _head_module(torch, conv[0].shape[1] if conv else data.features.shape[2], options.hidden, options.dim, conv)
    loss_fn = ranking_loss(options.loss, len(data.classes), options.dim, seed=options.seed, margin=options.margin)
    sampler = BatchSampler(data.labels[train_rows], data.features.shape[1], options.batch_classes, options.per_class, options.seed, options.clean_share)
    started = time.perf_counter()
    cross = CrossDomainTerm(torch, street, train_rows, features, data.labels[train_rows], loss_fn, options) if street is not None else None
    losses = _fit_head(torch, head, loss_fn, features, labels, sampler, options, progress, cross)
    trained = _to_head(head, options.backbone_share, conv)
    off_the_shelf = _identity if conv is None else trained.off_the_shelf
    metrics = {"off_the_shelf": validate(data, off_the_shelf, street), "fine_tuned": validate(data, trained, street)}
    log(f"held out: off the shelf {metrics['off_the_shelf']}, fine-tuned {metrics['fine_tuned']}")
    info = {
        "kind": "embedding", "backbones": [e.identity for e in cache.backbones], "positives": options.positives,
        "parameters": {k: v for k, v in asdict(options).items() if k not in ("name", "keep_out")} | {"keep_out": sorted(options.keep_out)},
        "training_data": data.summary() | ({"street": street.summary()} if street is not None else {}),
        "validation": metrics, "train_seconds": round(time.perf_counter() - started, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
    }
    name = options.name or next_name(view.directory, "-".join(options.positives))
    holdout_ids = [data.ids[i] for i in np.flatnonzero(data.holdout)]
    model = TrainedModel(name, view.directory, info, trained, None, holdout_ids) if not save else \
        load_model(save_model(view.directory, name, info, trained, holdout=holdout_ids))
    model.training_set = data
    return model


def _fit_head(torch, head, loss_fn, features, labels, sampler: BatchSampler, options: EmbeddingOptions, progress: Progress | None,
              cross: CrossDomainTerm | None = None) -> list[float]:
    """AdamW with a cosine schedule over ``options.steps`` batches; the class loss plus, when
    weighted, the same-product loss (rows are product indices, so views of one product match),
    plus, with street crops, the cross-domain loss."""
    from .losses import multi_similarity_loss

    extra = cross.parameters() if cross is not None else []
    optimiser = torch.optim.AdamW(list(head.parameters()) + list(loss_fn.parameters()) + extra, lr=options.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=options.steps)
    losses = []
    for step in range(options.steps):
        rows, views = sampler()
        head.train()
        embeddings = torch.nn.functional.normalize(head(features[rows, views]), dim=1)
        loss = loss_fn(embeddings, labels[rows])
        if options.instance_weight:
            loss = loss + options.instance_weight * multi_similarity_loss(embeddings, torch.from_numpy(rows))
        if cross is not None:
            loss = loss + cross(head, embeddings, rows)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if progress and (step % 25 == 0 or step == options.steps - 1):
            progress("training head", step + 1, options.steps)
    head.eval()
    return losses


def _street_set(options: EmbeddingOptions, data: TrainingSet, cache: ViewFeatureCache, progress: Progress | None, log: Log) -> StreetSet | None:
    if options.street is None:
        return None
    street = load_street_set(options.street, data.ids, data.labels, data.classes, data.metadata, options.positives, cache, options.seed, progress, log)
    log(f"street crops: {int((~street.holdout).sum())} to train on, {int(street.holdout.sum())} held out, from {street.summary()['photos']} photos")
    return street


class CrossDomainTerm:
    """The per-batch street term: sampled crops (a random view of each) against the class
    proxies, every class a crop's label maps to counting as a positive; crops that name their
    product are also pulled to that product's clean photo.  It shares the proxy-anchor loss's
    proxies when there are some, else learns its own, anchored by the batch's catalogue items."""

    def __init__(self, torch, street: StreetSet, train_rows: np.ndarray, train_features, train_labels: np.ndarray, loss_fn,
                 options: EmbeddingOptions):
        assert options.street is not None
        self.torch, self.spec = torch, options.street
        self.rng = np.random.default_rng(options.seed + 1)
        usable = np.flatnonzero(~street.holdout)
        self.crops = torch.from_numpy(street.features[usable].astype(np.float32))
        self.sets = torch.from_numpy(street.classes[usable])
        position = {int(row): i for i, row in enumerate(train_rows)}
        self.paired = np.array([position.get(int(r), -1) for r in street.products[usable]], dtype=np.int64)
        self.train_features, self.train_labels = train_features, train_labels
        shared = getattr(loss_fn, "proxies", None)
        self.own = shared is None
        self.proxies = torch.nn.Parameter(torch.randn(street.classes.shape[1], options.dim) * 0.1) if shared is None else shared

    def parameters(self) -> list[Any]:
        return [self.proxies] if self.own else []

    def __call__(self, head, embeddings, rows: np.ndarray):
        from .losses import multi_similarity_loss, set_proxy_loss

        torch, normalize = self.torch, self.torch.nn.functional.normalize
        chosen = self.rng.choice(len(self.crops), min(self.spec.per_batch, len(self.crops)), replace=False)
        views = self.rng.integers(0, self.crops.shape[1], size=len(chosen))
        street = normalize(head(self.crops[chosen, views]), dim=1)
        loss = set_proxy_loss(street, self.proxies, self.sets[chosen])
        if self.own:
            classes = torch.from_numpy(self.train_labels[rows])
            loss = loss + set_proxy_loss(embeddings, self.proxies, torch.nn.functional.one_hot(classes, self.proxies.shape[0]).bool())
        pairs = self.paired[chosen]
        if (pairs >= 0).any():  # street <-> shop pairs of one product: the crop against its product's clean photo
            mine = np.flatnonzero(pairs >= 0)
            products = normalize(head(self.train_features[pairs[mine], 0]), dim=1)
            both = torch.cat([street[mine], products, embeddings])
            ids = np.concatenate([pairs[mine], pairs[mine], rows])
            loss = loss + multi_similarity_loss(both, torch.from_numpy(ids))
        return self.spec.weight * loss


def _unfrozen_start(view: CatalogueView, backbones: list[str]) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """The pretrained last convolution of the (single) backbone, and its feature-map encoder's name.
    An INT8 backbone (built in or a store's own) unfreezes from the float network it was quantised
    from (``base_name``): its maps and last convolution are the float ones."""
    from ..models.encoders import EfficientNetLiteEncoder
    from ..models.encoders.efficientnet import pretrained_conv_head

    encoder = _backbone(view, backbones[0]) if len(backbones) == 1 else None
    if not isinstance(encoder, EfficientNetLiteEncoder):
        raise TrainingDataError(f"--unfreeze-head works with one EfficientNet-Lite backbone, not {', '.join(backbones)}")
    return pretrained_conv_head(encoder.base_name), [f"{encoder.base_name}-maps"]


def _check_new_name(view: CatalogueView, name: str) -> None:
    """Refuse a bad or taken model name before minutes of training, not after."""
    from ..models.artefacts import check_name, models_dir

    check_name(name)
    if (models_dir(view.directory) / name).exists():
        raise ModelError(f"a model named {name!r} already exists in {models_dir(view.directory)}; choose another --name")


def _check_embedding_options(options: EmbeddingOptions) -> None:
    from .losses import LOSSES

    problems = []
    if options.loss not in LOSSES:
        problems.append(f"loss must be one of {', '.join(LOSSES)}, got {options.loss!r}")
    if not 0 <= options.holdout < 0.9:
        problems.append(f"holdout must be in [0, 0.9), got {options.holdout}")
    if options.views < 1 or options.views > 32:
        problems.append(f"views must be from 1 to 32, got {options.views}")
    if options.dim < 8 or options.dim > 4096:
        problems.append(f"dim must be from 8 to 4096, got {options.dim}")
    if options.steps < 1:
        problems.append(f"steps must be positive, got {options.steps}")
    if not 0 <= options.backbone_share < 1:
        problems.append(f"backbone share must be in [0, 1), got {options.backbone_share}")
    if options.per_class < 2 or options.batch_classes < 2:
        problems.append("a batch needs at least 2 classes and 2 items per class")
    if problems:
        raise TrainingDataError("; ".join(problems))


# ---- stage 2: codebooks trained with the ranking loss -------------------------------------------------
def load_base_model(view: CatalogueView, name: str) -> TrainedModel:
    path = resolve_model_path(name, view.directory)
    if path is None:
        raise ModelError(f"no model {name!r} in {view.directory / 'models'}; train one with: lookalike train embedding")
    return load_model(path)


def train_quantizer(view: CatalogueView, options: QuantizerOptions, progress: Progress | None = None, log: Log = lambda _: None,
                    save: bool = True) -> TrainedModel:
    """Learn ``bits/8`` additive codebooks jointly with the head: an asymmetric triplet loss
    (float anchor, coded positive and negative) + the float triplet loss + quantisation error +
    weak orthogonality between codebooks."""
    from ..vectors.quantizer import AdditiveQuantizer, init_codebooks
    from .losses import triplet_loss

    torch = _torch()
    if options.bits % 8 or not 8 <= options.bits <= 256:
        raise TrainingDataError(f"bits must be a multiple of 8 from 8 to 256 (one byte per codebook), got {options.bits}")
    if options.name:
        _check_new_name(view, options.name)
    base = options.model if isinstance(options.model, TrainedModel) else load_base_model(view, options.model)
    if base.head.backbone_share > 0:
        raise ModelError(f"model {base.name!r} keeps a backbone share ({base.head.backbone_share}); codes are learned on a model trained without --backbone-share")
    params = base.info["parameters"]
    cache = open_cache(view, base.backbones, int(params["views"]), int(params["seed"]))
    if [e.identity for e in cache.backbones] != base.info["backbones"]:
        raise ModelError(f"model {base.name!r} was trained on backbones {base.info['backbones']}, which this installation no longer provides")
    data = base.training_set or load_training_set(view, list(base.info["positives"]), params.get("where"), cache, float(params["holdout"]),
                                                  int(params["min_class_count"]), int(params["seed"]), progress, log, params.get("keep_out"))
    _seed_everything(torch, options.seed)
    train_rows = np.flatnonzero(~data.holdout)
    m = options.bits // 8
    initial = base.head(data.features[train_rows].reshape(-1, data.features.shape[2]).astype(np.float32))
    codebooks = torch.nn.Parameter(torch.from_numpy(init_codebooks(initial, m, seed=options.seed)))
    head = _from_head(torch, base.head)
    features = torch.from_numpy(data.features[train_rows].astype(np.float32))
    labels = torch.from_numpy(data.labels[train_rows])
    optimiser = torch.optim.AdamW([{"params": head.parameters(), "lr": options.lr}, {"params": [codebooks], "lr": options.lr * 3}], weight_decay=0.0)
    sampler = BatchSampler(data.labels[train_rows], data.features.shape[1], options.batch_classes, options.per_class, options.seed,
                           float(params.get("clean_share", 0.5)))
    started = time.perf_counter()
    for step in range(options.steps):
        rows, views = sampler()
        head.train()
        embeddings = torch.nn.functional.normalize(head(features[rows, views]), dim=1)
        codes = AdditiveQuantizer(codebooks.detach().numpy()).encode(embeddings.detach().numpy())[:, :m]
        quantised = codebooks[torch.arange(m)[None, :], torch.from_numpy(codes.astype(np.int64))].sum(dim=1)
        batch_labels = labels[rows]
        asymmetric = _asymmetric_triplet(torch, embeddings, quantised, batch_labels, options.margin)
        quant_error = ((embeddings - quantised) ** 2).sum(dim=1).mean()
        orthogonality = _cross_codebook_energy(torch, codebooks)
        loss = asymmetric + triplet_loss(embeddings, batch_labels, options.margin) + options.quantization_weight * quant_error + options.orthogonality_weight * orthogonality
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if progress and (step % 25 == 0 or step == options.steps - 1):
            progress("training codebooks", step + 1, options.steps)
    head.eval()
    trained = _to_head(head, 0.0, base.head.pretrained_conv)
    quantizer = AdditiveQuantizer(codebooks.detach().numpy()).fit_norms(trained(data.features[train_rows, 0].astype(np.float32)))
    metrics = {
        "fine_tuned": validate(data, trained),
        "adc": _validate_codes(data, trained, quantizer, "adc"),
        "sdc": _validate_codes(data, trained, quantizer, "sdc"),
        "cross_term_ratio": round(quantizer.cross_term_ratio(), 4),
    }
    log(f"held out: float {metrics['fine_tuned']}, ADC {metrics['adc']}, SDC {metrics['sdc']}")
    info = {
        "kind": "quantized", "base_model": base.name, "backbones": base.info["backbones"], "positives": base.info["positives"],
        "parameters": {**params, "quantizer": {f.name: getattr(options, f.name) for f in fields(options) if f.name not in ("name", "model")}},
        "training_data": data.summary(), "validation": metrics, "train_seconds": round(time.perf_counter() - started, 1),
    }
    name = options.name or next_name(view.directory, f"{base.name}-{options.bits}bit")
    holdout_ids = [data.ids[i] for i in np.flatnonzero(data.holdout)]
    if not save:
        return TrainedModel(name, view.directory, info, trained, quantizer, holdout_ids)
    return load_model(save_model(view.directory, name, info, trained, quantizer, holdout_ids))


def _cross_codebook_energy(torch, codebooks: torch.Tensor) -> torch.Tensor:
    """Mean squared inner product between codewords of different codebooks,
    ``Σ_{i≠j} ||C_i C_jᵀ||² / (M (M-1) K²)``, computed through the d×d Gram matrices
    ``G_i = C_iᵀ C_i`` (``||C_i C_jᵀ||² = <G_i, G_j>``), which is K²/d² times cheaper."""
    m, k, _ = codebooks.shape
    if m < 2:
        return codebooks.sum() * 0.0
    grams = torch.einsum("mkd,mke->mde", codebooks, codebooks)
    total = grams.sum(dim=0)
    cross = (total * total).sum() - (grams * grams).sum()
    return cross / (m * (m - 1) * k * k)


def _asymmetric_triplet(torch, anchors: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss between float anchors and coded items, on the distance ADC search
    ranks by: ``||a - x̂||² / 2`` (equal to ``1 - <a, x>`` for unit vectors)."""
    from .losses import _FAR, _pair_masks

    distances = 0.5 * torch.cdist(anchors, items) ** 2
    positive, negative = _pair_masks(labels)
    usable = positive.any(dim=1) & negative.any(dim=1)
    if not usable.any():
        return anchors.sum() * 0.0
    d_ap = torch.where(positive, distances, torch.full_like(distances, -_FAR)).max(dim=1).values
    d_an = torch.where(negative, distances, torch.full_like(distances, _FAR)).min(dim=1).values
    return torch.relu(d_ap - d_an + margin)[usable].mean()


def _validate_codes(data: TrainingSet, head: EmbeddingHead, quantizer, mode: str) -> dict[str, float]:
    held = np.flatnonzero(data.holdout)
    if len(held) < 2:
        return {}
    clean = head(data.features[held, 0].astype(np.float32))
    codes = quantizer.encode(clean)
    sims = quantizer.adc_scores(clean, codes) if mode == "adc" else quantizer.sdc_scores(codes, codes)
    return ranked_metrics(sims, data.labels[held])


def ranked_metrics(sims: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Leave-one-out NN accuracy and mAP from a precomputed (n, n) similarity matrix, with the
    evaluation's tie-aware metrics (codes often tie); a query with no other member of its class
    counts as a miss for NN accuracy and is left out of mAP."""
    sims = np.asarray(sims, dtype=np.float64)
    nn, aps = [], []
    for i in range(len(sims)):
        relevant = np.delete(labels == labels[i], i)
        metrics = ranking_metrics(np.delete(sims[i], i), relevant, (1,))
        nn.append(metrics["nn_accuracy"])
        if relevant.any():
            aps.append(metrics["ap"])
    return {"nn_accuracy": round(float(np.mean(nn)), 4), "map": round(float(np.mean(aps)) if aps else 0.0, 4)}
