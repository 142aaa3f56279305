"""Kubernetes timestamps (RFC 3339, UTC, whole seconds): one format for statuses, conditions and clocks."""

from __future__ import annotations

from datetime import UTC, datetime

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def utc_now() -> str:
    return format_time(datetime.now(UTC))


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from start to end; None when either is unknown."""
    begin, finish = parse_time(start), parse_time(end)
    if begin is None or finish is None:
        return None
    return (finish - begin).total_seconds()
