"""ETag / If-Match on runs: the version is the ETag; a stale one is refused with 412 and
changes nothing; a malformed one is 400."""
from __future__ import annotations

import pytest

from service.domain import lifecycle as lc
from tests.helpers import check_error, events_of, run_path, send
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_run_responses_carry_the_version_as_etag(api):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    assert api.last.headers["ETag"] == '"1"'
    fetched = await api.get(run_path(run))
    assert api.last.headers["ETag"] == f'"{fetched["version"]}"'
    moved = await api.move(run, "running")
    assert api.last.headers["ETag"] == f'"{moved["version"]}"' and moved["version"] == 2


@pytest.mark.parametrize("target", ["running", "cancelled"], ids=["simple", "cascading"])
async def test_put_with_a_stale_if_match_is_412_and_changes_nothing(api, db, target):
    run = await api.move(await api.run((await api.pipeline())["id"]), "queued")
    events = await events_of(db, run["id"])
    content = await api.put(run_path(run), {"status": target}, status=412,
                            headers={"If-Match": '"1"'})
    assert content == {"current_version": run["version"]}
    assert await api.get(run_path(run)) == run
    assert await events_of(db, run["id"]) == events
    # A stale version is refused even for the status the run already has.
    await api.put(run_path(run), {"status": "queued"}, status=412, headers={"If-Match": '"1"'})


async def test_delete_with_a_stale_if_match_is_412_and_keeps_the_run(api, db):
    run = await api.move(await api.run((await api.pipeline())["id"]), "running")
    events = await events_of(db, run["id"])
    await api.delete(run_path(run), status=412, headers={"If-Match": '"1"'})
    assert await api.get(run_path(run)) == run
    assert await events_of(db, run["id"]) == events


@pytest.mark.parametrize("form", ['"{v}"', 'W/"{v}"', "{v}", "*"])
async def test_a_matching_if_match_succeeds(api, db, form):
    run = await api.run((await api.pipeline())["id"])
    moved = await api.put(run_path(run), {"status": "running"},
                          headers={"If-Match": form.format(v=run["version"])})
    assert moved["version"] == run["version"] + 1
    assert api.last.headers["ETag"] == f'"{moved["version"]}"'
    deleted = await api.delete(run_path(moved), headers={"If-Match": form.format(v=moved["version"])})
    assert deleted["id"] == run["id"]
    await api.get(run_path(run), status=404)
    assert [e["type"] for e in await events_of(db, run["id"])][-1] == lc.RUN_DELETED


@pytest.mark.parametrize("value", ['"abc"', "abc", '"-1"', '"1.0"', '"1234567890"', '""',
                                   '"1", "2"', '"\u0661"', '"1 OR 1=1"', '" 1"'])
async def test_a_malformed_if_match_is_400_and_changes_nothing(api, db, value):
    run = await api.run((await api.pipeline())["id"])
    events = await events_of(db, run["id"])
    for method, body in (("PUT", {"status": "running"}), ("DELETE", None)):
        status, text, resp = await send(api, method, run_path(run), json=body,
                                        headers={"If-Match": value})
        assert status == 400, (method, text)
        check_error(status, text, resp, (method, value))
    assert await api.get(run_path(run)) == run
    assert await events_of(db, run["id"]) == events
