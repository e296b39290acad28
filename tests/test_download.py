"""The download path against a local HTTP server on 127.0.0.1 (no internet)."""
import hashlib
import http.server
import threading
from functools import partial

import pytest

from squeezenet import download as dl
from squeezenet.cli.main import main


@pytest.fixture
def served(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    payload = b"published-model-bytes" * 1000
    (site / "good.net").write_bytes(payload)
    (site / "bad.net").write_bytes(payload[:-1] + b"X")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    asset = dl.Asset("test-asset", "model.net", f"http://127.0.0.1:{server.server_port}/good.net",
                     hashlib.sha256(payload).hexdigest(), len(payload))
    old = dict(dl.ASSETS)
    dl.ASSETS["test-asset"] = asset
    yield asset, payload, f"http://127.0.0.1:{server.server_port}"
    dl.ASSETS.clear()
    dl.ASSETS.update(old)
    server.shutdown()


def test_download_into_cache_and_reuse(served, tmp_path, monkeypatch):
    asset, payload, base = served
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "cache"))
    path = dl.download("test-asset")
    assert path == tmp_path / "cache" / "model.net" and path.read_bytes() == payload
    assert dl.download("test-asset", url=base + "/missing") == path  # cached, valid: no network needed


def test_wrong_checksum_leaves_nothing(served, tmp_path, capsys):
    asset, payload, base = served
    cache = tmp_path / "c2"
    rc = main(["download", "--asset", "test-asset", "--to", str(cache), "--url", base + "/bad.net"])
    err = capsys.readouterr().err
    assert rc == 2 and "sha256" in err and "Traceback" not in err
    assert list(cache.iterdir()) == []  # no file, no partial download


def test_unreachable_server_is_a_clear_error(served, tmp_path):
    with pytest.raises(dl.DownloadError, match="offline"):
        dl.download("test-asset", tmp_path / "c3", url="http://127.0.0.1:9/none", timeout=2)
    assert list((tmp_path / "c3").iterdir()) == []


def test_import_from_local_copy(served, tmp_path):
    asset, payload, _ = served
    src = tmp_path / "mirror" / "sub"
    src.mkdir(parents=True)
    (src / "model.net").write_bytes(payload)
    path = dl.download("test-asset", tmp_path / "c4", source=tmp_path / "mirror")
    assert path.read_bytes() == payload


def test_published_asset_pin_matches_shared_copy():
    from tests.conftest import PUBLISHED_NET, need
    data = need(PUBLISHED_NET).read_bytes()
    a = dl.ASSETS[dl.DEFAULT_ASSET]
    assert hashlib.sha256(data).hexdigest() == a.sha256 and len(data) == a.size
