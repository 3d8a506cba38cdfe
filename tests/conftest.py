"""Shared fixtures and factories.

Tests that start SGLang use `sglang_server_factory` from a module-scoped fixture of their
own (one server per test module), are marked `sglang`, and go through
`sglang_ext.server.start_server`, which picks a free port, holds a machine-wide lock so
that two servers never run at once, and always stops what it started.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import urllib.request

import pytest

from sglang_ext.models import tiny_path
from sglang_ext.server import ServerSpec, start_server

ROOT = pathlib.Path(__file__).resolve().parent.parent


def tiny_model() -> str:
    path = tiny_path()
    if not (path / "config.json").exists():
        pytest.skip("tiny model not built: run scripts/setup_cpu.sh", allow_module_level=True)
    return str(path)


@contextlib.contextmanager
def sglang_server(tmp_path_factory, **spec_fields):
    """Start one real SGLang server (dp=2, tiny model unless told otherwise)."""
    spec = ServerSpec(model_path=spec_fields.pop("model_path", tiny_model()), **spec_fields)
    log = tmp_path_factory.mktemp("sglang") / "server.log"
    with start_server(spec, str(log)) as server:
        server.log_file = log
        yield server


def generate(url: str, text: str | None = None, max_new_tokens: int = 8, input_ids=None,
             timeout_s: float = 120, **fields) -> dict:
    """POST /generate (non-streaming) with a fixed output length; returns the JSON reply."""
    body = {"sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True}, **fields}
    if input_ids is not None:
        body["input_ids"] = input_ids
    else:
        body["text"] = text
    req = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return json.load(r)


def post_json(url: str, path: str, body: dict | None = None, timeout_s: float = 60):
    req = urllib.request.Request(url + path, data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        raw = r.read()
        return r.status, raw
