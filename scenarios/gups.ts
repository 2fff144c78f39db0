/**
 * Scenario: random updates over a large working set (GUPS-like), TLB-miss heavy.
 *
 * @module
 */

import {
  defineScenario,
  type RunOptions,
  runScenario,
  scenarioMain,
  type ScenarioReport,
} from "../lib/lab/scenario.ts";
import { PROT_READ, PROT_WRITE } from "../lib/guest/layout.ts";

/** The scenario. */
export const gups = defineScenario({
  name: "gups",
  title: "random read-modify-writes over a working set far beyond the TLB's reach",
  description: "One process updates random words of a large resident region (the HPC Challenge " +
    "RandomAccess / GUPS pattern). Nearly every access misses the TLB, so the cost is page walks: " +
    "4 references natively and with shadow tables, up to 24 with nested paging. This is the " +
    "workload where hardware nested paging falls behind shadow paging (Bhargava et al. 2008; " +
    "VMware's EPT/RVI papers).",
  knobs: [
    { name: "size", description: "working set in MiB", default: 32, min: 1, max: 4096 },
    { name: "updates", description: "random updates", default: 100000, min: 1, max: 1 << 26 },
  ],
  memoryMiB: 96,
  setup(lab, knobs) {
    const pid = lab.spawn();
    const bytes = knobs.size! * 1024 * 1024;
    const area = lab.mmap(pid, bytes, PROT_READ | PROT_WRITE);
    lab.touch(pid, { start: area, length: bytes, kind: "write" });
    return { pid, area, bytes };
  },
  measured(lab, knobs, state) {
    const { pid, area, bytes } = state as { pid: number; area: number; bytes: number };
    lab.touch(pid, {
      start: area,
      length: bytes,
      pattern: "random",
      kind: "write",
      count: knobs.updates!,
    });
    return knobs.updates!;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(gups, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(gups, "scenarios/gups.ts", Deno.args);
