"""`lianfang config check`: load and validate the settings without starting anything."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import make_url

from core.errors import UserError
from core.settings import Settings, load_settings

config_app = typer.Typer(
    help="Check the settings (the --config YAML file and LIANFANG_* environment variables).",
    no_args_is_help=True,
)


@config_app.command("check")
def config_check(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML settings file to check (default: the one of 'lianfang --config FILE' or LIANFANG_CONFIG).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Load the settings and print a summary, or the exact problem naming the field; exit 1 on error.

    Settings come from the YAML file (`lianfang config check --config FILE`, `lianfang --config FILE config
    check` or LIANFANG_CONFIG) and from LIANFANG_* environment variables, which win over the file. Nested fields
    use '__', e.g. LIANFANG_MQTT__PORT=1884.
    """
    root = ctx.find_root()
    config = str(config_file) if config_file is not None else None
    if config is None and isinstance(root.obj, dict):
        config = root.obj.get("config")
    try:
        settings = load_settings(Path(config) if config else None)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"settings OK (from {config or 'environment and defaults'})")
    for key, value in summary(settings):
        typer.echo(f"  {key:<16} {value}")


def summary(settings: Settings) -> list[tuple[str, str]]:
    """The settings a person checks first, secrets hidden."""
    try:
        db = make_url(settings.database_url).render_as_string(hide_password=True)
    except Exception:
        db = "(unparseable URL)"
    read_db = "none (reads use the database)"
    if settings.database_read_url:
        try:
            read_db = make_url(settings.database_read_url).render_as_string(hide_password=True)
        except Exception:
            read_db = "(unparseable URL)"
    mqtt = settings.mqtt
    broker = f"{mqtt.host}:{mqtt.port} as {mqtt.username}" + (" (embedded Mosquitto)" if mqtt.embedded_broker else "")
    return [
        ("env", settings.env),
        ("database", db),
        ("read replica", read_db),
        ("telemetry store", store_summary(settings)),
        ("mqtt broker", broker),
        ("device listener", device_listener_summary(settings)),
        ("ingest", f"batch {settings.ingest.batch_size}, wait {settings.ingest.batch_wait_ms} ms"),
        ("api", f"http://{settings.api.host}:{settings.api.port}"),
        ("log level", settings.log_level),
    ]


def device_listener_summary(settings: Settings) -> str:
    """Where devices connect and which identities that listener knows (ADR 0006)."""
    mqtt = settings.mqtt
    where = f"{mqtt.host}:{mqtt.device_listener_port}"
    if mqtt.device_identities == "password_file":
        default = " (mqtt.port + 1)" if mqtt.device_port is None else ""
        return f"{where}{default}, identities: password_file (devices only)"
    return f"{where} (mqtt.port, shared with the platform), identities: dynsec"


def store_summary(settings: Settings) -> str:
    """The configured telemetry store: the SQLite file, or InfluxDB with where its side tables live."""
    st = settings.store
    if st.backend == "influxdb":
        token = "token set" if st.influx_token.get_secret_value() else "no token"
        return (
            f"influxdb {st.influx_url} org {st.influx_org} bucket {st.influx_bucket} "
            f"(InfluxQL database {st.influx_database}, {token}); device states and rejections in the database"
        )
    return f"sqlite {st.sqlite_path} (keep {st.retention_days} days)"
