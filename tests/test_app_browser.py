"""The app in a real browser: `streamlit run app.py` on loopback, driven by Debian's chromium."""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from population import lineage_charts as charts
from population import lineage_view as lv
from storegen import make_run

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install -y chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def served_app(tmp_path):
    """A generated store and `streamlit run app.py` serving it; yields (url, run_dir)."""
    run_dir = make_run(tmp_path / "runs" / "apr1", n=36, seed=3, state="running")
    port = free_port()
    log = open(tmp_path / "streamlit.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.headless", "true", "--", "--runs-dir", str(tmp_path / "runs")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "AUTORESEARCH_RUNS": str(tmp_path / "nowhere")})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if requests.get(f"{url}/_stcore/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if server.poll() is not None or time.time() > deadline:
                pytest.fail("streamlit did not start:\n" + (tmp_path / "streamlit.log").read_text()[-2000:])
            time.sleep(0.5)
        yield url, run_dir
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def isolated_point(points, all_points) -> tuple[int, tuple[float, float]]:
    """The index and centre of the point in `points` farthest from any other point, so a click
    at its centre cannot hit a neighbour."""
    centres = []
    for i in range(all_points.count()):
        box = all_points.nth(i).bounding_box()
        centres.append((box["x"] + box["width"] / 2, box["y"] + box["height"] / 2))
    best = None
    for k in range(points.count()):
        box = points.nth(k).bounding_box()
        centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        gap = sorted(math.dist(centre, other) for other in centres)[1]
        if best is None or gap > best[0]:
            best = (gap, k, centre)
    return best[1], best[2]


def test_click_a_node_shows_its_diff_and_a_live_run_refreshes(served_app):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, run_dir = served_app
    run = lv.load_run(run_dir)
    nodes, edge_x, edge_y = lv.tree_layout(run.frame, run.metric, run.lower_is_better)
    champion = lv.champion_id(run.frame, run.meta, run.metric, True)
    path_x, path_y = lv.path_line(nodes, lv.ancestry(run.frame, champion))
    # The same figure the page draws, to know which SVG trace holds the living members.
    fig, click_map = charts.tree_figure(nodes, edge_x, edge_y, path_x, path_y, run.metric, True, "")
    living = next(i for i, trace in enumerate(fig.data) if trace.name == "living")

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1900})
            page.goto(url)
            page.get_by_role("heading", name=f"#{champion} ").wait_for(timeout=90_000)
            tree = page.locator(".js-plotly-plot").first
            tree.locator(".scatterlayer .point").first.wait_for(timeout=60_000)   # SVG, not WebGL
            traces = tree.locator(".scatterlayer .trace")
            assert traces.count() >= len(click_map) + 2
            index, centre = isolated_point(traces.nth(living).locator(".point"),
                                           tree.locator(".scatterlayer .point"))
            clicked = click_map[living][index]
            assert clicked != champion
            page.mouse.move(*centre)
            page.wait_for_timeout(300)
            page.mouse.click(*centre)
            try:
                page.get_by_role("heading", name=f"#{clicked} ").wait_for(timeout=60_000)
            except sync_api.TimeoutError:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "app-failure.png"))
                raise
            expected = (run_dir / "experiments" / str(clicked) / "diff.patch").read_text()
            changed_line = next(line for line in expected.splitlines() if line.startswith("+") and "=" in line)
            page.get_by_text(changed_line[1:].strip()).first.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)   # let the charts settle for the screenshot
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "app.png"))

            # The run is live: new experiments appear without a reload, the selection stays.
            make_run(run_dir, n=44, seed=3, state="running")
            experiments = page.locator("[data-testid='stMetricValue']").first
            sync_api.expect(experiments).to_have_text("44", timeout=60_000)
            sync_api.expect(page.get_by_role("heading", name=f"#{clicked} ")).to_be_visible()
        finally:
            browser.close()
    assert (ARTIFACTS / "app.png").stat().st_size > 10_000
