"""One HTML page per executed notebook: nbconvert's ``HTMLExporter`` with JupyterLab's cell template.

The exporter renders the finished notebook (outputs as they were saved; nothing is executed) with
the book's template ``templates/nbconvert/book_lesson`` (cells only: no require.js, MathJax or widget
scripts from a CDN). Figures stay base64 PNG inside the page. The cells are then placed in the book's
layout with a table of contents built from the rendered headings, and every ``course_lib`` name in a
code cell becomes a link to its API page.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from course_lib.book.common import TEMPLATES

NBCONVERT_TEMPLATES = TEMPLATES / "nbconvert"
LAB_STATIC = ("static/index.css", "static/theme-light.css")  # JupyterLab's look, from nbconvert's lab template


def exporter():
    from nbconvert import HTMLExporter

    return HTMLExporter(
        template_name="book_lesson",
        extra_template_basedirs=[str(NBCONVERT_TEMPLATES)],
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        # not embed_images: it re-parses every HTML block of the Markdown on its own, which closes the
        # exercises' `<details><summary>Hint</summary>` before the hint text (shown, not folded away)
    )


def lab_css() -> str:
    """JupyterLab's stylesheet and light theme, as shipped with nbconvert's ``lab`` template."""
    from nbconvert.exporters.templateexporter import TemplateExporter

    exp = TemplateExporter(template_name="lab")
    parts = []
    for rel in LAB_STATIC:
        for base in exp.template_paths:
            path = Path(base) / rel
            if path.exists():
                parts.append(f"/* nbconvert lab template: {rel} */\n" + path.read_text(encoding="utf-8"))
                break
        else:
            raise FileNotFoundError(f"nbconvert's lab template has no {rel}")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Post-processing the rendered cells
# --------------------------------------------------------------------------------------------


def table_of_contents(soup) -> list[dict]:
    """Headings (h1-h3) of the Markdown cells, with the ids nbconvert gave them."""
    toc = []
    for h in soup.select(".jp-MarkdownCell h1, .jp-MarkdownCell h2, .jp-MarkdownCell h3"):
        if not h.get("id"):
            continue
        text = h.get_text(" ", strip=True).rstrip("¶").strip()
        toc.append({"id": h["id"], "text": text, "level": int(h.name[1])})
    return toc


DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _name_tokens(pre):
    """Maximal ``name(.name)*`` runs of pygments token spans inside one highlighted code block."""
    run: list = []
    expect_name = True
    for child in list(pre.children):
        cls = child.get("class", []) if getattr(child, "name", None) == "span" else None
        if cls is not None and expect_name and ("n" in cls or "nn" in cls):
            run.append(child)
            expect_name = False
            continue
        if cls is not None and not expect_name and "o" in cls and child.get_text() == ".":
            expect_name = True
            continue
        if run:
            yield run
        run, expect_name = [], True
        if cls is not None and ("n" in cls or "nn" in cls):
            run, expect_name = [child], False
    if run:
        yield run


def link_code(soup, aliases: dict[str, str], reference) -> int:
    """Wrap ``course_lib`` names in code cells with links to their API pages; returns how many."""
    count = 0
    for pre in soup.select(".jp-CodeCell .jp-InputArea-editor .highlight pre"):
        for run in _name_tokens(pre):
            parts: list[str] = []
            for token in run:
                text = token.get_text()
                parts += text.split(".")
                root = aliases.get(parts[0]) if parts[0] != "course_lib" else "course_lib"
                if root is None:
                    break
                href = reference.href(".".join([root, *parts[1:]]))
                if href:
                    link = soup.new_tag("a", href=href, attrs={"class": "api-link", "title": "API reference"})
                    token.wrap(link)
                    count += 1
    # inline code in the prose: `hw.UtilizationSampler`, `bench.benchmark()`, `course_lib.report`
    for code in soup.select(".jp-MarkdownCell code"):
        if code.find_parent("pre") is not None or code.find_parent("a") is not None:
            continue
        text = code.get_text().strip().removesuffix("()")
        if not DOTTED.match(text):
            continue
        head, _, rest = text.partition(".")
        root = "course_lib" if head == "course_lib" else aliases.get(head)
        href = reference.href(f"{root}.{rest}" if rest else root) if root else None
        if href:
            code.wrap(soup.new_tag("a", href=href, attrs={"class": "api-link", "title": "API reference"}))
            count += 1
    return count


def mark_outputs(soup) -> None:
    """Classes the book's CSS uses: skip notes (``> **⏭ skipped ...**``) and error outputs stand out."""
    for q in soup.select(".jp-OutputArea-output blockquote"):
        if "⏭" in q.get_text():
            q["class"] = q.get("class", []) + ["skip-note"]


# --------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------


def render_cells(lesson) -> tuple[str, list[str]]:
    """(cells HTML, pygments CSS) of one executed notebook, rendered as saved."""
    nb = lesson.notebook
    body, resources = exporter().from_notebook_node(nb, resources={"metadata": {"name": lesson.stem}})
    return body, list(resources.get("inlining", {}).get("css", []))


def build_lessons(out: Path, run, env, ctx, reference) -> None:
    """Write ``NN_name.html`` for every lesson, ``lab.css``, and copies of the notebooks it links to."""
    from bs4 import BeautifulSoup

    (out / "notebooks" / "executed").mkdir(parents=True)
    (out / "notebooks" / "source").mkdir(parents=True)
    pygments_css = None
    lessons = run.lessons
    template = env.get_template("lesson.html.j2")
    for i, lesson in enumerate(lessons):
        body, css = render_cells(lesson)
        if pygments_css is None:
            pygments_css = "\n".join(css)
        soup = BeautifulSoup(body, "html.parser")
        mark_outputs(soup)
        aliases = reference.uses.get(lesson.stem, {})
        links = link_code(soup, aliases, reference) if reference.members else 0
        shutil.copyfile(lesson.executed, out / "notebooks" / "executed" / lesson.executed.name)
        source_href = None
        if lesson.source is not None:
            shutil.copyfile(lesson.source, out / "notebooks" / "source" / lesson.source.name)
            source_href = f"notebooks/source/{lesson.source.name}"
        html = template.render(
            **ctx,
            lesson=lesson,
            cells=str(soup),
            toc=table_of_contents(soup),
            prev=lessons[i - 1] if i > 0 else None,
            next=lessons[i + 1] if i + 1 < len(lessons) else None,
            source_href=source_href,
            executed_href=f"notebooks/executed/{lesson.executed.name}",
            api_links=links,
            error_anchor="papermill-error-cell" if soup.find(id="papermill-error-cell") else None,
        )
        (out / lesson.page).write_text(html, encoding="utf-8")
    (out / "lab.css").write_text(lab_css() + "\n/* pygments (nbconvert) */\n" + (pygments_css or ""), encoding="utf-8")
