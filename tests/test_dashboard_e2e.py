"""End-to-end: the dashboard in a real headless Chromium (dash.testing's `dash_duo`, driving
Debian's chromium and chromium-driver). `make browser` installs them; these tests fail,
not skip, when they are missing, unless PROBE_SKIP_BROWSER=1 says to skip them."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from dashboard import figures
from dashboard.app import create_app

if os.environ.get("PROBE_SKIP_BROWSER") == "1":
    pytest.skip("PROBE_SKIP_BROWSER=1: browser tests skipped on request", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def browser_installed():
    missing = [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: run `make browser` (apt-get install chromium "
                    "chromium-driver), or set PROBE_SKIP_BROWSER=1 to skip the browser tests explicitly",
                    pytrace=False)


def tick_labels(dash_duo, graph_id: str, axis: str = "x") -> list[str]:
    # read in one script, inside the browser: element handles go stale when Plotly redraws the axis
    # between finding the ticks and reading their text
    script = "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent);"
    return dash_duo.driver.execute_script(script, f"#{graph_id} .{axis}tick text")


def wait_until(condition, timeout: float = 10.0, what: str = "condition"):
    end = time.time() + timeout
    while time.time() < end:
        try:
            value = condition()
            if value:
                return value
        except Exception:  # the DOM is being redrawn
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_click_head_change_prompt_and_share_url(dash_duo, coref_run):
    from probe.reader import Run

    run = Run(coref_run)
    app = create_app([coref_run])
    dash_duo.driver.set_window_size(1500, 1200)
    dash_duo.start_server(app)
    dash_duo.wait_for_contains_text("#run-status", "complete", timeout=15)

    # the head view starts on L0H0 of prompt 0, with prompt 0's tokens on both axes
    dash_duo.wait_for_contains_text("#head-heatmap .gtitle", "L0H0 on prompt 0")
    tokens0 = run.str_tokens(0)
    wait_until(lambda: tick_labels(dash_duo, "head-heatmap") == tokens0, what="prompt 0's tokens on the key axis")
    wait_until(lambda: tick_labels(dash_duo, "head-heatmap", "y") == tokens0, what="prompt 0's tokens on the query axis")

    # click the cell of layer 1, head 2 in the all-heads grid
    n_layers, n_heads = run.config["n_layers"], run.config["n_heads"]
    grid = dash_duo.find_element("#grid .nsewdrag")
    dash_duo.click_at_coord_fractions(grid, (2 + 0.5) / n_heads, (1 + 0.5) / n_layers)
    dash_duo.wait_for_contains_text("#head-heatmap .gtitle", "L1H2 on prompt 0")
    wait_until(lambda: "head=2" in dash_duo.driver.current_url and "layer=1" in dash_duo.driver.current_url,
               what="the URL to hold the head")
    outline = "const s = document.querySelector('#grid .js-plotly-plot').layout.shapes[0]; return [s.y0 + 0.5, s.x0 + 0.5];"
    wait_until(lambda: dash_duo.driver.execute_script(outline) == [1, 2], what="the grid's outline on L1H2")

    # next prompt: its tokens replace the old ones
    dash_duo.find_element("#next").click()
    dash_duo.wait_for_contains_text("#head-heatmap .gtitle", "L1H2 on prompt 1")
    tokens1 = run.str_tokens(1)
    assert tokens1 != tokens0
    wait_until(lambda: tick_labels(dash_duo, "head-heatmap") == tokens1, what="prompt 1's tokens")
    dash_duo.wait_for_contains_text("#prompt-text", run.prompts[1])

    # select two query tokens: the summed-attention bar appears
    boxes = dash_duo.find_elements("#queries input")
    assert len(boxes) == len(tokens1)
    boxes[3].click()
    wait_until(lambda: "q=3" in dash_duo.driver.current_url, what="q=3 in the URL")
    dash_duo.find_elements("#queries input")[5].click()
    dash_duo.wait_for_contains_text("#head-summed .gtitle", "summed over the selected queries")
    wait_until(lambda: "q=3%2C5" in dash_duo.driver.current_url, what="both queries in the URL")

    # hovering a query token in the token view draws lines to where it attends (in the browser)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    queries_trace = dash_duo.find_elements("#head-lines .scatterlayer .trace")[-2]  # then the keys' trace
    points = queries_trace.find_elements(By.CSS_SELECTOR, ".point")
    assert len(points) == len(tokens1)
    n_traces = len(dash_duo.find_elements("#head-lines .scatterlayer .trace"))
    ActionChains(dash_duo.driver).move_to_element(points[7]).perform()
    top = figures.sparsify_topk(run.pattern(1, 1, 2), figures.TOP_K)[7]
    wait_until(lambda: len(dash_duo.find_elements("#head-lines .scatterlayer .trace")) == n_traces
               + int((top > 0).sum()), what="hover lines from query 7")

    # a shared URL reloads the same state in a fresh page
    shared = dash_duo.driver.current_url
    dash_duo.driver.get(dash_duo.server_url)
    dash_duo.wait_for_contains_text("#head-heatmap .gtitle", "L0H0 on prompt 0")
    dash_duo.driver.get(shared)
    dash_duo.wait_for_contains_text("#head-heatmap .gtitle", "L1H2 on prompt 1")
    wait_until(lambda: tick_labels(dash_duo, "head-heatmap") == tokens1, what="prompt 1's tokens after reload")
    wait_until(lambda: [b.is_selected() for b in dash_duo.find_elements("#queries input")][3:6] == [True, False, True],
               what="the selected queries after reload")
    assert dash_duo.get_logs() == [], dash_duo.get_logs()


def test_views_from_url_and_grid_by_metric(dash_duo, coref_run):
    app = create_app([coref_run])
    dash_duo.driver.set_window_size(1500, 1200)
    dash_duo.start_server(app)
    # a URL straight into the layer view of layer 1, grid coloured by induction score
    dash_duo.driver.get(dash_duo.server_url + "/?run=0&prompt=2&layer=1&head=3&view=layer&metric=induction")
    dash_duo.wait_for_contains_text("#layer-view .gtitle", "layer 1: all")
    dash_duo.wait_for_contains_text("#grid .gtitle", "induction per head")
    dash_duo.wait_for_contains_text("#resid-norm .gtitle", "residual stream norm")
    # clicking a head's panel in the layer view selects it
    dash_duo.find_elements("#layer-view .nsewdrag")[1].click()
    wait_until(lambda: "head=1" in dash_duo.driver.current_url, what="head=1 after clicking panel H1")
    dash_duo.wait_for_contains_text("#layer-view .gtitle", "layer 1: all")
    wait_until(lambda: "H1 (selected)" in dash_duo.find_element("#layer-view").text, what="H1 marked selected")
    # the metrics scatter: one point per head; clicking one selects it
    dash_duo.find_element("#view .tab:nth-child(3)").click()
    dash_duo.wait_for_contains_text("#scatter .gtitle", "against induction")
    points = dash_duo.find_elements("#scatter .scatterlayer .point")
    assert len(points) == 8  # toy-coref: 2 layers x 4 heads
    # the figure was drawn as its panel appeared: wait for Plotly's resize to the panel's width
    fitted = ("const gd = document.querySelector('#scatter .js-plotly-plot');"
              "return Math.abs(gd.querySelector('.main-svg').getBoundingClientRect().width"
              " - gd.getBoundingClientRect().width) < 2;")
    wait_until(lambda: dash_duo.driver.execute_script(fitted), what="the scatter to fit its panel")
    # click a point that no other point overlaps, located from its data through Plotly's axes
    target = dash_duo.driver.execute_script("""
        const gd = document.querySelector('#scatter .js-plotly-plot'), fl = gd._fullLayout;
        const tr = gd.calcdata[0], svg = gd.querySelector('.main-svg').getBoundingClientRect();
        const px = tr.map(d => [fl._size.l + fl.xaxis.l2p(d.x), fl._size.t + fl.yaxis.l2p(d.y)]);
        for (let i = 0; i < px.length; i++) {
            const cd = Array.from(Object.values(tr[i].data ? tr[i].data : gd.data[0].customdata[i]));
            const alone = px.every((q, j) => j === i || Math.hypot(q[0] - px[i][0], q[1] - px[i][1]) > 12);
            if (alone && !(cd[0] === 1 && cd[1] === 1)) {
                return [px[i][0] / svg.width, px[i][1] / svg.height, cd[0], cd[1]];
            }
        }
        return null;""")
    assert target is not None, "every point of the scatter overlaps another"
    dash_duo.click_at_coord_fractions(dash_duo.find_element("#scatter .main-svg"), target[0], target[1])
    wait_until(lambda: f"layer={target[2]}&head={target[3]}" in dash_duo.driver.current_url,
               what=f"L{target[2]}H{target[3]} selected from the scatter")
    # switch to the probes & causal tab: the saved analyses are drawn
    dash_duo.find_element("#view .tab:nth-child(4)").click()
    dash_duo.wait_for_contains_text("#panel-results", "probes_answer: probe accuracy per layer")
    dash_duo.wait_for_contains_text("#panel-results", "ablation_coref")
    dash_duo.wait_for_contains_text("#panel-results", "patch_resid")
    wait_until(lambda: "view=results" in dash_duo.driver.current_url, what="view=results in the URL")
    assert dash_duo.get_logs() == [], dash_duo.get_logs()


def test_the_attention_switch_of_an_encoder_decoder_run(dash_duo, tmp_path):
    """A toy-translate run opens on cross-attention (target tokens down, source tokens across);
    the switch shows the encoder's self-attention over the source."""
    import json

    import models
    from models.tasks import translate as tr
    from probe.reader import Run
    from probe.recorder import record

    prompts = tmp_path / "pairs.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in tr.prompt_records("test", 4, seed=1)))
    record(models.load("toy-translate"), prompts, tmp_path / "run", progress=False,
           names=["encoder.*.attn.hook_pattern", "decoder.*.cross_attn.hook_pattern", "decoder.*.attn.hook_pattern"])
    run = Run(tmp_path / "run")
    dash_duo.driver.set_window_size(1500, 1200)
    dash_duo.start_server(create_app([tmp_path / "run"]))
    dash_duo.wait_for_contains_text("#head-heatmap .gtitle", "cross-attention L0H0 on prompt 0", timeout=15)
    wait_until(lambda: tick_labels(dash_duo, "head-heatmap", "y") == run.str_tokens(0, "target"),
               what="the target's tokens on the query axis")
    wait_until(lambda: tick_labels(dash_duo, "head-heatmap") == run.str_tokens(0), what="the source's tokens on the key axis")
    dash_duo.find_element("#attention input[value='encoder']").click()
    dash_duo.wait_for_contains_text("#head-heatmap .gtitle", "encoder L0H0 on prompt 0")
    wait_until(lambda: tick_labels(dash_duo, "head-heatmap", "y") == run.str_tokens(0), what="the source on both axes")
    wait_until(lambda: "attention=encoder" in dash_duo.driver.current_url, what="the URL to hold the attention")
