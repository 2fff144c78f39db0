/**
 * Scenario: a PTE-modification loop (Adams & Agesen's ptemod nanobenchmark).
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
export const ptemod = defineScenario({
  name: "ptemod",
  title: "change the protection of one resident page back and forth (a PTE write each time)",
  description:
    "mprotect toggles one resident page of a shared mapping between read-only and read-write " +
    "(a shared mapping gets its write right back at once, so every toggle rewrites the PTE), and " +
    "the page is read after each change; each change also flushes the page from the TLB. " +
    "Natively a PTE store costs a cycle; Adams & Agesen measured 12,733 cycles for the same store " +
    "traced by a VT-x shadow-paging VMM, which is the emulate-on-write path of this lab.",
  knobs: [{
    name: "iterations",
    description: "protection changes",
    default: 400,
    min: 1,
    max: 1 << 20,
  }],
  memoryMiB: 16,
  setup(lab) {
    const pid = lab.spawn();
    const page = lab.mmap(pid, 4096, PROT_READ | PROT_WRITE, { shared: true });
    lab.writeU32(pid, page, 1);
    return { pid, page };
  },
  measured(lab, knobs, state) {
    const { pid, page } = state as { pid: number; page: number };
    for (let i = 0; i < knobs.iterations! && lab.crashReason === ""; i++) {
      lab.mprotect(pid, page, 4096, i % 2 === 0 ? PROT_READ : PROT_READ | PROT_WRITE);
      lab.readU32(pid, page);
    }
    return knobs.iterations!;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(ptemod, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(ptemod, "scenarios/ptemod.ts", Deno.args);
