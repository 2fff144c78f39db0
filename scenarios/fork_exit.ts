/**
 * Scenario: fork + exit + wait (lmbench "fork proc").
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
export const forkExit = defineScenario({
  name: "fork-exit",
  title: "fork + exit + wait of a parent with a touched heap (lmbench fork proc)",
  description:
    "A parent with a resident heap forks a child that exits at once; the parent waits. The cost is " +
    "copying the parent's page tables copy-on-write (write-protecting each private entry) and " +
    "tearing the child's copy down: the case where Barham et al. measured Xen PV at 1.8x native " +
    "and the shadow-paging VMMs at several times that.",
  knobs: [
    { name: "iterations", description: "fork rounds", default: 30, min: 1, max: 100000 },
    {
      name: "dirty",
      description: "heap pages the parent writes between forks",
      default: 32,
      min: 0,
      max: 1 << 20,
    },
    { name: "pages", description: "heap pages of the parent", default: 256, min: 1, max: 1 << 20 },
  ],
  setup(lab, knobs) {
    const { pid, heap } = lab.spawnWithHeap(knobs.pages!);
    return { parent: pid, heap };
  },
  measured(lab, knobs, state) {
    const { parent, heap } = state as { parent: number; heap: number };
    const dirty = Math.min(knobs.dirty!, knobs.pages!) * 4096;
    for (let i = 0; i < knobs.iterations! && lab.crashReason === ""; i++) {
      // The parent runs between forks and dirties part of its heap (its stack and data in a
      // real program), so each fork write-protects those entries again.
      if (dirty > 0) lab.touch(parent, { start: heap, length: dirty, kind: "write", value: i });
      const child = lab.fork(parent);
      lab.exit(child);
      lab.wait(child, parent);
    }
    return knobs.iterations!;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(forkExit, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(forkExit, "scenarios/fork_exit.ts", Deno.args);
