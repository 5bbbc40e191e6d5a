"""Debian's Chromium, driven by Selenium through Debian's chromedriver, for the dashboard's tests.

Nothing is downloaded: the driver is given by path (so Selenium Manager never runs) and the
browser starts with a fresh profile and no background traffic (no component updates, sync,
QUIC or first-run pages), so the only host it talks to is the daemon on 127.0.0.1. Its
processes (chromedriver and every Chromium process under it) are stopped by PID.

Without a browser the tests skip, saying why; where SD_REQUIRE_BROWSER is set (CI) they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

# Selenium Manager must not fetch anything, nor report usage (set before Selenium loads).
os.environ.setdefault("SE_AVOID_STATS", "true")
os.environ.setdefault("SE_OFFLINE", "true")

T = TypeVar("T")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
)


def unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found: apt-get install {package} (make test does)"
    return None


def require() -> None:
    """Skip (fail under SD_REQUIRE_BROWSER, as CI sets it) when there is no browser."""
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("SD_REQUIRE_BROWSER"):
        pytest.fail(f"SD_REQUIRE_BROWSER is set but {reason}")
    pytest.skip(reason)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, from /proc; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19])


def _descendants(pid: int) -> dict[int, int]:
    """Every process below `pid`, with its start time (a PID is reused once a process is
    gone: the start time tells the process we saw from a later one)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        stat = _stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child, started in children.get(todo.pop(), []):
            found[child] = started
            todo.append(child)
    return found


class Browser:
    """One headless Chromium with a profile of its own; `close` stops all of it."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = Path(tempfile.mkdtemp(prefix="sd-ui-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self._service = Service(executable_path=CHROMEDRIVER)
        self.driver = webdriver.Chrome(service=self._service, options=options)
        self.driver.set_script_timeout(30)

    # ---- what the page does ----------------------------------------------------------------
    def open(self, url: str) -> None:
        """Load `url` in a fresh document (a hash change alone would not reload the page)."""
        self.driver.get("about:blank")
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(
        self, check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02
    ) -> tuple[T, float]:
        """Poll `check` until it returns something true: (that value, seconds it took)."""
        started = time.monotonic()
        while True:
            value = check()
            if value:
                return value, time.monotonic() - started
            if time.monotonic() - started >= timeout:
                raise AssertionError(f"not within {timeout}s: {what}\n{self.state()}")
            time.sleep(interval)

    def state(self) -> str:
        """What the page shows and logged, for a failure's message."""
        try:
            url = self.driver.current_url
            text = self.js("return document.body.innerText")
            console = [f"{e['level']} {e['message']}" for e in self.console()]
        except Exception as exc:  # the browser itself is in trouble: say that instead
            return f"(the page cannot be read: {exc!r})"
        return f"page {url}:\n{str(text)[:1500]}\nconsole:\n" + "\n".join(console[-20:])

    def text(self, css: str) -> str:
        """The text of the first element matching `css` ('' if none)."""
        value = self.js("return document.querySelector(arguments[0])?.textContent ?? ''", css)
        return str(value)

    def console(self) -> list[dict[str, Any]]:
        """Console entries since the last call (errors, warnings, failed loads, CSP reports)."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")
        return entries

    def errors(self) -> list[str]:
        return [e["message"] for e in self.console() if e["level"] == "SEVERE"]

    # ---- how it looks ------------------------------------------------------------------------
    def viewport(self, width: int, height: int, *, dark: bool = False) -> None:
        """The page's viewport in CSS pixels (a phone's is `mobile`), light or dark."""
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
        )
        scheme = {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}
        self.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [scheme]})

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        assert self.driver.save_screenshot(str(path)), path
        return path

    # ---- stop --------------------------------------------------------------------------------
    def close(self) -> None:
        """Quit, then stop by PID whatever Chromium left running, and remove the profile."""
        process = self._service.process
        seen = _descendants(process.pid) if process is not None else {}
        with contextlib.suppress(Exception):
            self.driver.quit()
        for pid, started in seen.items():
            stat = _stat(pid)
            if stat is not None and stat[1] == started:  # the very process, still running
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)
