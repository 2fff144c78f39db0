/**
 * The compare command and its formats: the JSON schema, the text, Markdown and CSV views,
 * the HTML report (its SVG parses and has a bar per platform), the trace and the CLI.
 */

import assert from "node:assert/strict";
import { DOMParser } from "@xmldom/xmldom";
import {
  availableConfigs,
  COMPARE_SCHEMA,
  formatComparisonCsv,
  formatComparisonMarkdown,
  formatComparisonText,
  renderHtmlReport,
  rowsOf,
  runComparison,
} from "../../lib/lab/mod.ts";
import { SCENARIOS } from "../../scenarios/compare.ts";

const small = {
  "fork-exit": { iterations: 2, pages: 16, dirty: 4 },
  pagefault: { pages: 16 },
};
const picked = SCENARIOS.filter((s) => s.name in small);

function compareSmall() {
  return runComparison({ scenarios: picked, profile: "p4_2006", knobs: small, seed: 2 });
}

Deno.test("runComparison(): every scenario on every mode, priced, with overhead against native", () => {
  const result = compareSmall();
  assert.equal(result.schema, COMPARE_SCHEMA);
  assert.deepEqual(result.modes, availableConfigs().map((c) => c.label));
  assert.deepEqual(result.scenarios.map((s) => s.name), ["fork-exit", "pagefault"]);
  for (const scenario of result.scenarios) {
    assert.deepEqual(Object.keys(scenario.results), result.modes);
    const native = scenario.results["native"]!;
    assert.equal(native.overheadVsNative, 1);
    for (const mode of result.modes) {
      const run = scenario.results[mode]!;
      assert.equal(run.crash, "");
      assert.equal(run.counters["guest.fault"], native.counters["guest.fault"]);
      assert.equal(run.cyclesPerOperation, run.estimatedCycles / scenario.operations);
      if (mode !== "native") assert.ok(run.overheadVsNative! > 1, mode);
    }
  }
  // Same seed, same numbers (the wall-clock time is the only field that may differ).
  const counts = () =>
    JSON.stringify(compareSmall(), (key, value) => (key === "elapsedMs" ? 0 : value));
  assert.equal(counts(), counts());
});

Deno.test("formatComparisonText(): one aligned table per scenario, overhead last, no colour", () => {
  const text = formatComparisonText(compareSmall());
  assert.equal(text.includes("\x1b["), false);
  const table = text.split("\n\n")[0]!.split("\n");
  assert.match(table[0]!, /^fork-exit: fork \+ exit \+ wait/);
  const header = table[2]!;
  for (const mode of availableConfigs().map((c) => c.label)) assert.ok(header.includes(mode));
  assert.match(table.at(-1)!, /^ {2}overhead vs native +1\.00x +\d+\.\d\dx/);
  const widths = new Set(table.slice(2).map((line) => line.length));
  assert.equal(widths.size, 1, "every row of a table has the same width");
});

Deno.test("formatComparisonMarkdown() and formatComparisonCsv(): well-formed tables and rows", () => {
  const result = compareSmall();
  const markdown = formatComparisonMarkdown(result);
  assert.match(markdown, /^### fork-exit$/m);
  const rows = markdown.split("\n").filter((l) => l.startsWith("|"));
  const columns = new Set(rows.map((r) => r.split("|").length));
  assert.equal(columns.size, 1);
  const csv = formatComparisonCsv(result).trimEnd().split("\n");
  assert.equal(csv[0], "scenario,mode,counter,value,description");
  assert.ok(
    csv.includes(
      "pagefault,native,guest.fault.demandZero,16,faults resolved with a new zeroed page, or the zero page for a read"
        .replace(", or", ", or"),
    ) || csv.some((l) => l.startsWith("pagefault,native,guest.fault.demandZero,16,")),
  );
  assert.ok(csv.some((l) => /^pagefault,hvm-shadow,overheadVsNative,[\d.]+,p4_2006$/.test(l)));
  for (const line of csv.slice(1)) assert.ok(line.split(",").length >= 5, line);
});

Deno.test("renderHtmlReport(): every SVG parses and has one bar per platform", () => {
  const result = compareSmall();
  const html = renderHtmlReport(result);
  const svgs = html.match(/<svg[\s\S]*?<\/svg>/g) ?? [];
  assert.equal(svgs.length, 2 * result.scenarios.length);
  const errors: string[] = [];
  const parser = new DOMParser({
    onError: (level: string, message: string) => errors.push(`${level}: ${message}`),
  });
  for (const [i, svg] of svgs.entries()) {
    const doc = parser.parseFromString(svg, "image/svg+xml");
    assert.deepEqual(errors, []);
    const bars = doc.getElementsByTagName("rect");
    const barCount = Array.from({ length: bars.length }, (_, k) => bars.item(k)!)
      .filter((r) => r.getAttribute("class") === "bar").length;
    // Even charts: overhead, one bar per mode; odd charts: 5 causes per mode.
    assert.equal(barCount, (i % 2 === 0 ? 1 : 5) * result.modes.length);
  }
  assert.match(html, /<table>/);
});

async function runCompare(args: string[]) {
  const script = new URL("../../scenarios/compare.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-write", script, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

Deno.test("compare CLI: --json, --report, --trace, --check, and errors", async () => {
  const dir = await Deno.makeTempDir();
  const json = await runCompare([
    "--scenarios",
    "pagefault",
    "--modes",
    "native,hvm-shadow",
    "--json",
    "--report",
    dir,
    "--trace",
    `${dir}/trace.jsonl`,
    "--check",
  ]);
  assert.equal(json.code, 0, json.stderr);
  const result = JSON.parse(json.stdout);
  assert.equal(result.schema, "vmlab.compare/1");
  assert.deepEqual(result.modes, ["native", "hvm-shadow"]);
  assert.equal(result.scenarios[0].results["hvm-shadow"].counters["guest.fault"], 1024);
  const html = await Deno.readTextFile(`${dir}/index.html`);
  assert.match(html, /pagefault/);
  const events = (await Deno.readTextFile(`${dir}/trace.jsonl`)).trimEnd().split("\n").map((l) =>
    JSON.parse(l)
  );
  assert.ok(events.some((e) => e.mode === "hvm-shadow" && e.event === "exit.pf"));
  assert.ok(events.some((e) => e.mode === "native" && e.event === "guest.fault.demandZero"));
  assert.deepEqual(events.map((e) => e.seq), events.map((_, i) => i));
  const bad = await runCompare(["--modes", "xen"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /Unknown mode "xen": valid modes are native/);
  const two = await runCompare(["--json", "--csv"]);
  assert.equal(two.code, 2);
  assert.match(two.stderr, /Choose one output format/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("the trace has each platform's events: hypercalls and bounces on pv, EPT exits on hvm-hap", () => {
  const events: string[] = [];
  const modes = ["pv", "hvm-hap"].filter((m) => availableConfigs().some((c) => c.label === m));
  runComparison({
    scenarios: SCENARIOS.filter((s) => s.name === "pagefault"),
    modes,
    profile: "nehalem2009",
    knobs: { pagefault: { pages: 8 } },
    trace: (_scenario, mode) => (event) => events.push(`${mode} ${event}`),
  });
  if (modes.includes("pv")) {
    assert.ok(events.includes("pv hypercall.traps"));
    assert.ok(events.includes("pv pv.bounce.pf"));
  }
  if (modes.includes("hvm-hap")) assert.ok(events.includes("hvm-hap exit.ept_violation"));
});

Deno.test("rowsOf(): the CPU rows: exit reasons by name after the fixed ones, each row once", () => {
  const run = (counters: Record<string, number>) => ({
    counters,
    estimatedCycles: 0,
    cyclesPerOperation: 0,
    overheadVsNative: null,
    crash: "",
    elapsedMs: 0,
  });
  const rows = rowsOf({
    name: "cpu",
    title: "",
    knobs: {},
    memoryMiB: 8,
    operations: 1,
    results: {
      "hvm-shadow": run({ "exit.total": 3, "exit.io": 2, "exit.hlt": 1, "exit.pf": 1 }),
      pv: run({ "guest.syscall": 5, "hypercall.iret": 5, "pv.bounce.syscall": 5 }),
      classic: run({ "classic.trap": 9, "classic.emulate.out": 2, "guest.timerIrq": 1 }),
    },
  });
  assert.deepEqual(rows, [
    "exit.total",
    "exit.pf",
    "exit.hlt",
    "exit.io",
    "guest.syscall",
    "guest.timerIrq",
    "pv.bounce.syscall",
    "classic.emulate.out",
    "classic.trap",
    "hypercall.iret",
  ]);
});
