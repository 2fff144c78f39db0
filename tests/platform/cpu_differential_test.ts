/**
 * Invariant 1 of DESIGN.md for the CPU side: the same instruction-level guest (user
 * programs of real bytes on lib/guest/guest_os.ts, typed keys, a timer) gives the same
 * guest-visible outcome on every platform as natively: the console output, how every
 * program ended (pid, exit code, signal, reason), and how many system calls and user
 * exceptions the guest kernel handled, per vector.
 *
 * How much more must match depends on what the platform runs:
 * - hvm-shadow (with and without out-of-sync L1s) and hvm-hap run the guest's own
 *   instructions, exactly the native stream (VT-x exits change what the hypervisor does,
 *   not what the guest retires), so virtual time is the same: the same timer ticks at the
 *   same instructions, the same idle time, every vector count, every guest.* counter, the
 *   exits in the same order.
 * - pv runs the paravirtualized kernel text (entry_text.ts, flavour "pv"): the stubs pop
 *   Xen's RCX/R11, the return is `push 0; jmp hypercall_iret` plus the hypercall page's
 *   instructions, idle is a sched_op call instead of `sti; hlt`, interrupts arrive as
 *   event-channel upcalls (pseudo-vector 0x100) instead of vectors 0x20/0x21, and events
 *   pending together share one upcall. Its stream differs (more instructions per entry
 *   and exit, fewer entries), so virtual time runs differently: a tick lands at another
 *   instruction, preemption points and the order programs finish in may differ.
 * - classic (trap-and-emulate before VT-x) runs the native text deprivileged: the monitor
 *   emulates the kernel's privileged instructions and reflects its traps, so its virtual
 *   time drifts from native too (by a few instruction times on the slides' guest).
 * For those two the test compares what timing cannot change: console output (one program
 * writes per workload), exits by pid, and the counts of vectors 0x80, #UD, #GP, #PF.
 *
 * A seeded property test (lib/x86/prng.ts) draws random small workloads: a mix of the
 * programs of lib/guest/programs.ts, typed input, a timer period.
 */

import assert from "node:assert/strict";
import { PLATFORM_NAMES, type PlatformName } from "../../lib/platform/platform.ts";
import { GuestOs, type ProgramExit } from "../../lib/guest/guest_os.ts";
import {
  echoProgram,
  getpidLoopProgram,
  type GuestProgram,
  PRIVILEGED_KINDS,
  privilegedProgram,
  spinnerProgram,
  storeToTextProgram,
  triangleExitCode,
  triangleProgram,
  undefinedProgram,
  writerProgram,
  yielderProgram,
} from "../../lib/guest/programs.ts";
import { createLab } from "../../lib/lab/lab.ts";
import { Prng } from "../../lib/x86/prng.ts";

/** One guest run: programs, keys typed, the timer. */
interface Workload {
  programs: GuestProgram[];
  typed: string;
  typeAt: number;
  gap: number;
  period: number;
}

/** What a run leaves that the guest (or its user) can observe. */
interface Observed {
  outcome: string;
  reason: string;
  console: string;
  exits: ProgramExit[];
  /** Vectors the guest kernel handled, by vector (non-zero only). */
  vectors: Record<number, number>;
  ticks: number;
  now: number;
  idle: number;
  guest: Record<string, number>;
}

interface Config {
  label: string;
  platform: PlatformName;
  oos?: boolean;
}

const CONFIGS: Config[] = PLATFORM_NAMES.flatMap((platform): Config[] =>
  platform === "hvm-shadow"
    ? [{ label: platform, platform }, { label: "hvm-shadow+oos", platform, oos: true }]
    : [{ label: platform, platform }]
);

// Platforms whose guest runs the native kernel text unchanged under VT-x.
const isHvm = (config: Config) => config.platform.startsWith("hvm");

/** Vectors whose counts no timing can change: system calls and user exceptions. */
const TIMING_FREE_VECTORS = [0x80, 6, 13, 14];

const BUDGET = 2_000_000;

function runWorkload(config: Config, workload: Workload): Observed {
  const lab = createLab({
    platform: config.platform,
    memoryMiB: 8,
    ...(config.oos !== undefined ? { oos: config.oos } : {}),
  });
  const os = GuestOs.forLab(lab);
  const board = lab.platform.board;
  let result = { outcome: "crashed", reason: lab.crashReason };
  if (lab.crashReason === "") {
    for (const program of workload.programs) os.spawnProgram(program.bytes);
    if (workload.typed !== "") board.type(workload.typed, workload.typeAt, workload.gap);
    if (workload.period > 0) board.setTimerPeriod(workload.period);
    result = os.run(BUDGET);
  }
  const vectors: Record<number, number> = {};
  os.vectorCounts.forEach((count, vector) => {
    if (count !== 0) vectors[vector] = count;
  });
  const guest: Record<string, number> = {};
  for (const [name, value] of Object.entries(lab.stats.nonZero())) {
    if (name.startsWith("guest.")) guest[name] = value;
  }
  return {
    outcome: result.outcome,
    reason: result.reason,
    console: os.console,
    exits: os.exits.map((e) => ({ ...e })),
    vectors,
    ticks: os.ticks,
    now: board.now,
    idle: lab.stats.get("cpu.idle"),
    guest,
  };
}

/** Asserts what `config` must share with the native run. */
function assertMatchesNative(config: Config, native: Observed, other: Observed, what: string) {
  const at = `${config.label}, ${what}`;
  assert.equal(other.outcome, native.outcome, `${at}: ${other.reason}`);
  assert.equal(other.console, native.console, at);
  if (isHvm(config)) {
    // The same instruction stream: everything, timing included.
    assert.deepEqual(other, native, at);
    return;
  }
  const byPid = (exits: ProgramExit[]) => [...exits].sort((a, b) => a.pid - b.pid);
  assert.deepEqual(byPid(other.exits), byPid(native.exits), at);
  for (const vector of TIMING_FREE_VECTORS) {
    assert.equal(
      other.vectors[vector] ?? 0,
      native.vectors[vector] ?? 0,
      `${at}: vector ${vector}`,
    );
  }
  assert.equal(other.guest["guest.syscall"], native.guest["guest.syscall"], at);
  assert.equal(other.guest["guest.userException"], native.guest["guest.userException"], at);
}

// --- The slides' guest -----------------------------------------------------------------

/**
 * Every flow at once: an echo of typed keys, two spinners and a triangle sum preempted by
 * the timer, a getpid loop, a yielder, and programs that die of #PF, #GP and #UD.
 */
const SLIDES: Workload = {
  programs: [
    echoProgram(),
    spinnerProgram(3000),
    spinnerProgram(2000),
    storeToTextProgram(),
    getpidLoopProgram(50),
    privilegedProgram("cli"),
    privilegedProgram("in"),
    undefinedProgram("ud2"),
    triangleProgram(500),
    yielderProgram(5),
  ],
  typed: "hello, world\n",
  typeAt: 3000,
  gap: 1500,
  period: 700,
};

const NATIVE_SLIDES = runWorkload(CONFIGS[0]!, SLIDES);

Deno.test("native: the slides' guest ends as worked out", () => {
  const n = NATIVE_SLIDES;
  assert.equal(CONFIGS[0]!.platform, "native");
  assert.equal(n.outcome, "done", n.reason);
  assert.equal(n.console, "hello, world\n");
  const byPid = [...n.exits].sort((a, b) => a.pid - b.pid);
  assert.deepEqual(byPid.map((e) => [e.pid, e.exitCode, e.signal, e.reason]), [
    [1, 0, 0, ""],
    [2, 0, 0, ""],
    [3, 0, 0, ""],
    [4, 0, 11, "SEGV_ACCERR at 0x0000000000400000"],
    [5, 5, 0, ""], // exit(getpid())
    [6, 0, 11, "vector 13 in user mode"],
    [7, 0, 11, "vector 13 in user mode"],
    [8, 0, 11, "vector 6 in user mode"],
    [9, triangleExitCode(500), 0, ""],
    [10, 0, 0, ""],
  ]);
  // System calls: echo 2 x 13 + 1, spinners 1 each, getpid 50 + 1, triangle 1, yield 5 + 1.
  assert.equal(n.vectors[0x80], 27 + 2 + 51 + 1 + 6);
  assert.deepEqual([n.vectors[6], n.vectors[13], n.vectors[14]], [1, 2, 1]);
  assert.equal(n.vectors[0x21], 13); // one IRQ 1 per key
  // Virtual time and ticks follow from the instruction counts (a regression pin: any
  // change to the programs or the entry text moves them, on every HVM platform alike).
  assert.deepEqual([n.ticks, n.now, n.idle], [30, 21139, 4294]);
  assert.equal(n.vectors[0x20], n.ticks);
});

for (const config of CONFIGS.slice(1)) {
  Deno.test(`${config.label}: the slides' guest gives native's console, exits and vector counts`, () => {
    assertMatchesNative(config, NATIVE_SLIDES, runWorkload(config, SLIDES), "the slides' guest");
  });
}

// --- Random small workloads ------------------------------------------------------------

/** A random small workload: 1..4 programs, at most one of them writing to the console. */
function randomWorkload(prng: Prng): Workload {
  const programs: GuestProgram[] = [];
  let typed = "";
  let writes = false;
  const count = 1 + prng.below(4);
  for (let i = 0; i < count; i++) {
    const pick = prng.below(11);
    if (pick === 0 && !writes) {
      writes = true;
      programs.push(echoProgram());
      const length = 1 + prng.below(5);
      for (let k = 0; k < length; k++) typed += String.fromCharCode(0x61 + prng.below(26));
      typed += "\n";
    } else if (pick === 1 && !writes) {
      writes = true;
      programs.push(writerProgram("msg" + prng.below(100) + "\n", 1 + prng.below(3)));
    } else if (pick === 2) programs.push(getpidLoopProgram(1 + prng.below(40)));
    else if (pick === 3 || pick === 10) programs.push(spinnerProgram(1 + prng.below(4000)));
    else if (pick === 4) programs.push(triangleProgram(1 + prng.below(300)));
    else if (pick === 5) programs.push(yielderProgram(1 + prng.below(6)));
    else if (pick === 6) programs.push(storeToTextProgram());
    else if (pick === 7) {
      programs.push(privilegedProgram(PRIVILEGED_KINDS[prng.below(PRIVILEGED_KINDS.length)]!));
    } else if (pick === 8) programs.push(undefinedProgram(prng.below(2) === 0 ? "ud2" : "x87"));
    else programs.push(spinnerProgram(1 + prng.below(500)));
  }
  const periods = [0, 200, 450, 1000];
  return {
    programs,
    typed,
    typeAt: 200 + prng.below(3000),
    gap: 250 + prng.below(1500),
    period: periods[prng.below(periods.length)]!,
  };
}

const SEED = 2024;
const WORKLOADS = 24;
const RANDOM: Workload[] = [];
const prng = new Prng(SEED);
for (let i = 0; i < WORKLOADS; i++) RANDOM.push(randomWorkload(prng));
const NATIVE_RANDOM = RANDOM.map((w) => runWorkload(CONFIGS[0]!, w));

Deno.test(`native: ${WORKLOADS} random workloads (seed ${SEED}) finish, nothing crashes`, () => {
  NATIVE_RANDOM.forEach((n, i) => {
    assert.equal(n.outcome, "done", `workload ${i}: ${n.reason}`);
    assert.equal(n.exits.length, RANDOM[i]!.programs.length, `workload ${i}`);
  });
});

for (const config of CONFIGS.slice(1)) {
  Deno.test(`${config.label}: ${WORKLOADS} random workloads (seed ${SEED}) match native`, () => {
    RANDOM.forEach((workload, i) => {
      const what = `workload ${i} (${workload.programs.map((p) => p.name).join(", ")}; ` +
        `typed ${JSON.stringify(workload.typed)}, period ${workload.period})`;
      assertMatchesNative(config, NATIVE_RANDOM[i]!, runWorkload(config, workload), what);
    });
  });
}
