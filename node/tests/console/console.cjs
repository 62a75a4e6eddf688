// The web console in a real browser (headless Chromium driven by
// playwright-core), against a running `nod dev`: node/tests/console.rs
// starts both and reads the last line this prints.
//
//   node console.cjs <console URL> <client endpoint> <screenshot dir>
//
// Each step waits for what a user would see, writes through the etcd JSON
// gateway of the client port (as any client), and fails with the step's
// name. Exit 0 and "console: ok ..." when everything held.
"use strict";

const { chromium } = require("playwright-core");

const [consoleUrl, endpoint, shots] = process.argv.slice(2);
const api = `http://${endpoint}/v3/`;
const b64 = (s) => Buffer.from(s).toString("base64");
let step = "start";

async function gateway(path, body, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = token;
  const r = await fetch(api + path, { method: "POST", headers, body: JSON.stringify(body) });
  const answer = await r.json();
  if (!r.ok) throw new Error(`${path}: ${r.status} ${JSON.stringify(answer)}`);
  return answer;
}
const put = (key, value, token) => gateway("kv/put", { key: b64(key), value: b64(value) }, token);

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  // waitForFunction evaluates strings, which the page's own CSP forbids.
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, bypassCSP: true });
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  try {
    step = "load the page";
    await page.goto(consoleUrl, { waitUntil: "load" });
    step = "see live numbers and the leader";
    await page.waitForFunction(() => window.nodConsole.ticks >= 2, null, { timeout: 20000 });
    const leader = await page.textContent("#leader");
    if (!/^leader [0-9a-f]+$/.test(leader)) throw new Error(`leader pill reads ${leader}`);
    step = "see three healthy members, one leader";
    await page.waitForFunction(() => {
      const rows = [...document.querySelectorAll("#members tbody tr")];
      return rows.length === 3 &&
        rows.filter((r) => r.cells[2].textContent === "leader").length === 1 &&
        rows.every((r) => r.cells[3].textContent === "healthy");
    }, null, { timeout: 20000 });
    const leaderRow = await page.$$eval("#members tbody tr", (rows) =>
      rows.find((r) => r.cells[2].textContent === "leader").cells[1].textContent);
    if (`leader ${leaderRow}` !== leader) {
      throw new Error(`the members table's leader ${leaderRow} is not the pill's ${leader}`);
    }

    step = "write through the API and see the chart move";
    const writes = (async () => {
      for (let i = 0; i < 60; i++) {
        await put(`/console-test/${String(i).padStart(3, "0")}`, `value ${i}`);
      }
      for (let i = 0; i < 12; i++) {
        const city = i % 3 === 0 ? "Oslo" : "Bergen";
        await put(`/users/${i}`, JSON.stringify({ name: `user ${i}`, city, age: 20 + i }));
      }
    })();
    await page.waitForFunction(() => window.nodConsole.series.writes.some((v) => v > 0),
      null, { timeout: 20000 });
    await writes;
    // The chart's caption shows the rate of the last second with writes.
    const seen = await page.evaluate(() => Math.max(...window.nodConsole.series.writes));
    if (!(seen > 0)) throw new Error(`writes per second stayed ${seen}`);

    step = "browse the keys, two pages";
    await page.click("nav button[data-tab=keys]");
    await page.fill("#prefix", "/console-test/");
    await page.click("#keys-form button[type=submit]");
    await page.waitForFunction(() =>
      document.querySelectorAll("#keys-table tbody tr").length === 50, null, { timeout: 10000 });
    const first = await page.textContent("#keys-table tbody tr td.key");
    if (first !== "/console-test/000") throw new Error(`first key ${first}`);
    const summary = await page.textContent("#keys-summary");
    if (!summary.startsWith("keys 1 to 50 of 60")) throw new Error(`summary: ${summary}`);
    await page.screenshot({ path: `${shots}/console-keys.png` });
    await page.click("#keys-next");
    await page.waitForFunction(() =>
      document.querySelectorAll("#keys-table tbody tr").length === 10, null, { timeout: 10000 });
    const last = await page.$$eval("#keys-table tbody tr td.key", (t) => t.map((c) => c.textContent));
    if (last[0] !== "/console-test/050" || last[9] !== "/console-test/059") {
      throw new Error(`second page ${last[0]} .. ${last[9]}`);
    }
    step = "the console is read-only without a login";
    if (await page.isVisible("#put-form")) throw new Error("a put form without a login");
    const refused = await page.evaluate(async () => {
      const r = await fetch("/ui/api/v3/kv/put", { method: "POST", body: "{}" });
      return r.status;
    });
    if (refused !== 403) throw new Error(`an unauthenticated put through the console got ${refused}`);

    step = "watch a prefix";
    await page.click("nav button[data-tab=watch]");
    await page.fill("#watch-prefix", "/watched/");
    await page.click("#watch-start");
    await page.waitForFunction(() => document.getElementById("watch-stop").disabled === false);
    // The watch is created once the gateway answers its first message.
    await new Promise((r) => setTimeout(r, 500));
    await put("/watched/a", "first");
    await put("/watched/a", "second");
    await page.waitForFunction(() =>
      document.querySelectorAll("#watch-table tbody tr").length === 2, null, { timeout: 10000 });
    const newest = await page.$$eval("#watch-table tbody tr:first-child td", (t) => t.map((c) => c.textContent));
    if (newest[1] !== "PUT" || newest[2] !== "/watched/a" || newest[3] !== "second") {
      throw new Error(`newest watch row ${newest}`);
    }
    await page.click("#watch-stop");

    step = "run a query and explain it";
    await page.click("nav button[data-tab=query]");
    await page.fill("#query-text", "SELECT key, name, age FROM '/users/' WHERE city = 'Oslo' ORDER BY age DESC");
    await page.click("#query-run");
    await page.waitForFunction(() =>
      document.querySelectorAll("#query-table tbody tr").length > 0 ||
      !document.getElementById("query-error").hidden, null, { timeout: 10000 });
    const error = await page.textContent("#query-error");
    if (error) throw new Error(`query error: ${error}`);
    const rows = await page.$$eval("#query-table tbody tr", (rs) => rs.map((r) => r.cells[0].textContent));
    const expected = [9, 6, 3, 0].map((i) => `"/users/${i}"`);
    if (JSON.stringify(rows) !== JSON.stringify(expected)) {
      throw new Error(`query rows ${rows}, expected ${expected}`);
    }
    await page.screenshot({ path: `${shots}/console-query.png` });
    await page.click("#query-explain");
    await page.waitForFunction(() => !document.getElementById("query-plan").hidden, null, { timeout: 10000 });
    const plan = await page.textContent("#query-plan");
    if (!/scan|index/i.test(plan)) throw new Error(`plan: ${plan}`);

    step = "turn authentication on (root, and alice who may only read)";
    await gateway("auth/user/add", { name: "root", password: "rootpw" });
    await gateway("auth/user/grant", { user: "root", role: "root" });
    await gateway("auth/role/add", { name: "reader" });
    await gateway("auth/role/grant", {
      name: "reader",
      perm: { permType: "READ", key: b64("/console-test/"), range_end: b64("/console-test0") },
    });
    await gateway("auth/user/add", { name: "alice", password: "alicepw" });
    await gateway("auth/user/grant", { user: "alice", role: "reader" });
    await gateway("auth/enable", {});
    await page.reload({ waitUntil: "load" });
    step = "a log-in form once auth is on; reads refused without it";
    await page.waitForSelector("#login-tab", { state: "visible", timeout: 10000 });
    await page.click("nav button[data-tab=keys]");
    await page.fill("#prefix", "/console-test/");
    await page.click("#keys-form button[type=submit]");
    await page.waitForSelector("#keys-error", { state: "visible", timeout: 10000 });

    step = "alice logs in: reads, but may not write";
    await page.click("#login-tab");
    await page.fill("#login-name", "alice");
    await page.fill("#login-password", "alicepw");
    await page.click("#login-form button[type=submit]");
    await page.waitForSelector("#put-form", { state: "visible", timeout: 10000 });
    if ((await page.textContent("#who")) !== "signed in as alice") throw new Error("not signed in");
    await page.click("#keys-form button[type=submit]");
    await page.waitForFunction(() =>
      document.querySelectorAll("#keys-table tbody tr").length === 50, null, { timeout: 10000 });
    await page.fill("#put-key", "/console-test/by-alice");
    await page.fill("#put-value", "no");
    await page.click("#put-form button[type=submit]");
    await page.waitForFunction(() => /permission denied/i.test(
      document.getElementById("put-result").textContent), null, { timeout: 10000 });

    step = "root logs in and writes through the console";
    if (await page.isVisible("#login-tab")) throw new Error("a log-in tab while signed in");
    await page.click("#logout");
    await page.click("#login-tab");
    await page.fill("#login-name", "root");
    await page.fill("#login-password", "rootpw");
    await page.click("#login-form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("who").textContent === "signed in as root");
    await page.fill("#put-key", "/console-test/by-root");
    await page.fill("#put-value", "yes");
    await page.click("#put-form button[type=submit]");
    await page.waitForFunction(() => /^written at revision \d+$/.test(
      document.getElementById("put-result").textContent), null, { timeout: 10000 });
    const token = (await gateway("auth/authenticate", { name: "root", password: "rootpw" })).token;
    const got = await gateway("kv/range", { key: b64("/console-test/by-root") }, token);
    if (!got.kvs || Buffer.from(got.kvs[0].value, "base64").toString() !== "yes") {
      throw new Error(`the console's put is not in the store: ${JSON.stringify(got)}`);
    }
    step = "back to the cluster view, signed in, under a little load";
    await page.click("nav button[data-tab=cluster]");
    for (let round = 0; round < 8; round++) {
      const ops = [];
      for (let i = 0; i < 10 + 5 * round; i++) {
        ops.push(put(`/load/${round}/${i}`, "x", token));
        ops.push(gateway("kv/range", { key: b64(`/load/${round}/0`) }, token));
      }
      await Promise.all(ops);
      await new Promise((r) => setTimeout(r, 400));
    }
    await page.waitForFunction(() =>
      window.nodConsole.series.reads.filter((v) => v > 0).length >= 3, null, { timeout: 10000 });
    await page.waitForFunction(() =>
      document.querySelectorAll("#members tbody tr").length === 3, null, { timeout: 10000 });
    await page.screenshot({ path: `${shots}/console-cluster.png` });
    if (problems.length) throw new Error(`page errors: ${problems.join("; ")}`);
    console.log(`console: ok (leader ${leader.slice(7)}, ${seen} writes/s seen, query ${rows.length} rows)`);
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.log(`console: failed at "${step}": ${e.message}`);
  process.exit(1);
});
