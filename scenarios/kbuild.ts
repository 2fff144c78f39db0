/**
 * Scenario: a kernel-build-like mix of many short processes.
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
export const kbuild = defineScenario({
  name: "kbuild",
  title: "a make-like parent running many short compiler processes",
  description:
    "A make process forks and execs one short compiler after another; each maps a heap, works on " +
    "it with a working-set pattern, grows its break, frees part of its heap and exits. It mixes " +
    "process creation, exec, demand paging and munmap the way a kernel build does (Adams & " +
    "Agesen's kerncomp: VT 1.8x native on the P4; Barham's Linux build: PV 1.03x).",
  knobs: [
    { name: "jobs", description: "compiler processes", default: 24, min: 1, max: 100000 },
    { name: "heap", description: "heap pages per job", default: 64, min: 1, max: 1 << 16 },
  ],
  setup(lab) {
    const make = lab.spawn();
    lab.touch(make, { start: 0x60_0000, length: 16 * 4096, kind: "write" });
    return make;
  },
  measured(lab, knobs, state) {
    const make = state as number;
    const heapBytes = knobs.heap! * 4096;
    for (let i = 0; i < knobs.jobs! && lab.crashReason === ""; i++) {
      const cc = lab.fork(make);
      lab.exec(cc);
      const heap = lab.mmap(cc, heapBytes, PROT_READ | PROT_WRITE);
      lab.touch(cc, {
        start: heap,
        length: heapBytes,
        kind: "write",
        pattern: "working-set",
        count: knobs.heap! * 2,
      });
      const top = lab.brk(cc, 0);
      lab.brk(cc, top + 8 * 4096);
      lab.touch(cc, { start: top, length: 8 * 4096, kind: "write" });
      lab.munmap(cc, heap, heapBytes / 2);
      lab.exit(cc);
      lab.wait(cc, make);
    }
    return knobs.jobs!;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(kbuild, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(kbuild, "scenarios/kbuild.ts", Deno.args);
