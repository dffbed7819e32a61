// Browser test of the dashboard, driven by tests/browser.rs against `serve-web --mock`:
// Debian's Chromium through playwright-core. Usage:
//   node tests/browser.mjs <base-url> <screenshot-dir> <chromium-path>
// Exits non-zero with the failed step on stderr; writes one PNG per page.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [base, shots, executablePath] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const TIMEOUT = 15000;

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const problems = [];
let step = "start";
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
      problems.push(`HTTP ${r.status()} for ${r.url()}`);
    }
  });
  const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

  step = "overview";
  await page.goto(`${base}/`);
  await page.getByRole("heading", { name: "Overview", level: 1 }).waitFor();
  await page.getByText("Offline devices (2)").waitFor();
  await shot("overview");

  step = "devices: list and filter";
  await page.goto(`${base}/devices`);
  await page.waitForFunction(() => document.querySelectorAll("#device-rows tr").length === 10);
  await page.getByLabel("Status").selectOption("offline");
  await page.waitForFunction(() => document.querySelectorAll("#device-rows tr").length === 2);
  await page.getByLabel("Status").selectOption("");
  await page.waitForFunction(() => document.querySelectorAll("#device-rows tr").length === 10);

  step = "devices: blacklist toggles the row in place";
  await page.getByRole("button", { name: "Blacklist pi-01", exact: true }).click();
  await page.locator('#device-pi-01[data-blacklisted="true"]').waitFor();
  await page.getByRole("button", { name: "Unblacklist pi-01" }).waitFor();
  await shot("devices");

  step = "device: run a command";
  await page.goto(`${base}/devices/pi-02`);
  await page.getByLabel("Command (sh -c)").fill("echo hi");
  await page.getByRole("button", { name: "Run" }).click();
  await page.locator("[data-command-result] pre", { hasText: "hi" }).waitFor();

  step = "device: live log lines arrive";
  await page.getByRole("button", { name: "Live logs of web" }).click();
  await page.waitForFunction(() => document.querySelectorAll("[data-log-line]").length >= 3);
  const first = await page.locator("[data-log-line]").count();
  await page.waitForFunction(
    (n) => document.querySelectorAll("[data-log-line]").length >= n + 2,
    first,
  );

  step = "device: shell echo hi";
  await page.getByRole("button", { name: "Open shell" }).click();
  await page.locator('[data-shell-terminal][data-state="open"]').waitFor();
  await page.locator("[data-shell-terminal]").click();
  await page.keyboard.type("echo hi");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => {
    const rows = document.querySelector("[data-shell-terminal] .xterm-rows");
    return rows && rows.innerText.split("\n").some((line) => line.trim() === "hi");
  });
  await shot("device");

  step = "device: shell closes cleanly";
  await page.keyboard.type("exit");
  await page.keyboard.press("Enter");
  await page.locator('[data-shell-terminal][data-state="closed"]').waitFor();
  await page.getByText("Closed: shell exited with status 0").waitFor();

  step = "deployments";
  await page.goto(`${base}/deployments`);
  await page.getByRole("link", { name: "telemetry" }).waitFor();
  await shot("deployments");
  await page.goto(`${base}/deployments/apps/telemetry`);
  await page.locator("[data-wave]").nth(2).waitFor();
  await shot("deployment-telemetry");

  step = "phone width";
  await page.setViewportSize({ width: 390, height: 844 });
  for (const path of ["/", "/devices", "/devices/pi-01", "/deployments"]) {
    await page.goto(`${base}${path}`);
    const overflow = await page.evaluate(
      () => document.documentElement.scrollWidth - window.innerWidth,
    );
    if (overflow > 1) {
      problems.push(`${path} overflows a 390px screen by ${overflow}px`);
    }
  }
  await page.goto(`${base}/devices`);
  await shot("devices-phone");
  await page.goto(`${base}/devices/pi-01`);
  await shot("device-phone");

  if (problems.length) {
    throw new Error(problems.join("\n"));
  }
  console.log("browser test passed");
} catch (e) {
  console.error(`browser test failed at step "${step}": ${e.message}`);
  if (problems.length) console.error(problems.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
}
