/**
 * Scenario: a system-call-heavy process (lmbench lat_syscall's null call), at instruction
 * level: user programs of real x86-64 bytes on the guest OS of lib/guest/guest_os.ts.
 *
 * @module
 */

import { GuestOs } from "../lib/guest/guest_os.ts";
import { getpidLoopProgram } from "../lib/guest/programs.ts";
import {
  defineScenario,
  type RunOptions,
  runScenario,
  scenarioMain,
  type ScenarioReport,
} from "../lib/lab/scenario.ts";

/** The scenario. */
export const syscall = defineScenario({
  name: "syscall",
  title: "a process making N getpid system calls (int 0x80 in, iretq out)",
  description:
    "User programs of real instructions call getpid in a loop (lmbench's null call): each call " +
    "is INT 0x80 through the guest's IDT, the kernel's entry stub, its C code, and IRETQ back. " +
    "Natively and under VT-x none of it leaves the guest (VT-x intercepts neither software " +
    "interrupts nor IRET unless asked, SDM Vol. 3C 25.1); a 64-bit Xen PV kernel runs in ring " +
    "3, so every call enters Xen, which bounces it to the handler in the guest's trap table, " +
    "and every return is a HYPERVISOR_iret hypercall; a classic trap-and-emulate monitor " +
    "reflects each INT 0x80 into the guest's handler, while the ring-1 kernel's IRETQ to user " +
    "mode runs in hardware without a trap. Barham et al. 2003 " +
    "(Table 3, null call) measured the 32-bit PV fast trap that 64-bit PV gave up.",
  knobs: [
    { name: "calls", description: "getpid calls per process", default: 500, min: 1, max: 1 << 24 },
    {
      name: "processes",
      description: "processes (each makes the calls, then exits)",
      default: 1,
      min: 1,
      max: 64,
    },
  ],
  memoryMiB: 8,
  setup(lab, knobs) {
    const os = GuestOs.forLab(lab);
    if (lab.crashReason !== "") return null; // the report shows why the boot failed
    for (let p = 0; p < knobs.processes!; p++) {
      os.spawnProgram(getpidLoopProgram(knobs.calls!).bytes);
    }
    return os;
  },
  measured(_lab, knobs, state) {
    const os = state as GuestOs | null;
    if (os === null) return 0;
    // A call is 5 user instructions and about 40 in the kernel's entry and exit path.
    const budget = knobs.processes! * (60 * knobs.calls! + 1000);
    const result = os.run(budget);
    if (result.outcome === "limit" || result.outcome === "idle") {
      throw new Error(`syscall: the guest did not finish in ${budget}: ${result.reason}`);
    }
    return knobs.processes! * knobs.calls!;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(syscall, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(syscall, "scenarios/syscall.ts", Deno.args);
