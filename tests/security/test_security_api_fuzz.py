"""Fuzzing the API from its own OpenAPI document (schemathesis + hypothesis) over loopback uvicorn
(Postgres, Redis, S3 behind it): no generated request makes it answer 5xx, generated requests with
another tenant's real scan ids never reach that scan, and without a valid key nothing but 401
comes back. Example counts are printed (`pytest -s`) and recorded in SECURITY.md.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from svc_helpers import upload, wait_scan
from svc_models import make_benign

EXAMPLES_PER_OPERATION = 30
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


@pytest.fixture(scope="module")
def operations(prod_api) -> list:
    spec = httpx.get(prod_api.url + "/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(spec)
    schema.config.update(base_url=prod_api.url)
    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) >= 10
    return ops


@pytest.fixture(scope="module")
def alice_scan(prod_api, prod_worker, tenant_keys, tmp_path_factory) -> str:
    model = make_benign(tmp_path_factory.mktemp("fuzz") / "alice.safetensors")
    with prod_api.client(tenant_keys["alice"]) as c:
        scan = wait_scan(c, upload(c, model, config={"profile": "quick", "only": ["format"]}).json()["id"])
    assert scan["status"] == "succeeded"
    return scan["id"]


def test_generated_requests_never_5xx(prod_api, tenant_keys, operations) -> None:
    headers = {"Authorization": f"Bearer {tenant_keys['fuzz']}"}
    statuses: list[int] = []
    for operation in operations:

        @FUZZ_SETTINGS
        @given(case=operation.as_strategy())
        def exercise(case) -> None:  # noqa: ANN001 - a schemathesis Case
            response = case.call(headers=headers, timeout=60)
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])

        exercise()
    assert len(statuses) >= 5 * len(operations)
    print(f"fuzz: {len(statuses)} generated requests over {len(operations)} operations, 0 5xx; {sorted(set(statuses))}")


def test_generated_requests_never_reach_another_tenants_scan(prod_api, tenant_keys, operations, alice_scan) -> None:
    """bob's key, alice's real scan id in every path: the answer is never a success or a redirect."""
    headers = {"Authorization": f"Bearer {tenant_keys['bob']}"}
    with_id = [op for op in operations if "{scan_id}" in op.path]
    assert len(with_id) >= 5
    statuses: list[int] = []
    for operation in with_id:

        @FUZZ_SETTINGS
        @given(case=operation.as_strategy(), artifact=st.sampled_from(["report.json", "x/evidence.png", "a"]))
        def exercise(case, artifact: str) -> None:  # noqa: ANN001
            case.path_parameters = {**(case.path_parameters or {}), "scan_id": alice_scan}
            if "name" in case.path_parameters:
                case.path_parameters["name"] = artifact
            response = case.call(headers=headers, timeout=60, allow_redirects=False)
            statuses.append(response.status_code)
            assert response.status_code in (404, 422), (case.method, case.formatted_path, response.status_code)
            assert alice_scan not in response.text

        exercise()
    with prod_api.client(tenant_keys["alice"]) as alice:
        assert alice.get(f"/v1/scans/{alice_scan}").json()["cancel_requested"] is False
    print(f"cross-tenant fuzz: {len(statuses)} requests, statuses {sorted(set(statuses))}")


@pytest.mark.parametrize("key", [None, "dgm_" + "A" * 43, "not-a-key", "Bearer x" * 50])
def test_generated_requests_without_a_valid_key_get_401(prod_api, operations, key) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    protected = [op for op in operations if op.path.startswith("/v1/")]
    statuses: list[int] = []
    for operation in protected:

        @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def exercise(case) -> None:  # noqa: ANN001
            response = case.call(headers=headers, timeout=60)
            statuses.append(response.status_code)
            # 422 where the request is malformed before authentication is considered (path/query types), 404
            # where no route matches at all (a newline in a path parameter): never anything that serves data
            assert response.status_code in (401, 404, 422), (case.method, case.formatted_path, response.status_code)

        exercise()
    assert statuses.count(401) >= len(protected)
