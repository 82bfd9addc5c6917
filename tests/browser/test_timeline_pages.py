"""The offline timeline pages in Chromium: bars, thresholds, evidence, the incomplete banner, accessibility, print."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from fhirsvc.render.timeline import MARK_COLOURS, PAGE_BACKGROUND, TEXT_COLOURS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page


def open_page(page: Page, pages: Path, name: str) -> None:
    page.goto((pages / name).as_uri())


def centre_y(locator: Locator) -> float:
    box = locator.bounding_box()
    assert box is not None, "not rendered"
    return box["y"] + box["height"] / 2


def test_hiv_failure_bar_threshold_and_evidence_above_it(page: Page, pages: Path) -> None:
    open_page(page, pages, "hiv-fail-basic.html")
    chart = page.locator('svg[data-program="hiv"]')
    assert chart.locator("g.line-bar").count() == 1
    threshold = page.get_by_role("img", name="threshold 200 copies/mL")
    assert threshold.is_visible()
    evidence = chart.locator('[data-evidence="true"]')
    assert evidence.count() == 2
    for index in range(2):
        point = evidence.nth(index)
        assert point.is_visible()
        assert centre_y(point) < centre_y(threshold.locator("line"))  # 450 and 900 plot above the 200 line
    finding_id = evidence.first.get_attribute("data-finding")
    article = page.locator(f"#finding-{finding_id}")
    assert article.is_visible() and "HIV-1 RNA ≥200 copies/mL twice" in article.inner_text()
    assert article.get_by_role("link", name="DHHS Adult and Adolescent ARV Guidelines").is_visible()


def test_t2d_target_band_and_the_egfr_gates(page: Page, pages: Path) -> None:
    open_page(page, pages, "t2d-ckd-egfr-45.html")
    assert page.get_by_role("img", name="target band: below 7 %").is_visible()
    egfr = page.get_by_role("group", name=re.compile(r"^eGFR"))
    assert egfr.locator("g.threshold").count() == 4
    assert egfr.locator('[data-evidence="true"]').count() == 2


def test_progression_and_relapse_are_marks_with_the_evidence_highlighted(page: Page, pages: Path) -> None:
    open_page(page, pages, "nsclc-progression-on-chemo-io.html")
    cited = page.locator('g.event[data-evidence="true"]')
    assert (
        cited.count() == 1 and cited.get_attribute("data-ref") == "Observation/nsclc-progression-on-chemo-io-status-3"
    )
    assert page.locator('g.event[data-evidence="false"]').count() == 2
    open_page(page, pages, "ms-relapse-on-interferon.html")
    relapse = page.get_by_role("img", name=re.compile(r"^2026-02-01: ms \(relapse\); evidence for: "))
    assert relapse.is_visible()


def test_an_incomplete_record_shows_the_banner(page: Page, pages: Path) -> None:
    open_page(page, pages, "incomplete.html")
    assert "Data may be incomplete" in page.get_by_role("alert").inner_text()
    open_page(page, pages, "hiv-fail-basic.html")
    assert page.get_by_role("alert").count() == 0


def test_the_index_lists_and_links_every_page(page: Page, pages: Path) -> None:
    open_page(page, pages, "index.html")
    links = page.get_by_role("link")
    assert links.count() == 4
    page.get_by_role("link", name="Patient/t2d-ckd-egfr-45").click()
    assert page.locator('svg[data-program="t2d"]').is_visible()


def test_every_chart_has_a_title_and_every_mark_a_name(page: Page, pages: Path) -> None:
    for name in ("hiv-fail-basic.html", "t2d-ckd-egfr-45.html", "ms-relapse-on-interferon.html"):
        open_page(page, pages, name)
        untitled = page.evaluate(
            "[...document.querySelectorAll('svg')].filter(s => !s.querySelector(':scope > title')?.textContent.trim())"
            ".length"
        )
        unnamed = page.evaluate(
            "[...document.querySelectorAll('[role=img]')].filter(e => !e.getAttribute('aria-label')).length"
        )
        assert (untitled, unnamed) == (0, 0)
        assert page.locator("svg").count() >= 1


def _luminance(colour: str) -> float:
    """WCAG 2.2 relative luminance (https://www.w3.org/TR/WCAG22/#dfn-relative-luminance) of "#rrggbb" or rgb()."""
    channels = (
        [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
        if colour.startswith("#")
        else [int(c) for c in re.findall(r"\d+", colour)[:3]]
    )
    linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(one: str, other: str) -> float:
    light, dark = sorted((_luminance(one), _luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_the_palette_meets_wcag_contrast(page: Page, pages: Path) -> None:
    assert all(contrast(c, PAGE_BACKGROUND) >= 4.5 for c in TEXT_COLOURS.values())  # SC 1.4.3, text
    assert all(contrast(c, PAGE_BACKGROUND) >= 3.0 for c in MARK_COLOURS.values())  # SC 1.4.11, graphics
    open_page(page, pages, "t2d-ckd-egfr-45.html")
    rendered = page.evaluate(
        "[...document.querySelectorAll('svg text')].map(t => getComputedStyle(t).fill)"
        ".concat([...document.querySelectorAll('p, h1, h2, h3, td, th, a, summary')]"
        ".map(e => getComputedStyle(e).color))"
    )
    assert rendered and min(contrast(colour, PAGE_BACKGROUND) for colour in set(rendered)) >= 4.5


def test_usable_without_javascript_and_printable(browser: Browser, pages: Path) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto((pages / "hiv-fail-basic.html").as_uri())
        assert page.locator("g.line-bar").first.is_visible()
        page.emulate_media(media="print")
        assert page.get_by_role("img", name="threshold 200 copies/mL").is_visible()
        assert page.pdf(format="A4")[:4] == b"%PDF"
    finally:
        context.close()
