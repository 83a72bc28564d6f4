"""ONNX Runtime sessions for step models: provider choice, thread counts, one run per wave.

:func:`build_session` is the one place that creates an ``ort.InferenceSession``: the
worker, the export parity checks, the load tools and the tests all call it, so they run the
same graph optimisations and thread settings.

The worker calls :meth:`StepSession.run` from its inference thread (never on the event
loop). On CUDA the inputs and outputs go through an I/O binding so the states stay
contiguous host arrays that are copied once per wave; on CPU a plain ``run`` does the same.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from statecast.worker.codecs.base import Array

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class InferenceError(RuntimeError):
    """The ONNX file cannot be served on this machine."""


def choose_providers(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise InferenceError(f"STATECAST_DEVICE=cuda but onnxruntime offers only {available}")
    return [CPU]


def build_session(
    path: Path | str | bytes,
    device: str = "cpu",
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
) -> ort.InferenceSession:
    """An ONNX Runtime session for a step model (a path or the serialized model bytes).

    One thread each by default: a worker process owns one core, and a step is a small
    graph that extra threads only slow down (synchronisation costs more than the work).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = path if isinstance(path, bytes) else str(path)
    try:
        return ort.InferenceSession(source, options, providers=choose_providers(device))
    except Exception as exc:  # onnxruntime raises its own untyped exception classes
        name = "<bytes>" if isinstance(path, bytes) else str(path)
        raise InferenceError(f"cannot load {name}: {exc}") from exc


class StepSession:
    """One ONNX step graph loaded for serving."""

    def __init__(self, path: Path, device: str, intra_op_threads: int, inter_op_threads: int):
        self._session = build_session(path, device, intra_op_threads, inter_op_threads)
        self.providers: list[str] = list(self._session.get_providers())
        self.on_gpu = CUDA in self.providers
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        log.info("loaded %s with providers %s", path.name, self.providers)

    def metadata(self) -> dict[str, str]:
        meta: Any = self._session.get_modelmeta()
        return dict(meta.custom_metadata_map)

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        if self.on_gpu:
            return self._run_bound(feeds)
        results = self._session.run(list(self.output_names), dict(feeds))
        return dict(zip(self.output_names, results, strict=True))

    def _run_bound(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self._session.run_with_iobinding(binding)
        results = binding.copy_outputs_to_cpu()
        return dict(zip(self.output_names, results, strict=True))
