// Drives Debian's chromium (headless, through puppeteer-core) over the HTML
// reports denet writes, and prints what it measured as JSON for the busted
// spec to assert (tests/integration/reports_spec.lua):
//
//   node reports.js OFFCPU.html ZOOM_FRAME SEARCH STATS.html [SCREENSHOT_DIR]
//
// offcpu: the width of ZOOM_FRAME's box before and after a click on it, and
// the flame graph's full width; the boxes highlighted after typing SEARCH.
// stats: the number of points of every plotted series.
'use strict';
const path = require('path');
const puppeteer = require(path.join(__dirname, 'node_modules', 'puppeteer-core'));

const [offcpuFile, zoomFrame, search, statsFile, shots] = process.argv.slice(2);

async function main() {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--allow-file-access-from-files'],
  });
  const out = {};
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    // any request leaving the file is a failure: the reports work offline
    const requests = [];
    page.on('request', (r) => { if (!r.url().startsWith('file:')) requests.push(r.url()); });
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));

    await page.goto('file://' + path.resolve(offcpuFile), { waitUntil: 'load' });
    const box = (name) => page.evaluate((n) => {
      const r = [...document.querySelectorAll('#flame rect.frame')].find((e) => e.dataset.name === n);
      return r ? { width: +r.getAttribute('width'), x: +r.getAttribute('x') } : null;
    }, name);
    const o = { frames: await page.$$eval('#flame rect.frame', (l) => l.length) };
    o.full = await page.evaluate(() => {
      const svg = document.getElementById('flame');
      return svg.viewBox.baseVal.width - 20;
    });
    o.before = await box(zoomFrame);
    if (shots) await page.screenshot({ path: path.join(shots, 'offcpu-report.png'), fullPage: true });
    const handle = await page.evaluateHandle((n) =>
      [...document.querySelectorAll('#flame rect.frame')].find((e) => e.dataset.name === n), zoomFrame);
    if (handle.asElement()) {
      await handle.asElement().click();
      o.after = await box(zoomFrame);
      o.reset_enabled = await page.$eval('#reset', (b) => !b.disabled);
      await page.click('#reset');
      o.after_reset = await box(zoomFrame);
    }
    await page.type('#search', search);
    o.highlighted = await page.$$eval('#flame rect.match', (l) => l.map((e) => e.dataset.name));
    o.matched = await page.$eval('#matched', (e) => e.textContent);
    o.verdict = await page.$eval('#verdict', (e) => e.textContent);
    o.thread_rows = await page.$$eval('#threads tr', (l) => l.length - 1);
    o.site_rows = await page.$$eval('#sites tr', (l) => l.length - 1);
    out.offcpu = o;

    await page.goto('file://' + path.resolve(statsFile), { waitUntil: 'load' });
    out.stats = {
      charts: await page.$$eval('.chart', (cs) => cs.map((c) => ({
        id: c.id,
        series: [...c.querySelectorAll('polyline')].map((p) => ({
          name: p.dataset.series,
          points: p.getAttribute('points').trim().split(/\s+/).filter((s) => s).length,
        })),
      }))),
      summary_rows: await page.$$eval('#summary tr', (l) => l.length),
    };
    if (shots) await page.screenshot({ path: path.join(shots, 'stats-report.png'), fullPage: true });
    out.requests = requests;
    out.errors = errors;
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => { console.error(e); process.exit(1); });
