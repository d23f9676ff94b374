"""Cached downloads: served from a local HTTP server, cached, checked, and clear when offline."""

from __future__ import annotations

import http.server
import threading

import pytest

from utils.errors import CourseError
from utils.hub import download


@pytest.fixture
def server(tmp_path):
    (tmp_path / "data.json").write_text('[{"instruction": "x"}]')
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_is_cached(server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    path = download(f"{server}/data.json", "data.json")
    assert path.read_text() == '[{"instruction": "x"}]'
    assert download(f"{server}/gone.json", "data.json") == path  # cached: the URL is not asked again


def test_missing_file_and_offline_mode_are_clear(server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with pytest.raises(CourseError, match="could not download.*COURSE_SMOKE=1"):
        download(f"{server}/missing.json", "missing.json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CourseError, match="HF_HUB_OFFLINE=1"):
        download("https://example.org/x.json", "x.json")
