"""One way to open an ONNX Runtime session on the CPU, for every model the package runs."""

from __future__ import annotations

from typing import Any


def cpu_session(model: str | bytes, threads: int, spin: bool = True) -> Any:
    """An ONNX Runtime CPU session of ``model`` (a path or serialised bytes) on ``threads`` pinned
    intra-op threads.  Pinned counts: oversubscribed pools collapse throughput on small machines.
    ``spin=False`` for a model whose runs are followed by other work: idle ORT threads would spin
    and starve it.  Errors are onnxruntime's own; callers say which model failed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
