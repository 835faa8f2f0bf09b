// The dashboard in headless Chromium: a running campaign's sent bar advances, Pause pauses it, and
// its message is shown recipient by recipient in a sandboxed frame.
// Usage: node dashboard.mjs BASE_URL CAMPAIGN_ID   (exit status 0 when every check held)
import { chromium } from "playwright-core";

const [base, id] = process.argv.slice(2);
const fail = (msg) => { console.error("dashboard: " + msg); process.exit(1); };
if (!base || !id) fail("usage: node dashboard.mjs BASE_URL CAMPAIGN_ID");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${base}/#/`);
  await page.waitForSelector(`a[href="#/c/${id}"]`, { timeout: 15000 });
  await page.click(`a[href="#/c/${id}"]`);
  await page.waitForSelector("#status.running", { timeout: 15000 });
  const sent = async () => Number((await page.textContent('[data-n="sent"]')).split("/")[0].trim());
  const first = await sent();
  // The bar advances from the event stream, without a reload.
  await page.waitForFunction((n) => {
    const el = document.querySelector('[data-n="sent"]');
    return el && Number(el.textContent.split("/")[0]) > n;
  }, first, { timeout: 30000 });
  const later = await sent();
  if (!(later > first)) fail(`sent did not advance (${first} → ${later})`);
  const live = await page.textContent("#live");
  if (!live.includes("live")) fail(`not following the stream: ${live}`);
  await page.click("#pause");
  await page.waitForSelector("#status.paused", { timeout: 15000 });
  const r = await fetch(`${base}/v1/campaigns/${id}`);
  const c = await r.json();
  if (c.status !== "paused") fail(`the server says ${c.status}, not paused`);
  if (await page.isDisabled("#resume")) fail("Resume stays disabled while paused");
  // A minute's bar with sends in it (a minute just begun may have none yet: its bar is flat).
  await page.waitForFunction(
    () => [...document.querySelectorAll("#chart rect")].some((r) => Number(r.getAttribute("height")) > 0),
    null, { timeout: 15000 });
  // The message, recipient by recipient, in a frame that may run nothing.
  const frame = async () => (await page.getAttribute("#message-frame", "srcdoc")) || "";
  await page.waitForFunction(() => (document.querySelector("#message-frame")?.srcdoc || "").includes("Hi Zoë 0"),
    null, { timeout: 15000 });
  if ((await page.getAttribute("#message-frame", "sandbox")) !== "") fail("the message frame is not fully sandboxed");
  const options = await page.$$eval("#message-to option", (os) => os.map((o) => o.value));
  if (options.length < 2) fail(`only ${options.length} recipients to choose from`);
  await page.selectOption("#message-to", options[1]);
  await page.waitForFunction(() => (document.querySelector("#message-frame")?.srcdoc || "").includes("Hi Zoë 1"),
    null, { timeout: 15000 });
  const subject = await page.textContent("#message-subject");
  if (subject !== "Subject: Hello Zoë 1") fail(`the subject shown is ${JSON.stringify(subject)}`);
  if (!(await frame()).includes("from Köln")) fail("the frame does not hold the recipient's message");
  if (errors.length) fail("page errors: " + errors.join("; "));
  console.log(`dashboard: sent ${first} → ${later}, paused at ${c.counts.sent}/${c.counts.total}`);
} finally {
  await browser.close();
}
