#!/usr/bin/env python3
"""The compose deployment's one-shot ``migrate`` job: refuse placeholder secrets, then upgrade the SQL schema.

    lianfang-migrate

Lianfang has no ``lianfang db upgrade`` command: every long-running command (``serve``, ``ingest``) upgrades the
schema at start (``lianfang.context.open_registry``). Under compose several processes start at once, so this job
runs the same ``core.db.migrate`` (Alembic, ``upgrade heads``) once, before any of them, and they find the schema
current. An upgrade of the image therefore migrates on ``docker compose up -d`` (docs/deploy.md).

Before touching the database it refuses what ``.env.example`` ships: any secret-looking variable
(``*PASSWORD*``, ``*TOKEN*``, ``*SECRET*``, and the password inside ``LIANFANG_DATABASE_URL``) whose value starts
with ``dev-only`` or is empty, when ``LIANFANG_ENV`` is not ``dev``. ``core.settings`` itself refuses only the
platform MQTT password; this job extends that to every secret compose passes (InfluxDB, Grafana, PostgreSQL), so a
stack started with an unedited ``.env`` stops here and nothing else starts.
Exit status 0 when the schema is current, 1 with one line per problem on stderr otherwise.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

PLACEHOLDER_PREFIX = "dev-only"
_SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"^[a-z0-9+]+://[^:/@]*:([^@]*)@")


def placeholder_secrets(env: Mapping[str, str]) -> list[str]:
    """Names of the variables that still hold a placeholder (or nothing) where a secret belongs."""
    if env.get("LIANFANG_ENV", "prod") == "dev":
        return []
    bad: list[str] = []
    for name, value in sorted(env.items()):
        if _SECRET_NAME.search(name) and (not value or value.startswith(PLACEHOLDER_PREFIX)):
            bad.append(name)
    url = env.get("LIANFANG_DATABASE_URL", "")
    m = _URL_PASSWORD.match(url)
    if m is not None and (not m.group(1) or m.group(1).startswith(PLACEHOLDER_PREFIX)):
        bad.append("LIANFANG_DATABASE_URL (its password)")
    return bad


def main(env: Mapping[str, str]) -> int:
    bad = placeholder_secrets(env)
    if bad:
        for name in bad:
            print(f"error: {name}: replace the placeholder of .env.example with a real secret", file=sys.stderr)
        return 1
    from core.db import make_engine, migrate
    from core.errors import UserError
    from core.settings import load_settings

    try:
        settings = load_settings()
        engine = make_engine(settings.database_url)
        migrate(engine)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        heads = sorted(MigrationContext.configure(conn).get_current_heads())
    engine.dispose()
    print(f"schema current: {', '.join(heads)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(os.environ))
