// The dashboard in headless Chromium: a running campaign's sent bar advances, Pause pauses it, and
// its message is shown recipient by recipient in a sandboxed frame, and a recipient's open and click
// (and a privacy prefetch, apart) show in its engagement figures.
// Usage: node dashboard.mjs BASE_URL CAMPAIGN_ID   (exit status 0 when every check held)
import { chromium } from "playwright-core";

const [base, id] = process.argv.slice(2);
const fail = (msg) => { console.error("dashboard: " + msg); process.exit(1); };
// A wait that says, when it times out, what it waited for and what the page showed instead.
const until = async (page, what, shown, fn, arg) => {
  try {
    await page.waitForFunction(fn, arg, { timeout: 15000 });
  } catch (e) {
    fail(`waited for ${what}; the page shows ${JSON.stringify(await page.evaluate(shown).catch(() => null))}`);
  }
};
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
  await until(page, "a minute's bar with sends", () => document.querySelector("#chart")?.innerHTML.slice(0, 300),
    () => [...document.querySelectorAll("#chart rect")].some((r) => Number(r.getAttribute("height")) > 0));
  // The message, recipient by recipient, in a frame that may run nothing.
  const frame = async () => (await page.getAttribute("#message-frame", "srcdoc")) || "";
  const framed = () => (document.querySelector("#message-frame")?.srcdoc || "").slice(0, 300);
  await until(page, "the first recipient's message", framed,
    () => (document.querySelector("#message-frame")?.srcdoc || "").includes("Hi Zoë 0"));
  if ((await page.getAttribute("#message-frame", "sandbox")) !== "") fail("the message frame is not fully sandboxed");
  const options = await page.$$eval("#message-to option", (os) => os.map((o) => o.value));
  if (options.length < 2) fail(`only ${options.length} recipients to choose from`);
  await page.selectOption("#message-to", options[1]);
  await until(page, "the second recipient's message", framed,
    () => (document.querySelector("#message-frame")?.srcdoc || "").includes("Hi Zoë 1"));
  const subject = await page.textContent("#message-subject");
  if (subject !== "Subject: Hello Zoë 1") fail(`the subject shown is ${JSON.stringify(subject)}`);
  if (!(await frame()).includes("from Köln")) fail("the frame does not hold the recipient's message");
  // Opens and clicks. The frame's message has stand-ins that record nothing (looking at it is no
  // one's open); the recipient's own link and pixel, as sent, are followed here (on this server,
  // not the configured base URL); a privacy prefetch is shown apart.
  const shown = await frame();
  const inert = shown.match(/src="https:\/\/mail\.example\.com(\/o\/[^"]+)"/);
  if (!inert) fail("the frame's message has no pixel: " + shown);
  const viewed = await fetch(base + inert[1].replace(/&amp;/g, "&"), { headers: { "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0" } });
  if (viewed.status !== 404) fail(`the frame's pixel names someone (${viewed.status})`);
  const recipient = options[1];
  const sent_as = await (await fetch(`${base}/v1/campaigns/${id}/recipients/${recipient}/message`)).json();
  const html = sent_as.html;
  const click = html.match(/href="https:\/\/mail\.example\.com(\/c\/[^"]+)"/);
  const pixel = html.match(/src="https:\/\/mail\.example\.com(\/o\/[^"]+)"/);
  if (!click || !pixel) fail("the message has no tracked link or pixel: " + html);
  const unescape = (s) => s.replace(/&amp;/g, "&");
  const iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
  const go = await fetch(base + unescape(click[1]), { redirect: "manual", headers: { "User-Agent": iphone } });
  if (go.status !== 302 || go.headers.get("location") !== "https://shop.example.com/sale")
    fail(`the click answered ${go.status} to ${go.headers.get("location")}`);
  for (const ua of [iphone, "Mozilla/5.0"]) {
    const o = await fetch(base + unescape(pixel[1]), { headers: { "User-Agent": ua } });
    if (o.status !== 200 || o.headers.get("content-type") !== "image/gif") fail(`the pixel answered ${o.status}`);
  }
  const figures = async () => [...["#opens", "#clicks", "#machine", "#links"].map((q) => document.querySelector(q)?.textContent),
    (await (await fetch(location.pathname.replace(/\/$/, "") + "/v1/campaigns/" + location.hash.split("/").pop())).json()).links];
  await until(page, "one open, one click and one machine open", figures,
    () => document.querySelector("#opens")?.textContent.startsWith("1 (")
      && document.querySelector("#clicks")?.textContent.startsWith("1 (")
      && document.querySelector("#machine")?.textContent === "1 / 0");
  await until(page, "the clicked link in the links table", figures,
    () => (document.querySelector("#links")?.textContent || "").includes("https://shop.example.com/sale"));
  const row = await page.$$eval("#links tbody tr td", (tds) => tds.map((td) => td.textContent));
  if (JSON.stringify(row) !== JSON.stringify(["https://shop.example.com/sale", "1", "1", "0"]))
    fail(`the links table shows ${JSON.stringify(row)}`);
  const opens = await page.textContent("#opens");
  if (errors.length) fail("page errors: " + errors.join("; "));
  console.log(`dashboard: sent ${first} → ${later}, paused at ${c.counts.sent}/${c.counts.total}, opened ${opens}`);
} finally {
  await browser.close();
}
