"""Registers every package's commands on the root app (imported by lianfang.cli.main)."""

from __future__ import annotations

from alerts.cli import rules_app
from dashboards.cli import dashboards_app
from devices.cli import devices_app, regions_app
from devices.cli_security import audit_app, certs_app, creds_app
from gateway.cli import users_app
from joint.cli import incidents_app, risk_app, stats_app
from lianfang.cli import app
from lianfang.config_cmd import config_app

# Each package owns its commands; add one line per sub-app here.
app.add_typer(regions_app, name="regions")
app.add_typer(devices_app, name="devices")
app.add_typer(config_app, name="config")
app.add_typer(users_app, name="users")
app.add_typer(creds_app, name="credentials")
app.add_typer(certs_app, name="certs")
app.add_typer(audit_app, name="audit")
app.add_typer(rules_app, name="rules")
app.add_typer(stats_app, name="stats")
app.add_typer(risk_app, name="risk")
app.add_typer(incidents_app, name="incidents")

from lianfang.store_cmd import store_app  # noqa: E402

app.add_typer(store_app, name="store")
app.add_typer(dashboards_app, name="dashboards")

from lianfang.serve_cmd import alerts, ingest, serve  # noqa: E402
from lianfang.startup import long_running  # noqa: E402

# The long-running commands: the data directory checked, known start-up failures as one line (lianfang/startup.py).
app.command("serve")(long_running(serve))
app.command("ingest")(long_running(ingest))
app.command("alerts")(long_running(alerts))
app.command("engine", hidden=True)(long_running(alerts))  # alias of `alerts`

from devices.sim_cli import sim_app, simulate  # noqa: E402

app.command("simulate")(simulate)
app.add_typer(sim_app, name="sim")  # lianfang sim backfill (docs/simulator.md)

from lianfang.demo import demo  # noqa: E402

app.command("demo")(long_running(demo))

from reports.cli import report_app  # noqa: E402

app.add_typer(report_app, name="report")  # reports (docs/reports.md)

from devices.dispatch_cli import dispatches_app  # noqa: E402

app.add_typer(dispatches_app, name="dispatches")  # vehicle dispatch records, rule V2 (docs/alerts.md)
