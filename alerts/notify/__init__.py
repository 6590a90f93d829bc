"""Alert notifications: channels, routing, grouping, rate limits, retries, delivery log.

The alert service hands every notification to ``Dispatcher.notify(Notification(kind, alert, at))``; escalation
(``alerts.escalation.Escalator``) hands its ESCALATED notifications to the same callable. See
docs/notifications.md.
"""

from alerts.notify.config import NotifyConfig, load_notify_config, parse_notify_config
from alerts.notify.dispatcher import Dispatcher, NotifySink
from alerts.notify.log import DeliveryLog
from alerts.notify.routing import Notification, NotificationKind

__all__ = [
    "DeliveryLog",
    "Dispatcher",
    "Notification",
    "NotificationKind",
    "NotifyConfig",
    "NotifySink",
    "load_notify_config",
    "parse_notify_config",
]
