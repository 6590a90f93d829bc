"""Per-device credentials for a simulated fleet (the demo, `make run`): create or verify them, keep the secrets.

A demo restarts often; its devices must keep working with the same secrets. :func:`provision_fleet` keeps the
secrets the simulator needs in a 0600 file under the data directory (``demo-device-secrets.csv``: ``device_id,secret``
lines, the format ``lianfang devices import --secret-file`` writes and ``lianfang simulate --credentials FILE``
reads) and on each start:

- a device whose stored secret still matches its registry credential and whose broker identity is as it should
  be keeps it (nothing changes on the broker);
- every other device (new, secret lost, identity missing or wrong on the broker, e.g. after the broker's data
  directory was wiped) gets a new identity and secret, in one bulk ``provision_new`` (batched dynsec commands,
  read back before anything is recorded).

Never for production devices: there the secret is shown once to the installer and kept nowhere in clear.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete
from sqlalchemy.exc import SQLAlchemyError

from core.errors import StoreUnavailable, UserError
from core.settings import Settings
from devices.audit import Actor
from devices.broker import MosquittoProcess
from devices.broker_adapter_passwd import PasswdFileAdapter, adapter_for
from devices.dynsec import DynsecClient
from devices.provisioning import DeviceCredential, Provisioner, verify_secret
from devices.registry import Registry

logger = logging.getLogger(__name__)

DEMO_SECRETS_FILE = "demo-device-secrets.csv"
SECRETS_FORMAT = "'device_id,secret' lines (the file 'lianfang devices import --secret-file F' writes)"


def demo_secrets_path(settings: Settings) -> Path:
    return settings.data_dir / DEMO_SECRETS_FILE


def load_secrets(path: Path) -> dict[str, str]:
    """``{device_id: secret}`` from a ``device_id,secret`` file (``lianfang simulate --credentials``, the file of
    ``devices import --secret-file``; a ``device_id,secret`` header line is optional); {} if it does not exist.
    Anything else is a UserError naming the line and the expected format."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the credentials file {path}: {exc}") from exc
    if text.lstrip().startswith(("{", "[")):
        raise UserError(f"{path}: this looks like JSON; expected {SECRETS_FORMAT}")
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or (number == 1 and line.replace(" ", "") == "device_id,secret"):
            continue
        device_id, sep, secret = line.partition(",")
        device_id, secret = device_id.strip(), secret.strip()
        if not sep or not device_id or not secret or "," in secret:
            raise UserError(f"{path}:{number}: expected {SECRETS_FORMAT}")
        out[device_id] = secret
    return out


def save_secrets(path: Path, device_secrets: Mapping[str, str]) -> None:
    """Write ``device_id,secret`` lines (with a header) atomically to a file only its owner can read (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("device_id,secret\n")
        for device_id, secret in sorted(device_secrets.items()):
            f.write(f"{device_id},{secret}\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def _still_valid(pairs: Sequence[tuple[str, str, str]]) -> set[str]:
    """Ids whose stored secret matches the registry hash (scrypt: spread over two threads)."""
    if not pairs:
        return set()
    with ThreadPoolExecutor(2, thread_name_prefix="lf-verify") as pool:
        ok = list(pool.map(lambda p: verify_secret(p[1], p[2]), pairs))
    return {device_id for (device_id, _, _), good in zip(pairs, ok, strict=True) if good}


def provision_fleet(
    settings: Settings,
    registry: Registry,
    device_ids: Sequence[str],
    now: datetime,
    *,
    admin_password: str | None = None,
    secrets_path: Path | None = None,
    process: MosquittoProcess | None = None,
    offline_threshold: int = 1000,
    timeout: float = 30.0,
) -> dict[str, str]:
    """Make sure every device in ``device_ids`` has a working broker identity; return ``{device_id: secret}``.

    Idempotent and quick on a restart: kept secrets are checked against the registry hashes and the broker's
    identities are read in two requests (``listClients`` / ``listRoles``); only the devices that fail get new
    secrets. The result is also saved to ``secrets_path`` (default ``DATA_DIR/demo-device-secrets.csv``, 0600).
    ``admin_password``: the dynsec admin password (default: ``mqtt.admin_password`` or the embedded broker's
    generated one). ``process``: the broker process if the caller owns it; then batches of at least
    ``offline_threshold`` new identities are merged while it is briefly stopped (see devices.provisioning).
    Raises ProvisioningError (naming the devices), BrokerUnavailable or StoreUnavailable.
    """
    from devices.cli_security import admin_password as configured_admin_password

    path = secrets_path or demo_secrets_path(settings)
    ids = list(dict.fromkeys(device_ids))
    kept = load_secrets(path)
    password = admin_password if admin_password is not None else configured_admin_password(settings)
    with DynsecClient(
        settings.mqtt.host, settings.mqtt.port, password, timeout=timeout, tls_ca=settings.mqtt.tls_ca
    ) as dynsec:
        prov = Provisioner(
            registry,
            dynsec,
            actor=Actor("lianfang-demo", "demo"),
            process=process,
            offline_threshold=offline_threshold,
            adapter=adapter_for(settings, dynsec),
        )
        creds = prov.credentials()
        disabled = {d.id for d in registry.devices(enabled=False)[0]}
        candidates = [(i, kept[i], creds[i].secret_hash) for i in ids if i in kept and i in creds]
        matching = sorted(_still_valid(candidates))
        # The broker's identity as it should be, in the registry's enabled state (else renewed too).
        problems = prov.adapter.verify(
            matching, device_secrets={i: kept[i] for i in matching}, disabled=disabled.intersection(matching)
        )
        good = {i for i, why in problems.items() if not why}
        if isinstance(prov.adapter, PasswdFileAdapter):
            # every simulated device connects to the device listener: an identity an older version left in dynsec
            # (verified there, but only on the platform's port) gets a new secret in the password file
            good &= set(prov.adapter.read())
        stale = [i for i in ids if i in creds and i not in good]
        if stale:
            # Their secrets are gone or their identities broken: drop the credentials so provision_new takes the
            # broker identities over with new secrets (verified before anything is recorded).
            try:
                with registry.session() as s, s.begin():
                    s.execute(delete(DeviceCredential).where(DeviceCredential.device_id.in_(stale)))
            except SQLAlchemyError as exc:
                raise StoreUnavailable(f"registry write failed: {exc}") from exc
        todo = [i for i in ids if i not in good]
        fresh = prov.provision_new(todo, now) if todo else {}
        for device_id in sorted(fresh):
            if device_id in disabled:
                prov.disable(device_id, now)
    result = {i: kept[i] for i in ids if i in good}
    result.update(fresh)
    save_secrets(path, {**{k: v for k, v in kept.items() if k not in result and k not in ids}, **result})
    logger.info("fleet credentials: %d kept, %d new (%s)", len(good), len(fresh), path)
    return result
