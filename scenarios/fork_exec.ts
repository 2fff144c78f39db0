/**
 * Scenario: fork + exec + exit + wait, a shell starting a program (lmbench "exec proc").
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
export const forkExec = defineScenario({
  name: "fork-exec",
  title: "fork + exec + exit + wait of a parent with a touched heap (lmbench exec proc)",
  description:
    "A parent with a resident heap forks; the child writes an eighth of the heap (each write to a " +
    "shared page is a copy-on-write fault), execs a fresh image, touches its data and exits; the " +
    "parent waits. Fork write-protects every private entry of the parent and builds the child's " +
    "tables entry by entry, exec and exit tear them down: page-table writes, CR3 loads and faults " +
    "are what a hypervisor must intercept (Barham 2003 Table 3; Adams & Agesen 2006).",
  knobs: [
    { name: "iterations", description: "fork + exec rounds", default: 20, min: 1, max: 100000 },
    { name: "pages", description: "heap pages of the parent", default: 256, min: 1, max: 1 << 20 },
  ],
  setup(lab, knobs) {
    const { pid, heap } = lab.spawnWithHeap(knobs.pages!);
    return { parent: pid, heap };
  },
  measured(lab, knobs, state) {
    const { parent, heap } = state as { parent: number; heap: number };
    for (let i = 0; i < knobs.iterations! && lab.crashReason === ""; i++) {
      const child = lab.fork(parent);
      lab.touch(child, {
        start: heap,
        length: knobs.pages! * 4096,
        kind: "write",
        pattern: "random",
        count: Math.max(1, knobs.pages! >> 3),
        value: i,
      });
      lab.exec(child);
      lab.touch(child, { start: 0x60_0000, length: 4 * 4096, kind: "write" });
      lab.exit(child);
      lab.wait(child, parent);
    }
    return knobs.iterations!;
  },
});

/** Runs the scenario (see {@link runScenario}). */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(forkExec, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(forkExec, "scenarios/fork_exec.ts", Deno.args);
