"""Downloads against a loopback HTTP server: progress, resume, checksums, atomic extraction.

Every request goes to 127.0.0.1; a guard fails the test if anything else is contacted.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcfeat.runner.cli import main
from bcfeat.data import (
    ChecksumMismatch,
    DownloadError,
    DownloadUnavailable,
    download_dataset,
    download_file,
    scan_dataset,
)
from bcfeat.data import download as dl


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Refuse any connection that is not to 127.0.0.1, and ignore proxy settings."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", f"test tried to reach {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)


class _State:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_next = 0  # that many responses are cut off halfway
        self.ranges = True


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        st: _State = self.server.state
        rng = self.headers.get("Range")
        st.requests.append((self.path, rng))
        body = st.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if (rng and st.ranges) else None
        if start is not None and start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if start is not None:
            chunk = body[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            chunk = body
            self.send_response(200)
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if st.cut_next > 0:
            st.cut_next -= 1
            self.wfile.write(chunk[: len(chunk) // 2])  # then the connection closes (HTTP/1.0)
            return
        self.wfile.write(chunk)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = _State()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield base, httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _blob(n: int = 300_000) -> bytes:
    return np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


PBC_MEMBERS = {
    "PBC_dataset_normal_DIB/basophil/BA_1.jpg": _jpeg(1),
    "PBC_dataset_normal_DIB/basophil/BA_2.jpg": _jpeg(2),
    "PBC_dataset_normal_DIB/ig/MMY_3.jpg": _jpeg(3),
    "PBC_dataset_normal_DIB/neutrophil/SNE_4.jpg": _jpeg(4),
    "PBC_dataset_normal_DIB/platelet/PLATELET_5.jpg": _jpeg(5),
    "__MACOSX/PBC_dataset_normal_DIB/._BA_1.jpg": b"junk",
    "PBC_dataset_normal_DIB/.DS_Store": b"junk",
}


# --- download_file ------------------------------------------------------------------


def test_download_reports_progress_and_checks_the_digest(server, tmp_path):
    base, st = server
    st.files["/blob.bin"] = body = _blob()
    seen = []
    out = download_file(f"{base}/blob.bin", tmp_path / "blob.bin", sha256=_sha(body), progress=lambda d, t: seen.append((d, t)))
    assert out.read_bytes() == body
    assert not (tmp_path / "blob.bin.part").exists()
    assert seen[0] == (0, len(body)) and seen[-1] == (len(body), len(body))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) > 3


def test_progress_bar_on_stderr(server, tmp_path, capsys):
    base, st = server
    st.files["/blob.bin"] = _blob(200_000)
    download_file(f"{base}/blob.bin", tmp_path / "bar.bin", progress=True)
    err = capsys.readouterr().err
    assert "bar.bin" in err and "100%" in err


def test_resume_after_a_broken_transfer(server, tmp_path):
    base, st = server
    st.files["/blob.bin"] = body = _blob()
    st.cut_next = 1  # the first response dies halfway
    out = download_file(f"{base}/blob.bin", tmp_path / "b.bin", sha256=_sha(body), progress=False, backoff=0)
    assert out.read_bytes() == body
    assert st.requests == [("/blob.bin", None), ("/blob.bin", f"bytes={len(body) // 2}-")]


def test_resume_a_part_file_from_an_earlier_run(server, tmp_path):
    base, st = server
    st.files["/blob.bin"] = body = _blob()
    (tmp_path / "b.bin.part").write_bytes(body[:1234])
    download_file(f"{base}/blob.bin", tmp_path / "b.bin", sha256=_sha(body), progress=False)
    assert (tmp_path / "b.bin").read_bytes() == body
    assert st.requests == [("/blob.bin", "bytes=1234-")]


def test_a_complete_part_file_is_finished_without_a_body(server, tmp_path):
    base, st = server
    st.files["/blob.bin"] = body = _blob(5000)
    (tmp_path / "b.bin.part").write_bytes(body)
    download_file(f"{base}/blob.bin", tmp_path / "b.bin", sha256=_sha(body), progress=False)
    assert (tmp_path / "b.bin").read_bytes() == body and st.requests == [("/blob.bin", "bytes=5000-")]


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    base, st = server
    st.files["/blob.bin"] = body = _blob()
    st.ranges = False
    (tmp_path / "b.bin.part").write_bytes(b"\0" * 999)  # stale bytes must not be kept
    download_file(f"{base}/blob.bin", tmp_path / "b.bin", sha256=_sha(body), progress=False)
    assert (tmp_path / "b.bin").read_bytes() == body


def test_give_up_keeps_the_part_and_a_rerun_resumes(server, tmp_path):
    base, st = server
    st.files["/blob.bin"] = body = _blob()
    st.cut_next = 100
    with pytest.raises(DownloadError, match="run again to resume"):
        download_file(f"{base}/blob.bin", tmp_path / "b.bin", progress=False, retries=2, backoff=0)
    assert len(st.requests) == 3 and not (tmp_path / "b.bin").exists()
    have = (tmp_path / "b.bin.part").stat().st_size
    assert 0 < have < len(body)
    st.cut_next, st.requests = 0, []
    download_file(f"{base}/blob.bin", tmp_path / "b.bin", sha256=_sha(body), progress=False)
    assert (tmp_path / "b.bin").read_bytes() == body and st.requests == [("/blob.bin", f"bytes={have}-")]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    base, st = server
    st.files["/blob.bin"] = _blob()
    with pytest.raises(ChecksumMismatch, match="expected " + "0" * 64):
        download_file(f"{base}/blob.bin", tmp_path / "b.bin", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_errors_are_not_retried(server, tmp_path):
    base, st = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{base}/missing.zip", tmp_path / "m.zip", progress=False, backoff=0)
    assert len(st.requests) == 1 and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="http"):
        download_file("ftp://127.0.0.1/x", tmp_path / "x", progress=False)


# --- download_dataset ---------------------------------------------------------------


def _leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir() if p.name.endswith(".extracting")) + sorted(
        p.name for p in (data_dir / ".downloads").glob("*")
    ) if data_dir.exists() else []


def test_dataset_download_extracts_into_place_and_scans(server, tmp_path, monkeypatch):
    base, st = server
    waits = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)  # the retry's back-off, without waiting
    st.files["/pbc.zip"] = archive = _zip(PBC_MEMBERS)
    st.cut_next = 1  # and the transfer breaks once on the way
    data = tmp_path / "data"
    target = download_dataset("pbc_acevedo20", data, url=f"{base}/pbc.zip", sha256=_sha(archive), progress=False)
    assert target == data / "PBC_dataset_normal_DIB"
    assert waits == [1.0] and len(st.requests) == 2
    assert sorted(p.name for p in data.iterdir()) == [".downloads", "PBC_dataset_normal_DIB"]
    assert _leftovers(data) == []  # no temp folder, archive removed after extraction
    scan = scan_dataset("pbc_acevedo20", data, "coarse5")
    assert scan.counts().to_dict() == {"basophil": 2, "neutrophil": 1}
    assert sum(scan.excluded.values()) == 2 and scan.ignored == [".DS_Store"]
    assert (target / "basophil" / "BA_1.jpg").read_bytes() == PBC_MEMBERS["PBC_dataset_normal_DIB/basophil/BA_1.jpg"]


def test_zheng_release_download_is_read_with_its_label_table(server, tmp_path):
    base, st = server
    members = {
        "segmentation_WBC-master/Dataset 1/001.bmp": _bmp(1),
        "segmentation_WBC-master/Dataset 1/001.png": b"mask",
        "segmentation_WBC-master/Dataset 1/002.bmp": _bmp(2),
        "segmentation_WBC-master/Class Labels of Dataset 1.csv": b"image ID,class label\n1,2\n2,5\n",
    }
    st.files["/wbc.zip"] = _zip(members)
    data = tmp_path / "data"
    download_dataset("jtsc_zheng18", data, url=f"{base}/wbc.zip", progress=False)
    scan = scan_dataset("jtsc_zheng18", data, "coarse5")
    assert dict(zip(scan.samples["relpath"], scan.samples["label"])) == {"001.bmp": "lymphocyte", "002.bmp": "basophil"}


def _bmp(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((5, 5, 3), seed, np.uint8)).save(buf, "BMP")
    return buf.getvalue()


def test_checksum_mismatch_puts_nothing_in_place(server, tmp_path):
    base, st = server
    st.files["/pbc.zip"] = _zip(PBC_MEMBERS)
    data = tmp_path / "data"
    with pytest.raises(ChecksumMismatch):
        download_dataset("pbc_acevedo20", data, url=f"{base}/pbc.zip", sha256="f" * 64, progress=False)
    assert not (data / "PBC_dataset_normal_DIB").exists() and _leftovers(data) == []


def test_broken_archive_puts_nothing_in_place(server, tmp_path):
    base, st = server
    st.files["/pbc.zip"] = b"<html>Please log in</html>"
    data = tmp_path / "data"
    with pytest.raises(DownloadError, match="neither a zip nor a tar"):
        download_dataset("pbc_acevedo20", data, url=f"{base}/pbc.zip", progress=False)
    assert not (data / "PBC_dataset_normal_DIB").exists() and _leftovers(data) == []


def test_interrupted_extraction_puts_nothing_in_place(server, tmp_path, monkeypatch):
    base, st = server
    st.files["/pbc.zip"] = _zip(PBC_MEMBERS)
    real = dl.extract_archive

    def dies_halfway(archive, dest):
        real(archive, dest)  # everything written into the temp folder ...
        raise OSError("disk full")  # ... then the extraction fails

    monkeypatch.setattr(dl, "extract_archive", dies_halfway)
    data = tmp_path / "data"
    with pytest.raises(OSError, match="disk full"):
        download_dataset("pbc_acevedo20", data, url=f"{base}/pbc.zip", progress=False, keep_archive=True)
    assert not (data / "PBC_dataset_normal_DIB").exists()
    assert [p.name for p in data.iterdir()] == [".downloads"]  # only the archive, for a retry


def test_unsafe_member_paths_are_refused(server, tmp_path):
    base, st = server
    st.files["/evil.zip"] = _zip({"PBC_dataset_normal_DIB/a/BA_1.jpg": b"x", "../../evil.txt": b"x"})
    data = tmp_path / "data"
    with pytest.raises(DownloadError, match="unsafe"):
        download_dataset("pbc_acevedo20", data, url=f"{base}/evil.zip", progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (data / "PBC_dataset_normal_DIB").exists()


def test_wrapped_archive_and_existing_target(server, tmp_path):
    base, st = server
    st.files["/outer.zip"] = _zip({"snkd93bnjr-1/PBC_dataset_normal_DIB.zip": _zip(PBC_MEMBERS)})
    data = tmp_path / "data"
    target = download_dataset("pbc_acevedo20", data, url=f"{base}/outer.zip", progress=False)
    assert (target / "ig" / "MMY_3.jpg").is_file()
    st.requests = []
    assert download_dataset("pbc_acevedo20", data, url=f"{base}/outer.zip", progress=False) == target
    assert st.requests == []  # already in place: nothing fetched
    (target / "marker").write_text("old copy")
    download_dataset("pbc_acevedo20", data, url=f"{base}/outer.zip", progress=False, force=True)
    assert not (target / "marker").exists() and _leftovers(data) == []


def test_matek19_explains_how_to_get_it(tmp_path):
    with pytest.raises(DownloadUnavailable) as e:
        download_dataset("matek19", tmp_path)
    assert "NBIA Data Retriever" in str(e.value) and "AML-Cytomorphology_LMU" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_builtin_sources_record_unpublished_checksums_as_none():
    assert set(dl.SOURCES) >= {"pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops", "matek19"}
    assert all(s.sha256 is None for s in dl.SOURCES.values())
    assert "mendeley" in dl.SOURCES["pbc_acevedo20"].url
    assert dl.SOURCES["jtsc_zheng18"].url.startswith("https://github.com/zxaoyou/segmentation_WBC/")
    assert dl.SOURCES["bccd_crops"].url.startswith("https://github.com/Shenggan/BCCD_Dataset/")


def test_cli_download(server, tmp_path, capsys):
    base, st = server
    st.files["/pbc.zip"] = archive = _zip(PBC_MEMBERS)
    dest = tmp_path / "data"
    argv = ["download", "pbc_acevedo20", "--dest", str(dest), "--url", f"{base}/pbc.zip", "--no-progress"]
    assert main(argv + ["--sha256", _sha(archive)]) == 0
    assert "in place at" in capsys.readouterr().out
    assert main(["download", "pbc_acevedo20", "--dest", str(tmp_path / "d2"), "--url", f"{base}/pbc.zip",
                 "--sha256", "0" * 64, "--no-progress"]) == 2  # fmt: skip
    assert "sha256" in capsys.readouterr().err and not (tmp_path / "d2" / "PBC_dataset_normal_DIB").exists()


# --- a cache that heals ---------------------------------------------------------------


def test_an_archive_without_the_dataset_is_discarded_and_the_right_url_is_fetched(server, tmp_path):
    base, st = server
    st.files["/wrong.zip"] = _zip({"something_else/a.jpg": _jpeg(1)})
    st.files["/pbc.zip"] = _zip(PBC_MEMBERS)
    data = tmp_path / "data"
    with pytest.raises(DownloadError, match="no folder 'PBC_dataset_normal_DIB'.*discarded"):
        download_dataset("pbc_acevedo20", data, url=f"{base}/wrong.zip", progress=False)
    assert _leftovers(data) == []
    st.requests = []
    target = download_dataset("pbc_acevedo20", data, url=f"{base}/pbc.zip", progress=False)
    assert [path for path, _ in st.requests] == ["/pbc.zip"] and (target / "basophil" / "BA_1.jpg").is_file()


def test_a_cached_archive_from_another_url_is_not_reused(server, tmp_path):
    base, st = server
    st.files["/old.zip"] = _zip({"PBC_dataset_normal_DIB/basophil/BA_9.jpg": _jpeg(9)})
    st.files["/pbc.zip"] = _zip(PBC_MEMBERS)
    data = tmp_path / "data"
    download_dataset("pbc_acevedo20", data, url=f"{base}/old.zip", progress=False, keep_archive=True)
    st.requests = []
    target = download_dataset("pbc_acevedo20", data, url=f"{base}/pbc.zip", progress=False, force=True)
    assert [path for path, _ in st.requests] == ["/pbc.zip"]
    assert (target / "ig" / "MMY_3.jpg").is_file() and not (target / "basophil" / "BA_9.jpg").exists()


def test_force_always_fetches_even_from_the_same_url(server, tmp_path):
    base, st = server
    st.files["/pbc.zip"] = _zip(PBC_MEMBERS)
    data = tmp_path / "data"
    download_dataset("pbc_acevedo20", data, url=f"{base}/pbc.zip", progress=False, keep_archive=True)
    st.requests = []
    download_dataset("pbc_acevedo20", data, url=f"{base}/pbc.zip", progress=False, keep_archive=True, force=True)
    assert [path for path, _ in st.requests] == ["/pbc.zip"]


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/pbc.zip", "file:///etc/passwd", "pbc.zip"])
def test_cli_refuses_a_url_that_is_not_http(url, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["download", "pbc_acevedo20", "--dest", str(tmp_path), "--url", url])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "is not an http:// or https:// URL" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
