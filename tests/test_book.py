"""The course book (``course book RUN_DIR --out DIR``), built from a small fixture run.

The fixture run executes tests/fixtures/notebooks (00_pass ok with a figure, 01_fail failed,
02_skip skipped) once per session; the book is built from it without executing anything again.
Checks: pages and links (every internal link and anchor resolves), nothing loaded from the network,
the failed page shows its error at the top, bad input gives one line and writes nothing, and a real
headless Chromium opens the pages (figures decoded, no console errors, screenshots saved).

Set ``COURSE_BOOK_TEST_OUT`` to keep the run, the book and its screenshots (``.ci/run`` does).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from bs4 import BeautifulSoup

from conftest import FIXTURES, IN_CI
from course_lib import book, runner
from course_lib.book import results

NB = FIXTURES / "notebooks"
PROFILES = FIXTURES / "profiles.yaml"


@pytest.fixture(scope="session")
def fixture_run(tmp_path_factory) -> Path:
    keep = os.environ.get("COURSE_BOOK_TEST_OUT")
    out = Path(keep) / "run" if keep else tmp_path_factory.mktemp("book") / "run"
    if out.exists():
        shutil.rmtree(out)
    status, doc = runner.run([], profile="cpu", out=out, notebooks=NB, profiles=PROFILES, progress=False)
    assert status == 1 and [n["status"] for n in doc["notebooks"].values()] == ["ok", "failed", "skipped"]
    return out


@pytest.fixture(scope="session")
def site(fixture_run) -> Path:
    index = book.build(fixture_run, fixture_run / "book", notebooks=NB)
    assert index == fixture_run / "book" / "index.html"
    return index.parent


def soup(path: Path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def html_files(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


# --------------------------------------------------------------------------------------------
# Structure and links
# --------------------------------------------------------------------------------------------


def test_book_has_every_page(site):
    for name in ["index.html", "results.html", "api.html", "00_pass.html", "01_fail.html", "02_skip.html",
                 "book.css", "lab.css", "api/course_lib.html", "api/course_lib/report.html",
                 "notebooks/executed/00_pass.ipynb", "notebooks/source/00_pass.ipynb"]:
        assert (site / name).is_file(), name
    assert not list(site.parent.glob(".book.building-*")), "the scratch folder was not moved into place"


def test_every_internal_link_and_anchor_resolves(site):
    ids = {p.resolve(): {t["id"] for t in soup(p).find_all(id=True)} for p in html_files(site)}
    broken = []
    for page in ids:
        for tag in soup(page).find_all(["a", "link", "img", "script", "iframe", "source"]):
            ref = tag.get("href") or tag.get("src")
            if not ref or ref.startswith(("data:", "mailto:", "javascript:")):
                continue
            parts = urlsplit(ref)
            if parts.scheme in ("http", "https"):
                assert tag.name == "a", f"{page.name}: <{tag.name}> loads {ref} from the network"
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if not target.exists():
                broken.append(f"{page.name} -> {ref} (no file)")
            elif parts.fragment and target.suffix == ".html" and not {parts.fragment, unquote(parts.fragment)} & ids[target]:
                # a browser tries the fragment as written, then percent-decoded (nbconvert's ids are percent-encoded)
                broken.append(f"{page.name} -> {ref} (no id {parts.fragment!r})")
    assert not broken, "\n".join(broken[:20])


def test_nothing_is_loaded_from_the_network(site):
    """No CDN: no script, stylesheet, font, image or import from http(s) anywhere in the folder."""
    remote = re.compile(r"""(<(script|link|img|iframe|source|video|audio)\b[^>]*\b(src|href)\s*=\s*["']?(https?:)?//)"""
                        r"""|url\(\s*["']?(https?:)?//|@import\s+["']?(https?:)?//|\bimport\s*\(?\s*["'](https?:)?//""", re.I)
    offenders = []
    for path in site.rglob("*"):
        if path.suffix in (".html", ".css", ".js"):
            m = remote.search(path.read_text(encoding="utf-8"))
            if m:
                offenders.append(f"{path.relative_to(site)}: {m.group(0)[:80]}")
    assert not offenders, offenders
    assert "require.js" not in (site / "00_pass.html").read_text() and "mathjax" not in (site / "00_pass.html").read_text().lower()


# --------------------------------------------------------------------------------------------
# What the pages show
# --------------------------------------------------------------------------------------------


def test_index_lists_every_lesson_with_status_time_metrics_and_machine(site, fixture_run):
    page = soup(site / "index.html")
    cards = page.select("li.lesson-card")
    assert [c.select_one("a.lesson-link")["href"] for c in cards] == ["00_pass.html", "01_fail.html", "02_skip.html"]
    assert [c.select_one(".status").get_text(strip=True).split()[-1] for c in cards] == ["ok", "failed", "skipped"]
    report = json.loads((fixture_run / "report.json").read_text())["notebooks"]
    ok, failed, skipped = (c.get_text(" ", strip=True) for c in cards)
    assert "Fixture that passes" in ok and "Records its parameters as metrics." in ok  # title + first paragraph
    assert f"wall time {book.format_seconds(report['00_pass']['seconds'])}" in ok
    assert "t0.size 30 items" in ok  # the last recorded value wins
    assert "ValueError: second line of the message" in failed
    assert "needs 64 GPUs (found 0)" in skipped
    machine = re.search(r"^- machine: (.+)$", (fixture_run / "report.md").read_text(), re.M).group(1)
    assert page.select_one("dd.machine").get_text(strip=True) == machine


def test_index_names_the_cpu_from_the_reports_machine_entry(tmp_path, fixture_run):
    """report.json's "machine" entry (hw.cpu_features: model, vendor, arch, ISA) is on the index page."""
    run = tmp_path / "run"
    shutil.copytree(fixture_run, run, ignore=shutil.ignore_patterns("book"))
    doc = json.loads((run / "report.json").read_text(encoding="utf-8"))
    doc["machine"] = {"summary": "python 3.11", "arch": "aarch64", "vendor": "Apple", "model": "M9", "isa": ["neon"]}
    (run / "report.json").write_text(json.dumps(doc), encoding="utf-8")
    page = soup(book.build(run, tmp_path / "book", notebooks=NB, api=False))
    assert page.select_one("dd.cpu").get_text(strip=True) == "M9 (Apple, aarch64) · ISA: neon"
    del doc["machine"]  # a run from before the entry existed still builds, and says so
    (run / "report.json").write_text(json.dumps(doc), encoding="utf-8")
    page = soup(book.build(run, tmp_path / "book", notebooks=NB, api=False))
    assert "not recorded" in page.select_one("dd.cpu").get_text(strip=True)


def test_every_key_metric_a_card_names_is_recorded_by_a_notebook():
    """A renamed metric must not silently drop off its lesson's card: each KEY_METRICS pattern matches a record()."""
    import fnmatch

    import nbformat

    recorded = []
    for path in sorted((FIXTURES.parent.parent / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            for m in re.finditer(r"""record\(\s*(f?)(["'])(.+?)\2""", cell.source):
                name = m.group(3)
                recorded.append(re.sub(r"\{[^}]*\}", "*", name) if m.group(1) else name)  # f-string: a pattern
    assert len(recorded) > 20, recorded
    missing = []
    for prefix, patterns in book.KEY_METRICS.items():
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(r, pattern) or fnmatch.fnmatchcase(pattern, r) for r in recorded):
                missing.append(pattern)
    assert missing == [], f"book cards ask for metrics no notebook records: {missing}"


def test_failed_notebook_page_shows_the_error_at_the_top(site):
    page = soup(site / "01_fail.html")
    banner = page.select_one(".banner-failed")
    assert banner is not None and "ValueError: second line of the message" in banner.get_text()
    first_cell = page.select_one(".jp-Cell")
    assert banner.sourceline < first_cell.sourceline, "the error banner must come before the notebook's cells"
    assert banner.select_one('a[href="#papermill-error-cell"]') is not None
    assert "deliberate failure" in page.get_text()  # the traceback itself is on the page too


def test_skipped_page_says_why(site):
    banner = soup(site / "02_skip.html").select_one(".banner-skipped")
    assert banner is not None and "needs 64 GPUs (found 0)" in banner.get_text()


def test_lesson_page_has_outputs_figure_toc_prev_next_and_source_link(site, fixture_run):
    page = soup(site / "00_pass.html")
    imgs = [i for i in page.select(".jp-OutputArea-output img") if i["src"].startswith("data:image/png;base64,")]
    assert imgs and base64.b64decode(imgs[0]["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "recorded t0.size = 30 items" in page.get_text()  # outputs as the run saved them
    assert [a.get_text(strip=True) for a in page.select(".book-toc li a")][0] == "Fixture that passes"
    assert page.select_one(".prev-next .next")["href"] == "01_fail.html"
    assert page.select_one(".prev-next .prev") is None
    assert page.find("a", href="notebooks/source/00_pass.ipynb") is not None
    assert soup(site / "02_skip.html").select_one(".prev-next .prev")["href"] == "01_fail.html"
    # rendering is not executing: the run's executed notebook is untouched
    assert (site / "notebooks/executed/00_pass.ipynb").read_bytes() == (fixture_run / "00_pass.ipynb").read_bytes()


def test_course_lib_names_in_code_link_to_the_api_reference(site):
    links = {a.get_text(): a["href"] for a in soup(site / "00_pass.html").select("a.api-link")}
    assert links["record"] == "api/course_lib/report.html#record"
    assert links["report"] == "api/course_lib/report.html"
    assert links["course_lib"] == "api/course_lib.html"


def test_api_reference_says_where_each_function_is_introduced(site):
    api = soup(site / "api.html")
    row = api.find("a", href="api/course_lib/report.html#record").find_parent("tr")
    assert row.find("a", href="00_pass.html") is not None  # first notebook of the run that calls it
    assert "Store metric" in row.get_text()  # the docstring's one-line summary
    skipped = api.select_one(".skipped-modules").get_text()
    assert "course_lib.llm.streamlit_app" in skipped  # never imported (importing it runs the app)
    pdoc_page = soup(site / "api/course_lib/report.html")
    intro = pdoc_page.select_one("#record .book-introduced a")
    assert intro is not None and intro["href"] == "../../00_pass.html"
    # docstrings that say "Introduced in ``NN_name.ipynb``" are used as they are
    bench = api.find("a", href="api/course_lib/bench.html#benchmark").find_parent("tr")
    assert "00_environment" in bench.get_text()


def test_results_page_has_every_metric(site, fixture_run):
    page = soup(site / "results.html")
    report = json.loads((fixture_run / "report.json").read_text())["notebooks"]
    for stem, entry in report.items():
        section = page.select_one(f"#results-{stem}")
        assert section is not None
        for name, m in entry["metrics"].items():
            row = section.find("code", string=name).find_parent("tr")
            assert book.format_value(m["value"]) in row.get_text()


def test_charts_from_whichever_metrics_exist():
    """Lesson 3-5 metric names give the charts the issue names; fewer than two values give none."""
    from types import SimpleNamespace as NS

    def lesson(metrics):
        return NS(title="t", metrics={k: {"value": v, "unit": u} for k, (v, u) in metrics.items()})

    run = NS(profile="cpu", machine="python 3.11 · 2 CPU threads · no GPU", lessons=[
        lesson({f"l3.ppl_{q}_{lang}": (30.0 + i, "ppl") for i, q in enumerate(["fp32", "int8", "int4"]) for lang in ("en", "zh")}
               | {"l3.tokens_per_s_fp32": (20.0, "tokens/s"), "l3.tokens_per_s_int8": (9.0, "tokens/s")}),
        lesson({"l4.gflops_naive": (1.2, "GFLOP/s"), "l4.gflops_hand": (18.0, "GFLOP/s"),
                "l4.peak_gflops_estimate": (200.0, "GFLOP/s"), "l4.relax_max_abs_diff": (1e-7, "abs")}),
        lesson({"l5.map_fp32": (0.5, "mAP"), "l5.map_int8_max": (0.45, "mAP"), "l5.map_int8_entropy": (0.48, "mAP")}),
        lesson({"l0.matmul_gflops": (4.0, "GFLOP/s")}),
    ])
    charts = results.charts(run)
    titles = [c.title for c in charts]
    assert titles == ["Lesson 3 — perplexity per weight format", "Lesson 3 — decoding speed",
                      "Lesson 4 — GFLOP/s ladder (512³ matmul)", "Lesson 5 — mAP per calibration method and model variant"]
    for c in charts:
        assert base64.b64decode(c.png_base64)[:8] == b"\x89PNG\r\n\x1a\n"
        assert c.subtitle == "profile cpu · python 3.11 · 2 CPU threads · no GPU"
    assert "peak (estimate) 200 GFLOP/s" in charts[2].alt and "l4.relax_max_abs_diff" not in charts[2].metrics


def test_exercise_hints_stay_folded(tmp_path):
    """A Markdown cell `<details><summary>Hint</summary> ... </details>` keeps the hint inside <details>."""
    import nbformat
    from types import SimpleNamespace as NS

    from course_lib.book import lessons

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "<details><summary>Hint</summary>\n\nMultiply by **two**.\n</details>")])
    body, _ = lessons.render_cells(NS(notebook=nb, stem="hint"))
    details = BeautifulSoup(body, "html.parser").select_one("details")
    assert "Multiply by" in details.get_text()


# --------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# --------------------------------------------------------------------------------------------


def _book_cli(capsys, *args) -> tuple[int, str]:
    status = runner.main(["book", *map(str, args)])
    err = capsys.readouterr().err.strip()
    return status, err


def test_run_folder_without_report_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    status, err = _book_cli(capsys, tmp_path / "run", "--out", tmp_path / "book")
    assert status == 2 and len(err.splitlines()) == 1 and "report.json" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_report_naming_a_missing_notebook_is_one_line_and_writes_nothing(tmp_path, capsys, fixture_run):
    run = tmp_path / "run"
    shutil.copytree(fixture_run, run, ignore=shutil.ignore_patterns("book", "00_pass.ipynb"))
    status, err = _book_cli(capsys, run, "--out", tmp_path / "book", "--notebooks", NB)
    assert status == 2 and len(err.splitlines()) == 1 and "00_pass" in err and "missing" in err
    assert not (tmp_path / "book").exists() and not list(tmp_path.glob(".book*"))


def test_out_must_not_be_a_folder_that_is_not_a_book(tmp_path, capsys, fixture_run):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    status, err = _book_cli(capsys, fixture_run, "--out", tmp_path / "mine")
    assert status == 2 and "not a course book" in err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_rebuilding_replaces_an_earlier_book(tmp_path, fixture_run, capsys):
    out = tmp_path / "book"
    assert runner.main(["book", str(fixture_run), "--out", str(out), "--notebooks", str(NB), "--no-api"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "index.html")  # the path is the last line
    (out / "stale.html").write_text("from an earlier build")
    assert runner.main(["book", str(fixture_run), "--out", str(out), "--notebooks", str(NB), "--no-api"]) == 0
    assert not (out / "stale.html").exists() and (out / "index.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book"]


# --------------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
APT = "apt-get install -y chromium chromium-driver fonts-noto-cjk fonts-noto-color-emoji"


def _need(condition: bool, why: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{why} in CI (.ci/run installs it: {APT})", pytrace=False)
    pytest.skip(f"{why}: {APT}")


@pytest.fixture(scope="module")
def browser():
    _need(CHROMIUM.exists() and CHROMEDRIVER.exists(), "needs Debian's chromium and chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need(False, "needs selenium (pip install -e '.[dev]')")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()


def _open(driver, path: Path, shot: Path) -> list[dict]:
    """Load a page from disk, save a full-height screenshot, return its console errors."""
    driver.set_window_size(1280, 1000)
    driver.get(path.as_uri())
    driver.execute_script("return document.fonts.ready")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height, 800), 6000))
    shot.parent.mkdir(exist_ok=True)
    driver.save_screenshot(str(shot))
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def test_book_in_headless_chromium(browser, site):
    from selenium.webdriver.common.by import By

    shots = site / "screenshots"
    errors = _open(browser, site / "index.html", shots / "index.png")
    links = [a.get_attribute("href").rsplit("/", 1)[-1] for a in browser.find_elements(By.CSS_SELECTOR, "a.lesson-link")]
    assert links == ["00_pass.html", "01_fail.html", "02_skip.html"]
    browser.find_element(By.CSS_SELECTOR, 'a.lesson-link[href="00_pass.html"]').click()
    assert browser.current_url.endswith("/00_pass.html")

    errors += _open(browser, site / "00_pass.html", shots / "00_pass.png")
    figures = browser.execute_script(
        "return [...document.querySelectorAll('.jp-OutputArea-output img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).map(i => [i.naturalWidth, i.getBoundingClientRect().right]);")
    assert figures, "no figure rendered on the lesson page"
    content_right = browser.execute_script("return document.querySelector('main.book-main').getBoundingClientRect().right")
    assert all(right <= content_right + 1 for _, right in figures), "a figure overflows the content column"
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")

    errors += _open(browser, site / "01_fail.html", shots / "01_fail.png")
    assert browser.find_element(By.CSS_SELECTOR, ".banner-failed").is_displayed()
    errors += _open(browser, site / "results.html", shots / "results.png")
    errors += _open(browser, site / "api" / "course_lib" / "report.html", shots / "api_report.png")
    assert not errors, f"console errors: {errors}"
    assert (shots / "index.png").stat().st_size > 10_000


def test_a_cjk_font_is_installed_for_chinese_text():
    """Lesson 3 measures Chinese perplexity and shows Chinese text: Chromium needs a CJK font to draw it."""
    fc = shutil.which("fc-list")
    _need(fc is not None, "needs fontconfig (comes with chromium)")
    families = subprocess.run([fc, ":lang=zh", "family"], capture_output=True, text=True).stdout
    _need(bool(families.strip()), "needs a CJK font (fonts-noto-cjk)")
