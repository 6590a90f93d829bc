"""docs/operations.md lists every setting with its environment variable: a new setting without a row fails here."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from core.settings import Settings

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, field in model.model_fields.items():
        t = field.annotation
        if isinstance(t, type) and issubclass(t, BaseModel):
            out += _keys(t, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_every_setting_has_a_row_with_its_environment_variable() -> None:
    rows = [ln for ln in OPERATIONS.read_text(encoding="utf-8").splitlines() if ln.startswith("| `")]
    keys = _keys(Settings)
    assert len(keys) > 50
    missing = []
    for key in keys:
        env = "LIANFANG_" + key.upper().replace(".", "__")
        if not any(r.startswith(f"| `{key}` | `{env}` |") for r in rows):
            missing.append(f"{key} ({env})")
    assert missing == [], f"docs/operations.md has no row for: {', '.join(missing)}"
