/**
 * Long differential fuzzing of the CPU side, kept out of `deno task test` (run:
 * `deno task fuzz-cpu --seed 1 --iterations 50`). Each iteration builds a random guest: a
 * few user programs, each either random bytes (mostly #UD, #GP and #PF: the hostile
 * case) or random sequences of real instructions (system calls with random numbers and
 * arguments, loads and stores at random addresses, stack pushes and pops, port I/O and
 * other privileged instructions, INT n, loops), plus random typed input and a random
 * timer. It runs the guest on every mode and checks:
 *
 * 1. nothing throws out of the simulator, whatever the bytes;
 * 2. every mode ends as native does (done / limit / idle / crashed);
 * 3. every mode gives native's exits (pid, code, signal, reason), system-call count and
 *    user-exception count; the HVM modes (whose guest-level instruction stream is native's)
 *    also the same console output, timer ticks and per-vector counts; PV and classic the
 *    same console output when the timer is off (with it, their different kernel
 *    instruction streams move the ticks, and so the order in which programs print), and
 *    with the timer on and keys typed only crash parity (which program reads which key
 *    depends on the ticks), and
 *    classic only when no untrapped sensitive instruction leaked (SIDT at CPL 3 shows the
 *    monitor's table: the divergence the classic mode exists to show).
 *
 * Prints what it ran; exits 1 with the seed to reproduce on a failure, 2 for bad arguments.
 */

import { parseArgs } from "node:util";
import { availableConfigs, createLab, GuestOs, type LabConfig, Prng } from "../mod.ts";

const HELP = `Usage: deno task fuzz-cpu [--seed N] [--iterations N] [--json]

Runs random instruction-level guests (random bytes and random real instruction sequences
in user programs, random input and timer) on every mode (${
  availableConfigs().map((c) => c.label).join(", ")
}) and compares each with native.
  --seed N          first seed (default 1); iteration i uses seed N+i
  --iterations N    guests (default 20)
  --json            print the summary as JSON
  --help            this text
Exit codes: 0 all checks held, 1 a check failed (the message names the seed), 2 bad arguments.`;

/** Instruction budget of one guest. */
const BUDGET = 300_000;

// Random real instructions for a user program (each a complete encoding).
function randomInstruction(prng: Prng): number[] {
  const imm32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
  const address = () =>
    prng.pick([0x600000, 0x600000 + prng.below(4096), 0x400000, 0x7ffffff000 - 8, 0x1000, 0]);
  switch (prng.below(14)) {
    case 0: // a system call with a random known or unknown number
      return [0xb8, ...imm32(prng.pick([0, 1, 24, 39, 60, 1000])), 0xcd, 0x80];
    case 1: // write(1, data, n)
      return [
        0xbf,
        1,
        0,
        0,
        0,
        0xbe,
        ...imm32(0x600000),
        0xba,
        prng.below(8),
        0,
        0,
        0,
        0xb8,
        1,
        0,
        0,
        0,
        0xcd,
        0x80,
      ];
    case 2: // mov dword [abs32], imm32
      return [0xc7, 0x04, 0x25, ...imm32(address()), ...imm32(prng.below(256))];
    case 3: // mov eax, [abs32]
      return [0x8b, 0x04, 0x25, ...imm32(address())];
    case 4: // push rax; pop rcx
      return [0x50, 0x59];
    case 5: // mov esp, imm32 (a random stack)
      return [0xbc, ...imm32(address())];
    case 6: // a privileged or I/O-sensitive instruction
      return prng.pick([[0xfa], [0xfb], [0xf4], [0xe4, 0x60], [0xe6, 0x20], [0x0f, 0x22, 0xd8], [
        0x9d,
      ], [0x9c, 0x58]]);
    case 7: // int n with a random vector (most gates are absent or DPL 0)
      return [0xcd, prng.below(256)];
    case 8: // a short counted loop: mov ecx, n; l: sub ecx, 1; jnz l
      return [0xb9, ...imm32(1 + prng.below(2000)), 0x83, 0xe9, 0x01, 0x75, 0xfb];
    case 9: // arithmetic
      return prng.pick([[0x01, 0xd8], [0x31, 0xc0], [0x83, 0xc0, 0x07], [0x48, 0x83, 0xe8, 0x03]]);
    case 10: // now and then sidt / sgdt into the data page, else a nop
      return prng.chance(0.2)
        ? [0x0f, 0x01, prng.pick([0x0c, 0x04]), 0x25, ...imm32(0x600000)]
        : [0x90];
    case 11: // read(0, data, 1): blocks for a key
      return [0x31, 0xff, 0xbe, ...imm32(0x600000), 0xba, 1, 0, 0, 0, 0x31, 0xc0, 0xcd, 0x80];
    case 12: // a forward jump over one byte
      return [0xeb, 0x01, prng.below(256)];
    default: // int3 / ud2
      return prng.pick([[0xcc], [0x0f, 0x0b]]);
  }
}

function randomProgram(prng: Prng): number[] {
  if (prng.chance(0.3)) {
    return Array.from({ length: 1 + prng.below(48) }, () => prng.below(256));
  }
  const code: number[] = [];
  const count = 1 + prng.below(12);
  for (let i = 0; i < count; i++) code.push(...randomInstruction(prng));
  code.push(0xb8, 60, 0, 0, 0, 0x31, 0xff, 0xcd, 0x80); // exit(0)
  return code;
}

// Whether `code` may store a descriptor-table register (0f 01 /0 or /1: SGDT, SIDT): they
// do not trap at CPL 3, so the program sees the real table's address, which is the
// hypervisor's under PV and classic (conservative for random bytes).
function mayStoreTable(code: readonly number[]): boolean {
  for (let i = 0; i + 2 < code.length; i++) {
    if (code[i] === 0x0f && code[i + 1] === 0x01 && ((code[i + 2]! >> 3) & 7) <= 1) return true;
  }
  return false;
}

interface Outcome {
  outcome: string;
  exits: string;
  console: string;
  ticks: number;
  vectors: string;
  syscalls: number;
  userExceptions: number;
  /** classic: SIDT/SGDT that did not trap and showed a program the monitor's table. */
  leaks: number;
  /** A program may have run SIDT/SGDT (which shows PV and classic the hypervisor's table). */
  storesTable: boolean;
  /** Whether the timer ran and keys were typed (then which program reads which key depends on timing). */
  racy: boolean;
}

function runGuest(config: LabConfig, seed: number): Outcome {
  const prng = new Prng(seed);
  const { label: _label, ...options } = config;
  const lab = createLab({ ...options, memoryMiB: 8, seed });
  const os = GuestOs.forLab(lab);
  const timer = prng.chance(0.5) ? 200 + prng.below(5000) : 0;
  if (timer > 0) lab.platform.board.setTimerPeriod(timer);
  const keys = prng.below(4);
  if (keys > 0) {
    lab.platform.board.type("x\ny\n".slice(0, keys), prng.below(20_000), prng.below(5000));
  }
  const programs = 1 + prng.below(4);
  let storesTable = false;
  for (let i = 0; i < programs; i++) {
    const code = randomProgram(prng);
    storesTable ||= mayStoreTable(code);
    os.spawnProgram(code);
  }
  const result = os.run(BUDGET);
  const exits = [...os.exits].sort((a, b) => a.pid - b.pid);
  return {
    outcome: result.outcome,
    exits: JSON.stringify(exits),
    console: os.console,
    ticks: os.ticks,
    vectors: JSON.stringify([...os.vectorCounts]),
    syscalls: lab.stats.get("guest.syscall"),
    userExceptions: lab.stats.get("guest.userException"),
    storesTable,
    racy: timer > 0 && keys > 0,
    leaks: config.platform === "classic" ? lab.stats.get("classic.sidtLeak") : 0,
  };
}

function main(): number {
  let values;
  try {
    ({ values } = parseArgs({
      args: Deno.args,
      options: {
        seed: { type: "string" },
        iterations: { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean" },
      },
    }));
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const seed = Number(values.seed ?? "1");
  const iterations = Number(values.iterations ?? "20");
  if (!Number.isSafeInteger(seed) || !Number.isInteger(iterations) || iterations < 1) {
    console.error(`--seed must be an integer and --iterations a positive integer\n\n${HELP}`);
    return 2;
  }
  const configs = availableConfigs();
  const started = performance.now();
  const outcomes = new Map<string, number>();
  let divergences = 0;
  let racy = 0;
  for (let i = 0; i < iterations; i++) {
    const s = seed + i;
    let native: Outcome;
    try {
      native = runGuest(configs.find((c) => c.label === "native")!, s);
    } catch (error) {
      console.error(`seed ${s}, native: threw ${(error as Error).stack}`);
      return 1;
    }
    outcomes.set(native.outcome, (outcomes.get(native.outcome) ?? 0) + 1);
    for (const config of configs) {
      if (config.label === "native") continue;
      let other: Outcome;
      try {
        other = runGuest(config, s);
      } catch (error) {
        console.error(`seed ${s}, ${config.label}: threw ${(error as Error).stack}`);
        return 1;
      }
      const exact = config.platform === "hvm-shadow" || config.platform === "hvm-hap";
      const timerOff = !new Prng(s).chance(0.5);
      // With the timer on and keys typed, which program's read() gets which key depends on
      // when the ticks fall: PV's and classic's may differ, and with them what the programs
      // do next. Then only "no throw, no crash that native did not have" is checked.
      const comparable = exact || !native.racy;
      const checks: [string, unknown, unknown][] = comparable
        ? [
          ["outcome", other.outcome, native.outcome],
          ["exits", other.exits, native.exits],
          ["syscalls", other.syscalls, native.syscalls],
          ["user exceptions", other.userExceptions, native.userExceptions],
        ]
        : [["crashed", other.outcome === "crashed", native.outcome === "crashed"]];
      if (!comparable) racy++;
      // A PV or classic guest whose program ran SIDT/SGDT saw the hypervisor's table, which
      // native never shows: the expected divergence. (The kernel's PUSHF/POPF under classic
      // changes what the console lock sees, not what is printed.)
      if (other.leaks > 0 || (other.storesTable && !exact)) divergences++;
      else if (exact || (timerOff && comparable)) {
        checks.push(["console", other.console, native.console]);
      }
      if (exact) {
        checks.push(["ticks", other.ticks, native.ticks], [
          "vectors",
          other.vectors,
          native.vectors,
        ]);
      }
      for (const [what, got, want] of checks) {
        if (got !== want) {
          console.error(
            `seed ${s}, ${config.label}: ${what} differs from native\n  native: ${want}\n  ${config.label}: ${got}`,
          );
          return 1;
        }
      }
    }
  }
  const summary = {
    seed,
    iterations,
    modes: configs.map((c) => c.label),
    outcomes: Object.fromEntries(outcomes),
    leakedRuns: divergences,
    racyRuns: racy,
    seconds: Math.round((performance.now() - started) / 100) / 10,
  };
  if (values.json) console.log(JSON.stringify(summary));
  else {
    console.log(
      `fuzz-cpu: ${iterations} guests (seeds ${seed}..${seed + iterations - 1}) on ${
        summary.modes.join(", ")
      }: every check held; native outcomes ${JSON.stringify(summary.outcomes)}; ${divergences} ` +
        `PV/classic runs saw SIDT/SGDT show the hypervisor's table (console not compared), ` +
        `${racy} raced ticks against typed keys (only crashes compared); ` +
        `${summary.seconds} s`,
    );
  }
  return 0;
}

Deno.exit(main());
