"""The app in a real browser: `streamlit run app.py` on loopback, driven by Debian's chromium, on a
store written by a real CPU driver run (real Ray, a fake train file: tests/test_driver_support.py)
and on a 10,000-experiment synthetic store (tests/storegen.py). One driver run, one server and one
browser for the module; screenshots go to the pytest tmp dir (their paths are printed)."""
from __future__ import annotations

import io
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from population import lineage_charts as charts
from population import lineage_view as lv
from storegen import make_run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1440, "height": 1000}      # a laptop: the details must show beside the tree
REFRESH_S = 2                                   # the app's live refresh, shortened for the test

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install -y chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """runs/cpu: a real driver run on CPU (2 workers, 20 experiments, a seed a few edits from
    better, so the champion moves); runs/big: 10,000 synthetic experiments."""
    pytest.importorskip("ray")
    from population.config import RunConfig
    from population.driver import EXIT_OK, run_population
    from test_driver_support import FAKE_TRAIN, make_seed_repo

    root = tmp_path_factory.mktemp("app-browser")
    runs = root / "runs"
    repo = make_seed_repo(root / "seed", FAKE_TRAIN.replace("LEARNING_RATE = 0.04", "LEARNING_RATE = 0.01"))
    config = RunConfig(tag="cpu", repo=str(repo), runs_dir=str(runs), budget_s=5.0, workdir=str(root / "workers"),
                       agent_timeout_s=30.0, workers=2, noise_runs=3, population_size=4, tournament_size=2,
                       max_experiments=20, device="cpu")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.05")
        assert run_population(config, ray_init_kwargs={"num_cpus": 2}, out=out) == EXIT_OK, out.getvalue()
    make_run(runs / "big", n=10_000, files_for=30)
    now = time.time()
    for name in ("run.json", "lineage.parquet", "events.jsonl"):    # the newest run, so a page opens on it
        os.utime(runs / "cpu" / name, (now + 5, now + 5))
    shots = tmp_path_factory.mktemp("screenshots")
    return runs, repo, shots, root


@pytest.fixture(scope="module")
def url(stores):
    from app_scale import Server       # bench/app_scale.py: the same server its page loads measure

    runs, _, _, root = stores
    try:
        server = Server(runs, root / "streamlit.log", refresh_s=REFRESH_S, timeout_s=90,
                        env={"AUTORESEARCH_RUNS": str(root / "nowhere")})
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, url, stores):
    """A fresh page (its own Streamlit session); a screenshot of it when the test fails."""
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(url)
    yield page
    page.close()


def shoot(page, stores, name: str) -> Path:
    path = stores[2] / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def open_run(page, name: str, timeout: float = 120_000) -> None:
    """Pick a run in the sidebar and wait for its details panel."""
    picker = page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox'] input")
    picker.wait_for(timeout=timeout)
    if not picker.input_value().startswith(f"{name} · "):
        picker.click()
        page.get_by_role("option", name=re.compile(f"^{name} · ")).click()
    page.locator("h1").filter(has_text=re.compile(rf"^\s*{name}\s")).wait_for(timeout=timeout)
    page.locator(".st-key-details h3").first.wait_for(timeout=timeout)
    page.locator(".js-plotly-plot .scatterlayer").first.wait_for(timeout=timeout)


def cut_off_texts(page) -> list[str]:
    """Metric labels, values and deltas whose text does not fit (ellipsis)."""
    return page.evaluate("""() => [...document.querySelectorAll(
        "[data-testid=stMetricValue], [data-testid=stMetricValue] *, [data-testid=stMetricDelta] *, "
        + "[data-testid=stMetricLabel] *")].filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)""")


def trace_points(tree, index: int):
    return tree.locator(".scatterlayer .trace").nth(index).locator(".point")


def centre(box) -> tuple[float, float]:
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def centre_of(locator) -> tuple[float, float] | None:
    """Its centre on the screen; None while Plotly redraws it (detached for a moment, no box)."""
    box = locator.bounding_box()
    return None if box is None else centre(box)


def wait_until_near(page, ring, where, tolerance: float, failure: str, seconds: float = 30) -> None:
    """Until the selection ring is drawn within `tolerance` pixels of `where()` (a point or None)."""
    deadline = time.time() + seconds
    while True:
        here, there = centre_of(ring), where()
        if here is not None and there is not None and math.dist(here, there) <= tolerance:
            return
        assert time.time() < deadline, failure
        page.wait_for_timeout(200)


def isolated_point(points, others) -> tuple[int, tuple[float, float]]:
    """The index and centre of the point in `points` farthest from any other drawn point, so a click
    at its centre cannot hit a neighbour; only points inside the viewport (the mouse cannot hover
    one below the fold)."""
    all_centres = [centre(others.nth(i).bounding_box()) for i in range(others.count())]
    best = None
    for k in range(points.count()):
        here = centre(points.nth(k).bounding_box())
        if not (0 < here[0] < VIEWPORT["width"] and 0 < here[1] < VIEWPORT["height"]):
            continue
        gap = sorted(math.dist(here, other) for other in all_centres)[1]
        if best is None or gap > best[0]:
            best = (gap, k, here)
    assert best is not None, "no point of this trace is inside the viewport"
    return best[1], best[2]


def test_a_real_driver_run_reads_as_the_selection_tells_it(page, stores):
    runs, repo, _, _ = stores
    run = lv.load_run(runs / "cpu")
    selection = run.selection
    assert selection.source == "journal" and len(selection.promotions) >= 2, "the fake seed should improve twice"
    open_run(page, "cpu")
    champion = selection.champion_row
    card = page.locator("[data-testid='stMetric']").first
    sync_api.expect(card).to_contain_text(f"Champion {champion['member']}")
    sync_api.expect(card).to_contain_text(f"{champion['estimate']:.6f}")
    assert cut_off_texts(page) == []                                          # every card fits at 1440 px

    # One node per member: the seed's three baseline runs are one node, not three roots.
    layout = lv.tree_layout(selection.members, run.frame, selection.champion, "living")
    fig, click_map = charts.tree_figure(layout, run.metric, True, "generation", selected=champion["member"])
    names = [t.name for t in fig.data]
    tree = page.locator(".js-plotly-plot").first
    members = [i for i, name in enumerate(names) if name in ("culled (ancestor)", "living member", "champion")]
    assert sum(trace_points(tree, i).count() for i in members) == len(layout.nodes)
    assert trace_points(tree, names.index("champion")).count() == 1
    assert run.frame["kind"].eq("baseline").sum() == 3 and "m0000" in set(layout.nodes["member"])

    # A click on a living member opens it beside the tree, above the fold, and moves the ring there.
    living = names.index("living member")
    index, point = isolated_point(trace_points(tree, living), tree.locator(".scatterlayer .point"))
    clicked = click_map[living][index]
    member = run.frame.loc[run.frame["id"] == clicked, "member"].iloc[0]
    heading = page.locator(".st-key-details h3").filter(has_text=f"#{clicked} · {member}")
    click_until_shown(page, point, f"{member} #{clicked}", heading)
    box, tree_box = heading.bounding_box(), tree.bounding_box()
    assert box["y"] + box["height"] < VIEWPORT["height"] and box["x"] > tree_box["x"] + tree_box["width"] - 5
    ring = tree.locator(".scatterlayer .trace").last.locator(".point")
    sync_api.expect(ring).to_have_count(1)
    node = trace_points(tree, living).nth(index)
    wait_until_near(page, ring, lambda: centre_of(node), 3,
                    "the selection ring did not move to the clicked member")

    # Its diff side by side (the driver's diff.patch) and its whole file, read from the run's repository.
    patch = (runs / "cpu" / "experiments" / str(clicked) / "diff.patch").read_text()
    added = next(line[1:] for line in patch.splitlines() if line.startswith("+") and not line.startswith("+++"))
    side = page.locator(".st-key-details .sbs td.new", has_text=added.strip())
    sync_api.expect(side.first).to_be_visible(timeout=30_000)
    commit = run.frame.loc[run.frame["id"] == clicked, "commit"].iloc[0]
    whole = subprocess.run(["git", "show", f"{commit}:engine/train.py"], cwd=repo, capture_output=True, text=True,
                           check=True).stdout
    page.locator(".st-key-details").get_by_role("tab", name="Whole file").click()
    line = next(text for text in whole.splitlines() if text.startswith(("LEARNING_RATE", "DEPTH", "WIDTH")))
    sync_api.expect(page.locator(".st-key-details [data-testid='stCode']").first).to_contain_text(line, timeout=30_000)
    shoot(page, stores, "cpu-run-clicked")


def click_until_shown(page, point, label: str, shown, timeout_s: float = 150) -> None:
    """click_when_hovered, then again while `shown` (what the click opens) does not appear: on a
    loaded machine a click during a redraw can be dropped, and a user would click again."""
    deadline = time.time() + timeout_s
    while True:
        click_when_hovered(page, point, label)
        try:
            shown.wait_for(timeout=30_000)
            return
        except sync_api.TimeoutError:
            assert time.time() < deadline, f"clicking the node of {label} never opened it"


def click_when_hovered(page, point, label: str) -> None:
    """Click the tree's node at `point` once Plotly hovers it (its label shows `label`): Plotly
    clicks what it hovers, and on a loaded machine a redraw can come after any fixed wait."""
    hovered = page.locator(".hoverlayer .hovertext").filter(has_text=label)
    deadline = time.time() + 60
    while True:
        page.mouse.move(point[0] + 2, point[1])
        page.mouse.move(*point)
        page.wait_for_timeout(300)
        if hovered.count():
            break
        assert time.time() < deadline, f"hovering the node of {label} shows no label"
    page.mouse.click(*point)


def test_ten_thousand_experiments_stay_a_tree(page, stores):
    runs = stores[0]
    run = lv.load_run(runs / "big")
    start = time.perf_counter()
    open_run(page, "big")
    loaded = time.perf_counter() - start
    assert loaded < 60, f"the 10,000-experiment page took {loaded:.0f} s"
    print(f"10,000 experiments: page shown in {loaded:.1f} s")
    assert cut_off_texts(page) == []
    tree = page.locator(".js-plotly-plot").first
    layout = lv.tree_layout(run.selection.members, run.frame, run.selection.champion, "living")
    assert len(layout.nodes) < 1000                                           # the living lineage: SVG points
    assert tree.locator(".scatterlayer .point").count() > 0 and tree.locator("canvas").count() == 0
    assert layout.nodes["hidden_members"].sum() > 5000                        # the culled, folded into counts
    shoot(page, stores, "big-tree-living")

    # Every member: 8,000 nodes in WebGL, the selection ring still visible (an SVG trace on top).
    page.get_by_text("every member", exact=True).click()
    tree.locator("canvas").first.wait_for(timeout=60_000)
    page.wait_for_timeout(500)
    # A real click on a WebGL point: zoomed in (as a user would) on a living member, the living member
    # farthest from any other node on screen.
    everything = lv.tree_layout(run.selection.members, run.frame, run.selection.champion, "all")
    nodes = everything.nodes
    aim = nodes[nodes["category"].eq("living")].iloc[0]
    page.evaluate("""([x, y]) => window.Plotly.relayout(document.querySelector('.js-plotly-plot'),
                     {'xaxis.range': [x - 6, x + 2], 'yaxis.range': [y - 12, y + 12]})""", [aim["x"], aim["y"]])
    page.wait_for_timeout(800)
    screen = page.evaluate("""(points) => {
        const gd = document.querySelector('.js-plotly-plot'), fl = gd._fullLayout, r = gd.getBoundingClientRect();
        return points.map(([x, y]) => [r.left + fl._size.l + fl.xaxis.l2p(x), r.top + fl._size.t + fl.yaxis.l2p(y)]);
    }""", nodes[["x", "y"]].to_numpy().tolist())
    plot = tree.locator(".nsewdrag").first.bounding_box()
    inside = [i for i, (x, y) in enumerate(screen) if plot["x"] + 10 < x < plot["x"] + plot["width"] - 10
              and plot["y"] + 10 < y < plot["y"] + plot["height"] - 10]
    living = [i for i in inside if nodes["category"].iloc[i] == "living"]
    gap = {i: min(math.dist(screen[i], screen[j]) for j in inside if j != i) for i in living}
    target = max(gap, key=gap.get)
    assert gap[target] > 8, "no living member stands apart enough to click"
    clicked = nodes.iloc[target]
    click_until_shown(page, screen[target], f"{clicked['member']} #{clicked['first_id']}",
                      page.locator(".st-key-details h3").filter(has_text=f"#{clicked['first_id']} · {clicked['member']}"))
    ring = tree.locator(".scatterlayer .trace").last.locator(".point")     # SVG over the WebGL canvas
    sync_api.expect(ring).to_have_count(1, timeout=60_000)
    wait_until_near(page, ring, lambda: screen[target], 4, "the selection ring is not on the clicked WebGL point")
    shoot(page, stores, "big-tree-every-member")

    # Progress: the promotion staircase, one marker per promotion.
    page.get_by_role("tab", name="Progress").click()
    progress = page.locator(".js-plotly-plot").first
    promotions = len(run.selection.promotions)
    steps = progress.locator(".scatterlayer .trace").filter(has=page.locator(".point")).last.locator(".point")
    sync_api.expect(steps).to_have_count(promotions, timeout=60_000)
    shoot(page, stores, "big-progress")


def test_a_page_opened_before_the_run_shows_it_and_keeps_the_zoom(page, stores):
    later = stores[3] / "later"
    later.mkdir()
    box = page.get_by_placeholder("runs/mar5 or /data/runs")
    box.fill(str(later))
    box.press("Enter")
    page.get_by_text("Waiting for a run under").wait_for(timeout=30_000)
    make_run(later / "live", n=30, state="running", seed=5)              # the run starts after the page
    page.locator("h1").filter(has_text=re.compile(r"^\s*live\s")).wait_for(timeout=30_000)
    tree = page.locator(".js-plotly-plot").first
    tree.locator(".scatterlayer .point").first.wait_for(state="attached", timeout=30_000)
    read_range = "() => document.querySelector('.js-plotly-plot')._fullLayout.xaxis.range.map(Number)"
    initial = page.evaluate(read_range)
    bounds = tree.bounding_box()
    page.mouse.move(bounds["x"] + bounds["width"] * 0.4, bounds["y"] + bounds["height"] * 0.5)
    for _ in range(4):                                                    # the user zooms in
        page.mouse.wheel(0, -400)
        page.wait_for_timeout(150)
    page.wait_for_timeout(500)
    zoomed = page.evaluate(read_range)
    assert zoomed[1] - zoomed[0] < 0.8 * (initial[1] - initial[0])
    page.evaluate("() => { document.querySelector('.js-plotly-plot').__beforeRefresh = true; }")
    make_run(later / "live", n=40, state="running", seed=5)              # new rows arrive
    experiments = page.locator("[data-testid='stMetric']").filter(has_text="Experiments")
    sync_api.expect(experiments).to_contain_text("40", timeout=30_000)
    # Streamlit draws a changed figure as a new plot: wait for it, then for the zoom laid over it
    page.wait_for_function("() => { const gd = document.querySelector('.js-plotly-plot');"
                           " return gd && !gd.__beforeRefresh && gd._fullLayout; }", timeout=30_000)
    page.wait_for_timeout(800)
    assert page.evaluate(read_range) == pytest.approx(zoomed, rel=1e-6), "a refresh reset the user's zoom"
    shoot(page, stores, "live-after-refresh")
