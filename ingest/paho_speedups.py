"""A measured fix for paho-mqtt's MQTT v5 receive path.

paho-mqtt 2.x rebuilds two constant lookup tables (property names and property types, with dozens of
``list.index`` calls) and then "clears" the new, empty object with ~27 ``hasattr`` checks, in every
``Properties()`` constructor — and it constructs one for every PUBLISH received on MQTT v5. On this project's
2-core machine that is ~40 µs of the ~150 µs paho spends per message, i.e. the difference between meeting and
missing ingest's throughput target (docs/performance.md, docs/adr/0003-paho-properties-speedup.md).

``install()`` gives ``Properties`` a constructor that shares one copy of those tables (paho never mutates them)
and a ``clear`` that looks only at the attributes the object holds. Behaviour is unchanged, which
tests/ingest/test_paho_speedups.py checks against the original constructor. It is applied only to the paho
versions it was verified with; any other version is left alone (and logged), so an upgrade can only make ingest
slower, never wrong.
"""

from __future__ import annotations

import logging
from typing import Any

import paho.mqtt
from paho.mqtt.properties import Properties

logger = logging.getLogger(__name__)

VERIFIED_VERSIONS = ("2.1.0", "2.2.0")
_installed = False
_original_init: Any = Properties.__init__
_original_clear: Any = Properties.clear


def install() -> bool:
    """Install the shared-table constructor once; returns whether it is active."""
    global _installed
    if _installed:
        return True
    version = getattr(paho.mqtt, "__version__", "?")
    if version not in VERIFIED_VERSIONS:
        logger.info("paho-mqtt %s is not a verified version; its Properties speedup is not applied", version)
        return False
    template = Properties(17)  # type: ignore[no-untyped-call]  # any packet type: tables do not depend on it
    types, names, properties = template.types, template.names, template.properties
    set_attr = object.__setattr__

    def fast_init(self: Properties, packetType: int) -> None:
        set_attr(self, "packetType", packetType)
        set_attr(self, "types", types)
        set_attr(self, "names", names)
        set_attr(self, "properties", properties)

    compressed = frozenset(name.replace(" ", "") for name in names)

    def fast_clear(self: Properties) -> None:
        held = self.__dict__
        if len(held) > 4:  # beyond packetType, types, names, properties
            for key in [k for k in held if k in compressed]:
                del held[key]

    Properties.__init__ = fast_init  # type: ignore[method-assign]
    Properties.clear = fast_clear  # type: ignore[method-assign]
    _installed = True
    return True


def uninstall() -> None:
    """Restore paho's own constructor (tests)."""
    global _installed
    Properties.__init__ = _original_init  # type: ignore[method-assign]
    Properties.clear = _original_clear  # type: ignore[method-assign]
    _installed = False
