"""`cnnctl review`: the page's API, the change log, apply and undo, and the round trip in a real browser."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PETS_MINI, ROOT, assert_user_error, run_cli
from tests.serve.test_server import BROWSER_FLAGS, _chromium, free_port


def tree(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> content hash): "the folder is as before"."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def pets(tmp_path) -> Path:
    data = tmp_path / "pets"
    shutil.copytree(PETS_MINI, data)
    return data


@pytest.fixture(scope="module")
def flipped(tmp_path_factory) -> Path:
    """The committed photos with four cats filed as dogs: what `check --labels` is for."""
    data = tmp_path_factory.mktemp("flipped") / "pets"
    shutil.copytree(PETS_MINI, data)
    for i in (3, 11, 17, 22):
        shutil.move(data / "Cat" / f"{i}.jpg", data / "Dog" / f"cat-{i}.jpg")
    return data


@pytest.fixture(scope="module")
def suspects(flipped, tmp_path_factory, mobilenet_torch_home) -> Path:
    """`cnnctl check --labels --json` of the flipped photos, as a user would write it (the cached
    mobilenet_v2's features: from scratch, 60 photos are too few to name any suspect)."""
    path = tmp_path_factory.mktemp("suspects") / "suspects.json"
    proc = run_cli("check", flipped, "--labels", "--json", env={"TORCH_HOME": str(mobilenet_torch_home)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["labels"]["suspects"], proc.stderr
    path.write_text(proc.stdout)
    return path


@pytest.fixture()
def pets_flipped(flipped, tmp_path) -> Path:
    """A copy of the flipped photos of the test's own (marks are applied to it)."""
    data = tmp_path / "pets"
    shutil.copytree(flipped, data)
    return data


def _relocate(suspects: Path, data: Path, tmp_path: Path) -> Path:
    """The suspects file with its paths pointing into the copy `data` of the flipped photos."""
    text = suspects.read_text().replace(str(json.loads(suspects.read_text())["roots"][0]["path"]), str(data))
    out = tmp_path / "suspects.json"
    out.write_text(text)
    return out


def test_the_api_lists_items_serves_files_and_heatmaps_and_logs_each_mark(photo_run, pets_flipped, suspects, tmp_path):
    pets = pets_flipped
    from starlette.testclient import TestClient

    from cnnctl.review.app import Review, create_app
    from cnnctl.review.items import build_items

    items, classes, _ = build_items(str(photo_run), str(pets), labels=str(_relocate(suspects, pets, tmp_path)), top=10)
    assert classes == ["Cat", "Dog"] and len(items) >= 10
    assert all(Path(it["path"]).is_file() and it["rel"].split("/")[0] == it["given"] for it in items)
    assert any("label-issue" in it["sources"] for it in items) and any("top-loss" in it["sources"] for it in items)
    losses = [it["loss"] for it in items if "top-loss" in it["sources"]]
    log = tmp_path / "log.json"
    client = TestClient(create_app(Review(str(photo_run), str(pets), items, classes, str(log))))
    client.headers["x-cnnctl-token"] = _page_token(client)  # what the page's script sends
    listing = client.get("/api/items").json()
    assert len(listing["items"]) == len(items) and listing["decisions"] == {} and losses == sorted(losses, reverse=True)
    first = items[0]
    assert client.get("/image/0").content == Path(first["path"]).read_bytes()
    cam = client.get("/cam/0.png")
    assert cam.status_code == 200 and cam.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        client.get("/image/999").status_code == 404 and client.get("/image/..%2F..%2Fetc%2Fpasswd").status_code == 404
    )
    other = "Dog" if first["given"] == "Cat" else "Cat"
    assert client.post("/api/decisions", json={"id": 0, "action": "relabel", "to": other}).json()["to"] == other
    assert client.post("/api/decisions", json={"id": 1, "action": "remove"}).status_code == 200
    assert client.post("/api/decisions", json={"id": 1, "action": "explode"}).status_code == 400
    assert client.post("/api/decisions", json={"id": 2, "action": "relabel", "to": "Horse"}).status_code == 400
    assert client.post("/api/decisions", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    saved = json.loads(log.read_text())
    assert saved["data"] == str(pets) and saved["decisions"] == {
        first["rel"]: {"action": "relabel", "to": other},
        items[1]["rel"]: {"action": "remove"},
    }


def _page_token(client) -> str:
    import re

    page = client.get("/").text
    found = re.search(r'<meta name="cnnctl-token" content="([^"]+)">', page)
    assert found and found.group(1) != "__CNNCTL_TOKEN__"
    return found.group(1)


def test_only_the_review_page_itself_can_write_marks(photo_run, pets_flipped, suspects, tmp_path):
    pets = pets_flipped
    """A site open in the same browser cannot mark images: a cross-origin text/plain POST (no
    preflight), a POST without the page's token, and a DNS-rebinding Host change nothing."""
    from starlette.testclient import TestClient

    from cnnctl.review.app import Review, allowed_hosts, create_app
    from cnnctl.review.items import build_items

    items, classes, _ = build_items(str(photo_run), str(pets), labels=str(_relocate(suspects, pets, tmp_path)), top=5)
    log = tmp_path / "log.json"
    hosts = allowed_hosts("127.0.0.1", 8100)
    app = create_app(Review(str(photo_run), str(pets), items, classes, str(log)), hosts=hosts)
    client = TestClient(app, base_url="http://127.0.0.1:8100")
    token = _page_token(client)
    mark = b'{"id": 0, "action": "remove"}'
    attacks = [
        # what the issue tried: a foreign page's fetch with text/plain (a "simple" request, no preflight)
        {"origin": "http://evil.example", "content-type": "text/plain"},
        # even with the right token (it cannot read it, but say it guessed): a foreign Origin
        {"origin": "http://evil.example", "content-type": "application/json", "x-cnnctl-token": token},
        # same origin but no token (a form post or a script on another port of 127.0.0.1)
        {"origin": "http://127.0.0.1:8100", "content-type": "application/json"},
        # the right token as text/plain
        {"origin": "http://127.0.0.1:8100", "content-type": "text/plain", "x-cnnctl-token": token},
        # a wrong token
        {"content-type": "application/json", "x-cnnctl-token": token[:-1] + ("A" if token[-1] != "A" else "B")},
    ]
    for headers in attacks:
        response = client.post("/api/decisions", content=mark, headers=headers)
        assert response.status_code in (403, 415), (headers, response.text)
    # DNS rebinding: evil.example resolving to 127.0.0.1 reaches the server with its own Host
    rebound = TestClient(app, base_url="http://evil.example:8100")
    assert rebound.get("/api/items").status_code == 403 and rebound.get("/image/0").status_code == 403
    assert rebound.get("/").status_code == 403  # and so never sees the token
    assert (
        rebound.post(
            "/api/decisions", content=mark, headers={"content-type": "application/json", "x-cnnctl-token": token}
        ).status_code
        == 403
    )
    assert not log.exists() or json.loads(log.read_text())["decisions"] == {}
    # the page itself: same origin, its token, JSON
    ok = client.post(
        "/api/decisions",
        content=mark,
        headers={"origin": "http://127.0.0.1:8100", "content-type": "application/json", "x-cnnctl-token": token},
    )
    assert ok.status_code == 200 and json.loads(log.read_text())["decisions"] == {items[0]["rel"]: {"action": "remove"}}
    # another session (a restarted server) has another token
    assert _page_token(TestClient(create_app(Review(str(photo_run), str(pets), items, classes, str(log))))) != token


def _log(data: Path, decisions: dict) -> dict:
    return {"format": 1, "data": str(data), "classes": ["Cat", "Dog"], "decisions": decisions}


def test_apply_moves_files_and_undo_puts_the_folder_back(pets, tmp_path):
    before = tree(pets.parent)
    log = tmp_path / "log.json"
    log.write_text(
        json.dumps(
            _log(
                pets,
                {
                    "Cat/3.jpg": {"action": "relabel", "to": "Dog"},
                    "Dog/7.jpg": {"action": "remove"},
                    "Dog/8.jpg": {"action": "fine"},
                },
            )
        )
    )
    proc = run_cli("review", "--apply", log, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["applied"] == 2 and result["decisions"] == {"relabel": 1, "remove": 1, "fine": 1}
    assert (pets / "Dog" / "3.from-Cat.jpg").is_file() and not (
        pets / "Cat" / "3.jpg"
    ).exists()  # Dog/3.jpg is another photo
    assert (pets.parent / "pets-quarantine" / "Dog" / "7.jpg").is_file() and not (pets / "Dog" / "7.jpg").exists()
    assert_user_error(run_cli("review", "--apply", log), "applied already")
    assert run_cli("review", "--undo", result["undo"]).returncode == 0
    after = tree(pets.parent)
    assert {k: v for k, v in after.items() if not k.startswith("pets-quarantine") and "log" not in k} == {
        k: v for k, v in before.items() if "log" not in k
    }
    assert_user_error(run_cli("review", "--undo", result["undo"]), "undone already")


def test_a_log_that_cannot_be_applied_whole_changes_nothing(pets, tmp_path):
    before = tree(pets)
    log = tmp_path / "log.json"
    shutil.copy(pets / "Cat" / "5.jpg", pets / "Dog" / "5.from-Cat.jpg")  # with Dog/5.jpg: both names taken
    before = tree(pets)
    log.write_text(
        json.dumps(_log(pets, {"Cat/4.jpg": {"action": "remove"}, "Cat/5.jpg": {"action": "relabel", "to": "Dog"}}))
    )
    assert_user_error(run_cli("review", "--apply", log), "already exists")
    log.write_text(json.dumps(_log(pets, {"Cat/4.jpg": {"action": "remove"}, "Cat/99.jpg": {"action": "remove"}})))
    assert_user_error(run_cli("review", "--apply", log), "no longer there")
    log.write_text(json.dumps(_log(pets, {"../../etc/passwd": {"action": "remove"}})))
    assert_user_error(run_cli("review", "--apply", log), "not a path inside")
    assert tree(pets) == before and not (tmp_path / "log.undo.json").exists()


def test_a_failed_move_midway_is_rolled_back(pets, tmp_path, monkeypatch):
    import os

    from cnnctl.errors import DataError
    from cnnctl.review import changes

    before = tree(pets)
    log = tmp_path / "log.json"
    log.write_text(json.dumps(_log(pets, {f"Cat/{i}.jpg": {"action": "remove"} for i in range(5)})))
    real, calls = os.rename, []

    def flaky(src, dst):
        calls.append(src)
        if len(calls) == 4:
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(changes.os, "rename", flaky)
    with pytest.raises(DataError, match="moved back"):
        changes.apply_log(str(log))
    monkeypatch.undo()
    assert tree(pets) == before and not (tmp_path / "log.undo.json").exists()


@pytest.mark.skipif(_chromium() is None, reason="no chromium here (apt-get install chromium; .ci/run installs it)")
@contextlib.contextmanager
def running_review(*args: str) -> Iterator[tuple[str, list[dict]]]:
    """`cnnctl review ARGS --port P` in a real process, ready: (its URL, the items it lists); stopped
    with SIGTERM afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "cnnctl", "review", *args, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "".join(err)
            try:
                items = httpx.get(url + "/api/items", timeout=2).json()["items"]
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "".join(err)
                time.sleep(0.2)
        yield url, items
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@contextlib.contextmanager
def review_page(*args: str) -> Iterator[tuple[Any, list[dict]]]:
    """The review page of `cnnctl review ARGS` open in headless Chromium, rendered: (page, items)."""
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra has it)")
    with running_review(*args) as (url, items), playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=BROWSER_FLAGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#grid[data-ready='1']")
            yield page, items
        finally:
            browser.close()


def test_mark_apply_and_undo_through_the_page_in_a_real_browser(photo_run, pets, tmp_path):
    before = tree(pets)
    log = tmp_path / "review-log.json"
    with review_page(str(photo_run), "--data", str(pets), "--top", "6", "--log", str(log)) as (page, items):
        cards = page.locator(".card")
        assert cards.count() == 6
        page.wait_for_function(
            "[...document.querySelectorAll('img.cam')].every(i => i.complete && i.naturalWidth > 0)", timeout=60000
        )
        cards.nth(0).locator("button.remove").click()
        cards.nth(1).locator("button.relabel").click()  # to the preselected other class
        cards.nth(2).locator("button.fine").click()
        page.wait_for_selector("#summary[data-marked='3']")
        pair = items[0]["given"] + " \u2192 " + items[0]["predicted"]
        page.select_option("#pair", pair)
        shown = page.locator(".card").count()
    assert shown == sum(1 for it in items if it["given"] + " \u2192 " + it["predicted"] == pair)
    decisions = json.loads(log.read_text())["decisions"]
    assert [decisions[items[i]["rel"]]["action"] for i in range(3)] == ["remove", "relabel", "fine"]
    assert decisions[items[1]["rel"]]["to"] != items[1]["given"]
    applied = run_cli("review", "--apply", log, "--json")
    assert applied.returncode == 0, applied.stderr
    moved = json.loads(applied.stdout)
    assert moved["applied"] == 2 and not (pets / items[0]["rel"]).exists()
    assert (pets.parent / "pets-quarantine" / items[0]["rel"]).is_file()
    assert run_cli("review", "--undo", moved["undo"]).returncode == 0
    assert tree(pets) == before


def test_damaged_logs_are_named_for_what_they_are(tmp_path):
    log = tmp_path / "log.json"
    log.write_text("{")
    assert_user_error(run_cli("review", "--apply", log), "not a change log cnnctl review wrote")
    assert_user_error(run_cli("review", "--undo", log), "not an undo log")
