"""Dashboard latency on a big run: switching head and switching prompt, through the real
HTTP callback path (Flask's test client POSTing to /_dash-update-component, as the
browser does), on a 2,000-prompt MiniLM run of WinoBias sentences. Target (issue 6):
under 200 ms at the 95th percentile.

One interaction is what the browser sends after a click: the state callback, then every
callback that depends on the new state (prompt options, tokens, all-heads grid, the active
view). The benchmark sums their server times (the browser overlaps some of them, so the
sum is pessimistic) and counts the bytes sent back. Heads and prompts are drawn at random
over the whole run, so most reads are not in the dashboard's caches (the OS page cache
may hold the shards: the run was just written, or read by an earlier repeat).

    python bench/dashboard.py [--run /tmp/bench-dashboard-run] [-n 2000] [--repeats 100] [--view head]
                              [--browser]

With --browser it also times click-to-drawn in headless Chromium (the browser's work, the
network round trips and selenium's polling included).

The run is recorded once (patterns and resid_post, like `probe demo`) and reused.
torch and the server run on one thread; the machine is shared, so the share of CPU that
other processes used while timing is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

# the repository root, not bench/ (whose analyses.py would shadow the analyses package)
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from bench.machine_load import OtherLoad  # noqa: E402


def record_run(path: Path, n: int) -> None:
    import torch

    import models
    import probe
    from analyses.head_metrics import head_metrics
    from analyses.results import save_result

    torch.set_num_threads(1)
    prompts = probe.load_prompts("winobias")[:n]
    print(f"recording {len(prompts)} WinoBias prompts with minilm to {path} ...", flush=True)
    t = time.perf_counter()
    run = probe.record(models.load("minilm"), prompts, path, names=["blocks.*.attn.hook_pattern",
                                                                    "blocks.*.hook_resid_post"],
                       batch_size=32, overwrite=True)
    print(f"  recorded {run.n_prompts} prompts, {run.n_tokens} tokens in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    save_result(path, "head_metrics", head_metrics(run))
    print(f"  head metrics in {time.perf_counter() - t:.0f} s", flush=True)


class Browser:
    """Sends callbacks the way dash-renderer does, from the app's own dependency list."""

    def __init__(self, app):
        self.client = app.server.test_client()
        assert self.client.get("/").status_code == 200
        self.deps = self.client.get("/_dash-dependencies").get_json()
        self.bytes = 0

    def dep(self, output_contains: str) -> dict:
        return next(d for d in self.deps if output_contains in d["output"])

    def call(self, dep: dict, values: dict[str, object], changed: list[str]) -> dict:
        def spec(items):
            return [{"id": i["id"], "property": i["property"], "value": values.get(f"{i['id']}.{i['property']}")}
                    for i in items]

        outputs = [{"id": o.rsplit(".", 1)[0], "property": o.rsplit(".", 1)[1]}
                   for o in dep["output"].strip(".").split("...")]
        body = {"output": dep["output"], "outputs": outputs, "inputs": spec(dep["inputs"]),
                "state": spec(dep["state"]), "changedPropIds": changed}
        r = self.client.post("/_dash-update-component", data=json.dumps(body), content_type="application/json")
        if r.status_code == 204:  # every output no_update
            return {}
        assert r.status_code == 200, r.data[:500]
        self.bytes += len(r.data)
        return r.get_json()["response"]


def interaction(browser: Browser, values: dict, changed: str, change_value) -> tuple[dict[str, float], int, dict]:
    """One click: the state callback, then its dependents. Returns per-callback ms, bytes
    sent back, and the page's values afterwards."""
    times = {}
    browser.bytes = 0
    values = dict(values, **{changed: change_value})
    t = time.perf_counter()
    out = browser.call(browser.dep("state.data"), values, [changed])
    times["state"] = time.perf_counter() - t
    if "state" not in out:  # the click left the state as it was (the same head again): nothing else fires
        return {k: 1e3 * v for k, v in times.items()}, browser.bytes, values
    values["state.data"] = out["state"]["data"]
    for name, key in (("prompt options", "prompt.options"), ("tokens", "queries.options"), ("grid", "grid.figure"),
                      ("view", "panel-head.style")):
        t = time.perf_counter()
        res = browser.call(browser.dep(key), values, ["state.data"])
        times[name] = time.perf_counter() - t
        if name == "grid" and "grid-drawn" in res:
            values["grid-drawn.data"] = res["grid-drawn"]["data"]
        if name == "tokens" and "tokens-drawn" in res:
            values["tokens-drawn.data"] = res["tokens-drawn"]["data"]
    return {k: 1e3 * v for k, v in times.items()}, browser.bytes, values


CLICK_TO_DRAWN_JS = """
const done = arguments[arguments.length - 1];
const [action, want] = [arguments[0], arguments[1]];
const title = () => (document.querySelector('#head-heatmap .gtitle') || {}).textContent || '';
const t0 = performance.now();
if (action === 'next') {
    document.querySelector('#next').click();
} else {  // what the grid's plotly_click hands Dash
    window.dash_clientside.set_props('grid', {clickData: {points: [{x: action[1], y: action[0]}]}});
}
(function poll() {
    if (title().includes(want)) { done(performance.now() - t0); return; }
    if (performance.now() - t0 > 10000) { done(null); return; }
    requestAnimationFrame(poll);
})();
"""


def browser_timings(app, run, repeats: int, rng: random.Random) -> dict[str, list[float]]:
    """Click to drawn in headless Chromium (dash.testing's driver, as the e2e tests use),
    timed inside the page: from the click (the Next button; for a head, the clickData the
    grid's Plotly click hands Dash) until the head view's title names the new head or
    prompt, which Plotly draws with the new heatmap. Browser and server share the machine."""
    import logging
    import threading

    from dash.testing.browser import Browser as DashBrowser
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per callback would bury the figures
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    L, H = run.config["n_layers"], run.config["n_heads"]
    out: dict[str, list[float]] = {"switch head (grid click)": [], "switch prompt (next button)": []}
    with DashBrowser(browser="chrome", headless=True, wait_timeout=10) as b:
        b.driver.set_window_size(1500, 1400)
        b.driver.set_script_timeout(15)
        b.driver.get(f"http://127.0.0.1:{server.socket.getsockname()[1]}/")
        b.wait_for_contains_text("#head-heatmap .gtitle", "L0H0 on prompt 0", timeout=30)
        prompt, layer, head = 0, 0, 0
        for _ in range(repeats):
            layer, head = rng.choice([(la, h) for la in range(L) for h in range(H) if (la, h) != (layer, head)])
            ms = b.driver.execute_async_script(CLICK_TO_DRAWN_JS, [layer, head], f"L{layer}H{head} on prompt {prompt}")
            out["switch head (grid click)"].append(ms)
            prompt += 1
            ms = b.driver.execute_async_script(CLICK_TO_DRAWN_JS, "next", f"L{layer}H{head} on prompt {prompt}")
            out["switch prompt (next button)"].append(ms)
            time.sleep(0.3)  # let the last figures finish before the next click
    server.shutdown()
    if any(v is None for samples in out.values() for v in samples):
        raise RuntimeError("a view did not update within 10 s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("/tmp/bench-dashboard-run"))
    ap.add_argument("-n", type=int, default=2000, help="prompts to record (default 2000)")
    ap.add_argument("--repeats", type=int, default=100, help="interactions of each kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--view", default="head", choices=["head", "layer", "metrics", "compare"],
                    help="the view open while switching (default head)")
    ap.add_argument("--browser", action="store_true",
                    help="also time click-to-drawn in headless Chromium (head view; needs chromium-driver)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    import probe

    if not (args.run / "run.json").exists() or probe.open(args.run).n_prompts < args.n:
        record_run(args.run, args.n)
    from dashboard.app import create_app

    run = probe.open(args.run)
    L, H = run.config["n_layers"], run.config["n_heads"]
    print(f"run: {run.n_prompts} prompts, {run.n_tokens} tokens, {L} layers x {H} heads "
          f"({sum(f.stat().st_size for f in args.run.rglob('*') if f.is_file()) / 2**20:.0f} MiB)")
    app = create_app([args.run])
    browser = Browser(app)
    rng = random.Random(args.seed)
    state = {"url.search": f"?view={args.view}", "state.data": None, "generation.data": 0, "prompt-search.value": None}
    out = browser.call(browser.dep("state.data"), state, ["url.search"])  # page load
    state["state.data"] = out["state"]["data"]
    state = interaction(browser, state, "next.n_clicks", 1)[2]  # warm imports and the first figures
    results = {}
    load = OtherLoad()
    for kind in ("switch head (grid click)", "switch prompt (prompt dropdown)"):
        totals, parts, sizes = [], {}, []
        for _ in range(args.repeats):
            if kind.startswith("switch head"):
                layer, head = rng.randrange(L), rng.randrange(H)
                click = {"points": [{"x": head, "y": layer}]}  # the grid's cells are centred on (head, layer)
                times, size, state = interaction(browser, state, "grid.clickData", click)
            else:
                times, size, state = interaction(browser, state, "prompt.value", rng.randrange(run.n_prompts))
            totals.append(sum(times.values()))
            sizes.append(size)
            for k, v in times.items():
                parts.setdefault(k, []).append(v)
        results[kind] = (totals, parts, sizes)
    other = load.stop()
    print(f"\n{args.view} view: {args.repeats} interactions each, server time summed over the callbacks one click fires "
          f"(torch/numpy 1 thread; other processes used {other:.0%} of the machine's CPU meanwhile)"
          if other is not None else "")
    for kind, (totals, parts, sizes) in results.items():
        q = statistics.quantiles(totals, n=20)
        print(f"  {kind:<34} p50 {statistics.median(totals):6.1f} ms   p95 {q[18]:6.1f} ms   "
              f"max {max(totals):6.1f} ms   response {statistics.median(sizes) / 1024:.0f} KiB")
        print("      median per callback: " + ", ".join(f"{k} {statistics.median(v):.1f} ms" for k, v in parts.items()))
    if args.browser:
        load = OtherLoad()  # Chromium counts as another process, so sample the load before it starts
        time.sleep(3)
        other = load.stop()
        timings = browser_timings(app, run, args.repeats, rng)
        print(f"\nin headless Chromium, click to drawn, head view ({args.repeats} each; browser and server on this "
              f"machine; other processes used {other:.0%} of its CPU just before):")
        for kind, samples in timings.items():
            q = statistics.quantiles(samples, n=20)
            print(f"  {kind:<34} p50 {statistics.median(samples):6.1f} ms   p95 {q[18]:6.1f} ms   "
                  f"max {max(samples):6.1f} ms")


if __name__ == "__main__":
    main()
