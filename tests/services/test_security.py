"""API keys: required for writes and admin when configured, optionally for reads; no stack traces."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from feature_store.settings import Settings
from services.api.app import create_app
from tests.services.conftest import WRITE_KEY, EventFactory, with_api


def test_writes_and_admin_need_a_key_reads_do_not_by_default(api_settings: Settings, make_event: EventFactory) -> None:
    with TestClient(create_app(with_api(api_settings, api_keys=[WRITE_KEY]))) as client:
        missing = client.post("/v1/events", json=[make_event("u", "i")])
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["error"]["message"]
        wrong = client.put("/v1/items/i", json={}, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid API key"
        assert client.post("/v1/admin/models/reload").status_code == 401
        headers = {"X-API-Key": WRITE_KEY}
        assert client.post("/v1/events", json=[make_event("u", "i")], headers=headers).status_code == 202
        assert client.put("/v1/users/u", json={"attributes": {"age": 3}}, headers=headers).status_code == 200
        reload = client.post("/v1/admin/models/reload", headers=headers)
        assert reload.status_code == 200 and reload.json()["model_versions"] == {}
        assert client.get("/v1/users/u/recommendations").status_code == 200


def test_reads_can_require_a_key(api_settings: Settings) -> None:
    settings = with_api(api_settings, api_keys=[WRITE_KEY], require_key_for_reads=True)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/users/u/recommendations").status_code == 401
        assert client.get("/v1/users/u/recommendations", headers={"X-API-Key": WRITE_KEY}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_admin_is_refused_without_configured_keys(client: TestClient) -> None:
    response = client.post("/v1/admin/models/reload")
    assert response.status_code == 403 and "no API keys" in response.json()["error"]["message"]


def test_errors_carry_the_request_id_and_no_trace(client: TestClient) -> None:
    response = client.get("/v1/items/missing", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "req-42"
    assert response.json()["error"] == {"code": "not_found", "message": "item 'missing' is not in the catalog",
                                        "request_id": "req-42"}
    for unfit in ("req-42\n", "x" * 65, "a b"):  # a trailing newline passed `$`: only whole sane ids are echoed
        echoed = client.get("/v1/items/missing", headers={"X-Request-ID": unfit}).headers["x-request-id"]
        assert echoed != unfit and re.fullmatch(r"[0-9a-f]{32}", echoed)


def test_a_client_cannot_add_latency_series_with_methods_of_its_own(client: TestClient) -> None:
    for method in ("PROPFIND", "PURGE", "MKCOL", "DELETE"):
        client.request(method, "/v1/items/x")
    metrics = client.get("/metrics").text
    assert 'endpoint="/v1/items/{item_id}",method="other",status="405"} 3.0' in metrics
    assert 'method="DELETE"' in metrics and "PROPFIND" not in metrics and "PURGE" not in metrics


def test_an_unexpected_error_is_a_500_with_the_request_id_and_no_trace(api_settings: Settings) -> None:
    app = create_app(api_settings)

    def broken() -> None:  # a route with a bug: what every unforeseen error reaches
        raise RuntimeError("secret detail /etc/passwd")

    app.add_api_route("/v1/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/broken", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "req-500"
    assert response.json() == {"error": {"code": "internal_error", "message": "internal error; quote the request_id",
                                         "request_id": "req-500"}}
