/**
 * Whole-guest execution on each mode: user instructions (a count-down loop: 2 instructions
 * per iteration, 200,000 instructions in all) and system calls (1,000 `int 0x80` getpid
 * round trips, each ~45 guest instructions: the user loop, the entry stub, the common
 * entry/exit and IRETQ, or the PV bounce and HYPERVISOR_iret). Each iteration boots a
 * fresh 8 MiB guest (~1 ms), loads the program and runs it to its exit.
 *
 * Divide the time per iteration by 200,000 (instructions) or 1,000 (system calls).
 *
 * Run: deno bench tests/cpu_bench.ts
 */

import {
  availableConfigs,
  createLab,
  getpidLoopProgram,
  GuestOs,
  type LabConfig,
  spinnerProgram,
} from "../mod.ts";

const SPIN = spinnerProgram(100_000).bytes; // 2 instructions per round
const SYSCALLS = getpidLoopProgram(1000).bytes;

function runProgram(config: LabConfig, program: Uint8Array): void {
  const { label: _label, ...options } = config;
  const lab = createLab({ ...options, memoryMiB: 8, seed: 1 });
  const os = GuestOs.forLab(lab);
  os.spawnProgram(program);
  const result = os.run(10_000_000);
  if (result.outcome !== "done") throw new Error(`${config.label}: ${result.reason}`);
}

for (const config of availableConfigs()) {
  Deno.bench({
    name: `${config.label}: 100,000-iteration user loop (200,000 instructions)`,
    group: "user instructions",
    n: 20,
    warmup: 2,
    fn: () => runProgram(config, SPIN),
  });
  Deno.bench({
    name: `${config.label}: 1,000 getpid system calls`,
    group: "system calls",
    n: 20,
    warmup: 2,
    fn: () => runProgram(config, SYSCALLS),
  });
}
