"""The documentation site and the README, its front door.

The site is built from docs/ as `make docs` builds it (Sphinx with -W: a warning fails the build), then served
on loopback and opened in headless Chromium, with every host but 127.0.0.1 made unresolvable and the browser's
network log kept: every page renders (its heading, furo's stylesheets and navigation), search answers offline
from the built index (a query with results, and one without), and no request leaves loopback. A control page
that asks for an outside image proves the network log would show such a request."""
from __future__ import annotations

import functools
import html
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.cli.commands import COMMANDS

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = REPO / "README.md"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
README_LIMIT = 10_000
PROBE_URL = "https://probe.example.org/outside.png"  # the control page asks for it; nothing else may go out


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built into a temporary folder, warnings as errors (as `make docs`)."""
    out = tmp_path_factory.mktemp("docs") / "html"
    r = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"the docs do not build with -W:\n{r.stderr[-4000:]}"
    return out


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text) <= README_LIMIT, f"README.md has {len(text)} characters; move the long parts into docs/"
    # the two commands, as the Makefile runs them
    assert "make demo     # " in text and "make test     # " in text
    # every relative link leads to a file of the repository (the site's pages are its Markdown sources)
    links = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]
    assert len(links) >= 10
    missing = [t for t in links if not (REPO / t.split("#")[0]).exists()]
    assert missing == []


def test_rack_file_reference_has_every_board_field_with_its_default():
    """docs/reference/rack-file.md's table of board fields against harness.rack.rackfile.Board itself."""
    import dataclasses

    from harness.rack.rackfile import Board

    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", (DOCS / "reference" / "rack-file.md").read_text(), re.M))
    for f in dataclasses.fields(Board):
        if f.name in ("line", "field_lines"):
            continue
        assert f.name in rows, f"docs/reference/rack-file.md lacks the board field {f.name}"
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            want = "(required)"
        else:
            v = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            v = "~/" + str(Path(v).relative_to(Path.home())) if isinstance(v, Path) else v
            want = "none" if v is None else f"`{str(v).lower()}`" if isinstance(v, bool) else (
                str(v) if isinstance(v, int) else f"`{v}`")
        assert rows[f.name].strip() == want, (f.name, rows[f.name], want)


def test_plan_folder_reference_names_every_key_of_plan_json():
    """docs/reference/plan-folder.md against a plan's own to_dict(): its example has the same keys at every
    level, and each key is described on the page."""
    from identity_plan import identity_plan

    page = (DOCS / "reference" / "plan-folder.md").read_text()
    example = json.loads(re.search(r"```json\n(.*?)```", page, re.S).group(1))
    real = identity_plan(2).to_dict()
    real["hash"] = "0" * 16
    assert set(example) == set(real)
    assert set(example["partitions"][0]) == set(real["partitions"][0])
    assert set(example["stages"][0]) == set(real["stages"][0])
    assert set(example["links"][0]) == set(real["links"][0])
    assert set(example["links"][0]["packing"]) == set(real["links"][0]["packing"])
    described = set(re.findall(r"`(\w+)`", page))
    keys = set(real) | set(real["partitions"][0]) | set(real["stages"][0]) | set(real["links"][0])
    assert keys - described == set(), "keys of plan.json the page does not describe"


def test_every_page_is_built_and_in_the_navigation(site):
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    sources = {p.relative_to(DOCS).with_suffix(".html").as_posix() for p in DOCS.rglob("*.md")
               if "_build" not in p.parts}
    assert sources <= pages
    index = (site / "index.html").read_text()
    orphans = [s for s in sources - {"index.html"} if f'href="{s}"' not in index]
    assert orphans == [], "pages missing from the index's tables of contents"


def test_cli_reference_lists_every_command_and_option(site):
    from harness.cli.commands import build_parser

    page = html.unescape(re.sub(r"<[^>]+>", "", (site / "reference" / "cli.html").read_text()))
    parser = build_parser()
    assert sorted(parser.commands) == sorted(name for name, _, _ in COMMANDS)
    missing = []
    for name, sub in parser.commands.items():
        for action in sub._actions:
            for opt in action.option_strings:
                if action.help != "==SUPPRESS==" and opt not in page:
                    missing.append(f"{name} {opt}")
    raw = (site / "reference" / "cli.html").read_text()
    sections = [name for name in parser.commands if f'<section id="splitrack-{name}">' not in raw]
    assert sections == [], "commands without a section of their own"
    assert missing == []


def test_no_page_loads_anything_from_outside(site):
    """Scripts, stylesheets, images and fonts all come from the site itself (links to other sites are fine)."""
    resource = re.compile(r'<(script|img|link|source|iframe)\b[^>]*\b(src|href)="((?:https?:)?//[^"]+)"')
    bad = []
    for p in site.rglob("*.html"):
        for tag, _, url in resource.findall(p.read_text()):
            line = re.search(rf'<{tag}\b[^>]*"{re.escape(url)}"[^>]*>', p.read_text()).group(0)
            if tag == "link" and 'rel="stylesheet"' not in line and "preload" not in line and "icon" not in line:
                continue  # <link rel="next"> and the like are links, not loads
            bad.append(f"{p.name}: {url}")
    for p in list(site.rglob("*.css")) + list(site.rglob("*.js")):
        bad += [f"{p.name}: {u}" for u in re.findall(r"""(?:url\(|@import\s+)["']?((?:https?:)?//[^"')\s]+)""",
                                                   p.read_text(errors="replace"))]
    assert bad == []


HARNESS = """<!doctype html><html><head><meta charset="utf-8"><title>docs check</title></head><body>
<pre id="out">running</pre>
<script>
const pages = %(pages)s, queries = %(queries)s, results = {pages: {}, search: {}, probe: null};
function load(url) {
  return new Promise(done => {
    const f = document.createElement("iframe");
    f.style.width = "1200px"; f.style.height = "900px";
    f.onload = () => done(f);
    f.src = url;
    document.body.appendChild(f);
  });
}
const pause = ms => new Promise(r => setTimeout(r, ms));
(async () => {
  for (const p of pages) {
    const f = await load(p), d = f.contentDocument;
    const h1 = d.querySelector("h1");
    if (h1) h1.querySelectorAll(".headerlink").forEach(a => a.remove());
    const sheets = [...d.styleSheets].filter(s => { try { return s.cssRules.length > 0; } catch (e) { return false; } });
    results.pages[p] = {h1: h1 ? h1.textContent.trim() : null, sheets: sheets.length,
                        nav: !!d.querySelector(".sidebar-tree"), text: d.body.innerText.length,
                        styled: getComputedStyle(d.body).fontFamily};
    f.remove();
  }
  for (const q of queries) {
    const f = await load("search.html?q=" + encodeURIComponent(q));
    let summary = "";
    for (let i = 0; i < 300 && !summary; i++) {
      const s = f.contentDocument.querySelector(".search-summary");
      if (s && /finished|did not match/i.test(s.textContent)) summary = s.textContent.trim(); else await pause(100);
    }
    results.search[q] = {summary, hits: [...f.contentDocument.querySelectorAll("ul.search li a")].map(a => a.getAttribute("href"))};
    f.remove();
  }
  const probe = await load("_probe.html");
  results.probe = probe.contentDocument.title;
  document.getElementById("out").textContent = "RESULTS " + JSON.stringify(results);
})();
</script></body></html>"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed: run scripts/setup-system.sh")
def test_pages_render_and_search_works_offline_in_chromium(site, tmp_path):
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    headings = {}
    for p in pages:
        m = re.search(r"<h1>(.*?)</h1>", (site / p).read_text(), re.S)
        if m:
            headings[p] = html.unescape(re.sub(r"<a class=\"headerlink\".*?</a>|<[^>]+>", "", m.group(1))).strip()
    assert len(headings) >= 25
    queries = ["deploy", "zqxjvbnmw"]
    (site / "_check.html").write_text(HARNESS % {"pages": json.dumps(pages), "queries": json.dumps(queries)})
    (site / "_probe.html").write_text(f'<!doctype html><title>probe</title><img src="{PROBE_URL}">')
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    netlog = tmp_path / "net.json"
    try:
        r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            "--disable-default-apps", "--disable-features=AutofillServerCommunication",
                            f"--user-data-dir={tmp_path / 'profile'}",
                            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                            f"--log-net-log={netlog}", "--enable-logging=stderr", "--v=0",
                            "--virtual-time-budget=120000", "--dump-dom", base + "_check.html"],
                           capture_output=True, text=True, timeout=600)
    finally:
        server.shutdown()
        server.server_close()
    m = re.search(r"RESULTS (\{.*\})", html.unescape(r.stdout))
    assert m, f"the check page did not finish:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    res = json.loads(m.group(1))

    # every page: its heading, furo's stylesheets applied, its navigation, text
    for p in pages:
        got = res["pages"][p]
        if p in headings:
            assert got["h1"] == headings[p], p
        assert got["sheets"] >= 2 and got["nav"] and got["text"] > 50, (p, got)
        assert "system-ui" in got["styled"] or "apple-system" in got["styled"], (p, got["styled"])  # furo's font stack
    # nothing on the console of any page: Chromium logs every console message and uncaught exception, without
    # its level. One is Sphinx's own and harmless: its search looks for an API result's summary with the
    # anchor as a CSS selector, which a dotted name (#harness.rack.deploy.Deployment) is not, warns, and shows
    # the page's main text instead
    console = [l for l in r.stderr.splitlines() if "CONSOLE" in l]
    sphinx_anchor = [l for l in console if '"Anchored content block not found.' in l and "/_static/searchtools.js" in l]
    assert [l for l in console if l not in sphinx_anchor] == []

    # search, offline, from the built index
    hit = res["search"]["deploy"]
    assert re.search(r"found [1-9]\d* page", hit["summary"]), hit
    assert any(h.startswith("howto/rack-file.html") for h in hit["hits"]), hit["hits"][:20]
    miss = res["search"]["zqxjvbnmw"]
    assert miss["summary"].startswith("Your search did not match any documents") and miss["hits"] == [], miss

    # nothing left loopback but the control page's probe, which the log shows (so it would show any other).
    # The requests the site's pages made are those whose initiator is the site; Chromium's own background
    # requests (updates, time, accounts, autofill) are initiated by no origin and are no page's doing
    requests = page_requests(netlog, base.rstrip("/"))
    assert base + "search.html?q=deploy" in requests and base + "_static/searchtools.js" in requests
    assert len(requests) > len(pages)
    assert {u for u in requests if not u.startswith(base)} == {PROBE_URL}


def page_requests(netlog: Path, origin: str) -> set:
    """URLs of the requests Chromium's network log shows started by pages of `origin` (scheme://host:port)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return {e["params"]["url"] for e in log["events"]
            if e["type"] == start and e.get("params", {}).get("initiator") == origin}
