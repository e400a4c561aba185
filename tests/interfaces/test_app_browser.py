"""End to end in headless Chromium: `ldm app` with the shipped default model: generate, then inpaint a drawn mask.

Uses the system Chromium (Debian package at /usr/bin/chromium) through Playwright; never downloads a browser.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT = 90  # s: Streamlit plus torch imports on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ldm app exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"ldm app did not open port {port} within {timeout} s")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A running `ldm app` (url, process, port) shared by the tests here; the last test stops it."""
    tmp_path = tmp_path_factory.mktemp("app")
    port = free_port()
    log = open(tmp_path / "app.log", "w")
    # Own process group: `ldm app` starts Streamlit as a child, and both must go at the end.
    proc = subprocess.Popen(
        [sys.executable, "-m", "ldm.interfaces.cli.main", "app", "--port", str(port), "--device", "cpu"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port, proc, START_TIMEOUT)
        yield f"http://127.0.0.1:{port}", proc, port
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        log.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"needs {CHROMIUM}: install Debian's chromium (bash scripts/setup.sh)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")


def test_generate_an_image_in_the_browser(app, browser, tmp_path):
    url = app[0]
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        page.goto(f"{url}/text", timeout=60_000)
        page.get_by_role("heading", name="Text-to-image").wait_for(timeout=90_000)
        prompt = page.get_by_label("Prompt", exact=True)
        prompt.fill("face with tears of joy")
        prompt.press("Enter")
        set_number(page, "Steps", 20)  # the README screenshot: the default model at a usable step count
        page.get_by_role("button", name="Generate").click()
        caption = page.get_by_text("result", exact=True)
        caption.wait_for(timeout=120_000)
        image = page.locator('[data-testid="stImage"] img').last
        image.wait_for(timeout=30_000)
        # The image really loaded (a broken <img> has naturalWidth 0).
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=30_000
        )
        assert image.evaluate("img => img.naturalWidth") >= 16
        # Waited for, not just looked up: Streamlit sends the page's elements one by one, and on a busy machine
        # the button can arrive after the image has loaded (is_visible() alone failed about one run in two).
        page.get_by_role("button", name="Download PNG").wait_for(state="visible", timeout=30_000)
        assert not page.locator('[data-testid="stAlertContentError"]').count()
        shot = tmp_path / "app-screenshot.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("LDM_SAVE_SCREENSHOT"):  # refresh the README picture by hand
            Path(os.environ["LDM_SAVE_SCREENSHOT"]).write_bytes(shot.read_bytes())
    finally:
        page.close()


def test_inpaint_with_a_mask_drawn_in_the_browser(app, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    try:
        page.goto(f"{app[0]}/edit", timeout=60_000)
        page.get_by_role("heading", name="Edit").wait_for(timeout=90_000)
        page.get_by_text("inpaint", exact=True).click()
        canvas = page.locator("canvas").last
        canvas.wait_for(timeout=30_000)
        set_number(page, "Steps", 3)
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.2 * box["height"])
        page.mouse.down()
        for k in range(1, 11):  # a diagonal stroke across the middle
            page.mouse.move(box["x"] + (0.2 + 0.06 * k) * box["width"], box["y"] + (0.2 + 0.06 * k) * box["height"])
        page.mouse.up()
        page.wait_for_timeout(1500)  # the canvas sends its drawing back to the server
        page.get_by_role("button", name="Inpaint", exact=True).click()
        page.get_by_text("result, 64x64").wait_for(timeout=120_000)
        assert not page.locator('[data-testid="stAlertContentError"]').count()
    finally:
        page.close()


def websocket_handshake(port: int, host: str) -> str:
    """The status line the app answers to a WebSocket upgrade of its stream sent with this Host header."""
    import base64

    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://{host}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        return s.recv(256).decode(errors="replace").split("\r\n")[0]


def test_compare_gan_vae_and_diffusion_in_the_browser(app, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        page.goto(f"{app[0]}/compare", timeout=60_000)
        page.get_by_role("heading", name="GAN, VAE and diffusion, side by side").wait_for(timeout=90_000)
        set_number(page, "Training steps (each model)", 50)
        page.get_by_role("button", name="Train all three").click()
        page.get_by_role("heading", name="Measured").wait_for(timeout=120_000)
        page.locator('[data-testid="stDataFrame"]').first.wait_for(state="visible", timeout=30_000)
        assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 6  # three sample plots, three loss curves
        assert not page.locator('[data-testid="stAlertContentError"]').count()
        assert not page.locator('[data-testid="stException"]').count()
    finally:
        page.close()


def test_the_app_refuses_foreign_host_names_against_dns_rebinding(app):
    """A page on attacker.example re-pointed at 127.0.0.1 sends its own name as Host, and same-origin checks
    pass for it; the app's stream, through which every page runs, must refuse it."""
    port = app[2]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert " 101 " in websocket_handshake(port, host), host
    for host in (f"attacker.example:{port}", f"127.0.0.1.attacker.example:{port}", "attacker.example"):
        assert " 403 " in websocket_handshake(port, host), host


def test_sigterm_to_ldm_app_stops_the_server(app):
    """Runs last in this file: `ldm app` must take its Streamlit child down with it."""
    _, proc, port = app
    proc.send_signal(signal.SIGTERM)  # to `ldm app` only, not its process group
    assert proc.wait(timeout=20) is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.5)
        except OSError:
            return
    raise AssertionError("the Streamlit server kept running after ldm app was stopped")
