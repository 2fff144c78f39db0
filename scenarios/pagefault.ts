/**
 * Scenario: demand page faults (lmbench lat_pagefault / Barham 2003 Table 5).
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
export const pagefault = defineScenario({
  name: "pagefault",
  title: "first touch of fresh anonymous pages: one demand-zero fault each",
  description:
    "A process maps a fresh region and writes one word per page: every page is a genuine fault " +
    "the kernel answers with a zeroed page and one PTE write. Natively that is one exception; a " +
    "PV guest needs two transitions into Xen (the bounced fault and the PTE update); under shadow " +
    "paging the fault is intercepted and reflected, the PTE write is emulated and the retry is a " +
    "hidden fault. Barham 2003 measured PV at 1.9x native; Adams & Agesen measured VT at 10x.",
  knobs: [{ name: "pages", description: "pages touched", default: 1024, min: 1, max: 1 << 20 }],
  setup(lab, knobs) {
    const pid = lab.spawn();
    const area = lab.mmap(pid, knobs.pages! * 4096, PROT_READ | PROT_WRITE);
    return { pid, area };
  },
  measured(lab, knobs, state) {
    const { pid, area } = state as { pid: number; area: number };
    lab.touch(pid, { start: area, length: knobs.pages! * 4096, kind: "write" });
    return knobs.pages!;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(pagefault, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(pagefault, "scenarios/pagefault.ts", Deno.args);
