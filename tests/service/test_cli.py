"""`bitalloc token create/list/revoke` against the server's database; the server honours them at once."""

from __future__ import annotations

import subprocess

from tests.service.conftest import bitalloc_command


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(bitalloc_command(*args), capture_output=True, text=True, timeout=120)


def test_token_create_list_revoke(server):
    created = run_cli(
        "token", "create", "--owner", "dave", "--name", "ci", "--database-url", server.database_url
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("bat_")
    with server.client(secret) as c:
        assert c.get("/v1/sessions").status_code == 200

    listed = run_cli("token", "list", "--owner", "dave", "--database-url", server.database_url)
    assert listed.returncode == 0 and secret not in listed.stdout  # secrets are never shown again
    token_id = created.stderr.split()[1]
    assert token_id in listed.stdout

    revoked = run_cli("token", "revoke", token_id, "--database-url", server.database_url)
    assert revoked.returncode == 0, revoked.stderr
    with server.client(secret) as c:
        r = c.get("/v1/sessions")
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
    missing = run_cli("token", "revoke", "nope", "--database-url", server.database_url)
    assert missing.returncode == 2 and "token list" in missing.stderr
