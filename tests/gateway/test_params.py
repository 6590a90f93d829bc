"""gateway/params.py: bounded times and buckets (pure), tried with hypothesis over offsets and the whole range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from fastapi import HTTPException
from hypothesis import given
from hypothesis import strategies as st

from gateway.params import (
    EPOCH,
    MAX_BUCKET_MS,
    MAX_INSTANT,
    MAX_MS,
    MIN_INSTANT,
    MIN_MS,
    finite_json,
    iso,
    parse_bucket,
    parse_time,
    to_instant,
)

offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
instants = st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(9998, 12, 30), timezones=st.just(UTC))


@given(at=instants, tz=offsets)
def test_parse_time_reads_any_offset_as_the_same_instant(at: datetime, tz: timezone) -> None:
    text = at.astimezone(tz).isoformat()
    assert parse_time(text, "start") == (at - EPOCH) // timedelta(milliseconds=1)  # floor, exactly
    assert to_instant(at.astimezone(tz)) == at and to_instant(at.astimezone(tz)).tzinfo is UTC


@given(ms=st.integers(min_value=MIN_MS, max_value=MAX_MS - 1))
def test_epoch_ms_in_range_round_trip_through_iso(ms: int) -> None:
    assert parse_time(str(ms), "end") == ms
    text = iso(ms)
    assert text is not None and text.endswith("Z")
    assert parse_time(text, "end") == ms


@given(
    ms=st.one_of(st.integers(max_value=MIN_MS - 1), st.integers(min_value=MAX_MS)).filter(lambda v: len(str(v)) < 21)
)
def test_epoch_ms_out_of_range_is_422(ms: int) -> None:
    with pytest.raises(HTTPException) as err:
        parse_time(str(ms), "start")
    assert err.value.status_code == 422 and "out of range" in str(err.value.detail)


@pytest.mark.parametrize(
    "text",
    ["9999-12-31T23:59:59-23:59", "9999-01-01T00:00:00Z", "1999-12-31T23:59:59.999Z", "0001-01-01T00:00:00+23:59"],
)
def test_times_outside_the_years_2000_to_9998_are_422(text: str) -> None:
    with pytest.raises(HTTPException) as err:
        parse_time(text, "start")
    assert err.value.status_code == 422
    assert err.value.detail[0]["loc"] == ["query", "start"]  # type: ignore[index]


def test_instant_bounds() -> None:
    assert to_instant(MIN_INSTANT) == MIN_INSTANT
    with pytest.raises(ValueError, match="out of range"):
        to_instant(MAX_INSTANT)
    with pytest.raises(ValueError, match="UTC offset"):
        to_instant(datetime(2026, 1, 1))


@pytest.mark.parametrize(("text", "ms"), [("1s", 1000), ("500ms", None), ("5m", 300_000), ("366d", MAX_BUCKET_MS)])
def test_bucket_bounds(text: str, ms: int | None) -> None:
    if ms is None:
        with pytest.raises(HTTPException):
            parse_bucket(text)
    else:
        assert parse_bucket(text) == ms


@pytest.mark.parametrize("text", ["367d", "9223372036854775807s", "999999999999d", "fortnight", "-5m"])
def test_bucket_out_of_range_or_malformed_is_422(text: str) -> None:
    with pytest.raises(HTTPException) as err:
        parse_bucket(text)
    assert err.value.status_code == 422


def test_finite_json_names_the_path_of_a_non_finite_number() -> None:
    assert finite_json({"a": [1, 2.5, {"b": "inf"}]}) == {"a": [1, 2.5, {"b": "inf"}]}
    with pytest.raises(ValueError, match=r"a\[1\]\.b: inf is not a finite number"):
        finite_json({"a": [1, {"b": float("inf")}]})
    with pytest.raises(ValueError, match="nan"):
        finite_json({"value": float("nan")})
