/**
 * Scenario: a shell's fork + exec + exit + wait loop, as lmbench's "fork+execve" measures it.
 *
 * A parent with a touched heap forks a child; the child writes part of the heap (each write
 * to a shared page is a copy-on-write fault), execs a fresh image, touches its data, and
 * exits; the parent waits. Fork is where virtualized memory hurts most: every private
 * entry of the parent is write-protected, the child's tables are built entry by entry, and
 * exit tears them down again, so the counts show page-table writes, CR3 loads, TLB flushes
 * and faults per iteration.
 *
 * Run it as `deno task fork-exec` (see `--help`).
 *
 * @module
 */

import { parseArgs, styleText } from "node:util";
import { findCounter, PAGE_SIZE, parseBigInt, type StatsSnapshot } from "../lib/x86/mod.ts";
import { PROT_READ, PROT_WRITE } from "../lib/guest/mod.ts";
import { AVAILABLE_PLATFORMS, createLab } from "../lib/lab/mod.ts";
import { PLATFORM_NAMES, type PlatformName } from "../lib/platform/mod.ts";

/** Options of {@link run}; omitted ones take the defaults shown in `--help`. */
export interface ForkExecOptions {
  /** Platform to run on; default "native". */
  platform?: PlatformName;
  /** Seed of the lab's PRNG; default 1. */
  seed?: number;
  /** Loop iterations; default 20. */
  iterations?: number;
  /** Heap pages the parent touches before the loop; default 256. */
  pages?: number;
  /** Guest memory in MiB; default 64. */
  memoryMiB?: number;
  /** Use PCIDs; default false. */
  pcid?: boolean;
  /** hvm-shadow: let written L1 tables go out of sync; default false. */
  oos?: boolean;
}

/** One counter of the report. */
export interface CounterRow {
  /** Registry name (`guest.fault.cow`). */
  name: string;
  /** Total over the loop. */
  total: number;
  /** Total / iterations. */
  perIteration: number;
  /** The registry's description. */
  description: string;
}

/** What {@link run} returns. */
export interface ForkExecReport {
  /** "fork-exec". */
  scenario: string;
  /** The options in effect (defaults filled in). */
  options: Required<ForkExecOptions>;
  /** Counters that changed during the loop, in registry order. */
  counters: CounterRow[];
  /** Every counter of the loop by name (non-zero ones), for machines. */
  totals: StatsSnapshot;
  /** Why the domain crashed, or "". */
  crash: string;
  /** Wall-clock milliseconds of the loop (not part of the simulated result). */
  elapsedMs: number;
}

const DEFAULTS: Required<ForkExecOptions> = {
  platform: "native",
  seed: 1,
  iterations: 20,
  pages: 256,
  memoryMiB: 64,
  pcid: false,
  oos: false,
};

/**
 * Runs the loop and returns its counters. Throws a RangeError for options out of range.
 *
 * @example
 * ```ts
 * import { run } from "./fork_exec.ts";
 * import assert from "node:assert/strict";
 * const report = run({ iterations: 2, pages: 8, memoryMiB: 16 });
 * assert.equal(report.totals["guest.fork"], 2);
 * assert.equal(report.totals["guest.exec"], 2);
 * assert.equal(report.crash, "");
 * ```
 */
export function run(options: ForkExecOptions = {}): ForkExecReport {
  const o: Required<ForkExecOptions> = { ...DEFAULTS, ...options };
  checkRange("iterations", o.iterations, 1, 1_000_000);
  checkRange("pages", o.pages, 1, 1 << 20);
  const lab = createLab({
    platform: o.platform,
    seed: o.seed,
    memoryMiB: o.memoryMiB,
    pcid: o.pcid,
    oos: o.oos,
  });
  const heapBytes = o.pages * PAGE_SIZE;
  const parent = lab.spawn();
  const heap = lab.mmap(parent, heapBytes, PROT_READ | PROT_WRITE);
  lab.touch(parent, { start: heap, length: heapBytes, kind: "write" });
  const started = performance.now();
  const totals = lab.measure(() => {
    for (let i = 0; i < o.iterations && lab.crashReason === ""; i++) {
      const child = lab.fork(parent);
      // The child dirties a random eighth of the heap (copy-on-write), then execs.
      lab.touch(child, {
        start: heap,
        length: heapBytes,
        kind: "write",
        pattern: "random",
        count: Math.max(1, o.pages >> 3),
        value: i,
      });
      lab.exec(child);
      lab.touch(child, { start: 0x60_0000, length: 4 * PAGE_SIZE, kind: "write" });
      lab.exit(child);
      lab.wait(child, parent);
    }
  });
  const elapsedMs = performance.now() - started;
  const counters = Object.entries(totals).map(([name, total]) => ({
    name,
    total,
    perIteration: total / o.iterations,
    description: findCounter(name)?.description ?? "",
  }));
  return {
    scenario: "fork-exec",
    options: o,
    counters,
    totals,
    crash: lab.crashReason,
    elapsedMs,
  };
}

function checkRange(name: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`Invalid ${name} ${value}: must be an integer ${min}..${max}`);
  }
}

/** Formats a report as an aligned table (counter, total, per iteration, description). */
export function formatForkExecReport(report: ForkExecReport, color = false): string {
  const bold = (text: string) => color ? styleText("bold", text, { validateStream: false }) : text;
  const dim = (text: string) => color ? styleText("dim", text, { validateStream: false }) : text;
  const o = report.options;
  const lines = [
    bold(
      `fork-exec on ${o.platform}: ${o.iterations} iterations, parent heap ${o.pages} pages, ` +
        `seed ${o.seed}${o.pcid ? ", PCIDs" : ""}${o.oos ? ", out-of-sync L1s" : ""}`,
    ),
    "",
  ];
  const nameWidth = Math.max(...report.counters.map((c) => c.name.length), 7);
  const totalWidth = Math.max(...report.counters.map((c) => String(c.total).length), 5);
  lines.push(
    dim(
      `${"counter".padEnd(nameWidth)}  ${"total".padStart(totalWidth)}  ${
        "per iter".padStart(9)
      }  meaning`,
    ),
  );
  for (const c of report.counters) {
    const per = Number.isInteger(c.perIteration)
      ? String(c.perIteration)
      : c.perIteration.toFixed(1);
    lines.push(
      `${c.name.padEnd(nameWidth)}  ${String(c.total).padStart(totalWidth)}  ${per.padStart(9)}  ${
        dim(c.description)
      }`,
    );
  }
  if (report.crash !== "") lines.push("", bold(`The domain crashed: ${report.crash}`));
  return lines.join("\n");
}

/** The `--help` text. */
export function forkExecUsage(): string {
  return `Usage: deno task fork-exec [options]
       deno run scenarios/fork_exec.ts [options]

A parent with a touched heap runs a fork + exec + exit + wait loop (lmbench's fork+execve).
Prints every counter that changed during the loop: its total, its value per iteration and
what it counts (guest.* are the guest kernel's events, the same on every platform; cpu.*,
tlb.*, walk.* are the processor's work).

Options:
  --platform <name>   ${AVAILABLE_PLATFORMS.join(" | ")} (default native; later: ${
    PLATFORM_NAMES.filter((p) => !AVAILABLE_PLATFORMS.includes(p)).join(", ")
  })
  --seed <n>          seed of the lab's PRNG (default 1)
  --iterations <n>    loop iterations (default 20)
  --pages <n>         heap pages the parent touches first (default 256)
  --memory <MiB>      guest memory (default 64)
  --pcid              use PCIDs (CR4.PCIDE): context switches keep TLB entries
  --oos               hvm-shadow: let written L1 tables go out of sync (else emulate each write)
  --json              print the report as JSON
  --help              print this help

Exit status: 0 on success, 1 if the guest domain crashed, 2 for bad arguments.
`;
}

const FLAGS = {
  platform: { type: "string" },
  seed: { type: "string" },
  iterations: { type: "string" },
  pages: { type: "string" },
  memory: { type: "string" },
  pcid: { type: "boolean" },
  oos: { type: "boolean" },
  json: { type: "boolean" },
  help: { type: "boolean" },
} as const;

/**
 * Parses the command line into options; "help" for `--help`. Throws a RangeError that
 * names the valid choices for anything wrong.
 *
 * @example
 * ```ts
 * import { parseForkExecArgs } from "./fork_exec.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(parseForkExecArgs(["--iterations", "5", "--json"]), {
 *   json: true,
 *   options: { iterations: 5 },
 * });
 * assert.throws(() => parseForkExecArgs(["--platform", "vmware"]), RangeError);
 * ```
 */
export function parseForkExecArgs(
  args: readonly string[],
): "help" | { json: boolean; options: ForkExecOptions } {
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
  if (values.help) return "help";
  const options: ForkExecOptions = {};
  if (values.platform !== undefined) {
    if (!(AVAILABLE_PLATFORMS as readonly string[]).includes(values.platform)) {
      throw new RangeError(
        `Invalid --platform "${values.platform}": available are ${AVAILABLE_PLATFORMS.join(", ")}`,
      );
    }
    options.platform = values.platform as PlatformName;
  }
  const number = (flag: string, text: string | undefined, min: number, max: number) => {
    if (text === undefined) return undefined;
    const value = parseBigInt(text);
    if (value === undefined || value < BigInt(min) || value > BigInt(max)) {
      throw new RangeError(`Invalid --${flag} "${text}": must be an integer ${min}..${max}`);
    }
    return Number(value);
  };
  const seed = number("seed", values.seed, 0, 0xffffffff);
  const iterations = number("iterations", values.iterations, 1, 1_000_000);
  const pages = number("pages", values.pages, 1, 1 << 20);
  const memoryMiB = number("memory", values.memory, 4, 65536);
  if (seed !== undefined) options.seed = seed;
  if (iterations !== undefined) options.iterations = iterations;
  if (pages !== undefined) options.pages = pages;
  if (memoryMiB !== undefined) options.memoryMiB = memoryMiB;
  if (values.pcid) options.pcid = true;
  if (values.oos) options.oos = true;
  return { json: values.json ?? false, options };
}

function main(args: readonly string[]): number {
  let command;
  try {
    command = parseForkExecArgs(args);
  } catch (error) {
    if (error instanceof RangeError) {
      console.error(`fork-exec: ${error.message}`);
      console.error("Run with --help for every option.");
      return 2;
    }
    throw error;
  }
  if (command === "help") {
    console.log(forkExecUsage());
    return 0;
  }
  const report = run(command.options);
  const color = Deno.stdout.isTerminal() && !Deno.noColor;
  console.log(command.json ? JSON.stringify(report, null, 2) : formatForkExecReport(report, color));
  return report.crash === "" ? 0 : 1;
}

if (import.meta.main) {
  Deno.exitCode = main(Deno.args);
}
