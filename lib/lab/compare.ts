/**
 * The comparison: the same scenarios on every platform, side by side. One table per
 * scenario: rows are the counters that tell where the cost comes from (VM exits by
 * reason, hidden and genuine faults, emulated page-table writes, out-of-sync work,
 * hypercalls, TLB and page-walk work, shadow memory) and the estimated cycles; columns are
 * the platforms; the last rows give the overhead against native.
 *
 * The machine-readable result ({@link ComparisonResult}, schema `vmlab.compare/1`) holds
 * every counter of every run under its registry name; the text, Markdown and CSV views
 * are made from it.
 *
 * @module
 */

import { styleText } from "node:util";
import { findCounter, type StatsSnapshot, type TraceSink } from "../x86/stats.ts";
import { estimateCycles } from "./cost_model.ts";
import {
  availableConfigs,
  configByLabel,
  runScenario,
  type ScenarioDefinition,
  type ScenarioReport,
} from "./scenario.ts";

/** The schema name and version of {@link ComparisonResult}. */
export const COMPARE_SCHEMA = "vmlab.compare/1";

/** One scenario on one platform. */
export interface ComparedRun {
  /** Every counter that changed in the measured part, by registry name. */
  counters: StatsSnapshot;
  /** Estimated cycles of the measured part with the chosen profile. */
  estimatedCycles: number;
  /** Estimated cycles per operation. */
  cyclesPerOperation: number;
  /** Estimated cycles relative to native (1 for native; null without a native run). */
  overheadVsNative: number | null;
  /** Why the guest domain crashed, or "". */
  crash: string;
  /** Wall-clock milliseconds of the measured part. */
  elapsedMs: number;
}

/** One scenario on every platform. */
export interface ComparedScenario {
  /** Scenario name. */
  name: string;
  /** One-line title. */
  title: string;
  /** Knob values used. */
  knobs: Record<string, number>;
  /** Guest memory in MiB. */
  memoryMiB: number;
  /** Operations the measured part did. */
  operations: number;
  /** Runs by configuration label, in report order. */
  results: Record<string, ComparedRun>;
}

/** The whole comparison (JSON schema `vmlab.compare/1`; see the README). */
export interface ComparisonResult {
  /** Always {@link COMPARE_SCHEMA}. */
  schema: string;
  /** CPU profile of the cycle estimates. */
  profile: string;
  /** Seed of every run. */
  seed: number;
  /** Configuration labels, in column order. */
  modes: string[];
  /** One entry per scenario, in the order run. */
  scenarios: ComparedScenario[];
}

/** Options of {@link runComparison}. */
export interface ComparisonOptions {
  /** Scenario definitions to run. */
  scenarios: readonly ScenarioDefinition[];
  /** Configuration labels (default: every available one). */
  modes?: readonly string[];
  /** Seed (default 1). */
  seed?: number;
  /** CPU profile for the estimates. */
  profile: string;
  /** Knob values by scenario name. */
  knobs?: Record<string, Record<string, number>>;
  /** Run the consistency checkers after every lab call. */
  check?: boolean;
  /** Receives every traced event, with the scenario and mode it came from. */
  trace?: (scenario: string, mode: string) => TraceSink;
  /** Called before each run (for a progress line). */
  progress?: (done: number, total: number, scenario: string, mode: string) => void;
}

/**
 * Runs every scenario on every mode and prices the counts.
 *
 * @example
 * ```ts
 * import { runComparison } from "./compare.ts";
 * import { defineScenario } from "./scenario.ts";
 * import assert from "node:assert/strict";
 * const faults = defineScenario({
 *   name: "faults", title: "demand faults", description: "", memoryMiB: 16,
 *   knobs: [{ name: "pages", description: "", default: 8, min: 1, max: 64 }],
 *   setup: (lab) => lab.spawn(),
 *   measured(lab, knobs, pid) {
 *     lab.touch(pid as number, { start: 0x600000, length: knobs.pages! * 4096, kind: "write" });
 *     return knobs.pages!;
 *   },
 * });
 * const result = runComparison({ scenarios: [faults], modes: ["native", "hvm-shadow"], profile: "p4_2006" });
 * const runs = result.scenarios[0]!.results;
 * assert.equal(runs["native"]!.overheadVsNative, 1);
 * assert.ok(runs["hvm-shadow"]!.overheadVsNative! > 1);
 * assert.equal(runs["hvm-shadow"]!.counters["guest.fault"], runs["native"]!.counters["guest.fault"]);
 * ```
 */
export function runComparison(options: ComparisonOptions): ComparisonResult {
  const modes = (options.modes ?? availableConfigs().map((c) => c.label)).map((m) =>
    configByLabel(m).label
  );
  const seed = options.seed ?? 1;
  const scenarios: ComparedScenario[] = [];
  const total = options.scenarios.length * modes.length;
  let done = 0;
  for (const definition of options.scenarios) {
    const reports: [string, ScenarioReport][] = [];
    for (const mode of modes) {
      options.progress?.(done, total, definition.name, mode);
      const runOptions: Parameters<typeof runScenario>[1] = { mode, seed };
      const knobs = options.knobs?.[definition.name];
      if (knobs !== undefined) runOptions.knobs = knobs;
      if (options.check === true) runOptions.check = true;
      if (options.trace !== undefined) runOptions.trace = options.trace(definition.name, mode);
      reports.push([mode, runScenario(definition, runOptions)]);
      done++;
    }
    const first = reports[0]![1];
    const native = reports.find(([mode]) => mode === "native")?.[1];
    const nativeCycles = native === undefined
      ? null
      : estimateCycles(native.counters, options.profile).total;
    const results: Record<string, ComparedRun> = {};
    for (const [mode, report] of reports) {
      const cycles = estimateCycles(report.counters, options.profile).total;
      results[mode] = {
        counters: report.counters,
        estimatedCycles: cycles,
        cyclesPerOperation: cycles / Math.max(1, report.operations),
        overheadVsNative: nativeCycles === null || nativeCycles === 0
          ? null
          : cycles / nativeCycles,
        crash: report.crash,
        elapsedMs: report.elapsedMs,
      };
    }
    scenarios.push({
      name: definition.name,
      title: definition.title,
      knobs: first.knobs,
      memoryMiB: first.memoryMiB,
      operations: first.operations,
      results,
    });
  }
  return { schema: COMPARE_SCHEMA, profile: options.profile, seed, modes, scenarios };
}

/**
 * The counters a comparison table shows, in order: prefixes end in "." and stand for
 * every counter that starts with them not already shown by an earlier row.
 */
export const COMPARE_ROWS: readonly string[] = [
  "exit.total",
  "exit.pf",
  "exit.cr3",
  "exit.cr3Read",
  "exit.invlpg",
  "exit.mmio",
  "exit.ept_violation",
  "exit.ept_misconfig",
  "exit.", // the other reasons (I/O, HLT, interrupts ...), by name
  "hvm.ioreq",
  "fault.hidden",
  "fault.genuine",
  "guest.fault",
  "guest.syscall",
  "guest.timerIrq",
  "guest.keyboardIrq",
  "guest.userException",
  "divergence.irqSaveSawIf",
  "cpu.idle",
  "pv.bounce.pf",
  "pv.bounce.",
  "pv.eventUpcall",
  "pv.emulatedPrivOp",
  "classic.",
  "emulate.ptWrite",
  "emulate.mmio",
  "oos.unsync",
  "oos.resync",
  "hypercall.",
  "multicall.batches",
  "tlb.hit",
  "tlb.miss",
  "walk.refs",
  "shadow.pagesPeak",
];

/** The rows of one scenario's table that occur in any of its runs. */
export function rowsOf(scenario: ComparedScenario): string[] {
  const present = new Set<string>();
  for (const run of Object.values(scenario.results)) {
    for (const name of Object.keys(run.counters)) present.add(name);
  }
  const rows: string[] = [];
  for (const row of COMPARE_ROWS) {
    if (row.endsWith(".")) {
      for (const name of [...present].filter((n) => n.startsWith(row)).sort()) {
        if (!rows.includes(name)) rows.push(name);
      }
    } else if (present.has(row) && !rows.includes(row)) rows.push(row);
  }
  return rows;
}

function formatNumber(value: number): string {
  if (!Number.isFinite(value)) return "-";
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  return value >= 100 ? Math.round(value).toLocaleString("en-US") : value.toFixed(2);
}

/** The cells of one scenario's table: header row, then counter rows, then cycle rows. */
export function tableOf(result: ComparisonResult, scenario: ComparedScenario): string[][] {
  const modes = result.modes;
  const table: string[][] = [["counter", ...modes]];
  for (const row of rowsOf(scenario)) {
    table.push([row, ...modes.map((m) => formatNumber(scenario.results[m]?.counters[row] ?? 0))]);
  }
  table.push([
    `cycles/op (${result.profile})`,
    ...modes.map((m) => formatNumber(scenario.results[m]?.cyclesPerOperation ?? NaN)),
  ]);
  table.push([
    "overhead vs native",
    ...modes.map((m) => {
      const o = scenario.results[m]?.overheadVsNative;
      return o === null || o === undefined ? "-" : `${o.toFixed(2)}x`;
    }),
  ]);
  return table;
}

/**
 * The comparison as aligned text, one table per scenario (colour for headers and
 * overheads when `color`).
 */
export function formatComparisonText(result: ComparisonResult, color = false): string {
  const paint = (style: "bold" | "dim" | "red" | "green", text: string) =>
    color ? styleText(style, text, { validateStream: false }) : text;
  const out: string[] = [];
  for (const scenario of result.scenarios) {
    const knobs = Object.entries(scenario.knobs).map(([k, v]) => `${k} ${v}`).join(", ");
    out.push(paint("bold", `${scenario.name}: ${scenario.title}`));
    out.push(
      paint(
        "dim",
        `  ${knobs}${
          knobs ? ", " : ""
        }${scenario.operations} ops, seed ${result.seed}, ${scenario.memoryMiB} MiB`,
      ),
    );
    const table = tableOf(result, scenario);
    const widths = table[0]!.map((_, c) => Math.max(...table.map((row) => row[c]!.length)));
    table.forEach((row, r) => {
      const cells = row.map((
        cell,
        c,
      ) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!)));
      let line = "  " + cells.join("  ");
      if (r === 0) line = paint("bold", line);
      else if (r === table.length - 1) line = paint("bold", line);
      out.push(line);
    });
    for (const [mode, run] of Object.entries(scenario.results)) {
      if (run.crash !== "") {
        out.push(paint("red", `  ${mode}: the guest domain crashed: ${run.crash}`));
      }
    }
    out.push("");
  }
  return out.join("\n");
}

/** The comparison as Markdown tables. */
export function formatComparisonMarkdown(result: ComparisonResult): string {
  const out: string[] = [];
  for (const scenario of result.scenarios) {
    out.push(`### ${scenario.name}`, "", scenario.title, "");
    const table = tableOf(result, scenario);
    out.push(`| ${table[0]!.join(" | ")} |`);
    out.push(`| ${table[0]!.map((_, c) => (c === 0 ? "---" : "---:")).join(" | ")} |`);
    for (const row of table.slice(1)) out.push(`| ${row.join(" | ")} |`);
    out.push("");
  }
  return out.join("\n");
}

function csvCell(text: string): string {
  return /[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/**
 * The comparison as CSV in long form: one line per (scenario, mode, counter), plus the
 * estimated cycles, cycles per operation and overhead as pseudo-counters.
 */
export function formatComparisonCsv(result: ComparisonResult): string {
  const lines = ["scenario,mode,counter,value,description"];
  for (const scenario of result.scenarios) {
    for (const [mode, run] of Object.entries(scenario.results)) {
      for (const [name, value] of Object.entries(run.counters)) {
        lines.push(
          [scenario.name, mode, name, String(value), findCounter(name)?.description ?? ""].map(
            csvCell,
          )
            .join(","),
        );
      }
      lines.push(
        `${scenario.name},${mode},estimatedCycles,${run.estimatedCycles},${result.profile}`,
      );
      lines.push(
        `${scenario.name},${mode},cyclesPerOperation,${run.cyclesPerOperation},${result.profile}`,
      );
      if (run.overheadVsNative !== null) {
        lines.push(
          `${scenario.name},${mode},overheadVsNative,${run.overheadVsNative},${result.profile}`,
        );
      }
    }
  }
  return lines.join("\n") + "\n";
}
