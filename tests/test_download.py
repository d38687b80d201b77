"""benchbio.download against a local HTTP server: resume, checksums, zip and tar."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchbio.download import Archive, download_file, fetch, unpack
from benchbio.errors import DataError


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours Range; may cut the first transfer short."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.server.requests.append((self.path, self.headers.get("Range")))
        start = 0
        rng = self.headers.get("Range")
        if rng and self.server.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_after is not None:
            cut, self.server.cut_after = self.server.cut_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.cut_after, httpd.ranges = {}, [], None, True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quiet(_msg: str) -> None:
    pass


def test_zip_download_verified_and_unpacked(server, tmp_path):
    data = make_zip({"DS/01/t000.tif": b"x" * 5000, "DS/readme.txt": b"hi"})
    server.files["/ds.zip"] = data
    archive = Archive(server.url + "/ds.zip", sha256=sha(data), md5=hashlib.md5(data).hexdigest())
    fetch([archive], tmp_path, progress=False, echo=quiet)
    assert (tmp_path / "DS" / "01" / "t000.tif").read_bytes() == b"x" * 5000
    assert not (tmp_path / ".downloads" / "ds.zip").exists()  # archive removed
    n = len(server.requests)
    fetch([archive], tmp_path, progress=False, echo=quiet)  # second run: nothing to do
    assert len(server.requests) == n


def test_tar_into_subdir(server, tmp_path):
    data = make_tar({"annotations/a.json": b"{}"})
    server.files["/a.tar.gz"] = data
    fetch([Archive(server.url + "/a.tar.gz", sha256=sha(data), subdir="coco")], tmp_path,
          progress=False, echo=quiet)
    assert (tmp_path / "coco" / "annotations" / "a.json").read_bytes() == b"{}"


def test_resume_after_truncated_transfer(server, tmp_path):
    data = make_zip({"big.bin": bytes(range(256)) * 400})
    server.files["/big.zip"] = data
    server.cut_after = 3000
    archive = Archive(server.url + "/big.zip", sha256=sha(data))
    with pytest.raises(DataError, match="again to resume"):
        fetch([archive], tmp_path, progress=False, echo=quiet)
    part = tmp_path / ".downloads" / "big.zip.part"
    assert part.exists() and 0 < part.stat().st_size < len(data)
    fetch([archive], tmp_path, progress=False, echo=quiet)
    assert server.requests[-1][1] == f"bytes={3000}-"  # resumed with a Range request
    assert (tmp_path / "big.bin").read_bytes() == bytes(range(256)) * 400


def test_server_without_range_support_restarts(server, tmp_path):
    data = b"0123456789" * 100
    server.files["/f.bin"] = data
    server.ranges = False
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"garbage")
    download_file(server.url + "/f.bin", dest, progress=False)
    assert dest.read_bytes() == data


def test_checksum_mismatch_is_an_error_and_deletes(server, tmp_path):
    data = make_zip({"a.txt": b"a"})
    server.files["/a.zip"] = data
    archive = Archive(server.url + "/a.zip", sha256="0" * 64)
    with pytest.raises(DataError, match="sha256 mismatch for a.zip") as err:
        fetch([archive], tmp_path, progress=False, echo=quiet)
    assert "\n" not in str(err.value)
    assert not (tmp_path / ".downloads" / "a.zip").exists()
    assert not (tmp_path / "a.txt").exists()


def test_no_checksum_needs_no_verify(server, tmp_path):
    data = make_zip({"a.txt": b"a"})
    server.files["/a.zip"] = data
    archive = Archive(server.url + "/a.zip")
    printed = []
    with pytest.raises(DataError, match=f"sha256 is {sha(data)}.*--no-verify"):
        fetch([archive], tmp_path, progress=False, echo=printed.append)
    assert not (tmp_path / "a.txt").exists()
    n = len(server.requests)
    fetch([archive], tmp_path, no_verify=True, progress=False, echo=printed.append)
    assert len(server.requests) == n  # the kept file was not downloaded again
    assert (tmp_path / "a.txt").read_bytes() == b"a"
    assert any(sha(data) in line for line in printed)


def test_http_error_and_unreachable_host(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        download_file(server.url + "/missing.zip", tmp_path / "m.zip", progress=False)
    with pytest.raises(DataError, match="cannot reach"):
        download_file("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", progress=False)


def test_unpack_rejects_non_archive_and_traversal(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="neither a zip nor a tar"):
        unpack(bad, tmp_path / "out")
    evil = tmp_path / "evil.tar"
    evil.write_bytes(make_tar({"../escape.txt": b"x"}))
    with pytest.raises(DataError, match="cannot unpack"):
        unpack(evil, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
