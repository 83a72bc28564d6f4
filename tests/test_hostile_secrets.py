"""A Redis password given in the URL's query string (redis-py reads ``?password=``) is
never logged, and the connection line says ``auth=yes``."""

from __future__ import annotations

import json

import pytest

from statecast.worker.settings import Settings
from statecast.worker.state.redis_conn import RedisSettings, mask_url, url_has_password

pytestmark = pytest.mark.unit

SECRET = "hunter2-not-in-logs"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://cache:6379/0?password={SECRET}",
        f"rediss://cache:6380/1?ssl_cert_reqs=none&password={SECRET}",
        f"redis://app:{SECRET}@cache:6379/0?password={SECRET}",
        f"redis://cache/0?Password={SECRET}&db=2",
    ],
)
def test_a_password_anywhere_in_the_url_is_masked(url: str) -> None:
    assert SECRET not in mask_url(url)
    assert "***" in mask_url(url)
    assert url_has_password(url)
    line = RedisSettings(url=url).describe()
    assert SECRET not in line
    assert "auth=yes" in line
    described = json.dumps(Settings.from_env({"STATECAST_REDIS_URL": url}).describe())
    assert SECRET not in described


def test_urls_without_secrets_are_left_alone() -> None:
    for url in ("redis://cache:6379/0", "redis://cache/0?db=2&socket_timeout=3"):
        assert mask_url(url) == url
        assert not url_has_password(url)
        assert "auth=no" in RedisSettings(url=url).describe()
