"""Hypothesis against what a caller controls most freely: the run-list cursor and every request
header the service parses. Whatever it sends, the answer is a success or a 4xx envelope, never
a 500 (and so never a traceback in the log)."""
from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.store.run_lists import ORDERS
from service.web.app import create_app
from tests.helpers import check_error, world


@pytest.fixture
async def ids(api) -> dict:
    return await world(api)

# Fixtures are made once per test and shared by its examples (one app, one enterprise, one
# pipeline and run): cheap examples, and a refusal must not depend on a fresh state.
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
ORDERINGS = [o for o in ORDERS if o is not None]
NIL = "00000000-0000-0000-0000-000000000000"

# Key values: what a cursor holds (instants with any offset, ids, numbers, names) and
# what it should not (nesting, wrong types, out of range).
instants = st.builds(
    lambda year, month, day, hours, minutes: (
        f"{year:04d}-{month:02d}-{day:02d}T00:00:00{'+' if hours >= 0 else '-'}"
        f"{abs(hours):02d}:{minutes:02d}"),
    st.one_of(st.sampled_from([1, 2, 9998, 9999]), st.integers(1, 9999)),  # the year's ends
    st.integers(1, 12), st.integers(1, 28), st.integers(-23, 23),
    st.sampled_from([0, 30, 59]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False), st.text(max_size=40), instants,
                    st.uuids().map(str), st.just(NIL), st.sampled_from(["pending", "running"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=8)
shaped = st.fixed_dictionaries({
    "o": st.one_of(st.sampled_from(["", *ORDERINGS]), values),
    "k": st.one_of(st.lists(values, min_size=1, max_size=4), values)})


def encoded(data) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


cursors = st.one_of(
    shaped.map(encoded),  # our shape, hostile content
    values.map(encoded),  # any JSON
    st.binary(max_size=200).map(encoded),  # any bytes
    st.text(alphabet=st.characters(codec="ascii"), max_size=100),  # anything at all
    st.integers(0, 1500).map(lambda depth: encoded(b'{"o":"","k":' + b"[" * depth
                                                  + b"]" * depth + b"}")))


def answered(status: int, text: str, resp, where) -> None:
    """A success, or a 4xx envelope without internals."""
    if status < 300:
        return
    check_error(status, text, resp, where)


@FUZZ
@example(cursor=encoded({"o": "", "k": ["0001-01-01T00:00:00+14:00", NIL]}), ordering=None,
         ui=False)
@example(cursor=encoded({"o": "", "k": ["2020-01-01T00:00:00+00:00", 5]}), ordering=None,
         ui=True)
@example(cursor=encoded(b'{"o":"","k":' + b"[" * 1500 + b"]" * 1500 + b"}"), ordering=None,
         ui=False)
@given(cursor=cursors, ordering=st.sampled_from([None, *ORDERINGS]),
       ui=st.booleans())
async def test_any_cursor_is_a_page_or_a_400(api, client, cursor, ordering, ui):
    query = {"cursor": cursor, **({"ordering": ordering} if ordering else {})}
    if ui:  # the runs page reads the same cursor: its errors are pages, never a 500
        await _sign_in_once(client, api.token)
        resp = await client.get("/ui/runs", params=query, allow_redirects=False)
        assert resp.status in (200, 400), (query, resp.status, (await resp.text())[:300])
        return
    resp = await client.get(api.url("/runs/"), params=query,
                            headers={"Authorization": f"Bearer {api.token}"})
    answered(resp.status, await resp.text(), resp, query)


async def _sign_in_once(client, token: str) -> None:
    if client.session.cookie_jar.filter_cookies(client.make_url("/ui/runs")):
        return
    resp = await client.post("/ui/login", data={"token": token, "next": "/ui/runs"},
                             headers={"Origin": str(client.make_url("")).rstrip("/")},
                             allow_redirects=False)
    assert resp.status == 303, await resp.text()


# Header values a client can send: printable Latin-1 and beyond (aiohttp sends them as
# UTF-8), without the line breaks no client can put in a header.
header_text = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=60)
digits_like = st.one_of(st.integers(-5, 2**70).map(str), st.integers(2**63 - 2, 2**64).map(str),
                        st.text(alphabet=st.characters(whitelist_categories=("Nd", "No")),
                                min_size=1, max_size=20))
# (header, method, path template, body): every header the service parses, where it reads it.
HEADERS = [
    ("Authorization", "GET", "/runs/", None),
    ("X-Request-ID", "GET", "/runs/", None),
    ("Consistency-Token", "GET", "/runs/", None),
    ("If-Match", "PUT", "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/", {"status": "pending"}),
    ("Idempotency-Key", "POST", "/pipelines/", "pipeline"),
    ("Last-Event-ID", "GET", "/events/stream/", None),
    ("Content-Type", "POST", "/pipelines/", "pipeline"),
    ("Content-Encoding", "POST", "/pipelines/", "pipeline"),
]


@FUZZ
@example(which=HEADERS[5], value="\u00b2").via("a Unicode digit")
@example(which=HEADERS[5], value="9999999999999999999").via("past a bigint")
@given(which=st.sampled_from(HEADERS), value=st.one_of(header_text, digits_like))
async def test_any_header_value_is_a_success_or_a_4xx(api, client, ids, which, value):
    name, method, template, body = which
    headers = {"Authorization": f"Bearer {api.token}", name: value}
    if name == "Authorization":
        headers[name] = f"Bearer {value}" if value[:1] != "B" else value
    data = (json.dumps({"name": "fuzzed"}) if body == "pipeline"
            else json.dumps(body) if body else None)
    if data is not None and name != "Content-Type":
        headers.setdefault("Content-Type", "application/json")
    resp = await client.request(method, api.url(template.format(**ids)), data=data,
                                headers=headers)
    try:
        if resp.content_type == "text/event-stream":  # a stream that resumed: it works
            assert resp.status == 200
            return
        answered(resp.status, await resp.text(), resp, (name, value))
    finally:
        resp.close()



# The pages' own headers: Origin and Referer (the cross-site check of every form) and the
# session cookie. A refusal is a page (403, the sign-in page, a redirect), never a 500.
PAGE_HEADERS = [("Origin", "POST", "/ui/login"), ("Referer", "POST", "/ui/login"),
                ("Cookie", "GET", "/ui/runs"), ("Cookie", "POST", "/ui/logout")]


@FUZZ
@example(which=PAGE_HEADERS[0], value="null")
@example(which=PAGE_HEADERS[1], value="http://[::1")
@example(which=PAGE_HEADERS[2], value="pipeline_runs_session=gAAAA")
@given(which=st.sampled_from(PAGE_HEADERS),
       value=st.one_of(header_text, header_text.map(lambda v: "pipeline_runs_session=" + v),
                       header_text.map(lambda v: "http://" + v)))
async def test_any_page_header_value_is_answered_without_a_500(api, client, which, value):
    name, method, path = which
    resp = await client.request(method, path, headers={name: value}, allow_redirects=False,
                                data={"token": api.token} if method == "POST" else None)
    text = await resp.text()
    assert resp.status < 500, (name, value, resp.status, text[:300])
    assert "Traceback" not in text


@pytest.fixture
async def traced(aiohttp_client, config):
    """The app with tracing on (spans kept in memory): it parses traceparent/tracestate."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    return await aiohttp_client(create_app(config, span_exporter=InMemorySpanExporter()))


@FUZZ
@example(name="traceparent", value="00-" + "f" * 32 + "-" + "f" * 16 + "-01")
@example(name="traceparent", value="ff-" + "0" * 32 + "-" + "0" * 16 + "-00")
@given(name=st.sampled_from(["traceparent", "tracestate"]),
       value=st.one_of(header_text, st.lists(st.text(alphabet="0123456789abcdef-", max_size=33),
                                             max_size=5).map("-".join)))
async def test_any_trace_context_is_answered_without_a_500(api, traced, name, value):
    resp = await traced.get(api.url("/runs/"), headers={
        "Authorization": f"Bearer {api.token}", name: value})
    answered(resp.status, await resp.text(), resp, (name, value))
