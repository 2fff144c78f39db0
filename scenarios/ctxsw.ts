/**
 * Scenario: context switches between processes (lmbench lat_ctx).
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
export const ctxsw = defineScenario({
  name: "ctxsw",
  title: "round-robin context switches between N processes, each touching its working set",
  description:
    "N processes pass a token around (lmbench lat_ctx): each switch loads CR3, and each process " +
    "then reads its working set. Natively a switch is one CR3 write (and a TLB refill unless " +
    "PCIDs keep entries); under shadow paging it is a CR3 exit that finds the cached shadow; a " +
    "PV guest makes one hypercall. Barham 2003 Table 4 (2p/0K .. 16p/64K).",
  knobs: [
    { name: "processes", description: "processes in the ring", default: 2, min: 2, max: 64 },
    {
      name: "working-set",
      description: "KiB each process reads per turn",
      default: 16,
      min: 0,
      max: 1024,
    },
    { name: "rounds", description: "times around the ring", default: 100, min: 1, max: 1000000 },
  ],
  memoryMiB: 32,
  setup(lab, knobs) {
    const pids: number[] = [];
    for (let i = 0; i < knobs.processes!; i++) {
      const pid = lab.spawn();
      lab.touch(pid, { start: 0x60_0000, length: 64 * 1024, kind: "write" });
      pids.push(pid);
    }
    return pids;
  },
  measured(lab, knobs, state) {
    const pids = state as number[];
    const bytes = knobs["working-set"]! * 1024;
    let switches = 0;
    for (let round = 0; round < knobs.rounds! && lab.crashReason === ""; round++) {
      for (const pid of pids) {
        lab.kernel.switchTo(pid);
        switches++;
        if (bytes > 0) lab.touch(pid, { start: 0x60_0000, length: bytes, stride: 64 });
      }
    }
    return switches;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(ctxsw, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(ctxsw, "scenarios/ctxsw.ts", Deno.args);
