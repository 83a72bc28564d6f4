"""video_caption: templates and vocabulary, BLEU-4, the shipped decoder's contract and parity,
batched greedy decoding in the worker equal to the PyTorch reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from statecast.contract.manifest import check_digest, load_manifest
from statecast.export.caption_export import (
    NAME,
    ONNX_PATH,
    build_spec,
    load_model,
    parity_inputs,
    parity_video_caption,
)
from statecast.export.parity import PARITY_TOLERANCE, step_parity
from statecast.export.step_export import export_step_model, read_spec
from statecast.models.caption import (
    BOS,
    EOS,
    MAX_WORDS,
    VOCAB,
    WORD_ID,
    CaptionConfig,
    CaptionDecoder,
    CaptionStep,
    caption_ids,
    caption_text,
    target_matrix,
)
from statecast.models.caption_train import corpus_bleu, greedy, score_captions, trim
from statecast.models.video_data import MOTIONS
from statecast.models.video_scenes import CAMERA_MOTIONS, GARMENTS, Scenes
from statecast.worker.captions import Captioner

pytestmark = pytest.mark.unit


def test_every_label_combination_has_a_distinct_caption_within_the_length_limit() -> None:
    seen = set()
    for m in range(len(MOTIONS)):
        for g in range(len(GARMENTS)):
            for c in range(len(CAMERA_MOTIONS)):
                ids = caption_ids(m, g, c)
                assert ids[-1] == WORD_ID[EOS]
                assert len(ids) <= MAX_WORDS
                seen.add(caption_text(ids))
    assert len(seen) == len(MOTIONS) * len(GARMENTS) * len(CAMERA_MOTIONS)
    assert caption_text(caption_ids(0, 7, 0)) == "a sneaker moves left while the camera is still"
    assert len(set(VOCAB)) == len(VOCAB)
    rows = target_matrix([0, 6], [7, 9], [0, 8])
    assert rows.shape == (2, MAX_WORDS)
    assert caption_text(rows[1].tolist()).endswith(
        "turns clockwise while the camera rolls counterclockwise"
    )


def test_bleu4_is_one_for_exact_copies_and_drops_with_errors() -> None:
    refs = [caption_ids(m, m, m)[:-1] for m in range(8)]
    assert corpus_bleu(refs, refs) == pytest.approx(1.0)
    wrong_word = [[*r[:2], WORD_ID["bag"], *r[3:]] for r in refs]
    partial = corpus_bleu(wrong_word, refs)
    assert 0.0 < partial < 1.0
    short = [r[:5] for r in refs]  # precise but short: the brevity penalty applies
    assert corpus_bleu(short, refs) < corpus_bleu([r[:8] for r in refs], refs)
    assert corpus_bleu([[1, 2]], [[3, 4, 5, 6]]) == 0.0


def test_caption_scoring_counts_each_slot_on_its_own() -> None:
    # The template baseline and the decoder are scored by this one function.
    labels, garments, cameras = np.array([0, 5, 6]), np.array([7, 1, 9]), np.array([0, 3, 8])
    n = len(labels)
    clips = Scenes(
        frames=np.zeros((n, 1, 1, 1), np.uint8),
        lengths=np.ones(n, np.int64),
        labels=labels,
        garments=garments,
        cameras=cameras,
        sources=np.arange(n),
    )
    right = score_captions(target_matrix(labels, garments, cameras), clips)
    assert right["exact_match"] == 1.0
    assert right["bleu4"] == pytest.approx(1.0)
    assert right["slot_accuracy"] == {"garment": 1.0, "motion": 1.0, "camera": 1.0}
    # Wrong garment on every clip, wrong camera on the first: motion stays right.
    wrong = score_captions(target_matrix(labels, (garments + 1) % 10, [1, 3, 8]), clips)
    assert wrong["exact_match"] == 0.0
    assert wrong["slot_accuracy"] == {
        "garment": 0.0,
        "motion": 1.0,
        "camera": pytest.approx(2 / 3),
    }


def test_shipped_decoder_carries_the_contract_and_its_manifest_figures() -> None:
    spec = read_spec(ONNX_PATH)
    assert (spec.name, spec.kind) == (NAME, "decoder")
    assert [i.name for i in spec.inputs] == ["x", "context"]
    assert [s.name for s in spec.states] == ["h", "c"]
    assert tuple(spec.preprocess["vocab"]) == VOCAB
    assert spec.preprocess["context"]["model"] == "video_lstm"
    entry = load_manifest()[NAME]
    assert check_digest(entry) == ONNX_PATH
    assert entry.metrics["parity_max_abs_diff"] <= PARITY_TOLERANCE
    assert 0.0 <= entry.metrics["test_exact_match"] <= 1.0
    # The decoder must beat the template filled from the video model's class alone.
    assert entry.metrics["test_bleu4"] > entry.metrics["baseline_bleu4"]
    _, meta = load_model()
    assert meta["test"]["exact_match"] == pytest.approx(entry.metrics["test_exact_match"], abs=1e-4)


def test_parity_of_the_shipped_decoder() -> None:
    assert parity_video_caption() <= PARITY_TOLERANCE


def test_worker_greedy_decoding_matches_pytorch_batched_and_alone() -> None:
    model, _ = load_model()
    captioner = Captioner.load(ONNX_PATH)
    rng = np.random.default_rng(7)
    ctx = np.tanh(rng.normal(size=(9, model.cfg.context))).astype(np.float32)
    want = [trim(row) for row in greedy(model, torch.from_numpy(ctx)).tolist()]
    together = captioner.token_ids(ctx)
    assert together == want
    # A row's caption does not depend on which other cameras share the batch.
    assert [captioner.token_ids(ctx[i : i + 1])[0] for i in range(9)] == want
    texts = captioner.captions(ctx)
    assert texts == [" ".join(VOCAB[i] for i in row) for row in want]
    assert captioner.token_ids(np.zeros((0, model.cfg.context), np.float32)) == []
    with pytest.raises(ValueError, match="contexts"):
        captioner.token_ids(ctx[:, :5])


def test_export_of_a_fresh_decoder_meets_parity(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = CaptionDecoder(CaptionConfig(context=6, embed=4, hidden=8)).eval()
    path = tmp_path / "cap.onnx"
    example = (
        torch.zeros(2, 1, dtype=torch.int64),
        torch.zeros(2, 6),
        torch.zeros(1, 2, 8),
        torch.zeros(1, 2, 8),
    )
    export_step_model(CaptionStep(model), build_spec(model), path, inputs=example)
    ctx, tokens = parity_inputs(model, batch=3)
    assert (tokens[:, 0] == WORD_ID[BOS]).all()
    with torch.no_grad():
        ref = model(torch.from_numpy(tokens), torch.from_numpy(ctx)).numpy()
    steps: list[dict[str, np.ndarray]] = [
        {"x": tokens[:, t : t + 1], "context": ctx} for t in range(tokens.shape[1])
    ]
    diff = step_parity(path, steps, [{"logits": ref[:, t]} for t in range(tokens.shape[1])])
    assert diff <= PARITY_TOLERANCE
