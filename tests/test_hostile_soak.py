"""The hostile soak, scaled down for the suite: 2,000 records on every route at once, 12%
hostile covering every class (the poison pill, the text amplification and the JPEG decode
bomb that used to stop the worker among them), values we did not write in Redis, and two
kill -9 of a live ``statecast worker`` mid-slice. The full run (100,000 records, 3 kills)
is ``python -m statecast.loadtest.soak``; its figures are in docs/hostile-input.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from statecast.loadtest.soak import SoakConfig, run_soak
from statecast.loadtest.soak_data import HOSTILE_CLASSES

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_scaled_hostile_soak(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    report = await run_soak(
        SoakConfig(
            bootstrap=kafka_bootstrap,
            redis_url=redis_url,
            records=2000,
            kills=2,
            max_batch=64,
            seed=7,
            rss_ceiling_mib=1024,
            workdir=tmp_path,
        )
    )
    assert report["failures"] == []
    assert report["passed"]
    assert report["hostile_share"] >= 0.1
    assert set(report["hostile_by_class"]) == set(HOSTILE_CLASSES)
    assert report["kills"] == 2
    # Every input offset has exactly one outcome; the kills left work to redo.
    assert sum(report["outcomes"].values()) == report["records"]
    assert report["outcomes"]["dead_letter"] == report["hostile"]
    assert report["duplicate_predictions"] + report["replays_skipped_final_run"] > 0
