"""Shop the look: find the garments in a photo and search the catalogue for each.

A :class:`GarmentFinder` (the detection package's detector, or anything with the same shape)
says where the garments are; each garment's box, with a margin, is cut out and searched like
an uploaded photo, with the caller's filters.  When the shop says which catalogue values each
garment group covers (:class:`GroupCategories`), a garment only matches products of its group:
"shoes" never return a handbag because both are brown.

``main_garment`` is what a plain photo search uses: a photo with a person in it (the finder
sees skin or hair) searches its most prominent garment; a packshot or a single garment on a
plain background is searched whole, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
import yaml
from PIL import Image

from .filters import FilterError
from .queries import ImageQuery
from .searcher import Hit, Searcher

MARGIN = 0.1  # of the box's size on each side: a little context helps the embedding
MAX_VALUES = 500
SEARCH_DRAFT = 512  # JPEG decode size for a plain search: a glance, a garment crop and the encoder need no more
PERSON_AREA = 0.02  # chosen on the finder's training street photos (97 % above) and phone photos of garments (7 % above)


class FoundRegion(Protocol):
    group: str
    box: tuple[float, float, float, float]
    confidence: float
    area: float
    person_area: float

    def to_dict(self, outline: bool = False) -> dict[str, Any]: ...


class GarmentFinder(Protocol):
    """Finds garments in a photo (:class:`lookalike.detection.GarmentDetector`)."""

    @property
    def identity(self) -> str: ...

    @property
    def groups(self) -> tuple[str, ...]: ...

    def detect(self, image: Image.Image) -> Sequence[FoundRegion]: ...

    def glance(self, image: Image.Image) -> Sequence[FoundRegion]: ...  # quicker, coarser: is a person there?


@dataclass(frozen=True)
class GroupCategories:
    """Which values of one catalogue column each garment group may match."""

    column: str
    values: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_dict(cls, data: Any, source: str = "garment groups") -> GroupCategories:
        if not isinstance(data, Mapping) or not isinstance(data.get("column"), str) or not isinstance(data.get("groups"), Mapping):
            raise FilterError(f"{source}: expected 'column: <catalogue column>' and 'groups: {{group: [values]}}'")
        values: dict[str, tuple[str, ...]] = {}
        for group, items in data["groups"].items():
            if isinstance(items, str) or not isinstance(items, (list, tuple)) or len(items) > MAX_VALUES:
                raise FilterError(f"{source}: group {group!r} must list at most {MAX_VALUES} values")
            cleaned = tuple(str(v).strip() for v in items if str(v).strip())
            if any("|" in v for v in cleaned):
                raise FilterError(f"{source}: group {group!r}: a value may not contain '|'")
            values[str(group)] = cleaned
        return cls(data["column"].strip(), values)

    @classmethod
    def from_file(cls, path: str | Path) -> GroupCategories:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise FilterError(f"garment groups file {path}: cannot be read ({exc})") from exc
        return cls.from_dict(data, f"garment groups file {path}")

    def clause(self, group: str) -> str | None:
        """``column=v1|v2`` for a group the map names; None (no restriction) otherwise."""
        values = self.values.get(group)
        return f"{self.column}={'|'.join(values)}" if values else None


@dataclass
class LookGarment:
    region: FoundRegion
    hits: list[Hit] = field(default_factory=list)

    def to_dict(self, outline: bool = True) -> dict[str, Any]:
        return {**self.region.to_dict(outline), "results": [h.to_dict() for h in self.hits]}


@dataclass
class Look:
    """A photo's garments, each with its products."""

    width: int
    height: int
    detector: str
    garments: list[LookGarment]

    def to_dict(self, outline: bool = True) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "detector": self.detector,
                "garments": [g.to_dict(outline) for g in self.garments]}


def crop_box(image: Image.Image, box: tuple[float, float, float, float], margin: float = MARGIN) -> Image.Image:
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(x1 - dx)), max(0, int(y1 - dy))
    right, bottom = min(image.width, int(round(x2 + dx))), min(image.height, int(round(y2 + dy)))
    return image.crop((left, top, max(right, left + 1), max(bottom, top + 1)))


def main_garment(regions: Sequence[FoundRegion]) -> FoundRegion | None:
    """The garment a plain search should use: the most prominent one, when the photo shows a
    person (skin or hair on at least ``PERSON_AREA`` of it); None (search the whole photo)
    otherwise: a garment on a hanger or a floor is the query itself."""
    if not regions or max(r.person_area for r in regions) < PERSON_AREA:
        return None
    return max(regions, key=lambda r: r.area * r.confidence)


RegionSource = Callable[[str], "tuple[np.ndarray, np.ndarray] | None"]  # group -> the catalogue's garment vectors of it


class LookSearcher:
    """Garment-by-garment search over one :class:`Searcher`; with ``regions``, catalogue
    products also match by their own garment of the same group (outfit shots)."""

    def __init__(self, searcher: Searcher, finder: GarmentFinder, categories: GroupCategories | None = None,
                 regions: RegionSource | None = None):
        self.searcher, self.finder, self.categories, self.regions = searcher, finder, categories, regions

    def _clauses(self, group: str, where: tuple[str, ...]) -> tuple[str, ...]:
        clause = self.categories.clause(group) if self.categories else None
        return where + ((clause,) if clause and self.categories and self.categories.column in self.searcher.serving.columns.names() else ())

    def search_region(self, image: Image.Image, region: FoundRegion, k: int, where: Iterable[str] = ()) -> list[Hit]:
        query = ImageQuery(crop_box(image, region.box), k=k, where=self._clauses(region.group, tuple(where)))
        catalogue = self.regions(region.group) if self.regions else None
        if catalogue is None or not len(catalogue[0]):
            return self.searcher.search(query)
        return self.searcher.search_with_regions(self.searcher.embed(query.image), k, query.where, catalogue)

    def look(self, image: Image.Image, k: int = 10, where: Iterable[str] = (), groups: Iterable[str] | None = None,
             max_garments: int = 8, person_only: bool = False) -> Look:
        """Every garment found (at most ``max_garments``, optionally only ``groups``), each with
        its ``k`` products.  ``person_only``: none unless the photo shows a person (see
        :func:`main_garment`), so a packshot costs one detection and no searches."""
        where = tuple(where)
        ImageQuery(image, k=k, where=where)  # validates k and the filter before any work
        wanted = set(groups) if groups else None
        unknown = sorted(wanted - set(self.finder.groups)) if wanted else []
        if unknown:
            raise FilterError(f"unknown garment group(s) {', '.join(repr(g[:40]) for g in unknown[:5])}; "
                              f"this garment finder knows {', '.join(self.finder.groups)}")
        if person_only and main_garment(self.finder.glance(image)) is None:
            found = []  # a packshot: a quick glance says so, no full look needed
        else:
            found = list(self.finder.detect(image))
            if person_only and main_garment(found) is None:
                found = []
        regions = [r for r in found if wanted is None or r.group in wanted][:max_garments]
        garments = [LookGarment(r, self.search_region(image, r, k, where)) for r in regions]
        return Look(image.width, image.height, self.finder.identity, garments)

    def search(self, image: Image.Image, k: int = 10, where: Iterable[str] = ()) -> tuple[FoundRegion | None, list[Hit]]:
        """A plain photo search that uses the main garment when the photo shows a person (a
        quick glance decides: a plain search must stay cheap for packshots)."""
        region = main_garment(self.finder.glance(image))
        if region is None:
            return None, self.searcher.search(ImageQuery(image, k=k, where=tuple(where)))
        return region, self.search_region(image, region, k, where)


class LookService:
    """Shop the look over whatever serves now: the searcher and the garment finder are asked
    for at each call, so a re-index or a newly trained finder takes effect at the next query."""

    def __init__(self, searcher: Callable[[], Searcher], read_image: Callable[..., Image.Image],
                 finder: Callable[[], GarmentFinder | None], categories_file: str = "", garment_search: str = "main",
                 regions: Callable[[str, str], tuple[np.ndarray, np.ndarray]] | None = None, regions_version: Callable[[], str] | None = None):
        self.searcher, self.read_image, self.finder = searcher, read_image, finder
        self.categories_file, self.garment_search = categories_file, garment_search
        self._categories: GroupCategories | None = None
        self._regions, self._regions_version = regions, regions_version
        self._region_cache: dict[tuple[str, str], tuple[str, tuple[np.ndarray, np.ndarray]]] = {}

    def catalogue_regions(self, group: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The catalogue's garment vectors of ``group`` for the serving model (reloaded when a
        garments run has written new ones)."""
        if self._regions is None:
            return None
        model = self.searcher().serving.encoder.identity
        version = self._regions_version() if self._regions_version else ""
        cached = self._region_cache.get((model, group))
        if cached is None or cached[0] != version:
            cached = (version, self._regions(model, group))
            self._region_cache[(model, group)] = cached
        return cached[1]

    def categories(self) -> GroupCategories | None:
        """Setting ``garment_groups``: which catalogue values each garment group may match."""
        if self.categories_file and self._categories is None:
            self._categories = GroupCategories.from_file(self.categories_file)
        return self._categories

    def _looks(self, finder: GarmentFinder) -> LookSearcher:
        return LookSearcher(self.searcher(), finder, self.categories(), self.catalogue_regions)

    def look(self, image: Any, k: int = 10, where: Iterable[str] | str | None = None, groups: Iterable[str] | None = None,
             max_garments: int = 8, person_only: bool = False) -> Look:
        """Every garment found in the photo, each with its ``k`` best products (``person_only``:
        none unless the photo shows a person)."""
        finder = self.finder()
        if finder is None:
            raise LookUnavailable("no garment finder: this store's setting 'detector' is 'none'")
        looks = self._looks(finder)
        with looks.searcher.serving.encoder.searching():  # finding and every garment's search: one search in progress
            return looks.look(self.read_image(image), k, _clauses(where), groups, max_garments, person_only)

    def search(self, image: Any, k: int = 10, where: Iterable[str] | str | None = None,
               whole: bool | None = None) -> tuple[dict[str, Any] | None, list[Hit]]:
        """A photo search that, for a photo of a person, searches its main garment (setting
        ``garment_search = "main"``); returns the garment searched (None: the whole photo) and the hits."""
        whole = self.garment_search == "whole" if whole is None else whole
        finder = None if whole else self.finder()
        searcher = self.searcher()
        if finder is None:
            return None, searcher.search(ImageQuery(image, k=k, where=_clauses(where)))
        ImageQuery(image, k=k, where=_clauses(where))  # a bad k or filter fails before the photo is decoded
        with searcher.serving.encoder.searching():  # glance, crop and search: one search in progress
            picture = self.read_image(image, SEARCH_DRAFT)  # decoded once, at the size the search needs
            region, hits = self._looks(finder).search(picture, k, _clauses(where))
        return (None if region is None else region.to_dict()), hits


class LookUnavailable(RuntimeError):
    """Shop the look was asked of a store whose garment finding is switched off."""


def _clauses(where: Iterable[str] | str | None) -> tuple[str, ...]:
    if where is None:
        return ()
    return (where,) if isinstance(where, str) else tuple(where)
