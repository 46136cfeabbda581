"""`timnet download`: archives served from 127.0.0.1 (complete, cut off mid-way, corrupt, of the wrong corpus),
never the internet. A download resumes where it stopped; a bad archive is one line and leaves nothing extracted."""

from __future__ import annotations

import http.server
import io
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
import soundfile as sf

from timnet.core.errors import TimnetError
from timnet.data.corpora import CORPORA, build_manifest
from timnet.data.download import download

WAV = io.BytesIO()
sf.write(WAV, np.zeros(160, np.float32), 16000, format="WAV")


def archive(name: str, drop: int = 0) -> bytes:
    """The official archive's layout with tiny audio: EMO-DB's wav/ (and its other folders), RAVDESS's Actor_XX/;
    the last `drop` speech files left out."""
    stems, _ = CORPORA[name.lower()].files()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for stem in stems[: len(stems) - drop]:
            folder = "wav" if name == "EMODB" else f"Actor_{stem[-2:]}"
            z.writestr(f"{folder}/{stem}.wav", WAV.getvalue())
        if name == "EMODB":
            z.writestr("lablaut/03a01Fa.lab", "labels")  # the archive's other folders are not speech
    return buffer.getvalue()


class Server(http.server.ThreadingHTTPServer):
    """Serves `payload` at any path; honours `Range: bytes=N-`; `cut` > 0 sends only that many bytes, then closes."""

    payload: bytes = b""
    cut: int = 0
    ranges: list


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        data, start = self.server.payload, 0
        asked = self.headers.get("Range")
        if asked:
            start = int(asked.split("=")[1].rstrip("-"))
            self.server.ranges.append(start)
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        self.wfile.write(body[: self.server.cut] if self.server.cut else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.ranges = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/download.zip"


def test_a_cut_download_resumes_and_lands_in_the_readers_layout(tmp_path, server):
    from timnet import load_config

    server.payload, server.cut = archive("EMODB"), 5000
    with pytest.raises(TimnetError, match=r"the download stopped at 5000 of \d+ bytes — run it again"):
        download("EMODB", tmp_path, url(server), progress=False)
    assert (tmp_path / ".EMODB.zip.part").stat().st_size == 5000 and not (tmp_path / "EMODB").exists()
    server.cut = 0
    folder = download("emodb", tmp_path, url(server), progress=False)
    assert server.ranges == [5000]  # continued from where it stopped
    assert folder == tmp_path / "EMODB" and len(list((folder / "wav").glob("*.wav"))) == 535
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EMODB"]  # the archive and temporary folders are gone
    manifest, skipped = build_manifest(folder, load_config("EMODB").dataset)
    assert len(manifest) == 535 and not skipped


def test_ravdess_goes_into_actor_folders(tmp_path, server):
    from timnet import load_config

    server.payload = archive("RAVDESS")
    folder = download("RAVDESS", tmp_path, url(server), progress=False)
    assert len(list(folder.glob("Actor_*/*.wav"))) == 1440 and len(list(folder.glob("Actor_*"))) == 24
    assert len(build_manifest(folder, load_config("RAVDESS").dataset)[0]) == 1440


def test_corrupt_or_wrong_archives_are_one_line_and_leave_nothing(tmp_path, server):
    good = archive("EMODB")
    corrupt = bytearray(good)
    at = good.index(b"wav/03a01Wa.wav") + 60  # inside that member's (compressed) data
    corrupt[at : at + 8] = bytes(8)
    cases = [
        (bytes(corrupt), r"fails its checksum|not a complete zip archive"),
        (archive("EMODB", drop=3), r"not the EMODB archive: 3 of its 535 speech files are missing"),
        (archive("RAVDESS"), r"not the EMODB archive"),
        (b"<html>not found</html>", r"not a complete zip archive"),
    ]
    for payload, message in cases:
        server.payload = payload
        with pytest.raises(TimnetError, match=message):
            download("EMODB", tmp_path, url(server), progress=False)
        assert list(tmp_path.iterdir()) == [], "nothing half-extracted, no useless download left"


def test_refusals(tmp_path, server):
    (tmp_path / "EMODB").mkdir()
    with pytest.raises(TimnetError, match="already exists — a corpus is never overwritten"):
        download("EMODB", tmp_path, url(server), progress=False)
    for name, where in (("IEMOCAP", "sail.usc.edu"), ("SAVEE", "surrey"), ("EMOVO", "fub.it"), ("CASIA", "Automation")):
        with pytest.raises(TimnetError, match=f"{name} is licensed .* ask for it at .*{where}"):
            download(name, tmp_path, progress=False)
    with pytest.raises(TimnetError, match="cannot download"):
        download("RAVDESS", tmp_path, "http://127.0.0.1:9/nothing.zip", progress=False)


@pytest.mark.slow
def test_the_command_prints_the_next_step(tmp_path, server):
    server.payload = archive("EMODB")
    argv = [sys.executable, "-m", "timnet.cli", "download", "EMODB", "--data", str(tmp_path), "--url", url(server)]
    done = subprocess.run([*argv, "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"next: timnet preprocess --dataset EMODB --data {tmp_path / 'EMODB'}" in done.stdout
    again = subprocess.run([*argv, "--quiet"], capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
