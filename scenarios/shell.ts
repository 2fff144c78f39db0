/**
 * Scenario: a shell running a command (lmbench "sh proc").
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
export const shell = defineScenario({
  name: "shell",
  title: "fork + exec of a shell that forks + execs a command and waits (lmbench sh proc)",
  description:
    "The parent forks and execs a shell; the shell touches its data, forks and execs the command; " +
    "the command touches its data and stack and exits; the shell waits and exits; the parent " +
    "waits. Two forks, two execs and two exits per round, with small address spaces: the mix " +
    "lmbench's sh proc measures, where Xen PV paid 1.2x native in 2003.",
  knobs: [{ name: "iterations", description: "commands run", default: 15, min: 1, max: 100000 }],
  setup(lab) {
    const parent = lab.spawn();
    lab.touch(parent, { start: 0x60_0000, length: 16 * 4096, kind: "write" });
    return parent;
  },
  measured(lab, knobs, state) {
    const parent = state as number;
    for (let i = 0; i < knobs.iterations! && lab.crashReason === ""; i++) {
      const sh = lab.fork(parent);
      lab.exec(sh);
      lab.touch(sh, { start: 0x60_0000, length: 8 * 4096, kind: "write" });
      const command = lab.fork(sh);
      lab.exec(command);
      lab.touch(command, { start: 0x60_0000, length: 8 * 4096, kind: "write" });
      lab.touch(command, { start: 0x7fff_fffe_f000, length: 4096, kind: "write" });
      lab.exit(command);
      lab.wait(command, sh);
      lab.exit(sh);
      lab.wait(sh, parent);
    }
    return knobs.iterations!;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(shell, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(shell, "scenarios/shell.ts", Deno.args);
