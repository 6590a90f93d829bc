"""The one error tree of Lianfang.

    LianfangError
    ├── Retryable            the operation may succeed later; keep the data, do not ack, retry
    │   ├── StoreUnavailable     telemetry store or SQL database cannot be reached / is locked
    │   │   └── StoreFull            its disk is full
    │   └── BrokerUnavailable    MQTT broker cannot be reached or did not answer in time
    ├── InvalidMessage       poison: a device message that breaks PROTOCOL.md; reject it with `reason`
    └── UserError            bad input from a person (config file, CSV row, CLI argument): say what and where

Adapters translate library errors with ``raise ... from exc``; callers branch on the category.
"""

from __future__ import annotations


class LianfangError(Exception):
    """Root of every error raised on purpose by Lianfang."""


class Retryable(LianfangError):
    """A transient failure: the same operation may succeed later."""


class StoreUnavailable(Retryable):
    """The telemetry store or the SQL database could not complete a write or read."""


class StoreFull(StoreUnavailable):
    """The store's disk is full: retry later, in smaller transactions, after giving back the log's space."""


class BrokerUnavailable(Retryable):
    """The MQTT broker could not be reached or did not answer in time."""


# The rejection reasons of PROTOCOL.md, in one place.
REJECTION_REASONS: tuple[str, ...] = (
    "not_json",
    "not_object",
    "too_large",
    "schema",
    "bad_timestamp",
    "unknown_event",
    "forged_identity",
    "unregistered_device",
    "disabled_device",
    "retained",
    "internal_error",
)


class InvalidMessage(LianfangError):
    """A device message that breaks the wire protocol. Never retried; rejected with a reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class UserError(LianfangError):
    """Bad input from a person: the message says what is wrong and where (file, line, field)."""
