"""schemathesis against ``/openapi.json`` with an admin token: no 5xx, nothing that contradicts the schema;
and its negative mode (data that breaks the schema on purpose): no 5xx.

Bounded examples per operation keep it within the suite's time. The requests
come from a loopback address of their own, so the logins it tries with random
credentials cannot rate-limit the other tests' address.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import hypothesis
import pytest
import requests
import schemathesis
from requests.adapters import HTTPAdapter
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

if TYPE_CHECKING:
    from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


class _SourceAddress(HTTPAdapter):
    def __init__(self, address: str) -> None:
        self._address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self._address, 0)
        super().init_poolmanager(*args, **kwargs)


def test_openapi_lists_every_route(api_server: ApiServer) -> None:
    document = requests.get(f"{api_server.base_url}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert {"/api/devices", "/api/devices/{device_id}/latest", "/api/devices/{device_id}/history",
            "/api/auth/token", "/api/auth/refresh"} <= set(paths)
    assert paths["/api/devices"]["get"]["security"] == [{"bearer": []}]
    assert paths["/api/auth/token"]["post"]["security"] == []
    assert paths["/api/users"]["post"]["x-required-role"] == "admin"


def test_schemathesis_finds_no_server_error_or_schema_violation(api_server: ApiServer) -> None:
    schema = schemathesis.openapi.from_url(f"{api_server.base_url}/openapi.json")
    session = requests.Session()
    session.mount("http://", _SourceAddress(_loopback_address()))
    headers = {"Authorization": f"Bearer {api_server.token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8

    failures = _run(operations, session, headers, GenerationMode.POSITIVE, CHECKS)
    assert failures == [], "\n\n".join(failures)


def test_schemathesis_negative_data_finds_no_server_error(api_server: ApiServer) -> None:
    """Data that breaks the schema on purpose (wrong types, missing fields, odd strings):
    every answer is a 4xx, never a 5xx."""
    schema = schemathesis.openapi.from_url(f"{api_server.base_url}/openapi.json")
    session = requests.Session()
    session.mount("http://", _SourceAddress(_loopback_address()))
    headers = {"Authorization": f"Bearer {api_server.token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    failures = _run(operations, session, headers, GenerationMode.NEGATIVE, [not_a_server_error])
    assert failures == [], "\n\n".join(failures)


def _loopback_address() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(2, 254)}"


def _run(operations: list[Any], session: requests.Session, headers: dict[str, str],
         mode: GenerationMode, checks: list[Any]) -> list[str]:
    failures: list[str] = []
    for operation in operations:

        @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                             database=None, suppress_health_check=list(hypothesis.HealthCheck),
                             phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            case.call_and_validate(session=session, headers=headers, checks=checks)

        try:
            run()
        except hypothesis.errors.Unsatisfiable:  # negative mode: nothing of it can be made invalid
            continue
        except Exception as exc:  # collect all operations' failures, then report them together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:2000])
    return failures
