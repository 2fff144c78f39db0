/**
 * The HVM platforms' VM exits for the guest's CPU work (lib/platform/vmx_exits.ts), as
 * VT-x under Xen takes them: IN/OUT (exit reason 30; the device-model round trip for the
 * ports QEMU emulates), HLT (12), external interrupts (1) and interrupt windows (7); the
 * exception bitmap (#PF under shadow paging only, nothing under HAP); and the guest's
 * view, which stays exactly the native one.
 *
 * The whole-guest tests run GuestOs on `createLab({ platform, memoryMiB: 8 })` with small
 * user programs of real bytes (data page at 0x600000).
 */

import assert from "node:assert/strict";
import { PAGE_SIZE } from "../../lib/x86/address.ts";
import { OP_IN, OP_OUT } from "../../lib/x86/decode.ts";
import { InterpreterContext, RFLAGS_IF, STEP_HALT } from "../../lib/x86/interpreter.ts";
import { PTE_PRESENT, PTE_USER, PTE_WRITABLE } from "../../lib/x86/pte.ts";
import { createLab, type Lab } from "../../lib/lab/lab.ts";
import { GuestOs } from "../../lib/guest/guest_os.ts";
import { HvmHapPlatform } from "../../lib/platform/hvm_hap.ts";
import { HvmShadowPlatform } from "../../lib/platform/hvm_shadow.ts";
import { NativePlatform } from "../../lib/platform/native.ts";
import { type Platform, RUN_DONE } from "../../lib/platform/platform.ts";
import {
  EXIT_REASON_EXTERNAL_INTERRUPT,
  EXIT_REASON_HLT,
  EXIT_REASON_INTERRUPT_WINDOW,
  EXIT_REASON_IO_INSTRUCTION,
  isPortEmulatedByXen,
  isPortPassedThrough,
} from "../../lib/platform/vmx_exits.ts";

const HVM = ["hvm-shadow", "hvm-hap"] as const;
const ALL = ["native", ...HVM] as const;
type Name = (typeof ALL)[number];

const CPU_EXITS = [
  "exit.io",
  "hvm.ioreq",
  "exit.hlt",
  "exit.externalInterrupt",
  "exit.interruptWindow",
] as const;

/** mov eax, 60 (exit); xor edi, edi; int 0x80 */
const EXIT_0 = [0xb8, 60, 0, 0, 0, 0x31, 0xff, 0xcd, 0x80];

function le32(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24];
}

/** write(1, 0x600000, 1) `n` times (the byte 'x'), then exit(0). */
function writer(n: number): number[] {
  return [
    // mov byte [0x600000], 'x'; mov ebx, n
    ...[0xc6, 0x04, 0x25, 0x00, 0x00, 0x60, 0x00, 0x78, 0xbb, ...le32(n)],
    // loop: mov eax, 1 (write); mov edi, 1; mov esi, 0x600000; mov edx, 1
    ...[0xb8, 1, 0, 0, 0, 0xbf, 1, 0, 0, 0, 0xbe, 0x00, 0x00, 0x60, 0x00, 0xba, 1, 0, 0, 0],
    // int 0x80; dec ebx; jnz loop
    ...[0xcd, 0x80, 0xff, 0xcb, 0x75, 0xe6],
    ...EXIT_0,
  ];
}

/** read(0, 0x600000, 1) `n` times, then exit(0). */
function reader(n: number): number[] {
  return [
    // mov ebx, n
    ...[0xbb, ...le32(n)],
    // loop: mov esi, 0x600000; xor eax, eax (read); xor edi, edi; mov edx, 1
    ...[0xbe, 0x00, 0x00, 0x60, 0x00, 0x31, 0xc0, 0x31, 0xff, 0xba, 1, 0, 0, 0],
    // int 0x80; dec ebx; jnz loop
    ...[0xcd, 0x80, 0xff, 0xcb, 0x75, 0xec],
    ...EXIT_0,
  ];
}

/** `n` iterations of `sub ecx, 1; jnz`, then exit(0). */
function spinner(n: number): number[] {
  return [0xb9, ...le32(n), 0x83, 0xe9, 0x01, 0x75, 0xfb, ...EXIT_0];
}

/** The echo program of the lab's example: read a byte, write it, until '\n'. */
const ECHO = [
  ...[0xbe, 0, 0, 0x60, 0, 0x31, 0xc0, 0x31, 0xff, 0xba, 1, 0, 0, 0, 0xcd, 0x80],
  ...[0xb8, 1, 0, 0, 0, 0xbf, 1, 0, 0, 0, 0xcd, 0x80, 0x80, 0x3e, 0x0a, 0x75, 0xe4],
  ...[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0xcd, 0x80],
];
/** Writes its own text: SIGSEGV. */
const BAD = [0xc7, 0x04, 0x25, 0, 0, 0x40, 0, 1, 0, 0, 0];

function boot(platform: Name): { lab: Lab; os: GuestOs } {
  const lab = createLab({ platform, memoryMiB: 8 });
  return { lab, os: GuestOs.forLab(lab) };
}

function cpuExits(lab: Lab): Record<string, number> {
  return Object.fromEntries(CPU_EXITS.map((name) => [name, lab.stats.get(name)]));
}

/** Every exit.* counter but exit.total, summed. */
function sumOfReasons(lab: Lab): number {
  let sum = 0;
  for (const [name, value] of Object.entries(lab.stats.nonZero())) {
    if (name.startsWith("exit.") && name !== "exit.total") sum += value;
  }
  return sum;
}

/**
 * Counts, independently of the platform, the device interrupts a VT-x guest could not
 * take when they were raised (RFLAGS.IF = 0, or another vector already pending and
 * injected first), leaving out a vector raised while already pending (the IRR holds it
 * once). Wraps the board's fireDue.
 */
function countBlockedRaises(lab: Lab): { raises: number; blocked: number } {
  const board = lab.platform.board;
  const it = lab.platform.interpreter;
  const fireDue = board.fireDue.bind(board);
  const tally = { raises: 0, blocked: 0 };
  board.fireDue = (raise) =>
    fireDue((vector) => {
      tally.raises++;
      const pending = it.pendingInterrupt;
      if (pending !== vector && ((it.rflags & RFLAGS_IF) === 0 || pending >= 0)) {
        tally.blocked++;
      }
      raise(vector);
    });
  return tally;
}

Deno.test("VM exit reasons are the SDM's basic exit reasons", () => {
  assert.deepEqual(
    [
      EXIT_REASON_EXTERNAL_INTERRUPT,
      EXIT_REASON_INTERRUPT_WINDOW,
      EXIT_REASON_HLT,
      EXIT_REASON_IO_INSTRUCTION,
    ],
    [1, 7, 12, 30],
  );
  // Xen answers the vPIC, ELCR, vPIT and speaker ports; QEMU the rest; 0x80 and 0xed
  // do not exit at all.
  const xen = [0x20, 0x21, 0xa0, 0xa1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x4d0, 0x4d1];
  for (const port of xen) assert.ok(isPortEmulatedByXen(port), `port ${port}`);
  for (const port of [0x60, 0x64, 0x3f8, 0x3fd, 0x70, 0x80, 0x1234]) {
    assert.ok(!isPortEmulatedByXen(port), `port ${port}`);
  }
  assert.deepEqual(
    [0x80, 0xed, 0x20, 0x60].map(isPortPassedThrough),
    [true, true, false, false],
  );
});

// --- Port I/O, one instruction at a time -------------------------------------------------

const TEXT_VA = 0x1000;
const TEXT_GPA = 0x8000;

/** A 64-frame machine with kernel text at TEXT_VA holding `code`, IN/OUT enabled. */
function machine(platform: Platform, code: readonly number[]): Platform {
  const URW = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
  platform.loadGuestPhysical32(0x1000, 0x2000 | URW);
  platform.loadGuestPhysical32(0x2000, 0x3000 | URW);
  platform.loadGuestPhysical32(0x3000, 0x4000 | URW);
  platform.loadGuestPhysical32(0x4000 + 8 * (TEXT_VA / PAGE_SIZE), TEXT_GPA | PTE_PRESENT);
  for (let k = 0; k < code.length; k += 4) {
    const word = (code[k] ?? 0) | (code[k + 1] ?? 0) << 8 | (code[k + 2] ?? 0) << 16 |
      (code[k + 3] ?? 0) << 24;
    platform.loadGuestPhysical32(TEXT_GPA + k, word >>> 0);
  }
  platform.start(0x1000, 0);
  platform.interpreter.systemInstructions = true;
  return platform;
}

/** One port instruction and RET, run with RAX, RDX set; returns RAX and the exits. */
function portCase(
  make: () => Platform,
  code: readonly number[],
  rax: [number, number],
  port: number,
) {
  const platform = machine(make(), [...code, 0xc3]);
  const it = platform.interpreter;
  it.setReg(0, rax[0], rax[1]);
  it.setReg(2, port, 0);
  assert.equal(platform.execute(TEXT_VA), RUN_DONE);
  const stats = platform.stats;
  return {
    rax: [it.regLo(0), it.regHi(0)],
    serial: platform.board.serialOutput,
    eoi: stats.get("dev.eoi"),
    exits: [stats.get("exit.io"), stats.get("hvm.ioreq")],
  };
}

const PORT_CASES: { name: string; code: number[]; port: number; exits: number[] }[] = [
  { name: "in al, dx (16550 line status)", code: [0xec], port: 0x3fd, exits: [1, 1] },
  { name: "in ax, dx (nothing decodes it)", code: [0x66, 0xed], port: 0x1234, exits: [1, 1] },
  { name: "in eax, dx (zero-extends into RAX)", code: [0xed], port: 0x64, exits: [1, 1] },
  { name: "in al, 0x64 (8042 status)", code: [0xe4, 0x64], port: 0, exits: [1, 1] },
  { name: "out dx, al (serial)", code: [0xee], port: 0x3f8, exits: [1, 1] },
  { name: "out 0x20, al (vPIC EOI, in Xen)", code: [0xe6, 0x20], port: 0, exits: [1, 0] },
  { name: "out 0x43, al (vPIT, in Xen)", code: [0xe6, 0x43], port: 0, exits: [1, 0] },
  { name: "in al, 0x80 (the debug port: no exit)", code: [0xe4, 0x80], port: 0, exits: [0, 0] },
  { name: "out dx, eax to 0xed (no exit)", code: [0xef], port: 0xed, exits: [0, 0] },
];

const HVM_MACHINES = [
  () => new HvmShadowPlatform({ frames: 64 }),
  () => new HvmHapPlatform({ frames: 64 }),
];

for (const c of PORT_CASES) {
  Deno.test(`IN/OUT under VT-x: ${c.name} gives the native result with exits ${c.exits}`, () => {
    const rax: [number, number] = [0x1234_5620, 0xdead_beef]; // AL = 0x20: an EOI
    const native = portCase(() => new NativePlatform({ frames: 64 }), c.code, rax, c.port);
    assert.deepEqual(native.exits, [0, 0]);
    for (const make of HVM_MACHINES) {
      const hvm = portCase(make, c.code, rax, c.port);
      assert.deepEqual(hvm.rax, native.rax);
      assert.equal(hvm.serial, native.serial);
      assert.equal(hvm.eoi, native.eoi);
      assert.deepEqual(hvm.exits, c.exits);
    }
  });
}

Deno.test("IN/OUT under VT-x: register results are the SDM's for each operand size", () => {
  const make = () => new HvmHapPlatform({ frames: 64 });
  const rax: [number, number] = [0x1122_3344, 0x5566_7788];
  assert.deepEqual(portCase(make, [0xec], rax, 0x3fd).rax, [0x1122_3360, 0x5566_7788]);
  assert.deepEqual(portCase(make, [0x66, 0xed], rax, 0x1234).rax, [0x1122_ffff, 0x5566_7788]);
  assert.deepEqual(portCase(make, [0xed], rax, 0x1234).rax, [0xffff_ffff, 0]);
  assert.deepEqual(portCase(make, [0xee], [0x41, 0], 0x3f8).serial, "A");
});

Deno.test("IN/OUT under VT-x: the instruction is intercepted, traced with its port", () => {
  const platform = machine(new HvmHapPlatform({ frames: 64 }), [0xe6, 0x20, 0xec, 0xc3]);
  const events: string[] = [];
  platform.stats.trace = (event, address, detail) => {
    if (!event.startsWith("exit.ept")) events.push(`${event} ${address.toString(16)} ${detail}`);
  };
  const it = platform.interpreter;
  it.setReg(0, 0x20, 0);
  it.setReg(2, 0x3f8, 0);
  assert.deepEqual([it.intercepts[OP_IN], it.intercepts[OP_OUT]], [1, 1]);
  assert.equal(platform.execute(TEXT_VA), RUN_DONE);
  assert.deepEqual(events, ["exit.io 20 out8 32", "exit.io 3f8 in8 0", "hvm.ioreq 3f8 0"]);
  assert.equal(platform.stats.get("cpu.portIo"), 0); // the processor executed neither
});

// --- The whole guest ---------------------------------------------------------------------

Deno.test("N one-byte write()s: N serial OUT exits and N ioreqs on HVM, none natively", () => {
  const N = 7;
  for (const name of ALL) {
    const { lab, os } = boot(name);
    os.spawnProgram(writer(N));
    assert.deepEqual(os.run(1_000_000), { outcome: "done", reason: "" }, name);
    assert.equal(os.console, "x".repeat(N));
    assert.equal(lab.stats.get("guest.syscall"), N + 1, name);
    const expected = name === "native"
      ? { "exit.io": 0, "hvm.ioreq": 0, "exit.hlt": 0, "exit.externalInterrupt": 0 }
      : { "exit.io": N, "hvm.ioreq": N, "exit.hlt": 0, "exit.externalInterrupt": 0 };
    assert.deepEqual(cpuExits(lab), { ...expected, "exit.interruptWindow": 0 }, name);
    assert.equal(lab.stats.get("exit.total"), sumOfReasons(lab), name);
  }
});

Deno.test("K keys typed while a program runs: K external-interrupt exits, K `in al, 0x60`, K EOIs", () => {
  const K = 5;
  for (const name of ALL) {
    const { lab, os } = boot(name);
    lab.platform.board.type("abcde", 2_000, 3_000); // all while the spinner runs
    os.spawnProgram(reader(K)); // blocks at once
    os.spawnProgram(spinner(100_000));
    assert.equal(os.run(2_000_000).outcome, "done", name);
    assert.equal(lab.stats.get("guest.keyboardIrq"), K);
    assert.equal(lab.stats.get("dev.eoi"), K);
    assert.deepEqual(
      cpuExits(lab),
      name === "native"
        ? {
          "exit.io": 0,
          "hvm.ioreq": 0,
          "exit.hlt": 0,
          "exit.externalInterrupt": 0,
          "exit.interruptWindow": 0,
        }
        : {
          "exit.io": 2 * K, // in al, 0x60 (QEMU's i8042) + out 0x20 (Xen's vPIC)
          "hvm.ioreq": K, // only the keyboard's
          "exit.hlt": 0,
          "exit.externalInterrupt": K,
          "exit.interruptWindow": 0,
        },
      name,
    );
    assert.equal(lab.stats.get("exit.total"), sumOfReasons(lab), name);
  }
});

Deno.test("K keys typed while the guest idles: one HLT exit per idle period, no external-interrupt exits", () => {
  const K = 4;
  // Natively, count the HLTs the processor executes (independent of the exit model).
  const native = boot("native");
  let halts = 0;
  const it = native.lab.platform.interpreter;
  const runGuest = it.runGuest.bind(it);
  it.runGuest = (max: number) => {
    const step = runGuest(max);
    if (step === STEP_HALT) halts++;
    return step;
  };
  native.lab.platform.board.type("wxyz", 1_000, 5_000);
  native.os.spawnProgram(reader(K));
  assert.equal(native.os.run(1_000_000).outcome, "done");
  assert.equal(halts, K);
  for (const name of HVM) {
    const { lab, os } = boot(name);
    lab.platform.board.type("wxyz", 1_000, 5_000);
    os.spawnProgram(reader(K));
    assert.equal(os.run(1_000_000).outcome, "done", name);
    assert.deepEqual(os.input, []);
    // A key that wakes a vCPU blocked in HLT takes no exit (the vCPU is not in VMX
    // non-root mode); Xen unblocks it and injects at the entry.
    assert.deepEqual(cpuExits(lab), {
      "exit.io": 2 * K,
      "hvm.ioreq": K,
      "exit.hlt": halts,
      "exit.externalInterrupt": 0,
      "exit.interruptWindow": 0,
    }, name);
    assert.equal(lab.stats.get("cpu.idle"), native.lab.stats.get("cpu.idle"), name);
  }
});

Deno.test("timer ticks: one external-interrupt exit and one EOI I/O exit each, no ioreq", () => {
  for (const name of HVM) {
    const { lab, os } = boot(name);
    lab.platform.board.setTimerPeriod(10_000);
    const tally = countBlockedRaises(lab);
    os.spawnProgram(spinner(60_000));
    os.spawnProgram(spinner(50_000));
    assert.equal(os.run(2_000_000).outcome, "done", name);
    const ticks = lab.stats.get("dev.timerTicks");
    assert.equal(ticks, 22);
    assert.equal(os.ticks, ticks);
    assert.equal(tally.raises, ticks);
    assert.deepEqual(cpuExits(lab), {
      "exit.io": ticks,
      "hvm.ioreq": 0,
      "exit.hlt": 0,
      "exit.externalInterrupt": ticks,
      "exit.interruptWindow": tally.blocked,
    }, name);
    assert.equal(tally.blocked, 0);
  }
});

Deno.test("interrupt windows: one exit per tick raised while the guest had IF = 0", () => {
  // A 40-instruction timer period lands ticks inside the kernel's entry and exit code.
  for (const name of HVM) {
    const { lab, os } = boot(name);
    lab.platform.board.setTimerPeriod(40);
    const tally = countBlockedRaises(lab);
    let traced = 0;
    let tracedBlocked = 0;
    lab.stats.trace = (event, _address, detail) => {
      if (event === "exit.interruptWindow") traced++;
      if (event === "exit.externalInterrupt" && detail === "window") tracedBlocked++;
    };
    os.spawnProgram(spinner(3_000));
    os.spawnProgram(spinner(2_000));
    assert.equal(os.run(2_000_000).outcome, "done", name);
    const it = lab.platform.interpreter;
    // The last tick came during the final exit() and is never delivered.
    const undelivered = it.pendingInterrupt >= 0 ? 1 : 0;
    assert.equal(undelivered, 1);
    assert.equal(tally.blocked, 13);
    assert.equal(tracedBlocked, tally.blocked);
    const windows = lab.stats.get("exit.interruptWindow");
    assert.equal(windows, tally.blocked - undelivered, name);
    assert.equal(windows, 12);
    assert.equal(traced, windows);
    assert.equal(lab.stats.get("exit.externalInterrupt"), tally.raises);
    assert.equal(lab.stats.get("exit.total"), sumOfReasons(lab), name);
  }
});

Deno.test("interrupt windows: a tick in the STI shadow before HLT is injected at the HLT exit", () => {
  // Find when the idle thread's `sti; hlt` runs: the first HLT exit, without a timer.
  let stiDone = 0;
  {
    const { lab, os } = boot("hvm-hap");
    lab.stats.trace = (event) => {
      if (event === "exit.hlt" && stiDone === 0) stiDone = lab.platform.board.now - 1;
    };
    os.spawnProgram(reader(1));
    os.run(10_000);
  }
  assert.ok(stiDone > 0);
  for (const name of HVM) {
    const { lab, os } = boot(name);
    const board = lab.platform.board;
    board.setTimerPeriod(stiDone); // the first tick right after STI, before HLT
    const it = lab.platform.interpreter;
    const context = new InterpreterContext();
    const shadows: boolean[] = [];
    const fireDue = board.fireDue.bind(board);
    board.fireDue = (raise) =>
      fireDue((vector) => {
        it.saveContext(context);
        shadows.push(context.interruptShadow);
        raise(vector);
      });
    os.spawnProgram(reader(1));
    os.run(2 * stiDone + 10);
    assert.deepEqual(shadows, [true, false], name);
    // The first tick: an external-interrupt exit, blocked by STI; the HLT exits before
    // the window opens and its entry injects the tick. The second wakes the halted vCPU.
    assert.equal(lab.stats.get("exit.externalInterrupt"), 1, name);
    assert.equal(lab.stats.get("exit.hlt"), 2, name);
    assert.equal(lab.stats.get("exit.interruptWindow"), 0, name);
    assert.equal(lab.stats.get("cpu.interrupts"), 2, name); // both ticks were taken
  }
});

Deno.test("exceptions: a user #GP (cli at CPL 3) reaches the guest's IDT with no exit", () => {
  // getpid, then cli: #GP(0), IOPL is 0. The kernel kills it with SIGSEGV.
  const program = [0xb8, 39, 0, 0, 0, 0xcd, 0x80, 0xfa, 0xb8, 60, 0, 0, 0, 0x31, 0xff, 0xcd, 0x80];
  for (const name of ALL) {
    const { lab, os } = boot(name);
    const exits: string[] = [];
    lab.stats.trace = (event) => {
      // From the getpid's return to the #GP handler's service call.
      if (event.startsWith("exit.") && os.vectorCounts[0x80] === 1 && os.vectorCounts[13] === 0) {
        exits.push(event);
      }
    };
    const total = () => lab.stats.get("exit.total");
    os.spawnProgram(program);
    assert.equal(os.run(100_000).outcome, "done", name);
    assert.equal(os.vectorCounts[13], 1, name);
    assert.equal(os.exits[0]!.signal, 11, name);
    assert.deepEqual(exits, [], name);
    if (name === "native") assert.equal(total(), 0);
    else assert.ok(total() > 0, name); // the trace did see the run's other exits
  }
});

Deno.test("exceptions: #UD and #BP go through the guest's IDT without an exit on HVM", () => {
  for (const [bytes, vector] of [[[0x0f, 0x0b], 6], [[0xcc], 3]] as const) {
    for (const name of HVM) {
      const { lab, os } = boot(name);
      const program = [0xb8, 39, 0, 0, 0, 0xcd, 0x80, ...bytes];
      const exits: string[] = [];
      lab.stats.trace = (event) => {
        if (
          event.startsWith("exit.") && os.vectorCounts[0x80] === 1 && os.vectorCounts[vector] === 0
        ) {
          exits.push(event);
        }
      };
      os.spawnProgram(program);
      assert.equal(os.run(100_000).outcome, "done", name);
      assert.equal(os.vectorCounts[vector], 1, `${name} vector ${vector}`);
      assert.deepEqual(exits, [], `${name} vector ${vector}`);
    }
  }
});

Deno.test("hvm-hap without VPID: every CPU exit flushes the TLB at exit and at entry", () => {
  const lab = createLab({ platform: "hvm-hap", memoryMiB: 8, flushOnWorldSwitch: true });
  const os = GuestOs.forLab(lab);
  lab.platform.board.setTimerPeriod(97);
  lab.platform.board.type("ab", 3_000, 2_000);
  os.spawnProgram(reader(2));
  assert.equal(os.run(1_000_000).outcome, "done");
  const exits = cpuExits(lab);
  for (const name of ["exit.io", "exit.hlt", "exit.externalInterrupt", "exit.interruptWindow"]) {
    assert.ok(exits[name]! > 0, `${name}: ${JSON.stringify(exits)}`);
  }
  assert.equal(lab.stats.get("tlb.flush.worldSwitch"), 2 * lab.stats.get("exit.total"));
});

Deno.test("guestCpuState(): kept in the VMCS, with the guest's own CR3 under shadow paging", () => {
  const states = new Map<Name, ReturnType<Platform["guestCpuState"]>>();
  for (const name of ALL) {
    const { lab, os } = boot(name);
    os.spawnProgram(spinner(10));
    os.run(100_000);
    states.set(name, lab.platform.guestCpuState());
    if (name === "hvm-shadow") {
      const shadow = lab.platform as HvmShadowPlatform;
      assert.equal(states.get(name)!.cr3, shadow.mmu.guestCtl.cr3);
      assert.notEqual(states.get(name)!.cr3, shadow.cpu.ctl.cr3); // the shadow's
    }
  }
  assert.equal(states.get("native")!.keptIn, "processor");
  for (const name of HVM) {
    assert.equal(states.get(name)!.keptIn, "vmcs");
    assert.equal(states.get(name)!.cr3, states.get("native")!.cr3, name);
  }
});

Deno.test("differential: console, exits and vector counts on HVM equal native's", () => {
  const outcomes = new Map<Name, unknown>();
  for (const name of ALL) {
    const { lab, os } = boot(name);
    lab.platform.board.setTimerPeriod(10_000);
    lab.platform.board.type("hello\n", 5_000, 3_000);
    for (const program of [ECHO, spinner(200_000), spinner(200_000), BAD]) {
      os.spawnProgram(program);
    }
    const result = os.run(5_000_000);
    outcomes.set(name, {
      result,
      console: os.console,
      exits: os.exits,
      vectors: [...os.vectorCounts],
      ticks: os.ticks,
      idle: lab.stats.get("cpu.idle"),
    });
    if (name !== "native") {
      assert.equal(lab.stats.get("exit.externalInterrupt"), lab.stats.get("cpu.interrupts"));
      assert.equal(lab.stats.get("exit.io"), lab.stats.get("dev.eoi") + 12);
      assert.equal(lab.stats.get("hvm.ioreq"), 12); // 6 keys read, 6 bytes echoed
      assert.equal(lab.stats.get("exit.total"), sumOfReasons(lab), name);
    }
  }
  assert.equal((outcomes.get("native") as { console: string }).console, "hello\n");
  for (const name of HVM) assert.deepEqual(outcomes.get(name), outcomes.get("native"), name);
});
