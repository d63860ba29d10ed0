"""Opens the query-api dashboard in headless Chromium, picks a host, waits
for the chart of one metric and checks its number of points, looks at the
aggregation, cluster and fleet views, and saves screenshots.

Playwright for Python (PyPI `playwright`, installed by scripts/deps.sh)
drives Debian's /usr/bin/chromium; it downloads no browser.

Run by tests/tests/query.rs (dashboard_in_headless_chromium) with:
  DASHBOARD_URL           http://127.0.0.1:PORT/dashboard/
  DASHBOARD_HOST          host to pick
  DASHBOARD_METRIC        metric whose chart is checked
  DASHBOARD_EXPECT_POINTS points that chart must show
  DASHBOARD_SCREENSHOT    where to save the PNG
  CHROMIUM                browser binary (default /usr/bin/chromium)
"""

import os
import sys

from playwright.sync_api import sync_playwright

TIMEOUT_MS = 20_000


def env(key, default=None):
    value = os.environ.get(key, default)
    if value is None:
        raise SystemExit(f"{key} is not set")
    return value


def main():
    url = env("DASHBOARD_URL")
    host = env("DASHBOARD_HOST")
    metric = env("DASHBOARD_METRIC")
    expect_points = int(env("DASHBOARD_EXPECT_POINTS"))
    screenshot = env("DASHBOARD_SCREENSHOT")
    shot = lambda suffix: screenshot.removesuffix(".png") + suffix + ".png"

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=env("CHROMIUM", "/usr/bin/chromium"),
            headless=True,
            # Running as root in CI: Chromium refuses its sandbox there.
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="load")

            # The host list, with search.
            page.wait_for_selector(f'#hosts li[data-host="{host}"]')
            total = page.locator("#hosts li").count()
            page.fill("#search", host)
            filtered = page.locator("#hosts li").count()
            if filtered != 1:
                raise AssertionError(f'search "{host}" shows {filtered} hosts, want 1')
            print(f"host list: {total} hosts, search shows {filtered}")

            # Pick the host: one chart per default metric, the one we check among them.
            page.click(f'#hosts li[data-host="{host}"]')
            chart = page.locator(f'.chart[data-metric="{metric}"]')
            chart.wait_for()
            page.wait_for_function(
                "([m, n]) => document.querySelector(`.chart[data-metric=\"${m}\"]`)"
                "?.dataset.points === String(n)",
                arg=[metric, expect_points],
            )
            points = int(chart.get_attribute("data-points"))
            if chart.locator("canvas").count() < 1:
                raise AssertionError(f"chart {metric} has no canvas")
            print(f"chart {metric}: {points} points")
            title = page.text_content("#host-title")
            if title != host:
                raise AssertionError(f"detail shows {title}, want {host}")
            page.screenshot(path=screenshot, full_page=True)
            print(f"screenshot {screenshot}")

            # The aggregation view across hosts.
            page.click("#tab-aggregate")
            page.fill("#agg-metric", metric)
            page.click("#agg-form button[type=submit]")
            page.wait_for_selector("#agg-chart .chart canvas")
            print(f"aggregate: {page.text_content('#agg-info')}")
            page.screenshot(path=shot("-aggregate"), full_page=True)

            # The cluster view.
            page.click("#tab-cluster")
            page.wait_for_selector("#cluster-table tbody tr")
            print(f"cluster: {page.locator('#cluster-table tbody tr').count()} members")
            page.screenshot(path=shot("-cluster"), full_page=True)

            # The fleet view: host-manager's inventory, counts per state.
            page.click("#tab-fleet")
            page.wait_for_selector(f'#fleet-table tbody tr[data-host="{host}"]')
            counts = {
                k: int(page.text_content(f'#fleet-summary [data-count="{k}"] b'))
                for k in ["hosts", "up", "stale", "down", "discovered"]
            }
            rows = page.locator("#fleet-table tbody tr").count()
            if sum(counts[k] for k in ["up", "stale", "down", "discovered"]) != counts["hosts"]:
                raise AssertionError(f"fleet counts do not add up: {counts}")
            if rows != counts["hosts"]:
                raise AssertionError(f"fleet lists {rows} hosts, its summary says {counts['hosts']}")
            print(f"fleet: {rows} hosts {counts}")
            page.screenshot(path=shot("-fleet"), full_page=True)

            # No error banner, no script errors.
            if page.is_visible("#error"):
                raise AssertionError(f"error banner: {page.text_content('#error')}")
            if errors:
                raise AssertionError(f"page errors: {'; '.join(errors)}")
        except Exception as e:  # report any failure as one line, exit 1
            print(f"dashboard test failed: {e}", file=sys.stderr)
            return 1
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
