"""scorecard.html in a real browser: headless Chromium loads the page from file://, every plot decodes,
every <audio> element resolves its metadata, nothing is logged as an error; a full-page screenshot is
saved to ``$VALLE_TEST_ARTIFACTS`` (default ``test-artifacts/``, git-ignored) as ``scorecard.png``.

Chromium is driven through the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (JSON messages
separated by NUL bytes on file descriptors 3 and 4, the transport Puppeteer uses), so no websocket
library is needed and no port is opened.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from reports import write_scorecard
from tests.test_reports import make_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 15.0

CHECK_JS = """
(async () => {
  const imgs = [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0}));
  const audios = await Promise.all([...document.querySelectorAll('audio')].map(a => new Promise(done => {
    const report = () => done({readyState: a.readyState, duration: a.duration,
                               error: a.error ? a.error.code : null});
    if (a.readyState >= 1 || a.error) return report();
    a.addEventListener('loadedmetadata', report, {once: true});
    a.addEventListener('error', report, {once: true});
    setTimeout(report, 8000);
    a.load();
  })));
  return {imgs, audios, height: document.documentElement.scrollHeight};
})()
"""


class Cdp:
    """A minimal Chrome DevTools Protocol client over the ``--remote-debugging-pipe`` descriptors."""

    def __init__(self, binary: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds():  # in the child: the browser reads commands on fd 3 and answers on fd 4
            a = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)  # above 4, so 3/4 cannot clobber them
            b = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
            "--mute-audio",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            preexec_fn=child_fds,
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("no answer from the browser")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ConnectionError(f"browser closed the pipe (exit code {self.proc.poll()})")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while True:
            ev = self._read(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    def close(self) -> None:
        try:
            os.write(self._to_browser, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)


@pytest.fixture(scope="module")
def browser_binary() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"no headless browser found (looked for {', '.join(BROWSERS)}; Debian: apt install chromium)")


def _errors(events: list[dict]) -> list[str]:
    out = []
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") == "error":
            out.append(f"console.error: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"exception: {d.get('text')} {d.get('exception', {}).get('description', '')}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            out.append(f"log: {e.get('text')} {e.get('url', '')}")
    return out


def test_scorecard_renders_in_chromium(browser_binary, tmp_path):
    run = make_run(tmp_path / "audit_run")
    page = write_scorecard(run)["html"]
    cdp = Cdp(browser_binary, tmp_path / "profile")
    try:
        target = cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            cdp.send(f"{domain}.enable", session=session)
        cdp.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        nav = cdp.send("Page.navigate", {"url": page.resolve().as_uri()}, session)
        assert "errorText" not in nav, nav
        cdp.wait_event("Page.loadEventFired")
        res = cdp.send(
            "Runtime.evaluate", {"expression": CHECK_JS, "awaitPromise": True, "returnByValue": True}, session
        )["result"]["value"]
        height = min(int(res["height"]), 16000)
        cdp.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1200, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        shot = cdp.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
    finally:
        cdp.close()

    png = base64.b64decode(shot["data"])
    out_dir = Path(os.environ.get("VALLE_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scorecard.png").write_bytes(png)

    assert len(res["imgs"]) == 6 and all(i["ok"] for i in res["imgs"]), res["imgs"]
    assert len(res["audios"]) == 6
    for a in res["audios"]:
        assert a["error"] is None and a["readyState"] >= 1 and 0 < a["duration"] <= 10.0, a
    assert _errors(cdp.events) == []
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    width, shot_height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width == 1200 and shot_height == height > 2000
