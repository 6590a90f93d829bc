"""Settings: every default path follows data_dir, wherever data_dir comes from; an explicit path is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("LIANFANG_DATA_DIR", "LIANFANG_DATABASE_URL", "LIANFANG_CONFIG", "LIANFANG_STORE__SQLITE_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("LIANFANG_MQTT__BROKER_DIR", raising=False)
    monkeypatch.delenv("LIANFANG_MQTT__TLS_DIR", raising=False)


def paths(s: Settings) -> tuple[str, Path, Path, Path | None]:
    return s.database_url, s.store.sqlite_path, s.mqtt.broker_dir, s.mqtt.tls_dir


def test_settings_defaults_follow_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANFANG_DATA_DIR", str(tmp_path / "a"))
    a = load_settings()
    monkeypatch.setenv("LIANFANG_DATA_DIR", str(tmp_path / "b"))
    b = load_settings()
    assert paths(a) == (
        f"sqlite:///{tmp_path}/a/registry.db",
        tmp_path / "a" / "telemetry.db",
        tmp_path / "a" / "mosquitto",
        tmp_path / "a" / "certs",
    )
    assert all(x != y for x, y in zip(paths(a), paths(b), strict=True))


def test_settings_unchanged_defaults_without_data_dir() -> None:
    assert paths(Settings()) == (
        "sqlite:///var/registry.db",
        Path("var/telemetry.db"),
        Path("var/mosquitto"),
        Path("var/certs"),
    )


def test_settings_data_dir_from_yaml_and_env_over_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "lianfang.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'file'}\nstore:\n  retention_days: 30\n", encoding="utf-8")
    s = load_settings(cfg)
    assert s.store.sqlite_path == tmp_path / "file" / "telemetry.db" and s.store.retention_days == 30
    assert s.mqtt.broker_dir == tmp_path / "file" / "mosquitto"
    monkeypatch.setenv("LIANFANG_DATA_DIR", str(tmp_path / "env"))
    s = load_settings(cfg)
    assert s.database_url == f"sqlite:///{tmp_path}/env/registry.db"
    assert s.store.sqlite_path == tmp_path / "env" / "telemetry.db" and s.store.retention_days == 30
    assert s.mqtt.broker_dir == tmp_path / "env" / "mosquitto"


def test_settings_explicit_paths_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "lianfang.yaml"
    cfg.write_text(f"store:\n  sqlite_path: {tmp_path / 'fast' / 't.db'}\n", encoding="utf-8")
    monkeypatch.setenv("LIANFANG_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("LIANFANG_MQTT__BROKER_DIR", str(tmp_path / "mq"))
    monkeypatch.setenv("LIANFANG_DATABASE_URL", "postgresql+psycopg://u@db/lianfang")
    s = load_settings(cfg)
    assert s.store.sqlite_path == tmp_path / "fast" / "t.db"
    assert s.mqtt.broker_dir == tmp_path / "mq"
    assert s.database_url == "postgresql+psycopg://u@db/lianfang"
    assert s.mqtt.tls_dir == tmp_path / "d" / "certs"
    # Derived values are not "set": layering (exclude_unset) cannot pin an old data dir's paths.
    assert "sqlite_path" not in Settings(data_dir=tmp_path).store.model_dump(exclude_unset=True)
