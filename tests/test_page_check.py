"""The CI's page check (.ci/page_check.py) reads back what its script measured in a rendered page."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("page_check", Path(__file__).parents[1] / ".ci" / "page_check.py")
page_check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(page_check)

REPORT = '{&quot;tables&quot;:2,&quot;parameters&quot;:2,&quot;problems&quot;:[&quot;a &lt; b&quot;]}'


@pytest.mark.parametrize("tag", ['<pre id="ranlib-page-check">',
                                 '<pre id="ranlib-page-check" tabindex="-1">'])  # as the theme's script leaves it
def test_the_report_is_read_whatever_attributes_the_theme_adds(tag):
    dom = f"<html><body><pre>code</pre>{tag}{REPORT}</pre></body></html>"
    assert page_check.findings(dom) == {"tables": 2, "parameters": 2, "problems": ["a < b"]}


def test_a_page_without_the_report_has_no_findings():
    assert page_check.findings('<html><body><pre id="other">{}</pre></body></html>') is None
