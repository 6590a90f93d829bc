"""What rule files (``alerts.rules``) and correlation pattern files (``joint.patterns``) share: finding the YAML
files of a list of paths, reading and parsing one into its pydantic model, and the one error format both use
(``{origin}: {field path}: {what}``, the path written ``rules[3].params.field``).

Pure apart from ``read_yaml`` (which reads the file it is given).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from core.errors import UserError

M = TypeVar("M", bound=BaseModel)


def finite(value: Any, path: str = "") -> Any:
    """Reject non-finite numbers anywhere in free-form params (``Infinity``, ``1e999``, ``NaN``)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path or 'value'}: must be a finite number, not {value!r}")
    if isinstance(value, Mapping):
        for k, v in value.items():
            finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            finite(v, f"{path}[{i}]")
    return value


def path_str(loc: Iterable[str | int]) -> str:
    """A field path the one way every rule message writes it: ``rules[3].params.field``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def fmt_errors(exc: ValidationError, origin: str, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line per validation error: ``{origin}: {prefix}.{path}: {message}``. With ``model`` (the model that
    was validated), an unknown field is named with the closest field the model has at that place."""
    from alerts.rule_check import closest  # alerts.rule_check imports alerts.rules, which imports this module

    lines = []
    for err in exc.errors():
        path = path_str(err["loc"])
        full = (
            f"{prefix}{'' if path.startswith('[') else '.'}{path}" if prefix and path else (prefix or path or "(root)")
        )
        msg = err["msg"].removeprefix("Value error, ")
        if model is not None and err["type"] == "extra_forbidden" and err["loc"]:
            name = str(err["loc"][-1])
            msg = f"unknown field {name!r}{closest(name, _fields(model, err['loc'][:-1]))}"
        lines.append(f"{origin}: {full}: {msg}")
    return "\n".join(lines)


def _fields(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The field names of the (nested) model at ``loc`` (best effort: the deepest model found on the way)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        info = getattr(current, "model_fields", {}).get(part)
        if info is None:
            break
        ann = info.annotation
        nested = [
            a for a in (getattr(ann, "__args__", None) or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not nested:
            break
        current = nested[0]
    return list(getattr(current, "model_fields", {}))


def yaml_files(paths: Iterable[Path]) -> list[Path]:
    """The files of ``paths``: a directory gives every ``*.yaml`` then ``*.yml`` inside, sorted."""
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml")) if p.is_dir() else [p])
    return files


def read_yaml(path: Path, what: str) -> object:
    """The YAML document of a file (``{}`` for an empty one). UserError naming the file when it cannot be read or
    is not YAML; ``what`` names the kind of file in the message (``rule file``, ``pattern file``)."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from exc
    return loaded if loaded is not None else {}


def parse_doc(model: type[M], doc: object, origin: str, *, name_fields: bool = False) -> M:
    """A YAML document as ``model`` (a file's top level); UserError with one line per error."""
    if not isinstance(doc, Mapping):
        raise UserError(f"{origin}: the top level must be a mapping")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise UserError(fmt_errors(exc, origin, "", model if name_fields else None)) from exc
