"""A real MONAI Label server (``monaibundle`` sample app) serving the tiny trained bundle on loopback.

Skipped unless ``LCPDN_MONAILABEL`` points to a ``monailabel`` executable, e.g.
``LCPDN_MONAILABEL=/work/.venv-label/bin/monailabel`` (MONAI Label pins numpy < 2: keep it in its own
venv; see docs/monai_label.md). The server imports the bundle's ``bundle`` package from the bundle
folder (MONAI Label puts that folder on ``sys.path``); nothing of this project is installed there.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle_cli import METADATA, ROOT
from scripts.package_zoo import bundle_name
from test_monai_label import PROMPT, make_label_bundle

EXE = os.environ.get("LCPDN_MONAILABEL", "")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (EXE and os.access(EXE, os.X_OK)), reason="set LCPDN_MONAILABEL to a monailabel executable"),
]

NAME = bundle_name(json.loads(Path(METADATA).read_text()))
START_TIMEOUT = 300  # seconds for the server to answer /info/
INFER_TIMEOUT = 300


def sample_app() -> Path:
    """The ``monaibundle`` sample app shipped in MONAI Label's venv (``<venv>/monailabel/sample-apps``)."""
    app = Path(EXE).parent.parent / "monailabel" / "sample-apps" / "monaibundle"
    if not (app / "main.py").is_file():
        pytest.skip(f"no monaibundle sample app at {app}")
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def server_error(log: Path) -> str:
    """The server's last traceback (what a client's HTTP 500 hides), or the end of its log."""
    time.sleep(1)  # let the server flush its log
    text = log.read_text(errors="replace")
    start = text.rfind("Traceback (most recent call last)")
    return text[start:][-6000:] if start >= 0 else text[-6000:]


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory, tiny_network_options):
    """(base url, image id, image path, log file) of a running server; always stopped afterwards."""
    tmp = tmp_path_factory.mktemp("monailabel")
    app = tmp / "app"
    shutil.copytree(sample_app(), app, ignore=shutil.ignore_patterns("__pycache__"))
    make_label_bundle(app / "model" / NAME, tiny_network_options, Path(trained["ckpt_dir"]) / "model.pt")
    studies = tmp / "studies"
    studies.mkdir()
    images = sorted((ROOT / "docs" / "demo_data" / "monuseg" / "Val_Folder" / "img").glob("*.png"))[:2]
    for image in images:
        shutil.copy(image, studies / image.name)
    (studies / "broken.png").write_bytes(images[0].read_bytes()[:300])  # a truncated PNG
    port, log = free_port(), tmp / "server.log"
    cmd = [EXE, "start_server", "--app", str(app), "--studies", str(studies), "--host", "127.0.0.1", "--port",
           str(port), "--conf", "models", NAME, "--conf", "zoo_source", "github", "--conf", "sam2", "false"]
    bin_dir = str(Path(EXE).parent)  # the `monailabel` launcher runs `python` from PATH: its venv's first
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VIRTUAL_ENV": str(Path(bin_dir).parent),
           "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
           "MONAI_LABEL_SESSION_PATH": str(tmp / "sessions")}  # not ~/.cache/monailabel
    env.pop("PYTHONPATH", None)  # the server must find `bundle` in the bundle folder, not in this repository
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, f"server exited ({proc.returncode}):\n{log.read_text()[-5000:]}"
            assert time.monotonic() < deadline, f"server not up in {START_TIMEOUT} s:\n{log.read_text()[-5000:]}"
            try:
                if get(f"{url}/info/", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(2)
        yield url, images[0].stem, images[0], log
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """End the server: its own process group (the session it was started in), TERM then KILL."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is gone
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def test_info_lists_the_bundle_with_its_text_prompt(server):
    url, _, _, log = server
    status, body = get(f"{url}/info/", timeout=30)
    assert status == 200
    model = json.loads(body)["models"].get(NAME)
    assert model is not None, f"{NAME} not served:\n{log.read_text()[-5000:]}"
    assert model["dimension"] == 2 and model["labels"] == {"foreground": 1}
    assert model["config"]["text_prompt"] == ""


def test_infer_with_a_text_prompt_returns_a_mask(server):
    url, image_id, image_path, log = server
    query = urllib.parse.urlencode({"image": image_id, "output": "image"})
    body = urllib.parse.urlencode({"params": json.dumps({"text_prompt": PROMPT})}).encode()
    request = urllib.request.Request(f"{url}/infer/{NAME}?{query}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=INFER_TIMEOUT) as r:
            status, mask = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, mask = e.code, e.read()
    assert status == 200, f"HTTP {status}: {mask[:500]!r}\n{server_error(log)}"
    assert f"'text_prompt': '{PROMPT}'" in log.read_text()  # the option reached the infer task
    mask = np.array(Image.open(io.BytesIO(mask)))
    original = np.array(Image.open(image_path))
    assert mask.shape[:2] == original.shape[:2], (mask.shape, original.shape)
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= {0, 1}  # label map: 0 background, 1 foreground


def infer(url: str, image_id: str, params: dict) -> tuple[int, bytes]:
    query = urllib.parse.urlencode({"image": image_id, "output": "image"})
    body = urllib.parse.urlencode({"params": json.dumps(params)}).encode()
    request = urllib.request.Request(f"{url}/infer/{NAME}?{query}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=INFER_TIMEOUT) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_a_broken_image_is_an_http_error_naming_it_and_the_server_keeps_serving(server):
    url, image_id, _, log = server
    status, body = infer(url, "broken", {"text_prompt": PROMPT})
    assert status >= 400, body[:500]
    assert "broken.png" in body.decode(errors="replace") + server_error(log)  # the error names the file
    status, body = infer(url, image_id, {"text_prompt": PROMPT})  # the next request is served
    assert status == 200, f"HTTP {status}: {body[:500]!r}\n{server_error(log)}"


def test_an_empty_text_prompt_uses_the_modality_default_sentence(server):
    """The UI's text_prompt starts empty: an empty prompt means the bundle's default sentence, not an error."""
    url, image_id, _, log = server
    status, body = infer(url, image_id, {"text_prompt": "   "})
    assert status == 200, f"HTTP {status}: {body[:500]!r}\n{server_error(log)}"
