"""Ranking losses over a batch of unit embeddings, with the negatives mined inside the batch.

Distances are cosine distances ``1 - <a, b>`` (embeddings are unit length), so margins read
the same whatever the embedding size.  Every loss takes ``(embeddings, labels)`` where labels
are integer classes: two rows are a positive pair when their labels match (the same article
type, or the same product seen in two views), a negative pair otherwise.

* :func:`triplet_loss` — the "deep ranking" hinge ``max(0, d(a,p) - d(a,n) + margin)`` with
  batch-hard or semi-hard mining (FaceNet);
* :func:`multi_similarity_loss` — Wang et al. 2019, weighs every informative pair;
* :class:`ProxyAnchorLoss` — Kim et al. 2020, one learned proxy per class as anchor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("triplet", "triplet-semihard", "multi-similarity", "proxy-anchor")
_FAR = 1e4  # stands in for "not a candidate" in a min/max over distances


def _pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) boolean matrices; an item is never its own positive."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def cosine_distances(embeddings: torch.Tensor) -> torch.Tensor:
    return 1.0 - embeddings @ embeddings.T


def hardest_negatives(distances: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each anchor, the index of the closest item with another label (-1 if there is none)."""
    _, negative = _pair_masks(labels)
    masked = torch.where(negative, distances, torch.full_like(distances, _FAR))
    best = masked.argmin(dim=1)
    return torch.where(negative.any(dim=1), best, torch.full_like(best, -1))


def semi_hard_negatives(distances: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """For each (anchor, positive) pair, the closest negative still farther than the positive
    (inside the margin band when possible); the hardest negative when none is farther.
    Returns an (n, n) index matrix, meaningful where the pair is a positive."""
    positive, negative = _pair_masks(labels)
    d_ap = distances[:, :, None]                     # anchor a, positive p
    d_an = distances[:, None, :]                     # anchor a, negative n
    farther = negative[:, None, :] & (d_an > d_ap)
    candidates = torch.where(farther, d_an.expand(-1, len(labels), -1), torch.full_like(d_an.expand(-1, len(labels), -1), _FAR))
    semi = candidates.argmin(dim=2)
    hardest = hardest_negatives(distances, labels)[:, None].expand_as(semi)
    return torch.where(farther.any(dim=2), semi, hardest)


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, mining: str = "hard") -> torch.Tensor:
    """Mean hinge over anchors (``hard``: hardest positive against hardest negative) or over
    every positive pair (``semi-hard``); anchors without a positive or a negative are skipped."""
    distances = cosine_distances(embeddings)
    positive, negative = _pair_masks(labels)
    usable = positive.any(dim=1) & negative.any(dim=1)
    if not usable.any():
        return embeddings.sum() * 0.0
    if mining == "hard":
        d_ap = torch.where(positive, distances, torch.full_like(distances, -_FAR)).max(dim=1).values
        d_an = distances.gather(1, hardest_negatives(distances, labels).clamp(min=0)[:, None])[:, 0]
        return F.relu(d_ap - d_an + margin)[usable].mean()
    if mining == "semi-hard":
        chosen = semi_hard_negatives(distances, labels, margin)
        d_an = distances.gather(1, chosen.reshape(len(labels), -1)).reshape_as(chosen)
        pairs = positive & usable[:, None]
        return F.relu(distances - d_an + margin)[pairs].mean()
    raise ValueError(f"unknown mining {mining!r}; use 'hard' or 'semi-hard'")


def multi_similarity_loss(embeddings: torch.Tensor, labels: torch.Tensor, alpha: float = 2.0, beta: float = 50.0,
                          base: float = 0.5, epsilon: float = 0.1) -> torch.Tensor:
    """Multi-similarity loss: pairs are first mined (a positive less similar than the hardest
    negative + epsilon, a negative more similar than the hardest positive - epsilon), then
    weighted by soft-plus terms around the similarity ``base``."""
    sim = embeddings @ embeddings.T
    positive, negative = _pair_masks(labels)
    hardest_neg = torch.where(negative, sim, torch.full_like(sim, -_FAR)).max(dim=1, keepdim=True).values
    hardest_pos = torch.where(positive, sim, torch.full_like(sim, _FAR)).min(dim=1, keepdim=True).values
    keep_pos = positive & (sim - epsilon < hardest_neg)
    keep_neg = negative & (sim + epsilon > hardest_pos)
    pos_term = torch.log1p((torch.exp(-alpha * (sim - base)) * keep_pos).sum(dim=1)) / alpha
    neg_term = torch.log1p((torch.exp(beta * (sim - base)) * keep_neg).sum(dim=1)) / beta
    usable = positive.any(dim=1) & negative.any(dim=1)
    if not usable.any():
        return embeddings.sum() * 0.0
    return (pos_term + neg_term)[usable].mean()


class ProxyAnchorLoss(torch.nn.Module):
    """Proxy-anchor loss: each class proxy pulls the batch's members of its class and pushes
    the rest, with a log-sum-exp that weighs hard items most (``alpha`` scale, ``delta`` margin)."""

    def __init__(self, n_classes: int, dim: int, alpha: float = 32.0, delta: float = 0.1, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.proxies = torch.nn.Parameter(torch.randn(n_classes, dim, generator=generator) * 0.1)
        self.alpha, self.delta = alpha, delta

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sim = embeddings @ F.normalize(self.proxies, dim=1).T               # (batch, classes)
        member = F.one_hot(labels, self.proxies.shape[0]).bool()
        pos = torch.log1p((torch.exp(-self.alpha * (sim - self.delta)) * member).sum(dim=0))
        neg = torch.log1p((torch.exp(self.alpha * (sim + self.delta)) * ~member).sum(dim=0))
        present = member.any(dim=0)
        return pos[present].sum() / present.sum().clamp(min=1) + neg.sum() / self.proxies.shape[0]


def set_proxy_loss(embeddings: torch.Tensor, proxies: torch.Tensor, positives: torch.Tensor, scale: float = 32.0) -> torch.Tensor:
    """Multi-positive proxy softmax: ``-log(Σ_{c∈P} e^{s·cos(x,p_c)} / Σ_c e^{s·cos(x,p_c)})``.
    A street crop labelled "shoes" is right near *any* shoe type's proxy, so its positives are a
    set (``positives``: (batch, classes) bool), not one class."""
    logits = scale * embeddings @ F.normalize(proxies, dim=1).T
    wanted = torch.logsumexp(logits.masked_fill(~positives, -_FAR), dim=1)
    usable = positives.any(dim=1)
    if not usable.any():
        return embeddings.sum() * 0.0
    return (torch.logsumexp(logits, dim=1) - wanted)[usable].mean()


def ranking_loss(name: str, n_classes: int, dim: int, seed: int = 0, margin: float = 0.2) -> torch.nn.Module:
    """The named loss as a module ``loss(embeddings, labels)`` (proxy-anchor has parameters to train)."""
    if name == "proxy-anchor":
        return ProxyAnchorLoss(n_classes, dim, seed=seed)
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")

    class _Loss(torch.nn.Module):
        def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            if name == "multi-similarity":
                return multi_similarity_loss(embeddings, labels)
            return triplet_loss(embeddings, labels, margin, "semi-hard" if name == "triplet-semihard" else "hard")

    return _Loss()
