"""Authorization schemes (Bearer and DRF's Token, any case) and RFC 6750 refusals."""
from __future__ import annotations

import pytest

from service.web.handlers import root  # / and /favicon.ico: no token, no rate limit
from tests.helpers import make_token, wait_until
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")

REALM = 'Bearer realm="pipeline-runs"'
INVALID = REALM + ', error="invalid_token"'
NO_CREDENTIALS = "authentication credentials were not provided"
UNSUPPORTED = "unsupported authorization scheme"
INVALID_TOKEN = "invalid token: unknown or revoked"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "Token", "token", "TOKEN",
                                    "tOkEn"])
async def test_bearer_and_token_schemes_are_accepted_in_any_letter_case(api, scheme):
    caller = api.with_token(None)
    pipeline = await caller.post("/pipelines/", {"name": f"by-{scheme}"},
                                 headers={"Authorization": f"{scheme} {api.token}"})
    run = await caller.post(f"/pipelines/{pipeline['id']}/runs/", {},
                            headers={"Authorization": f"{scheme}   {api.token} "})
    assert run["status"] == "invalid"  # no stages; the write went through as this caller
    listed = await caller.get("/runs/", headers={"Authorization": f"{scheme} {api.token}"})
    assert [r["id"] for r in listed["results"]] == [run["id"]]


async def test_a_token_scheme_gets_the_same_scopes_as_bearer(api, db, enterprise):
    reader = await make_token(db, enterprise, "reader", ["runs:read"])
    caller = api.with_token(None)
    headers = {"Authorization": f"Token {reader}"}
    assert (await caller.get("/pipelines/", headers=headers))["count"] == 0
    content = await caller.post("/pipelines/", {"name": "x"}, status=403, headers=headers)
    assert content == {}
    assert caller.last.headers["WWW-Authenticate"] == (
        REALM + ', error="insufficient_scope", scope="runs:write"')


CASES = {
    # header value: (message starts with, WWW-Authenticate)
    None: (NO_CREDENTIALS, REALM),
    "": (NO_CREDENTIALS, REALM),
    "Bearer": (NO_CREDENTIALS, REALM),
    "Token   ": (NO_CREDENTIALS, REALM),
    "Basic dXNlcjpwYXNz": (UNSUPPORTED, REALM),
    "Bearerpr_abc": (UNSUPPORTED, REALM),
    "pr_abc": (UNSUPPORTED, REALM),
    "Bearer pr_not-a-real-token": (INVALID_TOKEN, INVALID),
    "token pr_not-a-real-token": (INVALID_TOKEN, INVALID),
}


@pytest.mark.parametrize("header", list(CASES), ids=[repr(h) for h in CASES])
async def test_each_401_says_its_case_with_an_rfc_6750_challenge(api, header):
    message, challenge = CASES[header]
    headers = {} if header is None else {"Authorization": header}
    resp = await api.client.get("/pipelines/v0/runs/", headers=headers)
    assert resp.status == 401
    body = await resp.json()
    assert body["code"] == 401 and body["content"] == {}
    assert body["message"].startswith(message), body
    assert resp.headers["WWW-Authenticate"] == challenge


async def refusal(api, token: str) -> tuple[int, dict, dict[str, str]]:
    resp = await api.client.get("/pipelines/v0/pipelines/",
                                headers={"Authorization": f"Bearer {token}"})
    kept = {h: resp.headers[h] for h in resp.headers if h not in ("Date", "X-Request-ID")}
    return resp.status, await resp.json(), kept


async def test_unknown_and_revoked_tokens_are_indistinguishable(api, db, enterprise):
    revoked = await make_token(db, enterprise, "revoked")
    await api.with_token(revoked).get("/pipelines/")  # it worked once (and is cached)
    await db.execute("UPDATE api_tokens SET revoked_at = now() WHERE enterprise_id = $1 "
                     "AND name = 'revoked'", enterprise)
    unknown = "pr_" + revoked[3:][::-1]  # same shape and length, never issued
    # The token cache (0.5 s in tests) may accept it a little longer: wait for the 401.
    async def refused():
        answer = await refusal(api, revoked)
        return answer if answer[0] == 401 else None

    answered = await wait_until(refused, 30, what="the revoked token to be refused")
    assert answered == await refusal(api, unknown)
    status, body, headers = answered
    assert (status, body) == (401, {"code": 401, "message": INVALID_TOKEN, "content": {}})
    assert headers["WWW-Authenticate"] == INVALID


async def test_openapi_declares_both_schemes_and_the_401_challenge(client):
    spec = await (await client.get("/api/docs/swagger.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["SCAPIAuthToken"] == {"type": "http", "scheme": "bearer"}  # Esper's own
    assert {k: schemes["TokenAuth"][k] for k in ("type", "in", "name")} == {
        "type": "apiKey", "in": "header", "name": "Authorization"}
    assert "Token <token>" in schemes["TokenAuth"]["description"]
    operations = [op for path, ops in spec["paths"].items()
                  if not path.startswith("/health") and path not in root.PATHS
                  for op in ops.values()]
    assert operations
    for operation in operations:
        assert operation["security"] == [{"SCAPIAuthToken": []}, {"TokenAuth": []}]
        header = operation["responses"]["401"]["headers"]["WWW-Authenticate"]
        assert REALM in header["description"] and "invalid_token" in header["description"]
        assert "WWW-Authenticate" in operation["responses"]["403"]["headers"]
