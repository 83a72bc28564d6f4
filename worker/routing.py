"""Routing config: which model serves which input topic, with per-route options.

``STATECAST_ROUTES="sensor=sensor_lstm;text=sentiment_lstm?mode=conversation"``: routes are
separated by ``;``, each is ``topic=model`` with optional ``?key=value&key=value``
options. Options the worker core understands (``WORKER_OPTIONS``) are taken out; the rest
go to the model's codec untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# What to do when Redis holds a state of another version under a route's key (only
# possible when a writer of another format used the same key): start the stream from a
# zero state ("reset", the default) or dead-letter the record and leave the state alone.
MISMATCH_POLICIES = ("reset", "dead_letter")
WORKER_OPTIONS = ("on_state_mismatch",)


@dataclass(frozen=True)
class Route:
    topic: str
    model: str
    codec_options: Mapping[str, str] = field(default_factory=dict)
    on_state_mismatch: str = "reset"

    def to_text(self) -> str:
        """This route as one ``STATECAST_ROUTES`` item (``parse_routes`` reads it back)."""
        options = dict(self.codec_options)
        if self.on_state_mismatch != "reset":
            options["on_state_mismatch"] = self.on_state_mismatch
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"{self.topic}={self.model}" + (f"?{query}" if query else "")

    def describe(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "model": self.model,
            "options": dict(self.codec_options),
            "on_state_mismatch": self.on_state_mismatch,
        }


def parse_routes(text: str) -> tuple[Route, ...]:
    routes: list[Route] = []
    seen: set[str] = set()
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        head, _, query = part.partition("?")
        topic, eq, model = (s.strip() for s in head.partition("="))
        if not eq or not topic or not model:
            raise ValueError(f"route {part!r} is not 'topic=model[?key=value&...]'")
        if topic in seen:
            raise ValueError(f"topic {topic!r} is routed twice")
        seen.add(topic)
        options: dict[str, str] = {}
        for pair in filter(None, (q.strip() for q in query.split("&"))):
            key, eq, value = (s.strip() for s in pair.partition("="))
            if not eq or not key:
                raise ValueError(f"route option {pair!r} of {topic!r} is not key=value")
            options[key] = value
        policy = options.pop("on_state_mismatch", "reset")
        if policy not in MISMATCH_POLICIES:
            raise ValueError(f"on_state_mismatch must be one of {MISMATCH_POLICIES}")
        routes.append(Route(topic, model, options, policy))
    if not routes:
        raise ValueError("no routes configured")
    return tuple(routes)
