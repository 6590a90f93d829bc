"""Fixtures shared by the report tests: the notification receivers (a real HTTP receiver and an aiosmtpd SMTP
server) and the gateway's seeded context."""

from tests.alerts.notify_fixtures import receiver, smtp_server  # noqa: F401
from tests.gateway.conftest import gateway, seeded  # noqa: F401
