"""Test helpers shared by the suite: waiting with a deadline, MQTT clients."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def wait_until(cond: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll ``cond`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or cond!r}")
        time.sleep(interval)


def mqtt_client(port: int, username: str, password: str, client_id: str | None = None) -> mqtt.Client:
    """A connected MQTT v5 client with its network loop running."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or username, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    wait_until(client.is_connected, 5, what=f"{username} connected")
    return client
