"""schemathesis over the whole REST API, against its own OpenAPI document (issue 9, "The API contract").

The real app, on the seeded registry and store of ``conftest.py``, with a real alerts runtime (packs and a rule
file), called with an admin's token (valid and invalid requests) and a Guangzhou operator's (valid ones), so the
authorised, forbidden and out-of-scope paths are all exercised. Every operation gets a bounded number
of generated requests; each answer must be no server error, a status the document declares, and a body that
matches the declared schema, for valid requests and for invalid ones alike. The live stream (an endless
``text/event-stream``) and readiness are excluded; they have their own tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from alerts.wiring import AlertsRuntime
from core.settings import AlertSettings, Settings
from devices.registry import DeviceSpec
from gateway.app import create_app
from tests.gateway.conftest import NOW, Gateway

RULES_YAML = """
rules:
  - id: T.power
    kind: threshold
    device_types: [energy_meter]
    title_zh: 功率过高
    title_en: Power too high
    params: {field: power_kw, op: ">", value: 50}
"""

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
# Per operation and pass; LIANFANG_FUZZ_EXAMPLES=500 for a long local run.
MAX_EXAMPLES = int(os.environ.get("LIANFANG_FUZZ_EXAMPLES", "30"))
# The live stream never ends; readiness answers 503 by design while the (unstarted) alert runtime is not running.
EXCLUDED = {"/api/v1/stream", "/api/v1/health/ready"}


@pytest.fixture
def api_schema(gateway: Gateway, tmp_path: Path) -> Iterator[Any]:
    reg = gateway.ctx.registry
    reg.add_devices([DeviceSpec("meter-sz-0001", "energy_meter", "sz-jgj", "总表")], now=NOW)
    path = tmp_path / "site.yaml"
    path.write_text(RULES_YAML, encoding="utf-8")
    runtime = AlertsRuntime(Settings(alerts=AlertSettings(rules_paths=[path])), reg, clock_fn=lambda: NOW)
    runtime.service.load(now=NOW)  # no timers
    gateway.ctx.alerts = runtime
    app = create_app(gateway.ctx)
    yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)


def _run_operation(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> list[str]:
    """Fuzz one operation; the distinct failures (check and message), shrunk by hypothesis to small examples."""
    problems: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: Any) -> None:
        try:
            case.call_and_validate(headers=headers, checks=CHECKS)
        except FailureGroup as exc:
            text = f"{mode} {operation.label}: {case.as_curl_command()}\n{exc}"
            if text not in problems:
                problems.append(text)

    try:
        run()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no valid request can be generated"
        # nothing in the operation can be made invalid (no parameters, no body)
    return problems


# It grows with the API (three passes over every operation): the default 300 s is too little on a loaded machine.
@pytest.mark.timeout(1800)
def test_api_answers_only_what_its_openapi_document_declares(api_schema: Any, gateway: Gateway) -> None:
    admin = {"Authorization": f"Bearer {gateway.tokens['admin']}"}
    operator = {"Authorization": f"Bearer {gateway.tokens['gz']}"}  # scoped to Guangzhou: 403 and 404 paths
    problems: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if operation.path in EXCLUDED:
            continue
        operations += 1
        for mode, headers in (
            (GenerationMode.POSITIVE, admin),
            (GenerationMode.NEGATIVE, admin),
            (GenerationMode.POSITIVE, operator),
        ):
            problems += _run_operation(operation, mode, headers)
    assert operations >= 20, "the document lost its operations"
    assert not problems, f"{len(problems)} problem(s):\n\n" + "\n\n".join(problems[:30])
