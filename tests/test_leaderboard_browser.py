"""The HTML leaderboard read as a reader reads it.

Without a browser: the forest plot's marks (F1 and CPM with their intervals, a CPM that is not
reached said in words, never drawn as 0) and the compact cells (a value, its interval in the
hover title and as a bar).

In a real headless browser (Debian's ``chromium``, driven over the Chrome DevTools Protocol
on ``--remote-debugging-pipe``: JSON messages ending in NUL on file descriptors 3 and 4, so no
websocket client is needed): the committed page, served from 127.0.0.1, sorts when a header
is clicked, loads nothing but itself, logs no error, and every table row stays one line.
``.ci/run`` installs chromium where it is missing; the browser test is skipped, with the
reason, only where none could be installed.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import http.server
import json
import os
import re
import select
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from test_leaderboard import make_record, write_records

from cmbbench.io import write_json_atomic
from cmbbench.leaderboard import build_leaderboard, build_tables
from cmbbench.leaderboard.plots import cpm_missing, forest_cpm, forest_f1, forest_svg
from cmbbench.leaderboard.render_html import render_table_html

REPO = Path(__file__).resolve().parents[1]
N_BOOT = 50


# ---------------------------------------------------------------------------- without a browser
def write_board_records(folder: Path) -> None:
    """The leaderboard test records plus a noisy model whose operating-point FROC passes
    8 FP/scan with seeds 0 and 1 (about 12 FPs a scan) and not with seed 2 (about 3): its CPM
    is defined for 2 of 3 seeds, next to rows without one."""
    write_records(folder)
    for seed, fp in ((0, 12.0), (1, 12.0), (2, 3.0)):
        rec = make_record("noisy_net", seed, 0.9, fp)
        write_json_atomic(folder / f"noisy-s{seed}" / "record.json", rec)


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> list:
    folder = tmp_path_factory.mktemp("records")
    write_board_records(folder)
    return build_tables([folder], n_bootstrap=N_BOOT)


def _main(tables: list):
    return next(t for t in tables if t.key.version == "1" and t.key.track == "quick / cpu")


def _svg(text: str) -> ET.Element:
    return ET.fromstring(re.search(r"<svg .*?</svg>", text, re.S).group(0))


def test_forest_plot_draws_f1_and_cpm_intervals_and_says_not_reached(tables: list) -> None:
    table = _main(tables)
    assert {r.model for r in table.rows} == {"good_net", "noisy_net", "weak_net", "classical_log"}
    noisy = next(r for r in table.rows if r.model == "noisy_net")
    assert noisy.metrics["cpm"].n == 2 and cpm_missing(noisy) is None
    svg = _svg(forest_svg(table))
    groups = svg.findall("g")
    assert [g.get("data-row") for g in groups] == ["1", "2", "3", "4"]
    # the two panels' axes start at x0 (F1) and x0 + 300 + 36 (CPM), 300 px for 0..1
    x0 = float(svg.find("line").get("x1"))
    x1 = x0 + 300 + 36
    for g, row in zip(groups, table.rows, strict=True):
        f1 = g.find("g[@class='f1']")
        value, ci = forest_f1(row)
        assert float(f1.find("circle").get("cx")) == pytest.approx(x0 + 300 * value, abs=0.06)
        line = f1.find("line[@class='ci']")
        assert float(line.get("x1")) == pytest.approx(x0 + 300 * ci[0], abs=0.06)
        assert float(line.get("x2")) == pytest.approx(x0 + 300 * ci[1], abs=0.06)
        assert row.rank.seed_case_ci == ci  # the seeds + cases interval of the rankings
        # one tick per seed where a row has several
        assert len(f1.findall("line[@class='seed']")) == (len(row.runs) if len(row.runs) > 1 else 0)
        assert row.model in "".join(f1.find("title").itertext())
        cpm = g.find("g[@class='cpm']")
        if row is noisy:
            value, ci = forest_cpm(row)
            assert 0 < value < 1 and ci is not None
            assert float(cpm.find("circle").get("cx")) == pytest.approx(x1 + 300 * value, abs=0.06)
            assert g.find("text[@class='cpm na']") is None
            assert len(cpm.findall("line[@class='seed']")) == 2  # the seeds that reach it
            assert "2 of 3 seeds" in "".join(g.itertext())
        else:
            # not reached: said in words where the mark would be, no mark at 0
            assert cpm is None and row.metrics["cpm"].mean is None
            text = g.find("text[@class='cpm na']").text
            assert text == cpm_missing(row) and text.startswith("not reached: FROC ends at ")
            assert re.fullmatch(r"not reached: FROC ends at [0-9.]+(–[0-9.]+)? FP/scan", text)
    # the top row's F1 as a dashed reference line
    top = svg.find("line[@class='top']")
    assert float(top.get("x1")) == pytest.approx(x0 + 300 * forest_f1(table.rows[0])[0], abs=0.06)


def test_cells_are_compact_with_the_interval_on_hover(tables: list) -> None:
    table = _main(tables)
    page = render_table_html(table)
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    visible = re.sub(r"<[^>]+>", " ", body)  # the text a reader sees, titles left out
    assert "±" not in visible and "[0." not in visible  # no "0.716 ± 0.010 [0.477, 0.827]"
    good = table.rows[0]
    f1 = good.metrics["f1_micro"]
    # the F1 cell: the mean, a bar from the CI's low to its high bound, the rest on hover
    cell = re.search(r'<td data-v="([0-9.]+)" title="F1: ([^"]*)">([^<]*)<span class="bar"', body)
    assert float(cell.group(1)) == pytest.approx(f1.mean) and cell.group(3) == f"{f1.mean:.3f}"
    hover = cell.group(2)
    assert f"sd {f1.sd:.3f}" in hover and f"95% CI [{f1.ci_lo:.3f}, {f1.ci_hi:.3f}]" in hover
    assert f"left:{f1.ci_lo * 100:.1f}%;width:{(f1.ci_hi - f1.ci_lo) * 100:.1f}%" in body
    # CPM: a value where reached, "not reached" where not (never 0)
    noisy = next(r for r in table.rows if r.model == "noisy_net")
    assert f'>{noisy.metrics["cpm"].mean:.3f} <span class="sub">2/3</span></td>' in body
    assert "defined for 2 of the 3 seeds" in body
    assert body.count('<span class="na">not reached</span>') == 3
    # the section holds the forest plot, and the policy folded under its title
    assert page.count('<svg class="forest"') == 1
    assert '<details class="policy"><summary>Edge-case policy</summary>' in page


# ---------------------------------------------------------------------------- in a browser
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)


def find_browser() -> str | None:
    for exe in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if exe and os.access(exe, os.X_OK):
            return exe
    return None


def _high(fd: int) -> int:
    """``fd`` moved to a descriptor >= 10 (close-on-exec), the original closed."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class DevTools:
    """A chromium process and its DevTools Protocol session over a pipe: ``call`` sends a
    command and returns its result, keeping every event it reads in ``events``."""

    def __init__(self, exe: str, profile: Path) -> None:
        to_child, self._out = (_high(fd) for fd in os.pipe())
        self._in, from_child = (_high(fd) for fd in os.pipe())
        self.log = profile / "chromium.log"
        with self.log.open("wb") as log:
            # chromium reads commands on fd 3 and writes replies on fd 4; bash moves the pipe
            # ends there (all >= 10, so the two moves cannot overwrite each other; dash
            # takes single-digit descriptors only)
            self.proc = subprocess.Popen(
                [
                    "bash",
                    "-c",
                    f'exec "$0" "$@" 3<&{to_child} 4>&{from_child} {to_child}<&- {from_child}>&-',
                    exe,
                    *FLAGS,
                    f"--user-data-dir={profile / 'profile'}",
                    "--remote-debugging-pipe",
                    "about:blank",
                ],
                pass_fds=(to_child, from_child),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        os.close(to_child)
        os.close(from_child)
        self._buf = b""
        self._id = 0
        self.session: str | None = None
        self.events: list[dict[str, Any]] = []

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from chromium; its log: " + self.log.read_text())
            if select.select([self._in], [], [], left)[0]:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise EOFError("chromium exited; its log: " + self.log.read_text())
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._message(deadline))
        return next(e for e in self.events if e.get("method") == method)

    def js(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the centre of the element."""
        box = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
            "return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box[0],
                y=box[1],
                button="left",
                clickCount=1,
            )

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
            self.proc.wait(5)
        except Exception:
            self.proc.kill()
            self.proc.wait(5)
        finally:
            os.close(self._in)
            os.close(self._out)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def browser(tmp_path: Path):
    exe = find_browser()
    if exe is None:
        pytest.skip(
            "no headless browser: /usr/bin/chromium is missing (install Debian's chromium: "
            "apt-get install chromium; .ci/run does so where apt can reach a mirror)"
        )
    dt = DevTools(exe, tmp_path)
    try:
        yield dt
    finally:
        dt.close()


@pytest.fixture()
def served() -> str:
    """The committed leaderboard folder served on 127.0.0.1 (an ephemeral port)."""
    handler = functools.partial(_QuietHandler, directory=str(REPO / "leaderboards"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


COLUMN = """(() => {{
  const t = document.querySelector("#big");
  const k = Array.from(t.tHead.rows[0].cells).findIndex(h => h.textContent === {head});
  return Array.from(t.tBodies[0].rows).map(r => r.cells[k].{attr});
}})()"""


def _column(dt: DevTools, head: str, attr: str = "textContent") -> list:
    return dt.js(COLUMN.format(head=json.dumps(head), attr=attr))


def test_committed_page_in_headless_browser(browser: DevTools, served: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    browser.session = browser.call("Target.attachToTarget", targetId=target, flatten=True)[
        "sessionId"
    ]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable")
    url = f"{served}/leaderboard.html"
    browser.call("Page.navigate", url=url)
    browser.wait_for("Page.loadEventFired")

    # sorting, on the table with the most rows: click a numeric header, then again, then "#";
    # read the first column each time
    browser.js(
        'Array.from(document.querySelectorAll("table.lb")).reduce((a, b) => '
        "b.tBodies[0].rows.length > a.tBodies[0].rows.length ? b : a).id = 'big'"
    )
    before = _column(browser, "#")
    n = len(before)
    assert before == [str(k) for k in range(1, n + 1)] and n >= 2
    head = "#big th:nth-child({})"
    heads = browser.js(
        'Array.from(document.querySelector("#big").tHead.rows[0].cells).map(h => h.textContent)'
    )
    fp = heads.index("FP/scan") + 1
    browser.click(head.format(fp))
    after = _column(browser, "#")
    values = [float(v) for v in _column(browser, "FP/scan", "dataset.v")]
    assert after != before and sorted(after, key=int) == before  # the same rows, reordered
    assert values == sorted(values)
    assert browser.js(f'document.querySelector("{head.format(fp)}").dataset.dir') == "asc"
    browser.click(head.format(fp))
    values = [float(v) for v in _column(browser, "FP/scan", "dataset.v")]
    assert values == sorted(values, reverse=True)
    browser.click(head.format(1))
    assert _column(browser, "#") == before

    # compact: every row of every table is one line high (no cell wraps)
    rows = browser.js(
        "Array.from(document.querySelectorAll('table.lb tbody tr')).map(r => "
        "[r.getBoundingClientRect().height, parseFloat(getComputedStyle(r.cells[0]).fontSize)])"
    )
    assert rows and all(h < 2.6 * size for h, size in rows), rows
    # the values' intervals on hover, the forest plot drawn with one group per row
    titles = _column(browser, "F1 [95% CI]", "title")
    assert all("95% CI [" in t for t in titles if t != "F1: not defined"), titles
    forests = browser.js(
        "Array.from(document.querySelectorAll('svg.forest')).map(s => "
        "[s.querySelectorAll('g.row').length, s.getBoundingClientRect().width])"
    )
    tables = browser.js(
        "Array.from(document.querySelectorAll('table.lb')).map(t => t.tBodies[0].rows.length)"
    )
    assert [f[0] for f in forests] == tables and all(f[1] > 300 for f in forests)

    shot = browser.call("Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    (tmp_path / "leaderboard.png").write_bytes(png)
    if os.environ.get("CMBBENCH_SCREENSHOT"):  # to look at the page: a path to write it to
        Path(os.environ["CMBBENCH_SCREENSHOT"]).write_bytes(png)

    # nothing failed to load, nothing was logged as an error, nothing was fetched from outside
    methods = [e.get("method") for e in browser.events]
    failed = [e["params"] for e in browser.events if e.get("method") == "Network.loadingFailed"]
    assert not failed
    logged = [
        e["params"]["entry"]
        for e in browser.events
        if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
    ]
    assert not logged
    console = [
        e["params"]
        for e in browser.events
        if e.get("method") == "Runtime.consoleAPICalled"
        and e["params"]["type"] in ("error", "warning", "assert")
    ]
    assert not console and "Runtime.exceptionThrown" not in methods
    requested = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requested[0] == url
    assert all(u == url or u.startswith("data:image/png;base64,") for u in requested), [
        u[:80] for u in requested
    ]
    assert time.monotonic() - t0 < 20


def test_a_built_page_opens_with_its_forest_plot(
    browser: DevTools, tmp_path: Path, tables: list
) -> None:
    """A page built from records with a CPM: its forest plot has a CPM mark for that row only
    (opened from a file: URL, as a reader opening the file would)."""
    folder = tmp_path / "records"
    write_board_records(folder)
    build_leaderboard([folder], tmp_path / "lb", n_bootstrap=N_BOOT)
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    browser.session = browser.call("Target.attachToTarget", targetId=target, flatten=True)[
        "sessionId"
    ]
    for domain in ("Page", "Runtime", "Network"):
        browser.call(f"{domain}.enable")
    browser.call("Page.navigate", url=(tmp_path / "lb" / "leaderboard.html").as_uri())
    browser.wait_for("Page.loadEventFired")
    main = _main(tables)
    index = [t.key for t in tables].index(main.key)
    noisy = [r.model == "noisy_net" for r in main.rows]
    marks = browser.js(
        f"Array.from(document.querySelectorAll('svg.forest')[{index}].querySelectorAll('g.row'))"
        ".map(g => [g.querySelectorAll('g.cpm circle').length, "
        "(g.querySelector('text.na') || {textContent: ''}).textContent])"
    )
    assert [m[0] for m in marks] == [int(x) for x in noisy] and sum(noisy) == 1
    assert all(m[1].startswith("not reached") for m, x in zip(marks, noisy, strict=True) if not x)
    assert not [e for e in browser.events if e.get("method") == "Network.loadingFailed"]
