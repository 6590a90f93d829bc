"""ingest.service.RegistryCache: re-read in the background; a device it does not know makes it re-read at once."""

from __future__ import annotations

import threading
import time

from core.errors import StoreUnavailable
from core.protocol import DeviceInfo
from ingest.pipeline import RawMessage
from ingest.service import RegistryCache
from tests.helpers import wait_until


class Loads:
    def __init__(self) -> None:
        self.devices: dict[str, DeviceInfo] = {"m-1": DeviceInfo("m-1", "energy_meter", "gz")}
        self.calls = 0
        self.threads: set[str] = set()
        self.fail = False

    def __call__(self) -> dict[str, DeviceInfo]:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.fail:
            raise StoreUnavailable("registry down")
        return dict(self.devices)


def test_the_view_is_refreshed_in_the_background() -> None:
    loads = Loads()
    cache = RegistryCache(loads, refresh_s=0.05, miss_refresh_s=60)
    cache.start()
    try:
        assert set(cache.view(["m-1"])) == {"m-1"} and loads.calls == 1
        loads.devices["m-2"] = DeviceInfo("m-2", "energy_meter", "gz")
        wait_until(lambda: "m-2" in cache.devices, 5, what="the periodic re-read")
        assert "ingest-registry" in loads.threads  # not the caller's thread
    finally:
        cache.stop()


def test_an_unknown_device_is_looked_up_at_once_but_not_more_than_once_per_miss_period() -> None:
    loads = Loads()
    cache = RegistryCache(loads, refresh_s=3600, miss_refresh_s=0)
    cache.start()
    try:
        loads.devices["new-1"] = DeviceInfo("new-1", "gate", "gz")
        assert "new-1" in cache.view(["new-1"])  # registered a moment ago: found, not rejected as unknown
        cache.miss_refresh_s = 3600
        before = loads.calls
        for _ in range(100):
            cache.view(["nope"])  # an unknown id flood re-reads the registry at most once per period
        assert loads.calls == before
    finally:
        cache.stop()


def test_a_registry_outage_keeps_the_cached_view() -> None:
    loads = Loads()
    cache = RegistryCache(loads, refresh_s=0.05, miss_refresh_s=0)
    cache.start()
    try:
        loads.fail = True
        assert set(cache.view(["unknown"])) == {"m-1"}
        wait_until(lambda: loads.calls >= 4, 5, what="background attempts")
        assert set(cache.devices) == {"m-1"}
    finally:
        cache.stop()


def _msg(device: str, received_ms: int) -> RawMessage:
    return RawMessage(f"lf/v1/{device}/telemetry", b"{}", 1, 1, received_ms)


def test_screen_rereads_for_a_disabled_device_and_holds_it_until_a_view_newer_than_the_message() -> None:
    loads = Loads()
    loads.devices["m-2"] = DeviceInfo("m-2", "energy_meter", "gz", enabled=False)
    cache = RegistryCache(loads, refresh_s=3600, miss_refresh_s=3600)
    cache.refresh()
    loads.devices["m-2"] = DeviceInfo("m-2", "energy_meter", "gz", enabled=True)  # `devices enable m-2`
    now = time.time_ns() // 1_000_000
    good, fresh = _msg("m-1", now), _msg("m-2", now)
    view, ready, held = cache.screen([good, fresh], now)
    assert ready == [good] and held == [fresh]  # a re-read is not allowed yet: held back, not rejected
    assert not cache.ready_to_recheck()
    cache.miss_refresh_s = 0
    assert cache.ready_to_recheck()
    view, ready, held = cache.screen([fresh], now)  # re-read at once, then judged on the new view
    assert ready == [fresh] and held == [] and view["m-2"].enabled


def test_screen_judges_on_the_view_when_it_is_newer_than_the_message_or_held_too_long() -> None:
    loads = Loads()
    cache = RegistryCache(loads, refresh_s=3600, miss_refresh_s=3600, hold_max_s=5)
    before = time.time_ns() // 1_000_000 - 10
    cache.refresh()
    calls = loads.calls
    old = _msg("unknown-1", before)  # arrived before the view was read: the verdict stands
    _, ready, held = cache.screen([old], before + 20)
    assert ready == [old] and held == [] and loads.calls == calls
    late = _msg("unknown-2", cache.loaded_from_ms + 1)
    _, ready, held = cache.screen([late], cache.loaded_from_ms + 1 + 6000)  # held longer than hold_max_s
    assert ready == [late] and held == []


def test_screen_does_not_reread_for_topics_rejected_without_the_registry() -> None:
    loads = Loads()
    cache = RegistryCache(loads, refresh_s=3600, miss_refresh_s=0)
    cache.refresh()
    calls = loads.calls
    now = time.time_ns() // 1_000_000 + 1000
    odd = [
        RawMessage("lf/v1/Bad_Id/telemetry", b"{}", 1, 1, now),
        RawMessage("lf/v1/m-9/cmd", b"{}", 2, 1, now),
        RawMessage("x/y", b"{}", 3, 1, now),
    ]
    _, ready, held = cache.screen(odd, now)
    assert ready == odd and held == [] and loads.calls == calls
