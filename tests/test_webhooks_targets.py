"""Webhooks reach only global unicast addresses: refused at creation and at every delivery.

The service runs with its defaults (nothing opened) unless a test opens loopback as an
operator would (WEBHOOK_ALLOWED_NETWORKS). Names resolve through a scripted DNS put where
the service's resolver asks, so a name can answer a global address when the subscription
is saved and a blocked one at delivery (DNS rebinding).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import uuid

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver

from service.app.webhook_targets import literal, not_global
from service.config import Config
from service.web.keys import WEBHOOK_SENDER
from tests.helpers import make_token, wait_until
from tests.processes import Dev, Service, free_port
from tests.webhook_receiver import SECRET_BODY, Receiver

GLOBAL = "93.184.215.14"  # any global unicast address: never connected to here

# (URL host, the kind the refusal names): every form the issue lists, and the odd spellings.
BLOCKED = [
    ("127.0.0.1", "loopback"), ("127.0.0.1:5432", "loopback"), ("localhost", "loopback"),
    ("127.1", "loopback"), ("2130706433", "loopback"), ("0x7f.0.0.1", "loopback"),
    ("0177.0.0.1", "loopback"), ("0", "unspecified"), ("0.0.0.0", "unspecified"),
    ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("100.64.0.1", "CGNAT"), ("100.100.100.200", "CGNAT"), ("169.254.169.254", "link-local"),
    ("192.0.0.1", "IETF protocol"), ("192.0.2.1", "documentation"),
    ("198.51.100.1", "documentation"), ("203.0.113.1", "documentation"),
    ("198.18.0.1", "benchmarking"), ("224.0.0.1", "multicast"), ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("[::1]", "loopback"), ("[::]", "unspecified"), ("[fe80::1]", "link-local"),
    ("[fd00::1]", "unique-local"), ("[fec0::1]", "site-local"), ("[ff02::1]", "multicast"),
    ("[100::1]", "discard-only"), ("[2001:db8::1]", "documentation"),
    ("[3fff::1]", "documentation"), ("[2001:2::1]", "benchmarking"), ("[4000::1]", "reserved"),
    ("[::ffff:127.0.0.1]", "loopback"), ("[::ffff:10.0.0.1]", "private"),
    ("[::ffff:169.254.1.1]", "link-local"), ("[::127.0.0.1]", "IPv4-compatible"),
    ("[64:ff9b::127.0.0.1]", "loopback (NAT64)"), ("[64:ff9b::10.0.0.1]", "private (NAT64)"),
    ("[64:ff9b::100.64.0.1]", "CGNAT (NAT64)"), ("[64:ff9b:1::a00:1]", "local-use NAT64"),
    ("[2002:7f00:1::1]", "loopback (6to4)"), ("[2002:c0a8:101::1]", "private (6to4)"),
    ("[2002:a9fe:a9fe::]", "link-local (6to4)"),
    # Teredo: server 65.54.227.120, client 127.0.0.1 (obfuscated: bits inverted)
    ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "Teredo"),
]
REACHABLE = ["8.8.8.8", "[2606:4700:4700::1111]", "[::ffff:8.8.8.8]", "[64:ff9b::8.8.8.8]",
             "[2002:808:808::1]", "2.2.2.2"]


class ScriptedDNS(AbstractResolver):
    """Answers from a table (name -> addresses) that a test changes between steps."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers

    async def resolve(self, host, port=0, family=socket.AF_INET):
        if host not in self.answers:
            raise OSError(f"{host}: no such name")
        return [{"hostname": host, "host": a, "port": port, "proto": 0, "flags": 0,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET}
                for a in self.answers[host]]

    async def close(self):
        pass


@pytest.fixture
def db_dsn(own_db):
    return own_db  # no other test's subscriptions in this database


@pytest.fixture
def config(config):
    return config.with_(webhook_timeout_seconds=2.0, webhook_retry_schedule=(60,))


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.close()


def _targets(client):
    return client.app[WEBHOOK_SENDER].targets


@pytest.mark.parametrize("host,kind", BLOCKED)
def test_every_non_global_form_is_classified(host, kind):
    if host == "localhost":
        return  # a name: resolved, below
    address = literal(host.rsplit(":", 1)[0] if host.count(":") == 1 else host)
    assert address is not None, host
    found = not_global(address.ipv4_mapped or address if address.version == 6 else address)
    assert found == kind, (host, found)


@pytest.mark.parametrize("host", REACHABLE)
def test_global_unicast_forms_pass(host):
    assert not_global(literal(host)) is None


async def test_creation_refuses_every_form_and_names_why(api):
    for host, kind in BLOCKED:
        content = await api.post("/webhooks/", {"url": f"http://{host}/hook"}, status=400)
        (reason,) = content["errors"]["url"]
        assert f"a {kind} address" in reason, (host, reason)
        assert "WEBHOOK_ALLOWED_NETWORKS" in reason
    assert (await api.get("/webhooks/"))["count"] == 0


async def test_a_name_is_refused_by_what_it_resolves_to(api, client):
    _targets(client).dns = ScriptedDNS({"inside.example": ["10.1.2.3"],
                                        "mixed.example": [GLOBAL, "fd00::5"],
                                        "outside.example": [GLOBAL]})
    content = await api.post("/webhooks/", {"url": "https://inside.example/h"}, status=400)
    # Named by kind, not by address: the answer must not map internal DNS for the caller.
    assert content["errors"]["url"] == [
        "inside.example resolves to a private address: webhooks reach only global unicast "
        "addresses (WEBHOOK_ALLOWED_NETWORKS opens others)"]
    await api.post("/webhooks/", {"url": "https://mixed.example/h"}, status=400)
    await api.post("/webhooks/", {"url": "https://outside.example/h"})
    for host in REACHABLE:
        await api.post("/webhooks/", {"url": f"https://{host}/h"})


async def test_dns_rebinding_is_refused_at_every_delivery(api, client, receiver):
    """Saved while the name answered a global address; at delivery it answers a blocked one
    (every form): the ping and the dispatcher's delivery are refused before connecting."""
    forms = {f"n{i}.rebind.example": address for i, address in enumerate([
        "127.0.0.1", "::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe", "10.0.0.1", "100.64.0.1", "169.254.169.254",
        "fd00::1", "0.0.0.0"])}
    dns = _targets(client).dns = ScriptedDNS({name: [GLOBAL] for name in forms})
    port = receiver.url.rsplit(":", 1)[1]
    hooks = {name: await api.post("/webhooks/", {"url": f"http://{name}:{port}/ok"})
             for name in forms}
    dns.answers = {name: [address] for name, address in forms.items()}
    for name, hook in hooks.items():
        ping = await api.post(f"/webhooks/{hook['id']}/ping/")
        assert ping["delivered"] is False and ping["status_code"] is None
        assert ping["error"].startswith(f"{name} resolves to a "), ping["error"]
    pipeline = await api.pipeline()
    await api.run(pipeline["id"])
    hook = hooks["n0.rebind.example"]

    async def refused_delivery():
        audit = await api.get(f"/webhooks/{hook['id']}/deliveries/")
        return [a for a in audit["results"] if a["event_type"] != "webhook.ping"]

    (attempt,) = await wait_until(refused_delivery, timeout=30)
    assert attempt["error"].startswith("n0.rebind.example resolves to a loopback address")
    assert receiver.arrived == 0


async def test_a_literal_stored_before_is_refused_at_delivery(api, client, receiver):
    """A subscription saved while loopback was open (an operator closed it since): every
    spelling of the address is refused when sending."""
    targets = _targets(client)
    targets.opened = [ipaddress.ip_network("127.0.0.0/8")]
    port = receiver.url.rsplit(":", 1)[1]
    hooks = [await api.post("/webhooks/", {"url": f"http://{host}:{port}/ok"})
             for host in ("127.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "[::ffff:127.0.0.1]")]
    assert (await api.post(f"/webhooks/{hooks[0]['id']}/ping/"))["delivered"] is True
    targets.opened = []
    arrived = receiver.arrived
    for hook in hooks:
        ping = await api.post(f"/webhooks/{hook['id']}/ping/")
        assert ping["delivered"] is False and "a loopback address" in ping["error"], ping
    assert receiver.arrived == arrived


async def test_failures_are_told_in_our_words_never_the_receivers(api, client, receiver):
    _targets(client).opened = [ipaddress.ip_network("127.0.0.0/8")]
    hook = await api.post("/webhooks/", {"url": f"{receiver.url}/secret"})
    ping = await api.post(f"/webhooks/{hook['id']}/ping/")
    assert ping["status_code"] == 403 and ping["error"] == "HTTP 403: Forbidden"
    audit = await api.get(f"/webhooks/{hook['id']}/deliveries/")
    assert audit["results"][0]["error"] == "HTTP 403: Forbidden"
    assert "admin" not in json.dumps(ping) + json.dumps(audit) and receiver.arrived == 1
    assert SECRET_BODY not in json.dumps(audit)


async def test_open_and_closed_ports_look_the_same(api, client):
    """A closed port, a port that speaks something else, one that closes at once: all
    "could not connect" (no port scanning through the error)."""
    _targets(client).opened = [ipaddress.ip_network("127.0.0.0/8")]

    async def banner(reader, writer):
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        writer.close()

    async def hang_up(reader, writer):
        writer.close()

    servers = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (banner, hang_up)]
    try:
        ports = [free_port(), *(s.sockets[0].getsockname()[1] for s in servers)]
        for port in ports:
            hook = await api.post("/webhooks/", {"url": f"http://127.0.0.1:{port}/"})
            ping = await api.post(f"/webhooks/{hook['id']}/ping/")
            assert (ping["status_code"], ping["error"]) == (None, "could not connect"), port
    finally:
        for s in servers:
            s.close()
            await s.wait_closed()


def test_allowed_networks_setting():
    assert Config.from_env({}).webhook_allowed_networks is None
    assert Config.from_env({"WEBHOOK_ALLOWED_NETWORKS": ""}).webhook_allowed_networks == ()
    got = Config.from_env({"WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8, fd00::/8"})
    assert got.webhook_allowed_networks == ("127.0.0.0/8", "fd00::/8")
    with pytest.raises(ValueError, match="WEBHOOK_ALLOWED_NETWORKS"):
        Config.from_env({"WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/33"})


async def _create(base: str, token: str, url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async with session.post(f"{base}/pipelines/v0/webhooks/", json={"url": url}) as resp:
            return resp.status, await resp.json()


async def test_dev_opens_loopback_and_says_so_serve_does_not(own_db, tmp_path):
    dev = Dev(tmp_path, tmp_path / ".data", free_port(), "dev", DATABASE_URL=own_db)
    try:
        token = dev.wait_ready()
        banner = dev.stdout()[dev.stdout().index("is listening on"):]
        assert "Webhooks reach global addresses and 127.0.0.0/8,::1/128" in banner, banner
        assert "webhooks may reach loopback" in dev.stderr()
        status, _ = await _create(f"http://127.0.0.1:{dev.port}", token, "http://127.0.0.1:9/")
        assert status == 200
    finally:
        dev.stop()
    serve = await Service(own_db, tmp_path).start()
    try:
        status, answer = await _create(serve.url, token, "http://127.0.0.1:9/")
        assert status == 400 and "a loopback address" in answer["content"]["errors"]["url"][0]
    finally:
        serve.stop()


class StalledDNS(ScriptedDNS):
    """Answers only once `release` is set: a caller's slow (perhaps hostile) name server."""

    def __init__(self, answers):
        super().__init__(answers)
        self.release, self.waiting = asyncio.Event(), 0

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.waiting += 1
        await self.release.wait()
        return await super().resolve(host, port, family)


async def test_a_slow_name_server_holds_no_database_connection(api, client, config, db):
    """More creates waiting on DNS than the pool has connections: another enterprise's
    reads still answer (the check runs before a connection is taken)."""
    dns = _targets(client).dns = StalledDNS({"slow.example": [GLOBAL]})
    url = {"url": "https://slow.example/h"}
    creates = [asyncio.create_task(api.call("POST", "/webhooks/", (200, 409), json=url))
               for _ in range(config.pool_max + 5)]
    await wait_until(lambda: dns.waiting == len(creates), what="every create in DNS")
    other = api.with_token(await make_token(db, "ent-beside-the-slow-dns"))
    assert (await other.get("/webhooks/"))["count"] == 0
    await other.put(f"/webhooks/{uuid.uuid4()}/", {"url": "https://8.8.8.8/h"}, status=404)
    dns.release.set()
    created = [a for a in await asyncio.gather(*creates) if "secret" in a]
    assert len(created) == config.webhook_max_per_enterprise  # the rest: 409, over the cap
