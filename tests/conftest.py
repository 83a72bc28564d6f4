"""Shared fixtures live in tests/fixtures/ and load here as pytest plugins, so no test
module imports another."""

from __future__ import annotations

from statecast.worker.devstack import TANSU_SESSION_TIMEOUT_MS

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.e2e",
]

# The consumer session timeout for the test broker (one definition: the dev stack's).
CONSUMER_SESSION_TIMEOUT_MS = TANSU_SESSION_TIMEOUT_MS
