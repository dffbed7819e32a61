// Browser test of the dashboard of a real fleet, driven by
// harmony-fleet-e2e/tests/dashboard_browser.rs: the operator's dashboard in front of a real
// kube-apiserver, nats-server and device agents running podman. Debian's Chromium through
// playwright-core, signed in as a person on the machine would be (loopback, no token: the
// dashboard `local up` serves). Usage:
//   node tests/real-stack.mjs <base-url> <screenshot-dir> <chromium-path> <device> <deployment>
// <deployment> runs on <device> and logs a line `tick <n>` every second. The script ends with
// <device> blacklisted through its row; the caller checks podman and lifts the blacklist.
// Exits non-zero with the failed step on stderr; writes one PNG per step; prints one
// `timing <step> <ms>` line per step on stdout.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [base, shots, executablePath, device, deployment] = process.argv.slice(2);
if (!deployment) {
  console.error("usage: real-stack.mjs <base-url> <screenshot-dir> <chromium-path> <device> <deployment>");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
// Each wait is bounded; a real agent answers in milliseconds, a rollout in seconds.
const TIMEOUT = 30000;

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const problems = [];
let step = "start";
let started = Date.now();
const begin = (name) => {
  step = name;
  started = Date.now();
};
const done = () => console.log(`timing ${JSON.stringify(step)} ${Date.now() - started}`);
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("console", (m) => {
    // Failed loads are reported with their URL by the response handler below.
    if (/Failed to load resource/.test(m.text())) {
      return;
    }
    if (m.type() === "error" || /Content Security Policy/.test(m.text())) {
      problems.push(`console ${m.type()}: ${m.text()}`);
    }
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("response", (r) => {
    if (r.status() >= 400) {
      problems.push(`HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
    }
  });
  const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

  begin("overview");
  await page.goto(`${base}/`);
  await page.getByRole("heading", { name: "Overview", level: 1 }).waitFor();
  await page.locator("dt", { hasText: "Devices" }).waitFor();
  await shot("overview");
  done();

  begin("devices: the real agent's row");
  await page.goto(`${base}/devices`);
  await page.locator(`#device-${device}`).waitFor();
  await page.locator(`#device-${device}`, { hasText: "online" }).waitFor();
  await shot("devices");
  done();

  begin("device page");
  await page.getByRole("link", { name: device, exact: true }).click();
  await page.getByRole("heading", { name: `Device ${device}`, level: 1 }).waitFor();
  // The inventory the agent reported: a real kernel.
  await page.locator("dd", { hasText: "Linux" }).first().waitFor();
  done();

  begin("device: uname -a");
  await page.getByLabel("Command (sh -c)").fill("uname -a");
  await page.getByRole("button", { name: "Run" }).click();
  const uname = page.locator("[data-command-result] pre", { hasText: "Linux" });
  await uname.waitFor();
  await page.getByText("uname -a — exit 0").waitFor();
  console.log(`uname -a: ${(await uname.innerText()).trim()}`);
  done();

  begin("device: live logs of the real container");
  await page.getByRole("button", { name: `Live logs of ${deployment}`, exact: true }).click();
  await page.locator("[data-log-line]", { hasText: "tick " }).first().waitFor();
  const lastTick = () =>
    page.evaluate(() =>
      Math.max(
        -1,
        ...[...document.querySelectorAll("[data-log-line]")].map((l) => {
          const m = l.textContent.match(/tick (\d+)/);
          return m ? Number(m[1]) : -1;
        }),
      ),
    );
  const first = await lastTick();
  // A line written after the tail opened: the panel follows, it did not only read history.
  await page.waitForFunction(
    (n) =>
      [...document.querySelectorAll("[data-log-line]")].some((l) => {
        const m = l.textContent.match(/tick (\d+)/);
        return m && Number(m[1]) >= n + 2;
      }),
    first,
  );
  console.log(`live logs: tick ${first} when opened, tick ${await lastTick()} followed`);
  await shot("device-logs");
  done();

  begin("device: shell echo hi through the agent's pty");
  await page.getByRole("button", { name: "Open shell" }).click();
  await page.locator('[data-shell-terminal][data-state="open"]').waitFor();
  await page.locator("[data-shell-terminal]").click();
  await page.keyboard.type("echo hi");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => {
    const rows = document.querySelector("[data-shell-terminal] .xterm-rows");
    return rows && rows.innerText.split("\n").some((line) => line.trim() === "hi");
  });
  await shot("device-shell");
  done();

  begin("device: the shell exits");
  await page.keyboard.type("exit");
  await page.keyboard.press("Enter");
  await page.locator('[data-shell-terminal][data-state="closed"]').waitFor();
  await page.getByText("Closed: shell exited with status 0").waitFor();
  done();

  begin("devices: blacklist the device in its row");
  await page.goto(`${base}/devices`);
  await page.getByRole("button", { name: `Blacklist ${device}`, exact: true }).click();
  await page.locator(`#device-${device}[data-blacklisted="true"]`).waitFor();
  await page.locator(`#device-${device}`, { hasText: "blacklisted" }).waitFor();
  await page.getByRole("button", { name: `Unblacklist ${device}`, exact: true }).waitFor();
  await shot("devices-blacklisted");
  done();

  begin("devices: the row stays blacklisted after a reload");
  await page.reload();
  await page.locator(`#device-${device}[data-blacklisted="true"]`).waitFor();
  done();

  if (problems.length) {
    throw new Error(problems.join("\n"));
  }
  console.log("real-stack browser test passed");
} catch (e) {
  console.error(`real-stack browser test failed at step "${step}": ${e.message}`);
  if (problems.length) console.error(problems.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
}
