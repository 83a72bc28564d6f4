"""The shipped char_lstm: its ONNX step reproduces the PyTorch model (chunked and byte by
byte, ragged rows in one batch), and its spec is what the generate route needs."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch

from statecast.contract.manifest import check_digest, load_manifest
from statecast.contract.paths import PACKAGE_ROOT
from statecast.export import charrnn_export as ce
from statecast.export.parity import PARITY_TOLERANCE, chunk_steps, step_parity
from statecast.export.step_export import read_spec


def test_shipped_char_lstm_parity() -> None:
    torch.set_num_threads(1)
    path = check_digest(load_manifest()["char_lstm"], PACKAGE_ROOT)
    model, _ = ce.load_model()
    rng = np.random.default_rng(8)
    texts = [rng.integers(0, 256, size=n).astype(np.int64) for n in (150, 1, 73, 20)]
    for chunk, cut in ((37, 150), (1, 24)):
        rows = [t[:cut] for t in texts]
        steps = chunk_steps(rows, chunk)
        expected = ce.reference_outputs(model, rows, chunk)
        diff = step_parity(path, cast(Any, steps), cast(Any, expected))
        assert diff <= PARITY_TOLERANCE


def test_shipped_char_lstm_spec() -> None:
    entry = load_manifest()["char_lstm"]
    spec = read_spec(entry.onnx_path())
    assert spec.kind == "generate"
    assert [s.name for s in spec.states] == ["h", "c", "ctx"]
    assert spec.preprocess["chunk_bytes"] == 256
    assert spec.outputs[0].name == "logits"
    m = entry.metrics
    # The figures the card reports, measured on the same bytes for both models.
    assert m["baseline_val_bpc"] == min(m["baseline_val_bpc_by_order"].values())
    # The bar: the RNN below the strongest n-gram on the held-out bytes.
    assert m["val_bpc"] < m["baseline_val_bpc"]
    assert m["test_bpc"] < m["baseline_test_bpc"]
