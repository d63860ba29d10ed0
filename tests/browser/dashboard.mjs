// Opens the query-api dashboard in headless Chromium, picks a host, waits
// for the chart of one metric and checks its number of points, looks at the
// aggregation and cluster views, and saves a screenshot.
//
// Run by tests/tests/query.rs (dashboard_in_headless_chromium) with:
//   DASHBOARD_URL           http://127.0.0.1:PORT/dashboard/
//   DASHBOARD_HOST          host to pick
//   DASHBOARD_METRIC        metric whose chart is checked
//   DASHBOARD_EXPECT_POINTS points that chart must show
//   DASHBOARD_SCREENSHOT    where to save the PNG
//   CHROMIUM                browser binary (default /usr/bin/chromium)
import { chromium } from 'playwright-core';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const url = env('DASHBOARD_URL');
const host = env('DASHBOARD_HOST');
const metric = env('DASHBOARD_METRIC');
const expectPoints = Number(env('DASHBOARD_EXPECT_POINTS'));
const screenshot = env('DASHBOARD_SCREENSHOT');
const TIMEOUT = 20000;

const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  headless: true,
  // Running as root in CI: Chromium refuses its sandbox there.
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(url, { waitUntil: 'load' });

  // The host list, with search.
  await page.waitForSelector(`#hosts li[data-host="${host}"]`, { timeout: TIMEOUT });
  const all = await page.locator('#hosts li').count();
  await page.fill('#search', host);
  const filtered = await page.locator('#hosts li').count();
  if (filtered !== 1) throw new Error(`search "${host}" shows ${filtered} hosts, want 1`);
  console.log(`host list: ${all} hosts, search shows ${filtered}`);

  // Pick the host: one chart per default metric, the one we check among them.
  await page.click(`#hosts li[data-host="${host}"]`);
  const chart = page.locator(`.chart[data-metric="${metric}"]`);
  await chart.waitFor({ timeout: TIMEOUT });
  await page.waitForFunction(
    ([m, n]) => document.querySelector(`.chart[data-metric="${m}"]`)?.dataset.points === String(n),
    [metric, expectPoints],
    { timeout: TIMEOUT },
  );
  const points = Number(await chart.getAttribute('data-points'));
  const canvases = await chart.locator('canvas').count();
  if (canvases < 1) throw new Error(`chart ${metric} has no canvas`);
  console.log(`chart ${metric}: ${points} points`);
  const title = await page.textContent('#host-title');
  if (title !== host) throw new Error(`detail shows ${title}, want ${host}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot ${screenshot}`);

  // The aggregation view across hosts.
  await page.click('#tab-aggregate');
  await page.fill('#agg-metric', metric);
  await page.click('#agg-form button[type=submit]');
  await page.waitForSelector('#agg-chart .chart canvas', { timeout: TIMEOUT });
  console.log(`aggregate: ${await page.textContent('#agg-info')}`);
  await page.screenshot({ path: screenshot.replace(/\.png$/, '-aggregate.png'), fullPage: true });

  // The cluster view.
  await page.click('#tab-cluster');
  await page.waitForSelector('#cluster-table tbody tr', { timeout: TIMEOUT });
  console.log(`cluster: ${await page.locator('#cluster-table tbody tr').count()} members`);
  await page.screenshot({ path: screenshot.replace(/\.png$/, '-cluster.png'), fullPage: true });

  // No error banner, no script errors.
  if (await page.isVisible('#error')) {
    throw new Error(`error banner: ${await page.textContent('#error')}`);
  }
  if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
} catch (e) {
  failed = true;
  console.error(`dashboard test failed: ${e.message}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
