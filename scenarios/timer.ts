/**
 * Scenario: a timer-interrupt-driven scheduler, at instruction level: K spinning programs
 * of real x86-64 bytes on the guest OS of lib/guest/guest_os.ts, preempted round robin by
 * the PC board's timer (IRQ 0).
 *
 * @module
 */

import { GuestOs } from "../lib/guest/guest_os.ts";
import { spinForeverProgram } from "../lib/guest/programs.ts";
import {
  defineScenario,
  type RunOptions,
  runScenario,
  scenarioMain,
  type ScenarioReport,
} from "../lib/lab/scenario.ts";

/** The scenario. */
export const timer = defineScenario({
  name: "timer",
  title: "K spinning processes preempted round robin by a timer interrupt every P instructions",
  description:
    "K user programs spin (`jmp $`); the timer raises IRQ 0 every P instruction times and the " +
    "kernel's tick handler acknowledges the PIC (out 0x20) and switches to the next program: " +
    "its kernel stack, the TSS's RSP0 and CR3. The run lasts a fixed virtual time, so every " +
    "platform takes the same ticks whatever its own instructions cost. Natively a tick is an " +
    "interrupt delivery and an IRETQ; under VT-x it is an external-interrupt exit and an " +
    "injection, an I/O exit for the EOI and, with shadow paging, a CR3 exit per switch (SDM " +
    "Vol. 3C 25.1, 26.6); a Xen PV kernel gets VIRQ_TIMER through an event-channel upcall, " +
    "switches with stack_switch and a new_baseptr mmuext_op, and returns with HYPERVISOR_iret.",
  knobs: [
    { name: "spinners", description: "spinning processes", default: 4, min: 1, max: 64 },
    {
      name: "period",
      description: "instruction times between timer interrupts",
      default: 2000,
      min: 200,
      max: 1 << 24,
    },
    {
      name: "time",
      description: "virtual time of the run, in instruction times",
      default: 100_000,
      min: 1000,
      max: 1 << 30,
    },
  ],
  memoryMiB: 8,
  setup(lab, knobs) {
    const os = GuestOs.forLab(lab);
    if (lab.crashReason !== "") return null; // the report shows why the boot failed
    for (let k = 0; k < knobs.spinners!; k++) os.spawnProgram(spinForeverProgram().bytes);
    lab.platform.board.setTimerPeriod(knobs.period!);
    return os;
  },
  measured(_lab, knobs, state) {
    const os = state as GuestOs | null;
    if (os === null) return 0;
    const ticks = os.ticks;
    // The spinners never exit: the step bound ends the run, in user code with IF = 1.
    const result = os.run(knobs.time!);
    if (result.outcome !== "limit" && result.outcome !== "crashed") {
      throw new Error(`timer: the spinners stopped (${result.outcome}): ${result.reason}`);
    }
    return os.ticks - ticks;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(timer, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(timer, "scenarios/timer.ts", Deno.args);
