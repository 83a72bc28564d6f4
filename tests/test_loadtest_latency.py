"""Matching predictions to inputs by id, and the latency percentiles (pure logic)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from statecast.loadtest.latency import LatencyBook, SendLog, parse_id, percentiles_ms

pytestmark = pytest.mark.unit


def test_parse_id_accepts_topic_partition_offset_and_rejects_the_rest() -> None:
    assert parse_id("sensor/3/1234") == ("sensor", 3, 1234)
    assert parse_id("bench-1a-sensor/0/0") == ("bench-1a-sensor", 0, 0)
    assert parse_id("sensor/x/1") is None
    assert parse_id("sensor/1") is None
    assert parse_id("") is None


def test_send_log_finds_the_batch_an_offset_belongs_to() -> None:
    log = SendLog()
    log.add("t", 0, 0, 10, 100.0)
    log.add("t", 0, 20, 5, 102.0)  # added out of order on purpose
    log.add("t", 0, 10, 10, 101.0)
    log.add("t", 1, 0, 3, 200.0)
    assert log.sent_at("t", 0, 0) == 100.0
    assert log.sent_at("t", 0, 9) == 100.0
    assert log.sent_at("t", 0, 10) == 101.0
    assert log.sent_at("t", 0, 24) == 102.0
    assert log.sent_at("t", 0, 25) is None
    assert log.sent_at("t", 1, 2) == 200.0
    assert log.sent_at("t", 2, 0) is None
    assert log.sent_at("other", 0, 0) is None
    assert log.records == 28


def test_book_matches_ids_counts_duplicates_and_retries_early_predictions() -> None:
    log = SendLog()
    log.add("in", 0, 0, 2, 10.0)
    book = LatencyBook(log)
    book.observe("in/0/0", 10.005)
    book.observe("in/0/1", 10.010)
    book.observe("in/0/1", 10.020)  # at-least-once: a duplicate with the same id
    book.observe("in/1/0", 10.030)  # its input's ack is not recorded yet
    book.observe("garbage", 10.0)
    assert (book.matched, book.duplicates, book.unmatched, book.malformed) == (2, 1, 1, 1)
    log.add("in", 1, 0, 1, 10.010)
    book.retry_pending()
    assert (book.matched, book.unmatched) == (3, 0)
    lat = sorted(book.latencies_s().tolist())
    assert lat == pytest.approx([0.005, 0.010, 0.020])
    summary = book.summary()
    assert summary["sent"] == 3
    assert summary["matched"] == 3
    assert summary["window_s"] == pytest.approx(0.025)
    assert summary["throughput_eps"] == pytest.approx(3 / 0.025, rel=1e-3)
    assert summary["max_ms"] == pytest.approx(20.0)


def test_percentiles_match_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    lat = rng.exponential(0.004, size=10_001)
    got = percentiles_ms(lat.tolist())
    ms = lat * 1000
    # p50 of 10,001 samples is exactly the middle one; p99 interpolates between ranks.
    assert got["p50_ms"] == pytest.approx(float(np.sort(ms)[5000]))
    srt = np.sort(ms)
    rank = 0.99 * (len(srt) - 1)
    lo = math.floor(rank)
    expected_p99 = srt[lo] + (srt[lo + 1] - srt[lo]) * (rank - lo)
    assert got["p99_ms"] == pytest.approx(float(expected_p99))
    assert got["max_ms"] == pytest.approx(float(ms.max()))
    assert got["p50_ms"] <= got["p90_ms"] <= got["p99_ms"] <= got["max_ms"]


def test_percentiles_of_nothing_are_nan() -> None:
    got = percentiles_ms([])
    assert all(math.isnan(v) for v in got.values())
