"""The client over real TLS: a self-made internal CA, Python 3.13's strict verification, and
``ssl_context`` as the way to relax only that flag.

The CA deliberately looks like many internal CAs: its ``basicConstraints`` is not critical and
the server certificate has no Authority Key Identifier. OpenSSL's ``X509_STRICT`` mode (set by
``ssl.create_default_context()`` from Python 3.13) rejects both, so the tests set or clear the
flag explicitly and behave the same on every Python version.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from promstat.client import PrometheusClient
from promstat.errors import ConfigError, PromstatError

# No subject/authority key identifiers and a non-critical basicConstraints, as many internal
# CAs made by hand have.
_CA_CNF = """[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = promstat test CA
[v3_ca]
basicConstraints = CA:TRUE
keyUsage = keyCertSign, cRLSign
"""
_LEAF_EXT = """[v3_leaf]
basicConstraints = CA:FALSE
subjectAltName = IP:127.0.0.1
extendedKeyUsage = serverAuth
"""


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("the openssl command is needed (Debian: apt-get install openssl)")
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def internal_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA (non-critical basicConstraints) and a 127.0.0.1 server certificate it signed."""
    d = tmp_path_factory.mktemp("tls")
    (d / "ca.cnf").write_text(_CA_CNF)
    (d / "leaf.ext").write_text(_LEAF_EXT)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=d)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-config", "ca.cnf",
        "-out", "ca.pem", cwd=d,
    )  # fmt: skip
    _openssl("genrsa", "-out", "server.key", "2048", cwd=d)
    _openssl(
        "req", "-new", "-key", "server.key", "-subj", "/CN=127.0.0.1", "-config", "ca.cnf",
        "-out", "server.csr", cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "leaf.ext", "-extensions", "v3_leaf",
        "-out", "server.pem", cwd=d,
    )  # fmt: skip
    return d


async def _query(request: web.Request) -> web.Response:
    return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})


@pytest.fixture
async def tls_url(internal_ca: Path) -> AsyncIterator[str]:
    """A Prometheus-shaped HTTPS endpoint on 127.0.0.1, certificate from the internal CA."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(internal_ca / "server.pem", internal_ca / "server.key")
    app = web.Application()
    app.router.add_route("*", "/api/v1/query", _query)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _context(ca: Path, *, strict: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca / "ca.pem"))
    if strict:
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13's default
    else:
        ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT  # the documented relaxation
    return ctx


async def test_strict_verification_rejects_the_internal_ca(
    tls_url: str, internal_ca: Path
) -> None:
    async with PrometheusClient(
        tls_url, ssl_context=_context(internal_ca, strict=True), timeout=5
    ) as prom:
        # The certificate error reaches the caller (today as a ConfigError, since aiohttp's
        # certificate error is also a ValueError; either way the reason is in the message).
        with pytest.raises(PromstatError, match="Basic Constraints of CA cert not marked critical"):
            await prom.query("up")


async def test_ssl_context_without_strict_flag_verifies_and_queries(
    tls_url: str, internal_ca: Path
) -> None:
    async with PrometheusClient(
        tls_url, ssl_context=_context(internal_ca, strict=False), timeout=5
    ) as prom:
        result = await prom.query("up")
    assert (result.result_type, result.vector) == ("vector", [])


async def test_verification_still_applies_without_the_ca(tls_url: str) -> None:
    # A relaxed context is still a verifying one: without the CA the server is refused.
    ctx = ssl.create_default_context()
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    async with PrometheusClient(tls_url, ssl_context=ctx, timeout=5) as prom:
        with pytest.raises(PromstatError, match="CERTIFICATE_VERIFY_FAILED"):
            await prom.query("up")


def test_ssl_context_excludes_the_other_tls_options(internal_ca: Path) -> None:
    ctx = _context(internal_ca, strict=False)
    with pytest.raises(ConfigError, match="ssl_context"):
        PrometheusClient("https://x", ssl_context=ctx, ca_file=str(internal_ca / "ca.pem"))
    with pytest.raises(ConfigError, match="ssl_context"):
        PrometheusClient("https://x", ssl_context=ctx, verify_tls=False)
