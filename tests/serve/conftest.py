"""Fixtures of the serve tests: the main server (auth, local and remote media on), media to serve.

The answers the servers give are checked against tests/conftest.py's ``tiny_pipeline`` (``tiny_pipelines`` for
CogVLM2-Video), loaded apart from the models the servers answer with (the ``server`` fixture loads its own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_helpers import API_KEY, IMAGE, Server, run_server

from coglens.serve.settings import ServeSettings


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the server may read media from, a secret next to it, and a symlink escaping to the secret."""
    root = tmp_path_factory.mktemp("serve-media")
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "red.png").write_bytes(IMAGE.read_bytes())
    (root / "secret.png").write_bytes(IMAGE.read_bytes())
    (allowed / "escape.png").symlink_to(root / "secret.png")
    return allowed


@pytest.fixture(scope="session")
def server(media_dir: Path) -> Iterator[Server]:
    settings = ServeSettings(model="tiny:cogvlm2", device="cpu", api_key=API_KEY, allow_local_media=media_dir,
                             allow_remote_media=True)
    with run_server(settings) as running:
        yield running
