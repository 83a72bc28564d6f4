"""The real series the generator replays (pure logic over the shipped data sets)."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest

from statecast.loadtest.generator import StreamPlan
from statecast.loadtest.series import frame_series, price_series

pytestmark = pytest.mark.unit


def test_price_streams_cycle_through_tickers_and_wrap_forward_in_time() -> None:
    prices = price_series()
    assert [s.name for s in prices] == ["AAPL", "GOOG", "IBM", "MSFT", "SP500"]
    plan = StreamPlan("prices", tuple(prices), 12, 4)
    assert plan.series_of(0).name == "AAPL"
    assert plan.series_of(6).name == "GOOG"
    goog = prices[1]
    last = goog.event_ts(len(goog) - 1, 0)
    wrapped = goog.event_ts(0, 1)
    assert wrapped > last
    assert goog.locate(wrapped) == 0
    rendered = goog.render_values()
    assert orjson.loads(b'{"ts":1' + rendered[5]) == {
        "ts": 1,
        "values": {"log_return": float(goog.values[5, 0])},
    }
    assert np.isfinite(goog.values).all()


def test_frames_are_real_pngs_sent_as_the_whole_record_value() -> None:
    from statecast.models.video_data import FASHION_DIR

    # `make setup` installs the Debian package; a missing file is a set-up failure.
    assert (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file(), (
        "Debian dataset-fashion-mnist is not installed: run `make setup`"
    )
    from PIL import Image

    from statecast.models.video_data import load_fashion_mnist

    cam = frame_series(images=20)[0]
    assert cam.raw
    assert len(cam) == 20
    payload = cam.render_values()[7]
    img = Image.open(io.BytesIO(payload))
    assert img.format == "PNG"
    assert np.array_equal(np.asarray(img), load_fashion_mnist("t10k")[7])
