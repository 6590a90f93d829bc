"""The fault suite (faults/, `make faults`) in its short mode: each scenario against the real processes (an external
Mosquitto with the generated config, `lianfang serve` as a subprocess), asserting its expectation.

A scenario whose fix has not landed is a strict xfail naming the missing fix, never a weaker expectation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from faults.env import Template, build_template
from faults.run import SCENARIOS, run_one

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# scenario -> the fix it still waits for (strict: the test fails as soon as the scenario passes)
MISSING_FIX: dict[str, str] = {}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """Regions, devices with broker identities and an API user, registered once with the CLI."""
    return build_template(tmp_path_factory.mktemp("faults") / "template")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason=MISSING_FIX[n], strict=True)) if n in MISSING_FIX else n
        for n in SCENARIOS
    ],
)
def test_fault_scenario_meets_its_expectation(name: str, template: Template, tmp_path: Path) -> None:
    res = run_one(name, template, tmp_path, short=True)
    if res.skipped:
        pytest.skip(res.skipped)
    assert res.passed, res.line()
