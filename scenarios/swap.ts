/**
 * Scenario: memory pressure with swap-out and swap-in.
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
export const swap = defineScenario({
  name: "swap",
  title: "a working set larger than guest memory: reclaim, swap-out and major faults",
  description:
    "A process's region is half again as large as guest memory. Sweeping it sequentially and then " +
    "randomly forces the kernel's clock reclaim to clear Accessed bits, write pages to swap " +
    "(clearing their PTEs and flushing) and bring them back on the next access (major faults). " +
    "Every PTE change is a page-table write a hypervisor must see.",
  knobs: [
    { name: "sweeps", description: "sequential sweeps", default: 2, min: 1, max: 1000 },
    {
      name: "random",
      description: "random accesses after the sweeps",
      default: 2000,
      min: 0,
      max: 1 << 24,
    },
  ],
  memoryMiB: 8,
  setup(lab) {
    const pid = lab.spawn();
    const bytes = 12 * 1024 * 1024;
    const area = lab.mmap(pid, bytes, PROT_READ | PROT_WRITE);
    return { pid, area, bytes };
  },
  measured(lab, knobs, state) {
    const { pid, area, bytes } = state as { pid: number; area: number; bytes: number };
    let accesses = 0;
    for (let s = 0; s < knobs.sweeps!; s++) {
      accesses += lab.touch(pid, { start: area, length: bytes, kind: "write" }).accesses;
    }
    if (knobs.random! > 0) {
      accesses +=
        lab.touch(pid, { start: area, length: bytes, pattern: "random", count: knobs.random! })
          .accesses;
    }
    return accesses;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(swap, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(swap, "scenarios/swap.ts", Deno.args);
