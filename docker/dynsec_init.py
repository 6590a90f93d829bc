#!/usr/bin/env python3
"""Write Mosquitto's first dynamic-security file for a compose deployment (a one-shot job before the broker).

    lianfang-dynsec-init /var/lib/lianfang-broker/dynamic-security.json

The accounts are those of ``devices.broker.bootstrap_dynsec`` (the same document the embedded broker of
``lianfang serve`` starts from): ``admin`` with ``LIANFANG_MQTT__ADMIN_PASSWORD``, the platform account
``LIANFANG_MQTT__USERNAME`` with ``LIANFANG_MQTT__PASSWORD``, default deny, no device yet. Settings are loaded and
validated like every ``lianfang`` command, so ``LIANFANG_ENV=prod`` refuses the development placeholder password.

An existing file is left alone: once the broker has started, its plugin owns the file, and devices are added
over ``$CONTROL/dynamic-security/v1`` by ``lianfang devices add`` / ``import`` / ``provision``.
The file is written 0600.
Exit status 0 when the file exists or was written, 1 with one line on stderr otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from core.errors import UserError
from core.settings import load_settings
from devices.broker import BrokerConfig, bootstrap_dynsec


def write_initial_dynsec(target: Path) -> bool:
    """Write the bootstrap document to ``target`` unless it exists; returns whether it wrote."""
    if target.exists():
        return False
    settings = load_settings()
    if settings.mqtt.admin_password is None:
        raise UserError("LIANFANG_MQTT__ADMIN_PASSWORD is required to create the broker's admin account")
    cfg = BrokerConfig(
        directory=target.parent,
        port=settings.mqtt.port,
        admin_password=settings.mqtt.admin_password.get_secret_value(),
        platform_username=settings.mqtt.username,
        platform_password=settings.mqtt.password.get_secret_value(),
    )
    doc = bootstrap_dynsec(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    tmp.replace(target)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: lianfang-dynsec-init PATH/dynamic-security.json", file=sys.stderr)
        return 1
    target = Path(argv[1])
    try:
        wrote = write_initial_dynsec(target)
    except (UserError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{target}: {'written' if wrote else 'exists, left alone'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
