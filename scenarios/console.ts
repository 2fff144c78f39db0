/**
 * Scenario: keyboard input echoed to the serial console, at instruction level: an echo
 * program of real x86-64 bytes on the guest OS of lib/guest/guest_os.ts, the PC board's
 * 8042 keyboard (IRQ 1, port 0x60) and 16550 serial port (0x3f8).
 *
 * @module
 */

import { GuestOs } from "../lib/guest/guest_os.ts";
import { echoProgram } from "../lib/guest/programs.ts";
import {
  defineScenario,
  type RunOptions,
  runScenario,
  scenarioMain,
  type ScenarioReport,
} from "../lib/lab/scenario.ts";

/** The scenario. */
export const consoleEcho = defineScenario({
  name: "console",
  title: "typed keys echoed to the serial console: IRQ 1, in al 0x60, out to 0x3f8, idle HLT",
  description:
    "An echo process blocks in read(); the idle thread halts; each typed key raises IRQ 1, the " +
    "kernel reads port 0x60, acknowledges the PIC (out 0x20) and wakes the reader, which " +
    "writes the byte back with write(1), the console driver sending it with `out` under an " +
    "interrupt-flag save and restore (pushf/cli, popf). Natively all of it runs in the guest; " +
    "under VT-x every IN and OUT is an I/O-instruction exit, every HLT a HLT exit and every key " +
    "an external-interrupt exit and an injection (SDM Vol. 3C 25.1.3, 26.6); a Xen PV kernel " +
    "gets the key as an event on the event channel bound to the PIRQ, acknowledges it with " +
    "PHYSDEVOP_eoi, and blocks with SCHEDOP_block instead of HLT. The I/O path of Sugerman et " +
    "al. 2001 (VMware Workstation), where every port access was a world switch.",
  knobs: [
    {
      name: "bytes",
      description: "keys typed (the last is a newline)",
      default: 64,
      min: 1,
      max: 1 << 16,
    },
    {
      name: "gap",
      description: "instruction times between keys",
      default: 1000,
      min: 200,
      max: 1 << 20,
    },
  ],
  memoryMiB: 8,
  setup(lab, knobs) {
    const os = GuestOs.forLab(lab);
    if (lab.crashReason !== "") return null; // the report shows why the boot failed
    os.spawnProgram(echoProgram().bytes);
    // Lowercase letters from the lab's PRNG, then the newline that ends the echo.
    let text = "";
    for (let i = 0; i < knobs.bytes! - 1; i++) {
      text += String.fromCharCode(0x61 + lab.prng.below(26));
    }
    lab.platform.board.type(text + "\n", knobs.gap!, knobs.gap!);
    return os;
  },
  measured(_lab, knobs, state) {
    const os = state as GuestOs | null;
    if (os === null) return 0;
    const budget = (knobs.bytes! + 2) * knobs.gap! + 10_000;
    const result = os.run(budget);
    if (result.outcome === "limit" || result.outcome === "idle") {
      throw new Error(`console: the guest did not finish in ${budget}: ${result.reason}`);
    }
    return knobs.bytes!;
  },
});

/** Runs the scenario. */
export function run(options: RunOptions = {}): ScenarioReport {
  return runScenario(consoleEcho, options);
}

if (import.meta.main) Deno.exitCode = scenarioMain(consoleEcho, "scenarios/console.ts", Deno.args);
