"""ingest.service.RegistryCache: re-read in the background; a device it does not know makes it re-read at once."""

from __future__ import annotations

import threading

from core.errors import StoreUnavailable
from core.protocol import DeviceInfo
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
