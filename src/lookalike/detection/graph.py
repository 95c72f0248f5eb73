"""The served garment finder as one ONNX graph: backbone, fine-tuned tail, head and upsampling.

Run in NumPy, the head, its tail and the upsampling to the photo cost about 8 ms a glance on one
thread, more than the backbone (about 9 ms): a 5×5 depthwise sum over 1,152 channels and 3×3
convolutions at stride 4 are a Python loop of small products.  Appended to the backbone's ONNX
graph they are a few of ONNX Runtime's convolutions.  The graph is built once per detector
(keyed by its weights' hash) from the cached backbone and the head's arrays, and cached beside
the backbone; it gives the same probabilities as :meth:`SegmentationHead.logits` followed by
:func:`scaled_probabilities` (checked by the tests), so training, which scores cached maps with
the NumPy head, and serving agree.

The glance before every plain search runs a copy cut before the last upsampling
(:class:`CoarseFinderGraph`): its regions come from the head's stride-4 cells.

Building it needs the ``onnx`` package (``lookalike[export]``); without it the finder runs the
NumPy head, as before.

By default (setting ``detector_int8``) the convolutions, the backbone's and the head's, are
quantised like the INT8 encoder (:func:`lookalike.models.int8.quantize_graph`); the head's
additions, upsampling and softmax stay in float.  Calibration uses packaged photos: 32 of the
default finder's training street photos (``calibration/``) at the served sizes, and the
encoder's phone photos of garments at the glance size.  On the 111 held-out street photos it
keeps mIoU (0.573 against 0.573) and box recall (within two boxes per group) while a glance
takes 9.3 ms instead of 13.4 on one thread (the backbone alone quantised: 9.4-11.4 ms).

The weights are kept to 7 bits (``reduce_range``).  With 8 bits the same graph found different
garments on different CPUs: where ONNX Runtime has no VNNI instructions (AVX2 only), its INT8
convolutions add pairs of uint8 x int8 products in 16 bits, which saturate, and the held-out
photos lost 2 of 35 dresses and 3 of 74 bags against float there (a VNNI CPU: no dress, 2 bags).
7-bit weights cannot saturate, so every CPU computes the same; on the held-out photos and two
development folds that finds within 3 boxes per group of what float finds (README).

The graph is quantised from the calibration ranges the finder keeps (``int8-ranges-*.json``, see
:mod:`lookalike.models.ranges`) when they were measured on this very float graph: calibrated on
each machine, the ranges differ in their last bits from CPU to CPU, and that moved the held-out
box recall by up to two boxes per group.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from ..config import Settings
from ..models.encoders import EncoderError, PyramidFeatures
from ..models.ranges import CalibrationRanges
from .artefact import weights_digest
from .canvas import to_canvas
from .head import SegmentationHead

GRAPH_FORMAT = "1"  # bump when the appended nodes change: cached graphs of another format are rebuilt
CALIBRATION_VERSION = "4"  # bump when the calibration photos or recipe change (2: the head's convolutions too; 3: 7-bit weights; 4: stored ranges)
CALIBRATION_DIR = Path(__file__).with_name("calibration")
_PREFIX = "finder/"
HEAD_STRIDE = 4  # the head's logits: one cell per 4 × 4 canvas pixels
log = logging.getLogger("lookalike.detection")


def ranges_file_name(sides: tuple[int, ...]) -> str:
    """Where in a finder's folder the calibration ranges of its INT8 graph at ``sides`` are kept."""
    return f"int8-ranges-{'-'.join(map(str, sides))}.json"


def onnx_available() -> bool:
    """Whether the graph can be built, without importing onnx (about 0.9 s): a server whose
    graph is cached never needs it."""
    return importlib.util.find_spec("onnx") is not None


class FinderGraph(PyramidFeatures):
    """Pixels (n, h, w, 3) uint8, h and w multiples of 32 -> class probabilities (n, h, w, classes)
    over the whole canvas, in one ONNX Runtime run (with the backbone's run slots and sessions)."""

    rebuilds_cache = True

    def __init__(self, model_name: str, head: SegmentationHead, settings: Settings | None = None, int8_sides: tuple[int, ...] = (),
                 beside: FinderGraph | None = None, ranges: Path | None = None):
        """``int8_sides``: quantise the backbone, calibrated at these longer sides (the sizes served);
        empty: all in float.  ``beside``: another graph of the same finder whose run slots this one
        shares, so the two never both run on every thread at once.  ``ranges``: the finder's stored
        calibration ranges (:func:`ranges_file_name`), used instead of calibrating here if they fit."""
        super().__init__(model_name, settings)
        self.stored_ranges_path = ranges
        if beside is not None:
            self._slots = beside._slots
        self.finder_head, self.int8_sides = head, tuple(int8_sides)
        self.backbone_path = self.model_path
        self.name = f"{model_name}-finder"
        # Keyed by the backbone graph's version and the head's weights: a retrained finder or a new
        # backbone export gets a graph of its own.
        # (A finder being trained is evaluated before it is saved: the key is the weights' own hash,
        # taken once per head: a graph beside another of the same head reuses its key.)
        if beside is not None and beside.finder_head is head and beside.backbone_path == self.backbone_path:
            stem = beside.stem
        else:
            stem = f"{self.backbone_path.stem}-finder-{weights_digest(head.arrays)[:16]}"
        self.stem: str = stem
        self.float_path = self.backbone_path.parent / f"{stem}-v{GRAPH_FORMAT}.onnx"
        int8 = "-".join(map(str, self.int8_sides))
        self.full_path = self.backbone_path.parent / f"{stem}-int8-{int8}-v{GRAPH_FORMAT}.{CALIBRATION_VERSION}.onnx" if int8 else self.float_path
        self.model_path = self.full_path
        # the ranges the cached INT8 graph was quantised with, kept beside it (training copies them into a new finder)
        self.ranges_path = self.full_path.with_name(f"{self.full_path.stem}.ranges.json")

    def _ensure_model(self) -> Path:
        return self._ensure_full()

    def _ensure_full(self) -> Path:
        """The graph with probabilities over the whole canvas, built (and quantised) if not cached."""
        if not self.full_path.exists():
            if not self.float_path.exists():
                if not self.backbone_path.exists():
                    from ..models.encoders.efficientnet import export_onnx

                    export_onnx(self.base_name, self.backbone_path, "pyramid")
                fuse(self.backbone_path, self.finder_head, self.float_path)
            if self.int8_sides:
                self._quantise()
        return self.full_path

    def _forget_cached(self) -> None:
        for path in {self.model_path, self.full_path, self.float_path}:
            path.unlink(missing_ok=True)

    def _quantise(self) -> None:
        """Quantise the float graph beside the cache entry, then rename it in (once: about 15 s
        calibrating, 2-8 s from the finder's stored ranges)."""
        from ..models.artefacts import ModelError
        from ..models.int8 import quantize_graph

        stored = self._read_stored_ranges()
        with tempfile.TemporaryDirectory(dir=self.model_path.parent) as tmp:
            staged, staged_ranges = Path(tmp) / "finder-int8.onnx", Path(tmp) / "ranges.json"
            try:
                quantize_graph(self.float_path, staged, calibration_canvases(self.int8_sides), keep_float=_head_float_node,
                               fixed_shape=False, reduce_range=True, ranges=stored, ranges_out=staged_ranges)
            except ModelError as exc:
                raise EncoderError(f"cannot build the INT8 garment finder ({exc}); setting detector_int8 = false serves it in float") from exc
            if staged_ranges.exists():
                os.replace(staged_ranges, self.ranges_path)
                if stored is not None and CalibrationRanges.load(self.ranges_path) != stored:
                    log.warning("the garment finder's stored INT8 ranges were measured on another ONNX graph (other onnx, "
                                "onnxruntime or torch versions); calibrated here instead, so its figures may differ by a box or two")
            elif stored is not None:
                log.warning("this onnxruntime cannot quantise from stored calibration ranges (1.27 and later can); the garment "
                            "finder was calibrated here instead, so its figures may differ by a box or two")
            os.replace(staged, self.full_path)

    def _read_stored_ranges(self) -> CalibrationRanges | None:
        """The finder's own calibration ranges, if it has them and they can be read (else None:
        calibrated here, with a warning for a damaged file)."""
        from ..models.artefacts import ModelError

        if self.stored_ranges_path is None or not self.stored_ranges_path.is_file():
            return None
        try:
            return CalibrationRanges.load(self.stored_ranges_path)
        except ModelError as exc:
            log.warning("%s; calibrating the garment finder here instead", exc)
            return None

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.shape[1] % 32 or pixels.shape[2] % 32:
            raise ValueError(f"expected a batch of shape (n, h, w, 3) with h and w multiples of 32, got {pixels.shape}")
        (probabilities,) = self._run(np.ascontiguousarray(pixels, dtype=np.uint8))
        return np.asarray(probabilities, dtype=np.float32)


class CoarseFinderGraph(FinderGraph):
    """The same graph without its last upsampling: probabilities at the head's own resolution,
    one cell per :data:`HEAD_STRIDE` × :data:`HEAD_STRIDE` canvas pixels, for the glance before
    every plain search.  Telling a person from a packshot and boxing the main garment need no
    more: on 611 photos (300 Myntra, 111 street, 200 phone), served in INT8, the two resolutions
    made the same person decision for 607 and their main-garment boxes overlapped at a median IoU
    of 0.94-0.96.  The full graph spent a fifth of its time upsampling 7 class maps to the canvas
    and taking their softmax there, and the regions' blob labelling 1.5 ms more on 16 times the pixels.
    Cut from the full graph (quantised or not), so no second calibration is needed."""

    def __init__(self, model_name: str, head: SegmentationHead, settings: Settings | None = None, int8_sides: tuple[int, ...] = (),
                 beside: FinderGraph | None = None, ranges: Path | None = None):
        super().__init__(model_name, head, settings, int8_sides, beside, ranges)
        self.model_path = self.full_path.with_name(f"{self.full_path.stem}-stride{HEAD_STRIDE}.onnx")

    def _ensure_model(self) -> Path:
        if not self.model_path.exists():
            without_upsampling(self._ensure_full(), self.model_path)
        return self.model_path


def without_upsampling(source: Path, target: Path) -> None:
    """Write ``source`` (a graph :func:`fuse` made, maybe quantised since) with the final resize
    to the canvas taken out, atomically: the softmax then reads the head's stride-4 logits."""
    import onnx
    import onnx.utils

    model = onnx.load(str(source))
    graph = model.graph
    made_by = {output: node for node in graph.node for output in node.output}
    softmax = next((n for n in graph.node if n.name == f"{_PREFIX}probabilities"), None)
    channels_last = made_by.get(softmax.input[0]) if softmax is not None else None
    resize = made_by.get(channels_last.input[0]) if channels_last is not None else None
    if channels_last is None or resize is None or resize.op_type != "Resize":
        raise EncoderError(f"{source} is not a garment finder graph this version can read; delete it to have it rebuilt")
    channels_last.input[0] = resize.input[0]
    # onnx's extractor keeps only what the outputs need: the resize and its size computation go
    cut = onnx.utils.Extractor(model).extract_model([i.name for i in graph.input], [o.name for o in graph.output])
    _save_atomically(cut, target)


def _save_atomically(model: Any, target: Path) -> None:
    import onnx

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        path = Path(tmp) / target.name
        onnx.save(model, str(path))
        os.replace(path, target)  # atomic: a concurrent reader never sees half a graph


def _head_float_node(name: str) -> bool:
    """The appended nodes that stay in float: all but the convolutions (additions, resizing,
    softmax: cheap, and the softmax's input is what the regions' confidences come from).
    :class:`_Builder` names each node after its operator."""
    return name.startswith(_PREFIX) and not name.startswith(f"{_PREFIX}conv_")


def calibration_canvases(sides: tuple[int, ...]) -> Iterator[np.ndarray]:
    """The packaged calibration photos as one-photo batches: the street photos at every served
    side, the phone photos of garments (mostly no person: what a glance mostly sees) at the smallest."""
    from ..models.int8 import CALIBRATION_DIR as PHONE_PHOTOS

    street, phone = sorted(CALIBRATION_DIR.glob("*.jpg")), sorted(PHONE_PHOTOS.glob("*.jpg"))
    if len(street) < 16 or len(phone) < 16:
        raise EncoderError(f"the packaged calibration photos are missing from {CALIBRATION_DIR} or {PHONE_PHOTOS}; reinstall lookalike")
    for files, wanted in ((street, sides), (phone, (min(sides),))):
        for file in files:
            with Image.open(file) as image:
                photo = image.convert("RGB")
            for side in wanted:
                yield to_canvas(photo, side).pixels[None]


class _Builder:
    """Appends nodes (names prefixed, weights as initialisers) to an ONNX graph."""

    def __init__(self, graph: Any):
        from onnx import helper, numpy_helper

        self.graph, self.helper, self.numpy_helper = graph, helper, numpy_helper
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{_PREFIX}{stem}_{self.count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.graph.initializer.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], **attributes: Any) -> str:
        out = self.name(kind.lower())
        self.graph.node.append(self.helper.make_node(kind, inputs, [out], name=out, **attributes))
        return out

    def conv(self, x: str, weight: np.ndarray, bias: np.ndarray, group: int = 1) -> str:
        """``weight`` (out, in/group, k, k), same padding."""
        pad = weight.shape[2] // 2
        return self.op("Conv", [x, self.const("w", weight.astype(np.float32)), self.const("b", bias.astype(np.float32))],
                       group=group, pads=[pad] * 4, kernel_shape=list(weight.shape[2:]))

    def dense(self, x: str, weight: np.ndarray, bias: np.ndarray) -> str:
        """A 1×1 convolution from the head's (in, out) matrix."""
        return self.conv(x, np.asarray(weight, np.float32).T[:, :, None, None], bias)

    def resize_like(self, x: str, like: str, first: int = 2) -> str:
        """Bilinear resize (half-pixel centres, as the head's interpolation matrices) of NCHW ``x``
        to the height and width of ``like`` (axes ``first``, ``first + 1`` of ``like``)."""
        batch_channels = self.op("Slice", [self.op("Shape", [x]), self.const("i", np.array([0])), self.const("i", np.array([2]))])
        size = self.op("Slice", [self.op("Shape", [like]), self.const("i", np.array([first])), self.const("i", np.array([first + 2]))])
        sizes = self.op("Concat", [batch_channels, size], axis=0)
        return self.op("Resize", [x, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel")

    def clip6(self, x: str) -> str:
        return self.op("Clip", [x, self.const("lo", np.array(0.0, np.float32)), self.const("hi", np.array(6.0, np.float32))])


def _tail(build: _Builder, head: SegmentationHead, x: str) -> str:
    for block in head.tail:
        y = build.clip6(build.dense(x, block["expand_weight"], block["expand_bias"]))
        depthwise = np.asarray(block["depthwise_weight"], np.float32).transpose(2, 0, 1)[:, None]
        y = build.clip6(build.conv(y, depthwise, block["depthwise_bias"], group=depthwise.shape[0]))
        y = build.dense(y, block["project_weight"], block["project_bias"])
        x = build.op("Add", [y, x]) if bool(block["skip"]) else y
    return x


def fuse(backbone: Path, head: SegmentationHead, target: Path) -> None:
    """Write ``backbone`` (the pyramid graph: outputs s4, s8, s16, s32, tail) with ``head`` appended
    as ``target`` (one output, ``probabilities``), atomically."""
    import onnx

    model = onnx.load(str(backbone))
    graph = model.graph
    outputs = [o.name for o in graph.output]
    build = _Builder(graph)
    nchw = {name: build.op("Transpose", [name], perm=[0, 3, 1, 2]) for name in outputs}
    s4, s8, s16 = (nchw[f"s{s}"] for s in (4, 8, 16))
    s32 = _tail(build, head, nchw["tail"]) if head.tail else nchw["s32"]
    a = head.arrays
    context = build.dense(build.op("ReduceMean", [s32], axes=[2, 3], keepdims=1), a["context_weight"], a["context_bias"])

    def lateral(tap: str, x: str) -> str:
        return build.dense(x, a[f"lateral_{tap}_weight"], a[f"lateral_{tap}_bias"])

    def mix(name: str, x: str) -> str:
        weight = np.asarray(a[f"{name}_weight"], np.float32).transpose(3, 2, 0, 1)
        return build.op("Relu", [build.conv(build.op("Relu", [x]), weight, a[f"{name}_bias"])])

    p32 = build.op("Add", [lateral("s32", s32), context])
    p16 = build.op("Add", [lateral("s16", s16), build.resize_like(p32, s16)])
    p8 = build.op("Add", [lateral("s8", s8), build.resize_like(p16, s8)])
    p4 = build.op("Add", [lateral("s4", s4), build.resize_like(mix("mix8", p8), s4)])
    logits = build.dense(mix("mix4", p4), a["classes_weight"], a["classes_bias"])
    upsampled = build.resize_like(logits, "pixels", first=1)
    channels_last = build.op("Transpose", [upsampled], perm=[0, 2, 3, 1])  # a softmax over the last axis is 10x quicker
    graph.node.append(onnx.helper.make_node("Softmax", [channels_last], ["probabilities"], name=f"{_PREFIX}probabilities", axis=-1))
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["batch", "height", "width", head.classes]))
    onnx.checker.check_model(model)
    _save_atomically(model, target)
