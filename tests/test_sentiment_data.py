"""IMDB preparation and the shipped tokenizer: cleaning, stratified split, round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from statecast.contract.text import clean_text
from statecast.models import sentiment_data as data

pytestmark = pytest.mark.unit

SAMPLES = [
    "This movie was GREAT! I'd watch it again... 10/10.",
    "Worst. Film. Ever.   Don't bother -- seriously; it's   awful :(",
    "Café déjà vu: naïve, über-long, and the soundtrack (€5) is 🎵 meh 🎵",
    "a",
    "\tTabs\nand new lines\r\nstay as the normalizer leaves them",
]


def test_clean_text_removes_markup_and_entities() -> None:
    raw = "Great film.<br /><br />Really &amp; truly<BR>good <i>acting</i>."
    assert clean_text(raw) == "Great film. Really & truly good acting ."


def test_stratified_split_is_disjoint_stratified_and_seeded() -> None:
    n = 1000
    df = pd.DataFrame(
        {"text": [f"review {i}" for i in range(n)], "label": [i % 3 == 0 for i in range(n)]}
    )
    df["label"] = df["label"].astype(np.int64)
    a = data.stratified_split(df, seed=3)
    b = data.stratified_split(df, seed=3)
    c = data.stratified_split(df, seed=4)
    texts = [set(f["text"]) for f in (a.train, a.val, a.test)]
    assert sum(len(t) for t in texts) == n
    assert not (texts[0] & texts[1])
    assert not (texts[0] & texts[2])
    assert not (texts[1] & texts[2])
    share = df["label"].mean()
    for part in (a.train, a.val, a.test):
        assert abs(part["label"].mean() - share) < 0.01
    assert len(a.test) == pytest.approx(0.1 * n, abs=2)
    assert a.test["text"].tolist() == b.test["text"].tolist()
    assert a.test["text"].tolist() != c.test["text"].tolist()


def test_shipped_tokenizer_round_trips() -> None:
    tok = data.load_tokenizer()
    assert tok.token_to_id(data.PAD_TOKEN) == data.PAD_ID
    assert tok.get_vocab_size() == data.VOCAB_SIZE
    assert tok.normalizer is not None
    for text in SAMPLES:
        ids = tok.encode(text).ids
        assert ids, text
        assert data.PAD_ID not in ids
        assert tok.decode(ids) == tok.normalizer.normalize_str(text)


def test_shipped_tokenizer_encodes_a_batch_like_one_by_one() -> None:
    tok = data.load_tokenizer()
    batch = [e.ids for e in tok.encode_batch(SAMPLES)]
    assert batch == [tok.encode(t).ids for t in SAMPLES]


def test_train_tokenizer_fits_a_small_corpus_deterministically() -> None:
    corpus = [f"the film number {i} was {'good' if i % 2 else 'bad'} indeed" for i in range(200)]
    a = data.train_tokenizer(corpus, vocab_size=300)
    b = data.train_tokenizer(corpus, vocab_size=300)
    assert a.to_str() == b.to_str()
    assert a.token_to_id(data.PAD_TOKEN) == data.PAD_ID
    text = "The film was good, indeed!"
    assert a.decode(a.encode(text).ids) == "the film was good, indeed!"
