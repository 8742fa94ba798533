"""Service test helpers: a synthetic profile with exact bytes, and a real server process on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.profile import COLUMNS, SensitivityProfile

CANDIDATES = ("rtn-w2g32-sym", "rtn-w3g32-sym", "rtn-w4g32-sym", "gptq-w4g32-asym", "rtn-w8g32-sym")
SHAPES = {  # unit suffix -> (out, in), tie group suffix
    "self_attn.q_proj": ((64, 64), "qkv"),
    "self_attn.k_proj": ((32, 64), "qkv"),
    "self_attn.v_proj": ((32, 64), "qkv"),
    "self_attn.o_proj": ((64, 64), "o"),
    "mlp.gate_proj": ((128, 64), "gate_up"),
    "mlp.up_proj": ((128, 64), "gate_up"),
    "mlp.down_proj": ((64, 128), "down"),
}


def make_profile(layers: int = 3, seed: int = 0, name: str = "synthetic") -> SensitivityProfile:
    """A Llama-shaped profile with exact candidate bytes and errors that fall with the bit width."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(layers):
        for suffix, (shape, tie) in SHAPES.items():
            unit = f"model.layers.{layer}.{suffix}"
            scale = float(rng.lognormal(0.0, 1.0))
            for name_ in CANDIDATES:
                c = Candidate.parse(name_)
                error = scale * 4.0 ** (-c.bits) * float(rng.uniform(0.8, 1.2))
                rows.append((unit, f"model.layers.{layer}.{tie}", *shape, name_, error, c.nbytes(shape)))
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)
    meta = {
        "model_name": name,
        "model_hash": f"{seed:064x}",
        "corpus_hash": "0" * 64,
        "palette": list(CANDIDATES),
        "unquantized_bytes": 4096,
        "calibration": {"corpus": "wiki", "n_windows": 1, "seq_len": 8, "seed": seed},
    }
    return SensitivityProfile(table=table, meta=meta)


def upload_body(profile: SensitivityProfile) -> dict:
    """The JSON body of POST /v1/profiles for ``profile``."""
    return {
        "profile_hash": profile.content_hash,
        "meta": profile.meta,
        "table": {c: profile.table[c].tolist() for c in COLUMNS},
    }


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bitalloc_command(*args: str) -> list[str]:
    """The bitalloc CLI run by this interpreter."""
    return [sys.executable, "-c", "from bitalloc.cli import main; main()", *args]


@dataclass
class Server:
    """A `bitalloc serve` process on loopback and the database it uses."""

    url: str
    database_url: str
    process: subprocess.Popen

    def client(self, token: str | None) -> httpx.Client:
        """An HTTP client that sends ``token`` (none when None)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def stop(self) -> None:
        """Stop the server process."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(database_url: str, log: Path, env: dict[str, str] | None = None) -> Server:
    """Start `bitalloc serve` on a free port and wait until /healthz answers."""
    port = free_port()
    process = subprocess.Popen(
        bitalloc_command(
            "serve", "--port", str(port), "--database-url", database_url, "--log-level", "warning"
        ),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Server(url, database_url, process)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not answer within 60 s: {log.read_text()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[Server]:
    """One real server on a fresh SQLite file for the whole session; small limits to test them."""
    root = tmp_path_factory.mktemp("service")
    env = {"BITALLOC_MAX_REQUEST_BYTES": "16384", "BITALLOC_MAX_UPLOAD_BYTES": "150000"}
    srv = start_server(f"sqlite:///{root / 'service.db'}", root / "server.log", env)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def tokens(server) -> dict[str, str]:
    """Secrets of tokens for two owners, alice and bob, created in the server's database."""
    from bitalloc.service.auth import create_token
    from bitalloc.service.db import make_engine, sessions

    engine = make_engine(server.database_url)
    db = sessions(engine)
    found = {owner: create_token(db, owner, "tests")[1] for owner in ("alice", "bob")}
    engine.dispose()
    return found
