/**
 * Scenario: Adams & Agesen's forkwait: many children that exit at once.
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

/** The scenario. */
export const forkwait = defineScenario({
  name: "forkwait",
  title: "fork many children that exit at once, then wait for all (Adams & Agesen forkwait)",
  description:
    "A parent with a resident heap forks a batch of children, each of which exits immediately, " +
    "then reaps them all. It is pure process creation and teardown, the microbenchmark on which " +
    "Adams & Agesen (ASPLOS 2006) found first-generation VT-x with shadow paging 17.7x slower " +
    "than native and 2.9x slower than binary translation: every parent PTE write-protect, child " +
    "CR3 load and teardown write is an exit. The parent writes part of its heap between " +
    "batches, as a real parent does, so every fork has entries to write-protect again.",
  knobs: [
    { name: "children", description: "children per batch", default: 16, min: 1, max: 4096 },
    { name: "batches", description: "batches", default: 3, min: 1, max: 10000 },
    {
      name: "dirty",
      description: "heap pages the parent writes between forks",
      default: 32,
      min: 0,
      max: 1 << 20,
    },
    { name: "pages", description: "heap pages of the parent", default: 128, min: 1, max: 1 << 20 },
  ],
  setup(lab, knobs) {
    const { pid, heap } = lab.spawnWithHeap(knobs.pages!);
    return { parent: pid, heap };
  },
  measured(lab, knobs, state) {
    const { parent, heap } = state as { parent: number; heap: number };
    for (let b = 0; b < knobs.batches! && lab.crashReason === ""; b++) {
      // The parent runs between batches: its writes make pages writable again, so the next
      // fork has entries to write-protect, as a real parent's stack and data do.
      const dirty = Math.min(knobs.dirty!, knobs.pages!) * 4096;
      if (dirty > 0) lab.touch(parent, { start: heap, length: dirty, kind: "write", value: b });
      const children: number[] = [];
      for (let i = 0; i < knobs.children!; i++) children.push(lab.fork(parent));
      for (const child of children) lab.exit(child);
      for (const child of children) lab.wait(child, parent);
    }
    return knobs.batches! * knobs.children!;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(forkwait, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(forkwait, "scenarios/forkwait.ts", Deno.args);
