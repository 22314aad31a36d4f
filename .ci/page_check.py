"""Measure built book pages in headless Chromium as a reader at 1280 px, and on a 390 px phone,
would see them.

    python .ci/page_check.py PAGE.html [PAGE.html ...] [--screenshots DIR]
    python .ci/page_check.py --book book/_build/html        # every page of a built book

For each page a copy with a small script is written beside it (so that the theme's CSS and
scripts load as they do for the page), Chromium renders it and dumps the DOM, and the script's
measurements are read back from it. At 1280 px:

- every table, folded ones opened, (and the output area holding it) must fit: no element between the table and the
  page's article may need a horizontal scrollbar (scrollWidth > clientWidth), and the table may
  not reach past the article's right edge; nor may the page itself scroll sideways;
- a notebook's parameters cells (tagged ``parameters`` or papermill's ``injected-parameters``)
  must not show their source unfolded.

At 390 px, every shown table with a ``verdict`` column must show that whole column on screen
without scrolling (a wider table may scroll sideways, but not hide the verdicts).

Exit status 1 when a page breaks a rule (each problem is printed), 0 otherwise. With
``--screenshots DIR`` a PNG of each page at both widths goes there too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTH = 1280
PHONE = 390

MEASURE = r"""
<script>
window.addEventListener("load", () => setTimeout(() => {
  if (RANLIB_PHONE) return phone();
  const problems = [];
  const article = document.querySelector("article") || document.body;
  const right = article.getBoundingClientRect().right;
  const name = (el) => {
    const cell = el.closest(".cell");
    const heading = [...document.querySelectorAll("h1, h2, h3")]
      .filter((h) => h.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING).pop();
    return (heading ? heading.textContent.replace("#", "").trim() : "page") +
           (cell ? " (cell " + [...document.querySelectorAll(".cell")].indexOf(cell) + ")" : "");
  };
  // Content of a closed <details> keeps its boxes in Chromium (content-visibility), so folded
  // means: inside a closed <details>, or not visible by CSS.
  const visible = (el) => !el.closest("details:not([open])") && el.getClientRects().length > 0 &&
    (el.checkVisibility ? el.checkVisibility({checkVisibilityCSS: true}) : true);
  let parameters = 0;
  for (const cell of document.querySelectorAll(".cell.tag_parameters, .cell.tag_injected-parameters")) {
    parameters += 1;
    const source = cell.querySelector(".cell_input pre") || cell.querySelector("pre");
    if (source && visible(source) && source.getBoundingClientRect().height > 0) {
      problems.push(`a parameters cell (${cell.className.match(/tag_[\w-]+/g).join(" ")}) shows unfolded`);
    }
  }
  // A folded table must fit too once its reader opens it: open every fold, then measure.
  for (const fold of document.querySelectorAll("details")) fold.open = true;
  let tables = 0;
  for (const table of document.querySelectorAll("article table")) {
    if (!visible(table)) continue;
    tables += 1;
    for (let el = table; el && el !== article.parentElement; el = el.parentElement) {
      if (el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0 &&
          getComputedStyle(el).overflowX !== "visible") {
        problems.push(`table under "${name(table)}" needs a horizontal scrollbar ` +
                      `(${el.scrollWidth} px in ${el.clientWidth} px)`);
        break;
      }
    }
    const edge = table.getBoundingClientRect().right;
    if (edge > right + 1) {
      problems.push(`table under "${name(table)}" reaches ${Math.round(edge - right)} px past the page`);
    }
  }
  const page = document.documentElement;
  if (page.scrollWidth > page.clientWidth + 1) {
    problems.push(`the page itself scrolls sideways (${page.scrollWidth} px in ${page.clientWidth} px)`);
  }
  report({tables, parameters, problems});
}, 500));

function report(result) {
  const out = document.createElement("pre");
  out.id = "ranlib-page-check";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
  if (window.parent !== window) window.parent.postMessage(out.textContent, "*");  // the phone frame
}

// On a phone: a verdict column must be on screen, where the reader lands, without scrolling.
function phone() {
  const problems = [];
  const width = document.documentElement.clientWidth;
  let verdicts = 0;
  for (const table of document.querySelectorAll("article table")) {
    if (table.closest("details:not([open])") || !table.getClientRects().length) continue;
    const header = [...table.querySelectorAll("thead th")];
    const column = header.findIndex((th) => th.textContent.trim() === "verdict");
    if (column < 0) continue;
    verdicts += 1;
    const cells = [header[column], ...[...table.querySelectorAll("tbody tr")].map((tr) => tr.children[column])];
    const edge = Math.max(...cells.filter(Boolean).map((cell) => cell.getBoundingClientRect().right));
    if (edge > width + 1) {
      const heading = [...document.querySelectorAll("h1, h2, h3")]
        .filter((h) => h.compareDocumentPosition(table) & Node.DOCUMENT_POSITION_FOLLOWING).pop();
      const under = heading ? heading.textContent.replace("#", "").trim() : "page";
      problems.push(`at ${width} px the verdict column under "${under}" ` +
                    `ends ${Math.round(edge - width)} px off screen`);
    }
  }
  report({tables: verdicts, parameters: 0, problems});
}
</script>
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    sys.exit("page_check: no chromium on PATH")


def browser(profile: str) -> list[str]:
    return [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
            "--virtual-time-budget=5000", f"--window-size={WIDTH},1600"]


# Headless Chromium will not open a window narrower than 500 px, so a phone is a 390-px frame
# holding the page (its media queries see 390 px), which posts the measurements to this page.
PHONE_FRAME = """<!DOCTYPE html><html><body style="margin:0">
<iframe src="{src}" style="width:{width}px;height:1600px;border:0"></iframe>
<script>addEventListener("message", (e) => {{
  const out = document.createElement("pre"); out.id = "ranlib-page-check"; out.textContent = e.data;
  document.body.appendChild(out);
}});</script></body></html>"""


def findings(dom: str) -> dict | None:
    """The measurements the script left in a dumped ``dom``, None when it holds none. The theme's
    script may add attributes to the report's ``<pre>`` (``tabindex="-1"`` makes a wide one
    scrollable by keyboard), so any attributes after its id are accepted."""
    import html

    found = re.search(r'<pre id="ranlib-page-check"[^>]*>(.*?)</pre>', dom, re.S)
    return json.loads(html.unescape(found.group(1))) if found else None


def measure(page: Path, width: int = WIDTH, attempts: int = 3) -> dict:
    """The script's findings on ``page`` (a built HTML file) at ``width`` px (:data:`PHONE`: the
    verdict column only, in a frame of that width). A render that ends before the page's load
    event (a busy machine) is tried again, up to ``attempts`` times."""
    copy = page.with_name(f".page-check-{page.name}")
    frame = page.with_name(f".page-check-frame-{page.name}")
    text = page.read_text(encoding="utf8")
    script = f"<script>const RANLIB_PHONE = {'true' if width == PHONE else 'false'};</script>" + MEASURE
    copy.write_text(text.replace("</body>", script + "</body>", 1), encoding="utf8")
    frame.write_text(PHONE_FRAME.format(src=copy.name, width=width), encoding="utf8")
    shown = frame if width == PHONE else copy
    try:
        for _ in range(attempts):
            with tempfile.TemporaryDirectory() as profile:
                dom = subprocess.run([*browser(profile), "--dump-dom", shown.as_uri()],
                                     capture_output=True, text=True, timeout=120).stdout
            found = findings(dom)
            if found is not None:
                return found
    finally:
        copy.unlink()
        frame.unlink()
    return {"tables": 0, "parameters": 0, "problems": ["the page's measurements never came back"]}


def screenshot(page: Path, out: Path, height: int = 2400, width: int = WIDTH) -> None:
    """A PNG of ``page`` at ``width`` px (a phone: the page in a frame of that width, cropped to it)."""
    frame = page.with_name(f".page-check-frame-{page.name}")
    frame.write_text(PHONE_FRAME.format(src=page.name, width=width).replace("1600px", f"{height}px"),
                     encoding="utf8")
    try:
        with tempfile.TemporaryDirectory() as profile:
            args = [a if not a.startswith("--window-size") else f"--window-size={max(width, 500)},{height}"
                    for a in browser(profile)]
            shown = frame if width < WIDTH else page
            subprocess.run([*args, f"--screenshot={out}", shown.as_uri()], capture_output=True, timeout=120)
    finally:
        frame.unlink()
    if width < WIDTH and out.is_file():
        from PIL import Image

        with Image.open(out) as image:
            image.crop((0, 0, width, image.height)).save(out)


def book_pages(html: Path) -> list[Path]:
    """Every page of a built book (index.html only redirects to the first page: left out)."""
    skip = {"index.html", "genindex.html", "search.html"}
    return sorted(p for p in html.rglob("*.html")
                  if p.name not in skip and not p.name.startswith(".") and "_static" not in p.parts
                  and "_sources" not in p.parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", type=Path)
    parser.add_argument("--book", type=Path, help="check every page of this built book (its html folder)")
    parser.add_argument("--screenshots", type=Path, default=None)
    parser.add_argument("--min-tables", type=int, default=0,
                        help="fail unless the pages together show at least this many tables (at 1280 px)")
    args = parser.parse_args(argv)
    pages = list(args.pages) + (book_pages(args.book) if args.book else [])
    if not pages:
        parser.error("give pages or --book")
    failed, tables = False, 0
    for page in pages:
        wide, narrow = measure(page.resolve()), measure(page.resolve(), PHONE)
        tables += wide["tables"]
        problems = wide["problems"] + narrow["problems"]
        print(f"page_check: {page}: {wide['tables']} table(s), {wide['parameters']} parameters "
              f"cell(s), {narrow['tables']} verdict table(s) at {PHONE} px, {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        failed |= bool(problems)
        if args.screenshots:
            args.screenshots.mkdir(parents=True, exist_ok=True)
            stem = "_".join(page.resolve().with_suffix("").parts[-2:])
            screenshot(page.resolve(), args.screenshots / f"{stem}.png")
            screenshot(page.resolve(), args.screenshots / f"{stem}-{PHONE}.png", width=PHONE)
    if tables < args.min_tables:
        print(f"page_check: {tables} table(s) shown, fewer than {args.min_tables}")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("LANG", "C.UTF-8")
    sys.exit(main())
