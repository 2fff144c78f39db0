/**
 * Scenario: mmap, touch and munmap of a file-sized region (lmbench lat_mmap).
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
export const mmap = defineScenario({
  name: "mmap",
  title: "mmap a region, read every page, munmap it (lmbench mmap latency)",
  description:
    "Maps a region, reads one word per page (read faults map the shared zero page), and unmaps " +
    "it, flushing the TLB by INVLPG or in full above 33 pages and freeing the page tables. The " +
    "cost is PTE setup and teardown plus the flush; Barham 2003 Table 5 measured PV at 2x native.",
  knobs: [
    { name: "pages", description: "pages in the region", default: 256, min: 1, max: 1 << 20 },
    { name: "iterations", description: "map/unmap rounds", default: 10, min: 1, max: 100000 },
  ],
  setup: (lab) => lab.spawn(),
  measured(lab, knobs, state) {
    const pid = state as number;
    const bytes = knobs.pages! * 4096;
    for (let i = 0; i < knobs.iterations! && lab.crashReason === ""; i++) {
      const area = lab.mmap(pid, bytes, PROT_READ | PROT_WRITE);
      lab.touch(pid, { start: area, length: bytes });
      lab.munmap(pid, area, bytes);
    }
    return knobs.iterations!;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(mmap, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(mmap, "scenarios/mmap.ts", Deno.args);
