// Drives sluice's demo page in headless Chromium for tests/browser.rs.
//
//   node demo.mjs BASE_URL PUBLISHER_KEY
//
// Opens the page at phone width in three tabs (one per tier) of one browser
// profile, so they share the browser's six connections per host; waits for
// frames in all three; switches a tab's tier; publishes a row whose text is
// an <img onerror> to the topic the tabs show and waits for it in every tab.
// Prints one JSON object with what it saw on stdout; tests/browser.rs judges
// it. Exits non-zero (with the reason on stderr) when a wait times out.
// SLUICE_DEMO_SCREENSHOT=FILE also saves a phone-width screenshot.

import { chromium } from "playwright-core";

const [base, publisherKey] = process.argv.slice(2);
if (!base || !publisherKey) {
  console.error("usage: node demo.mjs BASE_URL PUBLISHER_KEY");
  process.exit(2);
}
const TOPIC = "odds/basketball_nba";
const TIERS = ["scale", "enterprise", "business"];
const PAYLOAD = '<img src=x onerror="window.__xss=1">';
const WAIT_MS = 10_000;

// Runs in every page before its own scripts: counts the EventSources the
// page makes and records the first frames/s it shows (a MutationObserver
// sees every change, even in a background tab whose timers are throttled).
function instrument() {
  const Orig = window.EventSource;
  window.__sources = [];
  window.EventSource = class extends Orig {
    constructor(...args) {
      super(...args);
      window.__sources.push(this);
    }
  };
  window.__firstRate = null;
  new MutationObserver(() => {
    const fps = document.getElementById("fps");
    const total = document.getElementById("total");
    if (window.__firstRate || !fps || !total || fps.textContent === "…") return;
    window.__firstRate = { fps: Number(fps.textContent), total: Number(total.textContent) };
  }).observe(document, { subtree: true, childList: true, characterData: true });
}

const total = (page) => page.evaluate(() => Number(document.getElementById("total").textContent));
const openSources = (page) =>
  page.evaluate(() => window.__sources.filter((s) => s.readyState !== EventSource.CLOSED).length);

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  timeout: 3 * WAIT_MS,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const errors = [];
try {
  const context = await browser.newContext({
    viewport: { width: 375, height: 740 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
  });
  context.setDefaultTimeout(WAIT_MS);
  await context.addInitScript(instrument);
  context.on("page", (page) => {
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(`console: ${m.text()}`);
    });
    page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
    page.on("response", (r) => {
      if (r.status() >= 400) errors.push(`HTTP ${r.status()} for ${r.url()}`);
    });
    page.on("request", (r) => {
      if (new URL(r.url()).pathname === "/x") errors.push(`the row's <img> was loaded: ${r.url()}`);
    });
  });

  // Three tabs, each the one stream of its tier.
  const pages = [];
  for (const tier of TIERS) {
    const page = await context.newPage();
    await page.goto(`${base}/?tier=${tier}&topic=${encodeURIComponent(TOPIC)}`);
    pages.push(page);
  }
  const live = [];
  for (const page of pages) live.push(await total(page));
  // All three stay live together: each gets more frames after the third opened.
  for (const [i, page] of pages.entries()) {
    await page.waitForFunction(
      (n) => Number(document.getElementById("total").textContent) > n && window.__firstRate,
      live[i],
    );
  }

  const tabs = [];
  for (const [i, page] of pages.entries()) {
    tabs.push({
      tier: TIERS[i],
      label: await page.textContent("#label"),
      status: await page.textContent("#status"),
      firstRate: await page.evaluate(() => window.__firstRate),
      openSources: await openSources(page),
    });
  }

  // A row whose text is HTML, published to the topic every tab shows.
  const published = await fetch(`${base}/v1/publish/${TOPIC}`, {
    method: "POST",
    headers: { "X-API-Key": publisherKey, "Content-Type": "application/json" },
    body: JSON.stringify({
      event_id: PAYLOAD, bookmaker: "pinnacle", market: "h2h", outcome: "home",
      price_american: 100, kind: "game", updated_at: 0,
    }),
  });
  const publishStatus = published.status;
  for (const [i, page] of pages.entries()) {
    await page.waitForFunction((p) => document.getElementById("log").textContent.includes(p), PAYLOAD);
    const seen = await page.evaluate(() => ({
      xss: typeof window.__xss,
      imgs: document.querySelectorAll("main img").length,
      innerWidth: window.innerWidth,
      scrollWidth: document.documentElement.scrollWidth,
    }));
    Object.assign(tabs[i], seen);
  }
  if (process.env.SLUICE_DEMO_SCREENSHOT) {
    await pages[2].screenshot({ path: process.env.SLUICE_DEMO_SCREENSHOT });
  }

  // The tier buttons switch the one stream.
  const first = pages[0];
  await first.click('#tiers button[data-tier="business"]');
  await first.waitForFunction(() =>
    document.getElementById("status").textContent.startsWith("coalesced")
    && Number(document.getElementById("total").textContent) > 0);
  const switched = {
    label: await first.textContent("#label"),
    status: await first.textContent("#status"),
    url: first.url(),
    sources: await first.evaluate(() => window.__sources.length),
    openSources: await openSources(first),
  };

  console.log(JSON.stringify({ tabs, publishStatus, switched, errors }));
} catch (e) {
  console.error(`demo page check failed: ${e.message}`);
  if (errors.length) console.error(`errors so far: ${errors.join("\n")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
