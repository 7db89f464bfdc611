"""`fedrec data fetch` against a local HTTP server on 127.0.0.1 serving generated files.

No test needs the internet: the registry's real URLs are replaced by the local server,
either through a test entry or through ``--mirror`` (which keeps the publisher's file names).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fedrec.data import load_dataset, read_interactions
from fedrec.data.registry import REGISTRY, DatasetEntry, FetchError, fetch, parse_md5_text
from fedrec_app.simulations.cli.main import main

RATINGS = "userId,movieId,rating,timestamp\n" + "".join(
    f"{u},{i},{(u + i) % 5 + 1}.0,{1000 + 10 * u + i}\n" for u in range(1, 7) for i in range(1, 6))
MOVIES = "movieId,title,genres\n" + "".join(f"{i},Movie {i} (199{i}),Drama|Comedy\n" for i in range(1, 8))


def _zip(folder: str, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(f"{folder}/{name}" if folder else name, text)
    return buf.getvalue()


ARCHIVE = _zip("toy", {"ratings.csv": RATINGS, "movies.csv": MOVIES, "README.txt": "toy terms: test only\n"})
MD5 = hashlib.md5(ARCHIVE).hexdigest()


class _Server:
    """Serves ``files`` (path -> bytes); honours Range unless ``ranges`` is False; while
    ``cut`` is set, announces the full length but sends only the first ``cut`` bytes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.cut: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and outer.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                self.wfile.write(part[: outer.cut] if outer.cut is not None else part)
                if outer.cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    try:
        yield s
    finally:
        s.close()


def _entry(server, **kw) -> DatasetEntry:
    server.files.setdefault("/toy.zip", ARCHIVE)
    return DatasetEntry("toy", f"{server.url}/toy.zip", "toy terms: test only", folder="toy", **kw)


def test_fetch_verifies_unpacks_and_says_the_terms(server, tmp_path, monkeypatch):
    lines = []
    path = fetch(_entry(server, md5=MD5), root=tmp_path, say=lines.append)
    assert path == tmp_path / "toy" and (path / "ratings.csv").read_text() == RATINGS
    assert lines[0] == "toy: toy terms: test only"
    assert any("matches the publisher's" in x for x in lines) and "README.txt" in lines[-1]
    source = json.loads((path / "SOURCE.json").read_text())
    assert source["md5"] == MD5 and source["sha256"] == hashlib.sha256(ARCHIVE).hexdigest()
    assert not list((tmp_path / ".downloads").iterdir())  # the archive is gone once unpacked
    # cached: a second fetch downloads nothing
    n = len(server.requests)
    fetch(_entry(server, md5=MD5), root=tmp_path, say=lines.append)
    assert len(server.requests) == n and "already" in lines[-1]
    # --data NAME finds it in the cache ($FEDREC_DATA)
    monkeypatch.setenv("FEDREC_DATA", str(tmp_path))
    raw = read_interactions("toy")
    assert raw.format == "ml-csv" and raw.user.shape == (30,)


def test_checksum_mismatch_removes_the_download_and_unpacks_nothing(server, tmp_path):
    with pytest.raises(FetchError, match="checksum mismatch .*publisher's is 0{32}.*removed"):
        fetch(_entry(server, md5="0" * 32), root=tmp_path, say=lambda m: None)
    assert not (tmp_path / "toy").exists()
    assert not list((tmp_path / ".downloads").iterdir())


def test_publisher_md5_file_is_read_at_fetch_time(server, tmp_path):
    server.files["/toy.zip.md5"] = f"MD5 (toy.zip) = {MD5}\n".encode()
    assert parse_md5_text(server.files["/toy.zip.md5"].decode()) == MD5
    assert parse_md5_text(f"{MD5}  toy.zip\n") == MD5
    fetch(_entry(server, md5_url=f"{server.url}/toy.zip.md5"), root=tmp_path, say=lambda m: None)
    server.files["/toy.zip.md5"] = f"MD5 (toy.zip) = {'1' * 32}\n".encode()
    with pytest.raises(FetchError, match="checksum mismatch"):
        fetch(_entry(server, md5_url=f"{server.url}/toy.zip.md5"), root=tmp_path, force=True, say=lambda m: None)
    assert (tmp_path / "toy" / "ratings.csv").read_text() == RATINGS  # the good copy is kept


def test_trust_on_first_use_pins_the_first_download(server, tmp_path):
    lines = []
    fetch(_entry(server), root=tmp_path, say=lines.append)
    pins = json.loads((tmp_path / "checksums.json").read_text())
    assert pins["toy"]["sha256"] == hashlib.sha256(ARCHIVE).hexdigest()
    assert any("trust on first use" in x for x in lines)
    fetch(_entry(server), root=tmp_path, force=True, say=lines.append)  # same file: accepted
    assert "matches the one pinned" in " ".join(lines)
    server.files["/toy.zip"] = _zip("toy", {"ratings.csv": RATINGS + "7,1,5.0,1\n"})
    with pytest.raises(FetchError, match="pinned at the first download"):
        fetch(_entry(server), root=tmp_path, force=True, say=lambda m: None)


def test_truncated_download_is_kept_and_resumed_with_a_range_request(server, tmp_path):
    server.cut = 100
    with pytest.raises(FetchError, match="(truncated|interrupted).*run the same command again to resume"):
        fetch(_entry(server, md5=MD5), root=tmp_path, say=lambda m: None)
    part = tmp_path / ".downloads" / "toy.zip.part"
    assert part.read_bytes() == ARCHIVE[:100]
    assert not (tmp_path / "toy").exists()
    server.cut = None
    fetch(_entry(server, md5=MD5), root=tmp_path, say=lambda m: None)
    assert server.requests[-1] == ("/toy.zip", "bytes=100-")
    assert (tmp_path / "toy" / "movies.csv").read_text() == MOVIES


def test_a_server_without_ranges_restarts_the_download(server, tmp_path):
    (tmp_path / ".downloads").mkdir()
    (tmp_path / ".downloads" / "toy.zip.part").write_bytes(b"garbage that is not the start")
    server.ranges = False
    lines = []
    fetch(_entry(server, md5=MD5), root=tmp_path, say=lines.append)
    assert any("does not resume" in x for x in lines)
    assert (tmp_path / "toy" / "ratings.csv").read_text() == RATINGS


def test_archive_member_outside_the_dataset_is_refused(server, tmp_path):
    server.files["/toy.zip"] = evil = _zip("", {"../evil.txt": "x", "toy/ratings.csv": RATINGS})
    with pytest.raises(FetchError, match="outside the dataset"):
        fetch(_entry(server, md5=hashlib.md5(evil).hexdigest()), root=tmp_path, say=lambda m: None)
    assert not (tmp_path.parent / "evil.txt").exists() and not (tmp_path / "toy").exists()


def test_headerless_single_file_gets_its_header_and_reader_defaults(server, tmp_path, monkeypatch):
    rows = "".join(f"i{i},u{u},{(u * i) % 5 + 1}.0,{100 * u + i}\n" for u in range(4) for i in range(5))
    rows += "i0,u0,1.0,999\n"  # a repeated (user, item): the entry keeps the last
    server.files["/music.csv"] = rows.encode()
    amazon = REGISTRY["amazon-digital-music"]
    entry = replace(amazon, name="music", url=f"{server.url}/music.csv")
    fetch(entry, root=tmp_path, say=lambda m: None)
    assert (tmp_path / "music" / "interactions.csv").read_text().splitlines()[0] == "item,user,rating,timestamp"
    monkeypatch.setenv("FEDREC_DATA", str(tmp_path))
    monkeypatch.setitem(REGISTRY, "music", entry)
    ds = load_dataset("music")
    assert ds.n_users == 4 and ds.n_items == 5 and ds.n_interactions == 20
    assert set(ds.user_ids.tolist()) == {"u0", "u1", "u2", "u3"}  # string ids are read as strings


def test_a_registered_dataset_not_in_the_cache_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDREC_DATA", str(tmp_path))
    with pytest.raises(ValueError, match=r"^dataset 'ml-1m' is not in the cache .*`fedrec data fetch ml-1m`"):
        read_interactions("ml-1m")


def test_cli_fetch_through_a_mirror_keeps_the_publisher_file_names(server, tmp_path, capsys):
    archive = _zip("ml-32m", {"ratings.csv": RATINGS, "movies.csv": MOVIES, "README.txt": "terms\n"})
    server.files["/ml-32m.zip"] = archive
    server.files["/ml-32m.zip.md5"] = f"MD5 (ml-32m.zip) = {hashlib.md5(archive).hexdigest()}\n".encode()
    assert main(["data", "fetch", "ml-32m", "--root", str(tmp_path), "--mirror", server.url]) == 0
    assert (tmp_path / "ml-32m" / "ratings.csv").read_text() == RATINGS
    assert "may NOT redistribute" in capsys.readouterr().out
    # ml-100k's MD5 is pinned from GroupLens: a generated file cannot pass it
    server.files["/ml-100k.zip"] = archive
    assert main(["data", "fetch", "ml-100k", "--root", str(tmp_path), "--mirror", server.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checksum mismatch" in err[0] and "0e33842e24a9c977be4e0107933c0723" in err[0]
    assert main(["data", "list", "--root", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert f"cached at {tmp_path / 'ml-32m'}" in listing and "amazon-digital-music" in listing
