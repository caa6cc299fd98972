"""The report's page: its CSS/JS come from package data, and it renders in headless Chromium."""

# The shared fixtures are imported from report_helpers (a conftest.py here would shadow tests/conftest.py
# for `from conftest import ...`); pytest injects them by name, which ruff reads as redefinitions.
# ruff: noqa: F811
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from report_helpers import CHROMIUM_FLAGS, built, chromium, cli_run, sweep_dir  # noqa: F401

from dreambooth_sweep.report.page import static_text


def test_css_and_js_are_package_data_inlined_in_the_page(built: Path) -> None:
    page = built.read_text()
    css, js = static_text("report.css"), static_text("report.js")
    assert ".pair img{max-width:100%" in css and "sortBy" in js
    assert css in page and js in page  # one self-contained file


def test_html_renders_in_headless_chromium(built: Path, tmp_path: Path) -> None:
    url = built.resolve().as_uri() + "#sort=-trial"  # the page sorts the trials table on load
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = proc.stdout
    table = dom[dom.index('id="trials-table"') :]
    table = table[: table.index("</table>")]
    assert re.findall(r'<tr data-trial="(\d+)"', table) == ["1", "0"]  # sorted by the script, descending
    assert 'aria-sort="descending"' in table
    assert dom.count('<tr data-trial="') == 2 + 6  # trials table + checkpoints table
