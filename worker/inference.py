"""ONNX Runtime sessions for step models: provider choice, thread counts, one run per wave.

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


class StepSession:
    """One ONNX step graph loaded for serving."""

    def __init__(self, path: Path, device: str, intra_op_threads: int, inter_op_threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = choose_providers(device)
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped exception classes
            raise InferenceError(f"cannot load {path}: {exc}") from exc
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
