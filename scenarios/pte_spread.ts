/**
 * Scenario: one PTE written per page table, then a CR3 switch (where OOS loses).
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

const SPAN = 2 * 1024 * 1024; // one leaf table maps 2 MiB

/** The scenario. */
export const pteSpread = defineScenario({
  name: "pte-spread",
  title: "one page touched in each of many 2 MiB regions, then a switch to another process",
  description:
    "A process touches the first page of each of many regions that each have their own leaf " +
    "table, then the other process runs. Each table gets a single PTE written before the CR3 " +
    "switch, so out-of-sync shadows buy nothing: every table written is unsynced, snapshotted and " +
    "resynced (a 512-entry diff) at the switch, where plain emulation would have trapped once per " +
    "table. The case where OOS can lose (Xen's Shadow-1 experience).",
  knobs: [
    {
      name: "tables",
      description: "regions (leaf tables) per round",
      default: 32,
      min: 1,
      max: 4096,
    },
    { name: "rounds", description: "rounds", default: 6, min: 1, max: 10000 },
  ],
  memoryMiB: 64,
  setup(lab, knobs) {
    const pid = lab.spawn();
    const other = lab.spawn();
    const base = 0x1000_0000_0; // 64 GiB: far from the image and mmap areas
    lab.mmap(pid, knobs.tables! * SPAN, PROT_READ | PROT_WRITE, { fixed: base });
    lab.touch(pid, { start: base, length: knobs.tables! * SPAN, stride: SPAN, kind: "write" });
    return { pid, other, base };
  },
  measured(lab, knobs, state) {
    const { pid, other, base } = state as { pid: number; other: number; base: number };
    for (let round = 0; round < knobs.rounds! && lab.crashReason === ""; round++) {
      const offset = (round + 1) * 4096;
      lab.touch(pid, {
        start: base + offset,
        length: knobs.tables! * SPAN - offset,
        stride: SPAN,
        kind: "write",
      });
      lab.touch(other, { start: 0x60_0000, length: 4 });
    }
    return knobs.rounds! * knobs.tables!;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(pteSpread, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(pteSpread, "scenarios/pte_spread.ts", Deno.args);
