/**
 * The compare command: runs the scenarios on every platform and prints, per scenario, the
 * counters side by side with the estimated cycles and the overhead against native.
 *
 * Run it as `deno task compare` (see `--help`).
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  availableConfigs,
  COMPARE_SCHEMA,
  type ComparisonResult,
  CPU_PROFILES,
  DEFAULT_CPU_PROFILE,
  formatComparisonCsv,
  formatComparisonMarkdown,
  formatComparisonText,
  renderHtmlReport,
  runComparison,
  type ScenarioDefinition,
} from "../lib/lab/mod.ts";
import { consoleEcho } from "./console.ts";
import { ctxsw } from "./ctxsw.ts";
import { forkExec } from "./fork_exec.ts";
import { forkExit } from "./fork_exit.ts";
import { forkwait } from "./forkwait.ts";
import { gups } from "./gups.ts";
import { kbuild } from "./kbuild.ts";
import { mmap } from "./mmap.ts";
import { mmio } from "./mmio.ts";
import { pagefault } from "./pagefault.ts";
import { pteSpread } from "./pte_spread.ts";
import { ptemod } from "./ptemod.ts";
import { shell } from "./shell.ts";
import { swap } from "./swap.ts";
import { syscall } from "./syscall.ts";
import { timer } from "./timer.ts";

/** Every scenario, in the order compare runs them. */
export const SCENARIOS: readonly ScenarioDefinition[] = [
  forkExit,
  forkExec,
  shell,
  forkwait,
  ctxsw,
  pagefault,
  mmap,
  ptemod,
  kbuild,
  gups,
  swap,
  mmio,
  pteSpread,
  syscall,
  consoleEcho,
  timer,
];

/** What the command line asked for. */
export interface CompareCommand {
  /** Print help. */
  help: boolean;
  /** Output format. */
  format: "text" | "json" | "csv" | "markdown";
  /** Scenario definitions. */
  scenarios: ScenarioDefinition[];
  /** Mode labels. */
  modes: string[];
  /** Seed. */
  seed: number;
  /** CPU profile. */
  cpu: string;
  /** Directory for the HTML report, or null. */
  reportDir: string | null;
  /** File for the JSON-lines event trace ("-" for stdout), or null. */
  trace: string | null;
  /** Run the consistency checkers after every step. */
  check: boolean;
}

const FLAGS = {
  scenarios: { type: "string" },
  modes: { type: "string" },
  seed: { type: "string" },
  cpu: { type: "string" },
  json: { type: "boolean" },
  csv: { type: "boolean" },
  markdown: { type: "boolean" },
  report: { type: "string" },
  trace: { type: "string" },
  check: { type: "boolean" },
  help: { type: "boolean" },
} as const;

/**
 * Parses the command line; RangeError saying what was wrong and what is valid.
 *
 * @example
 * ```ts
 * import { parseCompareArgs } from "./compare.ts";
 * import assert from "node:assert/strict";
 * const command = parseCompareArgs(["--scenarios", "fork-exit,gups", "--modes", "native", "--csv"]);
 * assert.deepEqual(command.scenarios.map((s) => s.name), ["fork-exit", "gups"]);
 * assert.equal(command.format, "csv");
 * assert.throws(() => parseCompareArgs(["--scenarios", "nope"]), /valid scenarios are fork-exit/);
 * ```
 */
export function parseCompareArgs(args: readonly string[]): CompareCommand {
  let values;
  try {
    ({ values } = parseArgs({ args: [...args], options: FLAGS, strict: true }));
  } catch (error) {
    if (error instanceof TypeError) {
      const valid = Object.keys(FLAGS).map((f) => `--${f}`).join(", ");
      throw new RangeError(`${error.message}. Valid options: ${valid}`);
    }
    throw error;
  }
  const formats = [values.json && "json", values.csv && "csv", values.markdown && "markdown"]
    .filter((f) => typeof f === "string") as ("json" | "csv" | "markdown")[];
  if (formats.length > 1) {
    throw new RangeError(`Choose one output format: got --${formats.join(" and --")}`);
  }
  const names = values.scenarios?.split(",").map((s) => s.trim()).filter((s) => s !== "");
  const scenarios = names === undefined ? [...SCENARIOS] : names.map((name) => {
    const found = SCENARIOS.find((s) => s.name === name);
    if (found === undefined) {
      throw new RangeError(
        `Unknown scenario "${name}": valid scenarios are ${
          SCENARIOS.map((s) => s.name).join(", ")
        }`,
      );
    }
    return found;
  });
  const valid = availableConfigs().map((c) => c.label);
  const modes = values.modes?.split(",").map((s) => s.trim()).filter((s) => s !== "") ?? valid;
  for (const mode of modes) {
    if (!valid.includes(mode)) {
      throw new RangeError(`Unknown mode "${mode}": valid modes are ${valid.join(", ")}`);
    }
  }
  const seedText = values.seed ?? "1";
  if (!/^\d+$/.test(seedText) || Number(seedText) > 0xffffffff) {
    throw new RangeError(`Invalid --seed "${seedText}": must be an integer 0..4294967295`);
  }
  const cpu = values.cpu ?? DEFAULT_CPU_PROFILE;
  if (!CPU_PROFILES.some((p) => p.name === cpu)) {
    throw new RangeError(
      `Invalid --cpu "${cpu}": valid profiles are ${CPU_PROFILES.map((p) => p.name).join(", ")}`,
    );
  }
  return {
    help: values.help ?? false,
    format: formats[0] ?? "text",
    scenarios,
    modes,
    seed: Number(seedText),
    cpu,
    reportDir: values.report ?? null,
    trace: values.trace ?? null,
    check: values.check ?? false,
  };
}

/** The `--help` text. */
export function compareUsage(): string {
  return `Usage: deno task compare [options]
       deno run --allow-write scenarios/compare.ts [options]

Runs workloads on every platform and shows, per workload, where the costs come from:
VM exits by reason, hidden faults (the hypervisor fixes its shadows alone) and genuine
faults (the guest's own), emulated page-table writes, out-of-sync resyncs, hypercalls, TLB
misses and page-walk references, and cycles estimated from those counts.

Options:
  --scenarios <a,b>   which workloads (default all): ${SCENARIOS.map((s) => s.name).join(", ")}
  --modes <a,b>       which platforms (default all): ${
    availableConfigs().map((c) => c.label).join(", ")
  }
  --seed <n>          seed of every run (default 1); same seed, same numbers
  --cpu <profile>     cost profile: ${
    CPU_PROFILES.map((p) => `${p.name} (${p.description})`).join("; ")
  }
                      (default ${DEFAULT_CPU_PROFILE})
  --json              the schema ${COMPARE_SCHEMA} (see the README): every counter of every run
  --csv               one line per scenario, mode and counter
  --markdown          one Markdown table per scenario
  --report <dir>      also write <dir>/index.html: charts (SVG) and tables, readable offline
  --trace <file>      write every exit, fault, emulation, resync and hypercall of the measured
                      parts as JSON lines to <file> ("-" for stdout)
  --check             run the consistency checkers after every step (slow)
  --help              print this help

Reading the text output: one table per scenario; columns are platforms, rows are counters
(totals over the measured part), then estimated cycles per operation and the overhead
against native. guest.fault is the same on every platform (the guest does the same work);
what differs is what it takes to run it.

Exit status: 0 on success, 1 if a guest domain crashed or a check failed, 2 for bad arguments.
`;
}

/** Runs the command line; returns the exit code. */
async function main(args: readonly string[]): Promise<number> {
  let command: CompareCommand;
  try {
    command = parseCompareArgs(args);
  } catch (error) {
    if (error instanceof RangeError) {
      console.error(`compare: ${error.message}`);
      console.error("Run with --help for every option.");
      return 2;
    }
    throw error;
  }
  if (command.help) {
    console.log(compareUsage());
    return 0;
  }
  const started = performance.now();
  const interactive = Deno.stderr.isTerminal();
  const encoder = new TextEncoder();
  const traceLines: string[] = [];
  let seq = 0;
  let result: ComparisonResult;
  try {
    result = runComparison({
      scenarios: command.scenarios,
      modes: command.modes,
      seed: command.seed,
      profile: command.cpu,
      check: command.check,
      ...(command.trace === null ? {} : {
        trace: (scenario: string, mode: string) => (event, address, detail) => {
          traceLines.push(JSON.stringify({ seq: seq++, scenario, mode, event, address, detail }));
        },
      }),
      progress(done, total, scenario, mode) {
        if (performance.now() - started < 1000) return;
        const line = `compare: ${done}/${total} ${scenario} on ${mode}`;
        Deno.stderr.writeSync(encoder.encode(interactive ? `\r${line}\x1b[K` : `${line}\n`));
      },
    });
  } catch (error) {
    if (error instanceof Error && error.message.startsWith("Consistency check failed")) {
      console.error(`compare: ${error.message}`);
      return 1;
    }
    throw error;
  }
  if (interactive && performance.now() - started >= 1000) {
    Deno.stderr.writeSync(encoder.encode("\r\x1b[K"));
  }
  const color = Deno.stdout.isTerminal() && !Deno.noColor;
  const output = command.format === "json"
    ? JSON.stringify(result, null, 2)
    : command.format === "csv"
    ? formatComparisonCsv(result).trimEnd()
    : command.format === "markdown"
    ? formatComparisonMarkdown(result)
    : formatComparisonText(result, color);
  console.log(output);
  if (command.reportDir !== null) {
    await Deno.mkdir(command.reportDir, { recursive: true });
    const path = `${command.reportDir}/index.html`;
    await Deno.writeTextFile(path, renderHtmlReport(result));
    console.error(`compare: wrote ${path}`);
  }
  if (command.trace !== null) {
    const text = traceLines.join("\n") + (traceLines.length > 0 ? "\n" : "");
    if (command.trace === "-") await Deno.stdout.write(encoder.encode(text));
    else {
      await Deno.writeTextFile(command.trace, text);
      console.error(`compare: wrote ${traceLines.length} events to ${command.trace}`);
    }
  }
  const crashed = result.scenarios.some((s) =>
    Object.values(s.results).some((r) => r.crash !== "")
  );
  return crashed ? 1 : 0;
}

if (import.meta.main) {
  Deno.exitCode = await main(Deno.args);
}
