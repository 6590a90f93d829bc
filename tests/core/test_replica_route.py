"""core/replica.route: where one API read goes, from what is known about the replica (pure); database_read_url."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.replica import ReplicaState, route
from core.settings import Settings
from lianfang.config_cmd import summary

KW = {"max_lag_s": 30.0, "ryw_min_s": 5.0, "recheck_s": 2.0}


def test_route() -> None:
    fresh = ReplicaState(reachable=True, checked=100.0, lag_s=0.2)
    assert route(fresh, 101.0, wrote_at=None, **KW) == "replica"
    assert route(fresh, 102.0, wrote_at=None, **KW) == "probe"  # the lag is measured again every recheck_s
    assert route(ReplicaState(), 0.0, wrote_at=None, **KW) == "probe"  # never measured
    # read-your-writes: the same user's reads go to the primary for max(ryw_min_s, lag + 1 s) after a write
    assert route(fresh, 101.0, wrote_at=97.0, **KW) == "own-write"
    assert route(fresh, 101.0, wrote_at=95.0, **KW) == "replica"
    slow = ReplicaState(reachable=True, checked=100.0, lag_s=9.0)
    assert route(slow, 101.0, wrote_at=92.0, **KW) == "own-write"  # 9 s < 9 s lag + 1 s
    assert route(slow, 101.0, wrote_at=90.0, **KW) == "replica"
    behind = ReplicaState(reachable=True, checked=100.0, lag_s=31.0)
    assert route(behind, 101.0, wrote_at=None, **KW) == "primary"
    assert route(behind, 102.5, wrote_at=None, **KW) == "probe"  # and measured again, to come back
    down = ReplicaState(reachable=False, retry_at=110.0)
    assert route(down, 109.9, wrote_at=None, **KW) == "primary"
    assert route(down, 110.0, wrote_at=None, **KW) == "retry"
    assert route(down, 110.0, wrote_at=109.0, **KW) == "own-write"  # a writer never probes a replica coming back


def test_database_read_url_is_a_postgresql_url_and_config_check_hides_its_password() -> None:
    assert Settings().database_read_url is None
    assert Settings(database_read_url="  ").database_read_url is None
    with pytest.raises(ValidationError, match="streaming replica"):
        Settings(database_read_url="sqlite:///var/x.db")
    s = Settings(database_read_url="postgresql+psycopg://lianfang:s3cret@replica-1:5432/lianfang")
    rows = dict(summary(s))
    assert rows["read replica"] == "postgresql+psycopg://lianfang:***@replica-1:5432/lianfang"
    assert "s3cret" not in str(rows)
    assert dict(summary(Settings()))["read replica"].startswith("none")


def test_get_config_redacts_the_read_url_password() -> None:
    from gateway.routes.config import REDACTED, redact

    s = Settings(database_read_url="postgresql+psycopg://lianfang:s3cret@replica-1:5432/lianfang")
    out = redact(s.model_dump(mode="json"))
    assert out["database_read_url"] == f"postgresql+psycopg://lianfang:{REDACTED}@replica-1:5432/lianfang"
