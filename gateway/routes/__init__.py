"""The routers of /api/v1, one module per noun. Each router carries the prefix itself, so a route's template
(the label of the latency metric) is the full path."""

API_PREFIX = "/api/v1"
