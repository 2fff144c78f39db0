/**
 * Every scenario script: runs small on every mode with identical guest-visible counts,
 * same seed gives the same numbers, and the command line behaves (help, errors, JSON).
 */

import assert from "node:assert/strict";
import { availableConfigs, runScenario, type ScenarioDefinition } from "../../lib/lab/mod.ts";
import { SCENARIOS } from "../../scenarios/compare.ts";

/** Small knobs so every scenario runs in milliseconds. */
const SMALL: Record<string, Record<string, number>> = {
  "fork-exit": { iterations: 3, pages: 32, dirty: 8 },
  "fork-exec": { iterations: 2, pages: 32 },
  shell: { iterations: 2 },
  forkwait: { children: 4, batches: 2, pages: 16, dirty: 4 },
  ctxsw: { processes: 3, rounds: 4 },
  pagefault: { pages: 64 },
  mmap: { pages: 40, iterations: 2 },
  ptemod: { iterations: 20 },
  kbuild: { jobs: 3, heap: 16 },
  gups: { size: 2, updates: 2000 },
  swap: { sweeps: 1, random: 200 },
  mmio: { bytes: 10 },
  "pte-spread": { tables: 6, rounds: 2 },
  syscall: { calls: 20, processes: 2 },
  console: { bytes: 6, gap: 400 },
  timer: { spinners: 3, period: 500, time: 5000 },
};

function guestCounters(counters: Readonly<Record<string, number>>): Record<string, number> {
  return Object.fromEntries(Object.entries(counters).filter(([n]) => n.startsWith("guest.")));
}

Deno.test("every scenario has small knobs in this test", () => {
  assert.deepEqual(SCENARIOS.map((s) => s.name).sort(), Object.keys(SMALL).sort());
});

for (const scenario of SCENARIOS as ScenarioDefinition[]) {
  Deno.test(`${scenario.name}: the guest does the same work on every mode, and nothing crashes`, () => {
    const reports = availableConfigs().map((c) =>
      runScenario(scenario, { mode: c.label, knobs: SMALL[scenario.name]!, seed: 3 })
    );
    for (const report of reports) {
      assert.equal(report.crash, "", `${report.mode}: ${report.crash}`);
      assert.ok(report.operations > 0);
      assert.deepEqual(guestCounters(report.counters), guestCounters(reports[0]!.counters));
    }
    assert.ok(scenario.description.length > 100, "a paragraph saying what it stresses and why");
  });
}

Deno.test("runScenario(): the same seed gives the same counters", () => {
  const scenario = SCENARIOS.find((s) => s.name === "kbuild")!;
  const a = runScenario(scenario, { mode: "hvm-shadow", knobs: SMALL.kbuild!, seed: 9 });
  const b = runScenario(scenario, { mode: "hvm-shadow", knobs: SMALL.kbuild!, seed: 9 });
  assert.deepEqual(a.counters, b.counters);
});

async function runScript(file: string, args: string[]) {
  const script = new URL(`../../scenarios/${file}`, import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", script, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

Deno.test("scenario scripts: --help, exit 2 with a message for bad arguments, --json", async () => {
  const help = await runScript("fork_exec.ts", ["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--iterations <n>/);
  assert.match(help.stdout, /--mode <name> +native \|/);
  const bad = await runScript("fork_exec.ts", ["--pages", "0"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /Invalid --pages "0": must be an integer 1\.\.1048576/);
  const mode = await runScript("gups.ts", ["--mode", "vmware"]);
  assert.equal(mode.code, 2);
  assert.match(mode.stderr, /Unknown mode "vmware": valid modes are native/);
  const json = await runScript("pagefault.ts", ["--pages", "5", "--mode", "hvm-shadow", "--json"]);
  assert.equal(json.code, 0);
  const report = JSON.parse(json.stdout);
  assert.equal(report.counters["guest.fault.demandZero"], 5);
  assert.equal(report.mode, "hvm-shadow");
  assert.ok(report.estimatedCycles.total > 0);
});

Deno.test("scenario scripts: the text report has a header, aligned rows and a cycle estimate", async () => {
  const text = await runScript("ptemod.ts", ["--iterations", "4", "--cpu", "p4_2006"]);
  assert.equal(text.code, 0);
  const lines = text.stdout.trimEnd().split("\n");
  assert.match(lines[0]!, /^ptemod on native: iterations 4, seed 1, 16 MiB$/);
  assert.match(text.stdout, /guest\.pte\.protChange +\d+ +[\d.]+ +entries changed by mprotect/);
  assert.match(lines.at(-1)!, /^estimated cycles \(p4_2006\): \d+ total, \d+ per op \(4 ops\)$/);
  assert.equal(text.stdout.includes("\x1b["), false);
});
