/**
 * Scenarios: a named workload with size knobs, run on a lab in one configuration, whose
 * counters over the measured part are the report. Each script in scenarios/ defines one
 * with {@link defineScenario}; `deno run` of the script runs it ({@link scenarioMain}) and
 * the compare command runs them all on every platform.
 *
 * @module
 */

import { parseArgs, styleText } from "node:util";
import { findCounter, type StatsSnapshot, type TraceSink } from "../x86/stats.ts";
import type { PlatformName } from "../platform/platform.ts";
import { AVAILABLE_PLATFORMS, createLab, type Lab } from "./lab.ts";
import { CPU_PROFILES, DEFAULT_CPU_PROFILE, estimateCycles } from "./cost_model.ts";

/** One size knob of a scenario (`--name <n>` on the command line). */
export interface ScenarioKnob {
  /** Flag name, kebab-case. */
  name: string;
  /** What it sets. */
  description: string;
  /** Default value. */
  default: number;
  /** Smallest valid value. */
  min: number;
  /** Largest valid value. */
  max: number;
}

/** A workload. */
export interface ScenarioDefinition {
  /** Name, kebab-case (`fork-exec`). */
  name: string;
  /** One line. */
  title: string;
  /** A paragraph: what it stresses and why, and where it comes from. */
  description: string;
  /** Size knobs. */
  knobs: readonly ScenarioKnob[];
  /** Guest memory in MiB (default 64). */
  memoryMiB?: number;
  /**
   * Builds the starting state (not measured); returns what {@link measured} needs.
   * Everything random must come from `lab.prng`.
   */
  setup(lab: Lab, knobs: Readonly<Record<string, number>>): unknown;
  /** The measured work. Returns the number of operations it did (for per-operation rows). */
  measured(lab: Lab, knobs: Readonly<Record<string, number>>, state: unknown): number;
}

/** A platform and its options, named as reports show it. */
export interface LabConfig {
  /** Column label: native, pv, hvm-shadow, hvm-shadow+oos, hvm-hap, classic. */
  label: string;
  /** The platform. */
  platform: PlatformName;
  /** hvm-shadow's out-of-sync policy. */
  oos?: boolean;
}

/** Every configuration this build can run, in report order. */
export function availableConfigs(): LabConfig[] {
  const configs: LabConfig[] = [];
  for (const platform of AVAILABLE_PLATFORMS) {
    configs.push({ label: platform, platform });
    if (platform === "hvm-shadow") {
      configs.push({ label: "hvm-shadow+oos", platform, oos: true });
    }
  }
  return configs;
}

/** A configuration by label; throws a RangeError naming the valid ones. */
export function configByLabel(label: string): LabConfig {
  const config = availableConfigs().find((c) => c.label === label);
  if (config === undefined) {
    throw new RangeError(
      `Unknown mode "${label}": valid modes are ${
        availableConfigs().map((c) => c.label).join(", ")
      }`,
    );
  }
  return config;
}

/** How to run a scenario. */
export interface RunOptions {
  /** Configuration label (default "native"). */
  mode?: string;
  /** Seed of the lab's PRNG (default 1). */
  seed?: number;
  /** Guest memory in MiB (default the scenario's). */
  memoryMiB?: number;
  /** Use PCIDs. */
  pcid?: boolean;
  /** Knob values; omitted ones take their defaults. */
  knobs?: Record<string, number>;
  /** Run the platform's consistency checkers after every lab call (slow). */
  check?: boolean;
  /** Receives every traced event of the measured part. */
  trace?: TraceSink;
}

/** What a run reports: the measured part's counters and how the run was set up. */
export interface ScenarioReport {
  /** Scenario name. */
  scenario: string;
  /** Configuration label. */
  mode: string;
  /** Seed used. */
  seed: number;
  /** Guest memory in MiB. */
  memoryMiB: number;
  /** Whether PCIDs were on. */
  pcid: boolean;
  /** Knob values used. */
  knobs: Record<string, number>;
  /** Operations the measured part did (iterations, accesses ...). */
  operations: number;
  /** Every counter that changed in the measured part, by registry name. */
  counters: StatsSnapshot;
  /** Why the guest domain crashed, or "". */
  crash: string;
  /** Wall-clock milliseconds of the measured part (not a simulated result). */
  elapsedMs: number;
}

/** Fills in knob defaults and checks ranges; RangeError naming the knob and its range. */
export function resolveKnobs(
  definition: ScenarioDefinition,
  given: Record<string, number> = {},
): Record<string, number> {
  const knobs: Record<string, number> = {};
  for (const name of Object.keys(given)) {
    if (!definition.knobs.some((k) => k.name === name)) {
      throw new RangeError(
        `Unknown knob "${name}" for ${definition.name}: valid knobs are ${
          definition.knobs.map((k) => k.name).join(", ") || "none"
        }`,
      );
    }
  }
  for (const knob of definition.knobs) {
    const value = given[knob.name] ?? knob.default;
    if (!Number.isInteger(value) || value < knob.min || value > knob.max) {
      throw new RangeError(
        `Invalid --${knob.name} ${value}: must be an integer ${knob.min}..${knob.max}`,
      );
    }
    knobs[knob.name] = value;
  }
  return knobs;
}

/**
 * Runs `definition` once: boots a lab in the configuration, runs the setup, then the
 * measured part, and reports the counters that changed in it.
 *
 * @example
 * ```ts
 * import { defineScenario, runScenario } from "./scenario.ts";
 * import assert from "node:assert/strict";
 * const touch = defineScenario({
 *   name: "touch", title: "touch pages", description: "Writes pages.",
 *   knobs: [{ name: "pages", description: "pages", default: 4, min: 1, max: 64 }],
 *   memoryMiB: 16,
 *   setup: (lab) => lab.spawn(),
 *   measured(lab, knobs, pid) {
 *     lab.touch(pid as number, { start: 0x600000, length: knobs.pages! * 4096, kind: "write" });
 *     return knobs.pages!;
 *   },
 * });
 * const report = runScenario(touch, { knobs: { pages: 3 } });
 * assert.equal(report.counters["guest.fault.demandZero"], 3);
 * ```
 */
export function runScenario(
  definition: ScenarioDefinition,
  options: RunOptions = {},
): ScenarioReport {
  const config = configByLabel(options.mode ?? "native");
  const knobs = resolveKnobs(definition, options.knobs);
  const seed = options.seed ?? 1;
  const memoryMiB = options.memoryMiB ?? definition.memoryMiB ?? 64;
  const pcid = options.pcid ?? false;
  const lab = createLab({
    platform: config.platform,
    seed,
    memoryMiB,
    pcid,
    check: options.check ?? false,
    ...(config.oos !== undefined ? { oos: config.oos } : {}),
  });
  const state = definition.setup(lab, knobs);
  if (options.trace !== undefined) lab.stats.trace = options.trace;
  let operations = 0;
  const started = performance.now();
  const counters = lab.measure(() => {
    operations = definition.measured(lab, knobs, state);
  });
  return {
    scenario: definition.name,
    mode: config.label,
    seed,
    memoryMiB,
    pcid,
    knobs,
    operations,
    counters,
    crash: lab.crashReason,
    elapsedMs: performance.now() - started,
  };
}

/** A definition, checked (names, knob defaults) at module load. */
export function defineScenario(definition: ScenarioDefinition): ScenarioDefinition {
  if (!/^[a-z][a-z0-9-]*$/.test(definition.name)) {
    throw new TypeError(`Scenario name "${definition.name}" must be kebab-case`);
  }
  resolveKnobs(definition);
  return definition;
}

/** Formats a report: a header, then counter, total, per operation and meaning, aligned. */
export function formatScenarioReport(
  definition: ScenarioDefinition,
  report: ScenarioReport,
  options: { color?: boolean; cpu?: string } = {},
): string {
  const paint = (style: "bold" | "dim", text: string) =>
    options.color ? styleText(style, text, { validateStream: false }) : text;
  const knobs = Object.entries(report.knobs).map(([k, v]) => `${k} ${v}`).join(", ");
  const lines = [
    paint(
      "bold",
      `${report.scenario} on ${report.mode}: ${knobs}${knobs ? ", " : ""}seed ${report.seed}, ` +
        `${report.memoryMiB} MiB${report.pcid ? ", PCIDs" : ""}`,
    ),
    paint("dim", definition.title),
    "",
  ];
  const rows = Object.entries(report.counters);
  const nameWidth = Math.max(7, ...rows.map(([n]) => n.length));
  const totalWidth = Math.max(5, ...rows.map(([, v]) => String(v).length));
  const ops = Math.max(1, report.operations);
  lines.push(
    paint(
      "dim",
      `${"counter".padEnd(nameWidth)}  ${"total".padStart(totalWidth)}  ${
        "per op".padStart(10)
      }  meaning`,
    ),
  );
  for (const [name, value] of rows) {
    const per = value / ops;
    const perText = Number.isInteger(per) ? String(per) : per.toFixed(2);
    lines.push(
      `${name.padEnd(nameWidth)}  ${String(value).padStart(totalWidth)}  ${perText.padStart(10)}  ${
        paint("dim", findCounter(name)?.description ?? "")
      }`,
    );
  }
  const cpu = options.cpu ?? DEFAULT_CPU_PROFILE;
  const estimate = estimateCycles(report.counters, cpu);
  lines.push(
    "",
    `estimated cycles (${cpu}): ${Math.round(estimate.total)} total, ${
      Math.round(estimate.total / ops)
    } per op (${report.operations} ops)`,
  );
  if (report.crash !== "") {
    lines.push("", paint("bold", `The guest domain crashed: ${report.crash}`));
  }
  return lines.join("\n");
}

/** The `--help` text of a scenario script. */
export function scenarioUsage(definition: ScenarioDefinition, script: string): string {
  const knobs = definition.knobs.map((k) =>
    `  --${(k.name + " <n>").padEnd(20)}${k.description} (default ${k.default}, ${k.min}..${k.max})`
  ).join("\n");
  return `Usage: deno run ${script} [options]

${definition.title}

${definition.description}

Options:
  --mode <name>          ${availableConfigs().map((c) => c.label).join(" | ")} (default native)
  --seed <n>             seed of the lab's PRNG (default 1)
  --memory <MiB>         guest memory (default ${definition.memoryMiB ?? 64})
  --pcid                 use PCIDs (CR4.PCIDE)
  --cpu <profile>        cost profile for the cycle estimate: ${
    CPU_PROFILES.map((p) => p.name).join(" | ")
  } (default ${DEFAULT_CPU_PROFILE})
${knobs}
  --json                 print the report as JSON (counters by registry name)
  --help                 print this help

Counters: guest.* are the guest kernel's own events (the same on every platform); exit.*,
fault.hidden/genuine, emulate.*, shadow.*, oos.*, hypercall.* are what virtualization adds;
cpu.*, tlb.*, walk.* are the processor's work.

Exit status: 0 on success, 1 if the guest domain crashed, 2 for bad arguments.
`;
}

/** Parsed command line of a scenario script. */
export interface ScenarioCommand {
  /** Print help instead of running. */
  help: boolean;
  /** JSON output. */
  json: boolean;
  /** Cost profile. */
  cpu: string;
  /** Run options. */
  options: RunOptions;
}

/**
 * Parses a scenario script's arguments; RangeError with what was wrong and what is valid.
 *
 * @example
 * ```ts
 * import { defineScenario, parseScenarioArgs } from "./scenario.ts";
 * import assert from "node:assert/strict";
 * const s = defineScenario({ name: "demo", title: "", description: "", knobs: [
 *   { name: "pages", description: "", default: 4, min: 1, max: 8 }],
 *   setup: () => 0, measured: () => 0 });
 * assert.deepEqual(parseScenarioArgs(s, ["--pages", "6", "--mode", "native"]).options,
 *   { mode: "native", knobs: { pages: 6 } });
 * assert.throws(() => parseScenarioArgs(s, ["--pages", "9"]), /must be an integer 1..8/);
 * ```
 */
export function parseScenarioArgs(
  definition: ScenarioDefinition,
  args: readonly string[],
): ScenarioCommand {
  const flags: Record<string, { type: "string" | "boolean" }> = {
    mode: { type: "string" },
    seed: { type: "string" },
    memory: { type: "string" },
    pcid: { type: "boolean" },
    cpu: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean" },
  };
  for (const knob of definition.knobs) flags[knob.name] = { type: "string" };
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: [...args], options: flags, strict: true }));
  } catch (error) {
    if (error instanceof TypeError) {
      const valid = Object.keys(flags).map((f) => `--${f}`).join(", ");
      throw new RangeError(`${error.message}. Valid options: ${valid}`);
    }
    throw error;
  }
  const options: RunOptions = {};
  const integer = (flag: string, min: number, max: number): number | undefined => {
    const text = values[flag];
    if (typeof text !== "string") return undefined;
    const value = Number(text);
    if (!/^\d+$/.test(text) || value < min || value > max) {
      throw new RangeError(`Invalid --${flag} "${text}": must be an integer ${min}..${max}`);
    }
    return value;
  };
  if (typeof values.mode === "string") options.mode = configByLabel(values.mode).label;
  const seed = integer("seed", 0, 0xffffffff);
  if (seed !== undefined) options.seed = seed;
  const memory = integer("memory", 4, 65536);
  if (memory !== undefined) options.memoryMiB = memory;
  if (values.pcid === true) options.pcid = true;
  const knobs: Record<string, number> = {};
  for (const knob of definition.knobs) {
    const value = integer(knob.name, knob.min, knob.max);
    if (value !== undefined) knobs[knob.name] = value;
  }
  if (Object.keys(knobs).length > 0) options.knobs = knobs;
  const cpu = typeof values.cpu === "string" ? values.cpu : DEFAULT_CPU_PROFILE;
  if (!CPU_PROFILES.some((p) => p.name === cpu)) {
    throw new RangeError(
      `Invalid --cpu "${cpu}": valid profiles are ${CPU_PROFILES.map((p) => p.name).join(", ")}`,
    );
  }
  return { help: values.help === true, json: values.json === true, cpu, options };
}

/** Runs a scenario script's command line; returns the exit code (0, 1 crashed, 2 bad args). */
export function scenarioMain(
  definition: ScenarioDefinition,
  script: string,
  args: readonly string[],
): number {
  let command: ScenarioCommand;
  try {
    command = parseScenarioArgs(definition, args);
  } catch (error) {
    if (error instanceof RangeError) {
      console.error(`${definition.name}: ${error.message}`);
      console.error("Run with --help for every option.");
      return 2;
    }
    throw error;
  }
  if (command.help) {
    console.log(scenarioUsage(definition, script));
    return 0;
  }
  const report = runScenario(definition, command.options);
  if (command.json) {
    const estimate = estimateCycles(report.counters, command.cpu);
    console.log(JSON.stringify({ ...report, estimatedCycles: estimate }, null, 2));
  } else {
    const color = Deno.stdout.isTerminal() && !Deno.noColor;
    console.log(formatScenarioReport(definition, report, { color, cpu: command.cpu }));
  }
  return report.crash === "" ? 0 : 1;
}
