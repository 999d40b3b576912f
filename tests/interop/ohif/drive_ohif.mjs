// Open our result objects in the built OHIF viewer, in Debian's headless Chromium, and report
// what the page shows, as JSON on stdout (screenshots go to the plan's outDir).
//
//   node drive_ohif.mjs plan.json
//
// The plan (written by tests/interop/test_ohif_viewer.py) lists pages to open, each a
// viewer URL and a kind:
//   "seg":   confirm OHIF's "load the segmentation?" prompt ([data-cy="yes-hydrate-btn"]),
//            open the Segmentations panel, wait until the SEG is on the viewport, and give the
//            outline of each planted lesion on the displayed slice in screenshot pixels
//            (cornerstone's own worldToCanvas, so the test compares like with like);
//   "sr":    open the Measurements panel and step through the SR's measurements with the
//            viewport's arrows ([data-cy="viewport-action-arrows-right"]), collecting the
//            labels OHIF draws (SVG text) at each step, and the outlines' points in patient
//            coordinates as OHIF placed them (cornerstone's annotation state), and what OHIF
//            made of the report (srReading);
//   "sr-load": accept OHIF's offer to load the report's measurements as its own tools
//            ([data-cy="yes-hydrate-btn"], before any other click: a click elsewhere answers
//            "No"), open the Measurements panel and read its rows and OHIF's measurement
//            service;
//   "image": just the displayed image.
// For every page: the console errors and uncaught exceptions, the page's text when it did
// not load, and one screenshot. Nothing here judges; the Python test does.
//
// OHIF exposes window.cornerstone and window.services (its own debugging hooks); they are
// read, never changed.

import fs from "node:fs";
import path from "node:path";
import process from "node:process";

import puppeteer from "puppeteer-core";

const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];
const READY_TIMEOUT_MS = plan.readyTimeoutMs ?? 60000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function poll(page, fn, arg, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await page.evaluate(fn, arg).catch(() => null);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(250);
  }
}

// The first viewport shows an image (cornerstone has a current image id with pixel data).
function viewportReady() {
  const engine = window.cornerstone?.getRenderingEngines?.()[0];
  const viewport = engine?.getViewports?.()[0];
  const imageId = viewport?.getCurrentImageId?.();
  return imageId && viewport.getImageData?.() ? imageId : null;
}

// The SR display set is loaded: OHIF has parsed the report and its measurements.
function srLoaded() {
  const sets = window.services?.displaySetService?.getActiveDisplaySets?.() ?? [];
  const sr = sets.find((set) => set.Modality === "SR" && set.isLoaded);
  return sr ? { measurements: sr.measurements?.length ?? 0 } : null;
}

// What OHIF made of the report: whether it offers to load it as its own tools, and each
// measurement's tracking identifier as it read it.
function srReading() {
  const sets = window.services?.displaySetService?.getActiveDisplaySets?.() ?? [];
  const sr = sets.find((set) => set.Modality === "SR" && set.isLoaded);
  return sr
    ? {
        isImagingMeasurementReport: Boolean(sr.isImagingMeasurementReport),
        isRehydratable: Boolean(sr.isRehydratable),
        isHydrated: Boolean(sr.isHydrated),
        tracked: window.services.measurementService.getMeasurements().length,
        trackingIdentifiers: (sr.measurements ?? []).map((m) => m.TrackingIdentifier ?? null),
      }
    : null;
}

function viewportState() {
  const viewport = window.cornerstone.getRenderingEngines()[0].getViewports()[0];
  const rect = viewport.canvas.getBoundingClientRect();
  const imageId = viewport.getCurrentImageId();
  const plane = window.cornerstone.metaData.get("imagePlaneModule", imageId) ?? {};
  const general = window.cornerstone.metaData.get("generalImageModule", imageId) ?? {};
  return {
    imageId,
    sopInstanceUid: general.sopInstanceUID ?? null,
    imagePositionPatient: plane.imagePositionPatient ?? null,
    canvas: { x: rect.x, y: rect.y, width: rect.width, height: rect.height },
    devicePixelRatio: window.devicePixelRatio,
    labels: [...document.querySelectorAll("svg text")].map((text) => text.textContent),
  };
}

// Each sphere's cut by the displayed (axial) slice, as a polygon in screenshot pixels.
function lesionOutlines(spheres) {
  const viewport = window.cornerstone.getRenderingEngines()[0].getViewports()[0];
  const rect = viewport.canvas.getBoundingClientRect();
  const plane = window.cornerstone.metaData.get("imagePlaneModule", viewport.getCurrentImageId());
  const z = plane.imagePositionPatient[2];
  const ratio = window.devicePixelRatio;
  return spheres.map(({ center, radius }) => {
    const r2 = radius * radius - (z - center[2]) ** 2;
    if (r2 <= 0) return [];
    const r = Math.sqrt(r2);
    const points = [];
    for (let i = 0; i < 180; i += 1) {
      const angle = (2 * Math.PI * i) / 180;
      const [x, y] = viewport.worldToCanvas([center[0] + r * Math.cos(angle), center[1] + r * Math.sin(angle), z]);
      points.push([(rect.x + x) * ratio, (rect.y + y) * ratio]);
    }
    return points;
  });
}

function segmentationShown() {
  const services = window.services;
  const viewport = window.cornerstone.getRenderingEngines()[0].getViewports()[0];
  const shown = services?.segmentationService?.getSegmentationRepresentations?.(viewport.id) ?? [];
  return shown.length > 0 ? shown.length : null;
}

async function clickIfPresent(page, selector, timeoutMs) {
  try {
    await page.waitForSelector(selector, { visible: true, timeout: timeoutMs });
    await page.click(selector);
    return true;
  } catch {
    return false;
  }
}

// Each page in its own browser context: OHIF keeps state in local and session storage, and
// each check should see what a user opening that link afresh sees.
async function openPage(browser, item) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  const errors = [];
  const notes = [];
  page.on("console", (message) => {
    if (message.type() === "error") errors.push(message.text());
    else if (/hydrat|tool state|spatial coordinates/i.test(message.text())) notes.push(message.text().slice(0, 300));
  });
  page.on("pageerror", (error) => errors.push(`uncaught: ${error.message}`));
  await page.evaluateOnNewDocument(() => {
    localStorage.setItem("shownTours", JSON.stringify(["basicViewerTour"]));
  });
  const started = Date.now();
  const result = { name: item.name, url: item.url, errors, notes, loaded: false };
  try {
    await page.goto(plan.baseUrl + item.url, { waitUntil: "domcontentloaded", timeout: READY_TIMEOUT_MS });
    if (item.kind === "sr" || item.kind === "sr-load") {
      result.sr = await poll(page, srLoaded, null, READY_TIMEOUT_MS, "OHIF to load the SR");
    }
    // An SR without measurements has no image to show: OHIF leaves its viewport empty.
    if (item.kind !== "sr" || result.sr.measurements > 0) {
      await poll(page, viewportReady, null, READY_TIMEOUT_MS, "the first viewport to show an image");
    }
    result.loaded = true;
    result.secondsToImage = (Date.now() - started) / 1000;
    if (item.kind === "seg") await segPage(page, item, result);
    else if (item.kind === "sr") await srPage(page, item, result);
    else if (item.kind === "sr-load") await loadReportPage(page, item, result);
    else await sleep(1500);
    if (item.kind !== "sr" || result.sr.measurements > 0) result.state ??= await page.evaluate(viewportState);
  } catch (error) {
    result.failure = String(error?.message ?? error);
    result.pageText = (await page.evaluate(() => document.body?.innerText ?? "").catch(() => "")).slice(0, 2000);
  }
  await recordErrorBoundary(page, errors);
  const screenshot = path.join(plan.outDir, `${item.name}.png`);
  await page.screenshot({ path: screenshot }).catch(() => {});
  result.screenshot = screenshot;
  result.seconds = (Date.now() - started) / 1000;
  await context.close();
  return result;
}

// OHIF catches a component's exception in a React error boundary and shows a toast,
// "Something went wrong", without writing to the console; its details are one click away.
async function recordErrorBoundary(page, errors) {
  const text = await page.evaluate(() => document.body?.innerText ?? "").catch(() => "");
  if (!text.includes("Something went wrong")) return;
  let details = "(no details)";
  if (await clickIfPresent(page, 'xpath///button[contains(., "Show Details")]', 3000)) {
    await sleep(1000);
    details = await page.evaluate(() => document.querySelector('[role="dialog"]')?.innerText ?? "(no dialog)");
  }
  errors.push(`OHIF error boundary: ${details.slice(0, 3000)}`);
}

async function segPage(page, item, result) {
  result.confirmedHydration = await clickIfPresent(page, '[data-cy="yes-hydrate-btn"]', 20000);
  result.openedPanel = await clickIfPresent(page, '[data-cy="panelSegmentation-btn"]', 5000);
  result.segmentationRepresentations = await poll(page, segmentationShown, null, READY_TIMEOUT_MS, "the SEG on the viewport");
  await sleep(1000); // let the labelmap render after it is attached
  result.state = await page.evaluate(viewportState);
  result.outlines = await page.evaluate(lesionOutlines, item.spheres);
  result.panelText = await page.evaluate(() => document.body.innerText);
}

async function srPage(page, item, result) {
  result.openedPanel = await clickIfPresent(page, '[data-cy="trackedMeasurements-btn"]', 5000);
  await sleep(2000);
  const steps = [];
  for (let i = 0; i < item.steps && result.sr.measurements > 0; i += 1) {
    steps.push(await page.evaluate(viewportState));
    if (!(await clickIfPresent(page, '[data-cy="viewport-action-arrows-right"]', 3000))) break;
    await sleep(1500);
  }
  result.steps = steps;
  result.state = steps[0] ?? null;
  // The outlines as OHIF placed them: cornerstone annotations with their points in patient mm.
  result.annotations = await page.evaluate(() =>
    window.cornerstoneTools.annotation.state.getAllAnnotations().map((annotation) => ({
      tool: annotation.metadata?.toolName ?? null,
      trackingUid: annotation.data?.TrackingUniqueIdentifier ?? null,
      points: annotation.data?.handles?.points ?? [],
    })),
  );
  result.reading = await page.evaluate(srReading);
  result.panelText = await page.evaluate(() => document.body.innerText);
}

// The rows of the Measurements panel, once it lists at least `count`.
function measurementRows(count) {
  const rows = [...document.querySelectorAll('[data-cy^="measurement-table-row-"]')].map((row) => row.innerText);
  return rows.length >= count ? rows : null;
}

// Accept OHIF's offer to load the report's measurements ("tracked": rebuilt as its own tools),
// then read what its Measurements panel and measurement service list.
async function loadReportPage(page, item, result) {
  result.reading = await page.evaluate(srReading);
  result.confirmedReportHydration = await clickIfPresent(page, '[data-cy="yes-hydrate-btn"]', 20000);
  result.openedPanel = await clickIfPresent(page, '[data-cy="trackedMeasurements-btn"]', 5000);
  result.measurementRows = await poll(page, measurementRows, item.rows, 20000, "the panel's rows").catch(() => []);
  await sleep(1500); // let the viewport draw the rebuilt outlines
  result.trackedMeasurements = await page.evaluate(() =>
    window.services.measurementService.getMeasurements().map((m) => ({
      label: m.label ?? null,
      toolName: m.toolName ?? null,
      displayText: m.displayText ?? null,
      sopInstanceUid: m.SOPInstanceUID ?? null,
    })),
  );
  result.readingAfter = await page.evaluate(srReading);
  result.state = await page.evaluate(viewportState);
  result.panelText = await page.evaluate(() => document.body.innerText);
}

async function main() {
  const browser = await puppeteer.launch({
    executablePath: plan.chromium,
    headless: true,
    args: CHROMIUM_ARGS,
    defaultViewport: { width: plan.width ?? 1400, height: plan.height ?? 900 },
  });
  try {
    const pages = [];
    for (const item of plan.pages) pages.push(await openPage(browser, item));
    process.stdout.write(JSON.stringify({ browser: await browser.version(), pages }) + "\n");
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  process.stderr.write(`drive_ohif failed: ${error?.stack ?? error}\n`);
  process.exit(1);
});
