/**
 * The PV platform's CPU side with the instruction-level guest (lib/guest/guest_os.ts, "pv"
 * kernel text): the guest work that takes VM exits under HVM shows up as hypercalls,
 * bounces and event upcalls. Hand-worked counts for small programs, bounce frames read
 * back from the guest kernel's stack word by word, the upcall flow (unmasked: at once;
 * masked: pending until the return to user mode unmasks), SCHEDOP_block idling, the
 * slides' example workload against native, and hostile guests (a privileged instruction
 * in the guest kernel, a trap table without the entry a vector needs): each ends as Xen
 * would end it, never with an exception out of the simulator.
 */

import assert from "node:assert/strict";
import { ACCESS_WRITE } from "../../lib/x86/access.ts";
import { linearHigh32, PAGE_SIZE } from "../../lib/x86/address.ts";
import { KERNEL_CS, USER_CS, USER_SS } from "../../lib/x86/interpreter.ts";
import { createLab, type Lab } from "../../lib/lab/lab.ts";
import { GuestOs } from "../../lib/guest/guest_os.ts";
import { FRAME_USE_KERNEL } from "../../lib/guest/frame_allocator.ts";
import { DIRECT_MAP_BASE, STACK_TOP } from "../../lib/guest/layout.ts";
import { PvPlatform } from "../../lib/platform/pv.ts";
import type { PvVcpu } from "../../hypercalls/pv_vcpu.ts";

// --- Programs (x86-64 bytes loaded at 0x400000) ----------------------------------------

/** write(1, "abc", 3); exit(0). The text "abc" sits at 0x400020. */
const WRITE3 = (() => {
  const code = [
    ...[0xb8, 1, 0, 0, 0], // mov eax, 1 (write)
    ...[0xbf, 1, 0, 0, 0], // mov edi, 1
    ...[0xbe, 0x20, 0, 0x40, 0], // mov esi, 0x400020
    ...[0xba, 3, 0, 0, 0], // mov edx, 3
    ...[0xcd, 0x80], // int 0x80
    ...[0xb8, 60, 0, 0, 0], // mov eax, 60 (exit)
    ...[0x31, 0xff], // xor edi, edi
    ...[0xcd, 0x80], // int 0x80
  ];
  while (code.length < 0x20) code.push(0x90);
  return [...code, 0x61, 0x62, 0x63];
})();
/** mov eax, 39 (getpid); int 0x80; mov edi, eax; mov eax, 60; int 0x80: exit(pid). */
const GETPID_EXIT = [0xb8, 39, 0, 0, 0, 0xcd, 0x80, 0x89, 0xc7, 0xb8, 60, 0, 0, 0, 0xcd, 0x80];
/** l: mov eax, 39; int 0x80; jmp l. */
const GETPID_LOOP = [0xb8, 39, 0, 0, 0, 0xcd, 0x80, 0xeb, 0xf7];
/** jmp $. */
const SPIN_FOREVER = [0xeb, 0xfe];
/** mov dword [0x400000], 1: a store to its own (read-only) text. */
const STORE_TO_TEXT = [0xc7, 0x04, 0x25, 0, 0, 0x40, 0, 1, 0, 0, 0];
/** read(0, 0x600000, 1); write(1, 0x600000, 1); exit(0). */
const READ_ECHO_EXIT = [
  ...[0xb8, 0, 0, 0, 0, 0xbf, 0, 0, 0, 0, 0xbe, 0, 0, 0x60, 0, 0xba, 1, 0, 0, 0, 0xcd, 0x80],
  ...[0xb8, 1, 0, 0, 0, 0xbf, 1, 0, 0, 0, 0xcd, 0x80],
  ...[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0xcd, 0x80],
];
/** mov eax, 60; xor edi, edi; syscall: exit(0) by SYSCALL. */
const SYSCALL_EXIT = [0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05];
/**
 * Builds an IRETQ frame to 0x400019 on its own stack and returns with IRETQ (ring 3 to
 * ring 3), then exit(0).
 */
const USER_IRETQ = [
  ...[0xb8, 0x2b, 0, 0, 0, 0x50], // push SS
  ...[0x48, 0x89, 0xe0, 0x50], // mov rax, rsp; push RSP
  0x9c, // pushfq
  ...[0xb8, 0x33, 0, 0, 0, 0x50], // push CS
  ...[0xb8, 0x19, 0, 0x40, 0, 0x50], // push RIP = 0x400019
  ...[0x48, 0xcf], // iretq
  ...[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0xcd, 0x80], // 0x400019: exit(0)
];

// --- Fixture ---------------------------------------------------------------------------

interface PvOs {
  lab: Lab;
  os: GuestOs;
  platform: PvPlatform;
  v: PvVcpu;
}

function bootPvOs(): PvOs {
  const lab = createLab({ platform: "pv", memoryMiB: 8 });
  const os = GuestOs.forLab(lab);
  assert.ok(lab.platform instanceof PvPlatform);
  const platform = lab.platform;
  return { lab, os, platform, v: platform.domain.vcpu };
}

/** The qwords at direct-map address `va`, as [low, high] halves. */
function qwords(platform: PvPlatform, va: number, n: number): [number, number][] {
  const gpa = va - DIRECT_MAP_BASE;
  return Array.from({ length: n }, (_, k) => [
    platform.peekGuestPhysical32(gpa + 8 * k),
    platform.peekGuestPhysical32(gpa + 8 * k + 4),
  ]);
}

/** RSP as a 48-bit linear value. */
function rsp(platform: PvPlatform): number {
  const it = platform.interpreter;
  return (it.regHi(4) & 0xffff) * 2 ** 32 + it.regLo(4);
}

/** The top of process `pid`'s kernel stack (its task page, as GuestOs lays it out). */
function kernelTop(lab: Lab, pid: number): number {
  return DIRECT_MAP_BASE + (lab.kernel.process(pid)!.taskGfn + 1) * PAGE_SIZE;
}

/** Calls hypercall `op` from TypeScript (the guest kernel's C code) with RDI, RSI. */
function hypercall(platform: PvPlatform, op: number, rdi: number, rsi = 0): number {
  const it = platform.interpreter;
  it.setReg(0, op, 0);
  it.setReg(7, rdi >>> 0, linearHigh32(rdi));
  it.setReg(6, rsi >>> 0, linearHigh32(rsi));
  return platform.hypercall();
}

/** A fresh kernel page (linear address in the direct map). */
function kernelPage(g: PvOs): number {
  const gfn = g.lab.kernel.frames.allocate(FRAME_USE_KERNEL);
  return DIRECT_MAP_BASE + gfn * PAGE_SIZE;
}

function write64(g: PvOs, va: number, lo: number, hi = 0): void {
  g.platform.access(va, 8, ACCESS_WRITE, lo >>> 0, hi >>> 0, false);
}

const CPU_COUNTERS = [
  "hypercall.set_trap_table",
  "hypercall.stack_switch",
  "hypercall.xen_version",
  "hypercall.iret",
  "hypercall.vcpu_op",
  "hypercall.sched_op",
  "hypercall.callback_op",
  "hypercall.event_channel_op",
  "hypercall.physdev_op",
  "pv.bounce.syscall",
  "pv.bounce.pf",
  "pv.bounce.other",
  "pv.eventUpcall",
  "pv.eventSent",
  "pv.emulatedPrivOp",
  "pv.ioDenied",
];

function cpuCounters(lab: Lab): Record<string, number> {
  return Object.fromEntries(CPU_COUNTERS.map((name) => [name, lab.stats.get(name)]));
}

function delta(before: Record<string, number>, after: Record<string, number>) {
  return Object.fromEntries(
    Object.entries(after).filter(([k, v]) => v !== before[k]).map(([k, v]) => [k, v - before[k]!]),
  );
}

// --- Hand-worked counts ----------------------------------------------------------------

Deno.test("pv boot: six hypercalls through the hypercall page, and the vCPU they leave", () => {
  const g = bootPvOs();
  // vcpu_op (register vcpu_info), callback_op (event), set_trap_table, event_channel_op
  // twice (VIRQ_TIMER, PIRQ 1), physdev_op (set_iopl 1).
  assert.deepEqual(delta(Object.fromEntries(CPU_COUNTERS.map((n) => [n, 0])), cpuCounters(g.lab)), {
    "hypercall.set_trap_table": 1,
    "hypercall.vcpu_op": 1,
    "hypercall.callback_op": 1,
    "hypercall.event_channel_op": 2,
    "hypercall.physdev_op": 1,
  });
  assert.equal(g.lab.stats.get("hypercall.traps"), 6);
  const text = g.lab.kernel.code.text;
  assert.equal(g.v.callbacks[0], text.entry("eventCallback"));
  assert.deepEqual([g.v.virqToPort[0], g.v.pirqToPort[1], g.v.iopl], [1, 2, 1]);
  // Six trap-table entries: #DE, #BP (DPL 3), #UD, #GP, #PF and int 0x80 (DPL 3), each
  // masking events on entry; the two IRQ vectors are event channels instead.
  const entries = [0, 3, 6, 13, 14, 0x80].map((v) => [g.v.trapAddress[v], g.v.trapFlags[v]]);
  assert.deepEqual(entries, [
    [text.stub(0), 4],
    [text.stub(3), 7],
    [text.stub(6), 4],
    [text.stub(13), 4],
    [text.stub(14), 4],
    [text.stub(0x80), 7],
  ]);
  assert.equal(g.v.trapAddress[0x20], 0);
  const state = g.platform.guestCpuState();
  assert.equal(state.keptIn, "xen-vcpu");
  assert.equal(state.idtBase, g.os.idtBase);
  assert.equal(state.interruptsEnabled, false); // masked until the first return to user
  assert.deepEqual(state.pending, []);
});

Deno.test("one write() of 3 bytes: 2 int 0x80 bounces, 2 irets, 3 emulated OUTs, 1 stack_switch", () => {
  const g = bootPvOs();
  g.os.spawnProgram(WRITE3);
  const before = cpuCounters(g.lab);
  const result = g.os.run(100_000);
  assert.deepEqual(result, { outcome: "done", reason: "" });
  assert.equal(g.os.console, "abc");
  assert.deepEqual(g.os.exits, [{ pid: 1, exitCode: 0, signal: 0, reason: "" }]);
  // run(): stack_switch to the program's kernel stack; the first iret enters user mode;
  // write: int 0x80 bounced, 3 OUTs to COM1 emulated, iret back; exit: int 0x80 bounced,
  // and the kernel stops with nothing left to run (no iret). No event, no fault.
  assert.deepEqual(delta(before, cpuCounters(g.lab)), {
    "hypercall.stack_switch": 1,
    "hypercall.iret": 2,
    "pv.bounce.syscall": 2,
    "pv.emulatedPrivOp": 3,
  });
  assert.equal(g.lab.stats.get("guest.serviceCalls"), 2);
  assert.equal(g.lab.stats.get("dev.serialBytes"), 3);
});

// --- Bounce frames ---------------------------------------------------------------------

Deno.test("an int 0x80 bounce frame from user mode, word by word", () => {
  const g = bootPvOs();
  const pid = g.os.spawnProgram(GETPID_EXIT);
  const top = kernelTop(g.lab, pid);
  let seen: [number, number][] = [];
  let state = { rip: 0, rsp: 0, cpl: -1, mask: -1 };
  g.lab.stats.trace = (event) => {
    if (event !== "pv.bounce.syscall" || seen.length > 0) return;
    state = {
      rip: g.platform.interpreter.rip,
      rsp: rsp(g.platform),
      cpl: g.platform.cpu.ctl.cpl,
      mask: g.v.upcallMask,
    };
    seen = qwords(g.platform, state.rsp, 7);
  };
  assert.equal(g.os.run(100_000).outcome, "done");
  assert.deepEqual(g.os.exits, [{ pid, exitCode: pid, signal: 0, reason: "" }]);
  // On kernel_sp (the program's kernel stack top, 16-aligned): RCX, R11, then the frame.
  assert.equal(state.rsp, top - 7 * 8);
  assert.deepEqual(seen, [
    [0, 0], // RCX
    [0, 0], // R11
    [0x400007, 0], // RIP: after the int 0x80
    [USER_CS, 0], // CS, saved upcall mask 0 in bits 32..39
    [0x202, 0], // RFLAGS: IF = events were enabled
    [STACK_TOP >>> 0, linearHigh32(STACK_TOP)], // RSP
    [USER_SS, 0], // SS
  ]);
  assert.deepEqual(
    [state.rip, state.cpl, state.mask],
    [g.lab.kernel.code.text.stub(0x80), 0, 1], // the entry masks events (flags bit 2)
  );
});

Deno.test("a #PF bounce frame has the error code; CR2 goes to vcpu_info.arch.cr2", () => {
  const g = bootPvOs();
  const pid = g.os.spawnProgram(STORE_TO_TEXT);
  const top = kernelTop(g.lab, pid);
  let seen: [number, number][] = [];
  let at = 0;
  let cr2 = 0;
  g.lab.stats.trace = (event, address, detail) => {
    if (event !== "trap.delivered" || detail !== 14 || seen.length > 0) return;
    at = rsp(g.platform);
    seen = qwords(g.platform, at, 8);
    assert.equal(address, g.lab.kernel.code.text.stub(14));
    cr2 = g.v.readCr2Low();
  };
  assert.equal(g.os.run(100_000).outcome, "done");
  assert.equal(at, top - 8 * 8);
  assert.deepEqual(seen, [
    [0, 0], // RCX
    [0, 0], // R11
    [7, 0], // error code: present, write, user
    [0x400000, 0], // RIP: the faulting store
    [USER_CS, 0],
    [0x202, 0],
    [STACK_TOP >>> 0, linearHigh32(STACK_TOP)],
    [USER_SS, 0],
  ]);
  assert.equal(cr2, 0x400000);
  assert.equal(g.platform.guestCr2, 0x400000);
  assert.equal(g.os.exits[0]!.reason, "SEGV_ACCERR at 0x0000000000400000");
  assert.equal(g.lab.stats.get("pv.bounce.pf"), 1);
});

// --- Event upcalls ---------------------------------------------------------------------

Deno.test("a timer tick with events enabled: an upcall at once, its frame word by word", () => {
  const g = bootPvOs();
  const pid = g.os.spawnProgram(SPIN_FOREVER);
  const top = kernelTop(g.lab, pid);
  g.platform.board.setTimerPeriod(1000);
  let seen: [number, number][] = [];
  let state = { rip: 0, at: 0, cpl: -1, mask: -1, now: 0 };
  let cpu = g.platform.guestCpuState();
  g.lab.stats.trace = (event) => {
    if (event !== "pv.eventUpcall" || seen.length > 0) return;
    state = {
      rip: g.platform.interpreter.rip,
      at: rsp(g.platform),
      cpl: g.platform.cpu.ctl.cpl,
      mask: g.v.upcallMask,
      now: g.platform.board.now,
    };
    seen = qwords(g.platform, state.at, 7);
    cpu = g.platform.guestCpuState();
  };
  assert.equal(g.os.run(1500).outcome, "limit");
  assert.equal(state.now, 1000);
  assert.equal(state.at, top - 7 * 8);
  assert.deepEqual(seen, [
    [0, 0],
    [0, 0],
    [0x400000, 0], // RIP: the jmp $ it was spinning on
    [USER_CS, 0],
    [0x202, 0],
    [STACK_TOP >>> 0, linearHigh32(STACK_TOP)],
    [USER_SS, 0],
  ]);
  assert.deepEqual([state.rip, state.cpl, state.mask], [
    g.lab.kernel.code.text.entry("eventCallback"),
    0,
    1,
  ]);
  // What the guest believes, as Xen keeps it, at that moment.
  assert.deepEqual(cpu, {
    kernelMode: true,
    interruptsEnabled: false,
    idtBase: g.os.idtBase,
    kernelStack: top,
    cr3: g.platform.cpu.ctl.cr3,
    cr2: 0,
    pending: [0x20],
    keptIn: "xen-vcpu",
  });
  // The guest's handler cleared the port and counted the tick; it goes on spinning.
  assert.deepEqual([g.os.ticks, g.lab.stats.get("pv.eventUpcall")], [1, 1]);
  assert.deepEqual(g.platform.guestCpuState().pending, []);
  assert.equal(g.v.upcallMask, 0);
});

Deno.test("a tick while events are masked stays pending; the iret that unmasks delivers it", () => {
  const g = bootPvOs();
  g.os.spawnProgram(GETPID_LOOP);
  const stats = g.lab.stats;
  // Step until the int 0x80 bounce has the guest kernel running with events masked.
  for (let i = 0; i < 200 && stats.get("pv.bounce.syscall") === 0; i++) g.os.run(1);
  assert.deepEqual([g.platform.cpu.ctl.cpl, g.v.upcallMask], [0, 1]);
  const iretsBefore = stats.get("hypercall.iret");
  g.platform.board.setTimerPeriod(1);
  g.os.run(1); // one instruction, then the tick
  g.platform.board.setTimerPeriod(0);
  assert.deepEqual([stats.get("pv.eventSent"), stats.get("pv.eventUpcall")], [1, 0]);
  assert.deepEqual(g.platform.guestCpuState().pending, [0x20]);
  assert.equal(g.v.upcallPending, 1);
  assert.equal(g.platform.guestCpuState().interruptsEnabled, false);
  // The kernel returns to user mode with IF set: iret unmasks, and Xen's exit path
  // bounces the upcall before a single user instruction runs.
  let seen: [number, number][] = [];
  let irets = 0;
  stats.trace = (event) => {
    if (event !== "pv.eventUpcall" || seen.length > 0) return;
    irets = stats.get("hypercall.iret") - iretsBefore;
    seen = qwords(g.platform, rsp(g.platform), 7);
  };
  g.os.run(200);
  assert.equal(irets, 1);
  assert.deepEqual(seen.slice(2, 5), [[0x400007, 0], [USER_CS, 0], [0x202, 0]]);
  assert.deepEqual([stats.get("pv.eventUpcall"), g.os.ticks], [1, 1]);
});

Deno.test("sched_op(SCHEDOP_block) idles the vCPU until the key arrives", () => {
  const g = bootPvOs();
  g.os.spawnProgram(READ_ECHO_EXIT);
  g.platform.board.type("x", 20_000, 0);
  const before = cpuCounters(g.lab);
  assert.deepEqual(g.os.run(100_000), { outcome: "done", reason: "" });
  assert.equal(g.os.console, "x");
  // read() blocks: the kernel switches to idle, whose iret masks events (its frame has
  // IF = 0); idle's SCHEDOP_block unmasks and blocks; the key's PIRQ event wakes the vCPU
  // with an upcall; the handler reads port 0x60 (emulated), EOIs the PIRQ, switches back
  // to the reader, which writes the byte (one OUT) and exits.
  assert.deepEqual(delta(before, cpuCounters(g.lab)), {
    "hypercall.stack_switch": 2,
    "hypercall.iret": 4,
    "hypercall.sched_op": 1,
    "hypercall.physdev_op": 1,
    "pv.bounce.syscall": 3,
    "pv.bounce.pf": 1, // read() faults the buffer in (the kernel's copy_to_user)
    "pv.eventUpcall": 1,
    "pv.eventSent": 1,
    "pv.emulatedPrivOp": 2,
  });
  // Idle time is counted as for a native HLT: from the block (80 instruction times into
  // the run; natively the HLT comes at 61) to the key's arrival at 20,000.
  assert.equal(g.lab.stats.get("cpu.idle"), 20_000 - 80);
  assert.equal(g.platform.domain.vcpu.blocked, false);
});

Deno.test("a block with no event to come ends the run as idle, with the reason", () => {
  const g = bootPvOs();
  g.os.spawnProgram(READ_ECHO_EXIT);
  const result = g.os.run(100_000);
  assert.equal(result.outcome, "idle");
  // Stopped in the hypercall page, right after sched_op's SYSCALL (0x800 + 29 * 32 + 10).
  assert.equal(
    result.reason,
    "idle at 0xffffffff81000baa: the guest waits for an interrupt and no device event is " +
      "scheduled",
  );
  assert.equal(g.lab.stats.get("hypercall.sched_op"), 1);
  assert.equal(g.lab.stats.get("cpu.idle"), 0);
  assert.equal(g.platform.domain.vcpu.blocked, false);
  // A key typed later wakes it on the next run.
  g.platform.board.type("y", g.platform.board.now + 100, 0);
  assert.deepEqual(g.os.run(100_000), { outcome: "done", reason: "" });
  assert.equal(g.os.console, "y");
});

// --- The slides' example, against native ------------------------------------------------

const ECHO = [
  ...[0xbe, 0, 0, 0x60, 0, 0x31, 0xc0, 0x31, 0xff, 0xba, 1, 0, 0, 0, 0xcd, 0x80],
  ...[0xb8, 1, 0, 0, 0, 0xbf, 1, 0, 0, 0, 0xcd, 0x80, 0x80, 0x3e, 0x0a, 0x75, 0xe4],
  ...[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0xcd, 0x80],
];
const SPIN = [
  0xb9,
  0x40,
  0x0d,
  0x03,
  0,
  0x83,
  0xe9,
  0x01,
  0x75,
  0xfb,
  0xb8,
  60,
  0,
  0,
  0,
  0x31,
  0xff,
  0xcd,
  0x80,
];

function runExample(platform: "native" | "pv") {
  const lab = createLab({ platform, memoryMiB: 8 });
  const os = GuestOs.forLab(lab);
  lab.platform.board.setTimerPeriod(10000);
  lab.platform.board.type("hello\n", 5000, 3000);
  for (const program of [ECHO, SPIN, SPIN, STORE_TO_TEXT]) os.spawnProgram(program);
  const result = os.run(5_000_000);
  return { lab, os, result };
}

Deno.test("the example workload on pv: native's console and exits, by hypercalls and upcalls", () => {
  const native = runExample("native");
  const pv = runExample("pv");
  assert.deepEqual(pv.result, { outcome: "done", reason: "" });
  assert.equal(pv.os.console, native.os.console);
  assert.equal(pv.os.console, "hello\n");
  assert.deepEqual(pv.os.exits, native.os.exits);
  // The guest's system calls and faults are the same work...
  for (const vector of [0x80, 14]) {
    assert.equal(pv.os.vectorCounts[vector], native.os.vectorCounts[vector]);
  }
  // ...its interrupts arrive as event upcalls (pseudo-vector 0x100) instead of vectors
  // 0x20 and 0x21. The PV kernel's instruction stream is longer (pop rcx/r11 in every
  // stub, the hypercall page around each iret), so virtual time runs differently; here
  // the tick count happens to be the same (80), but it need not be.
  assert.deepEqual([native.os.vectorCounts[0x20], native.os.vectorCounts[0x21]], [80, 6]);
  assert.deepEqual([pv.os.vectorCounts[0x20], pv.os.vectorCounts[0x21]], [0, 0]);
  assert.equal(pv.os.ticks, 80);
  // 86 events (80 ticks, 6 keys) in 85 upcalls: one upcall found two ports pending.
  assert.deepEqual(
    [
      pv.os.vectorCounts[0x100],
      pv.lab.stats.get("pv.eventSent"),
      pv.lab.stats.get("guest.keyboardIrq"),
    ],
    [85, 86, 6],
  );
  assert.deepEqual(cpuCounters(pv.lab), {
    "hypercall.set_trap_table": 1,
    "hypercall.stack_switch": 85,
    "hypercall.xen_version": 0,
    "hypercall.iret": 101,
    "hypercall.vcpu_op": 1,
    "hypercall.sched_op": 0,
    "hypercall.callback_op": 1,
    "hypercall.event_channel_op": 2,
    "hypercall.physdev_op": 7, // set_iopl, 6 EOIs
    "pv.bounce.syscall": 15,
    "pv.bounce.pf": 2, // the echo's buffer (demand zero), the store to text
    "pv.bounce.other": 0,
    "pv.eventUpcall": 85,
    "pv.eventSent": 86,
    "pv.emulatedPrivOp": 12, // 6 keyboard reads, 6 serial writes
    "pv.ioDenied": 0,
  });
  // Natively each of those was an IDT delivery and an IRETQ; nothing was a VM exit.
  assert.equal(native.lab.stats.get("exit.total"), 0);
});

// --- System calls and user-mode instructions Xen sees -----------------------------------

Deno.test("SYSCALL from user mode: the syscall callback, or #UD without one", () => {
  // Without a callback (this guest registers none): #UD at the SYSCALL, the program dies.
  const g = bootPvOs();
  g.os.spawnProgram(SYSCALL_EXIT);
  assert.equal(g.os.run(100_000).outcome, "done");
  assert.deepEqual(g.os.exits, [{
    pid: 1,
    exitCode: 0,
    signal: 11,
    reason: "vector 6 in user mode",
  }]);
  assert.equal(g.lab.stats.get("pv.bounce.other"), 1);
  // With the int 0x80 stub registered as the syscall callback (its frame has the same
  // layout): a system call, RCX = the next RIP and R11 = RFLAGS as SYSCALL leaves them.
  const h = bootPvOs();
  const arg = kernelPage(h);
  write64(h, arg, 2); // CALLBACKTYPE_syscall, flags 0
  const stub = h.lab.kernel.code.text.stub(0x80);
  write64(h, arg + 8, stub >>> 0, linearHigh32(stub));
  assert.equal(hypercall(h.platform, 30, 0, arg), 0);
  h.os.spawnProgram(SYSCALL_EXIT);
  let frame: [number, number][] = [];
  h.lab.stats.trace = (event) => {
    if (event === "pv.bounce.syscall") frame = qwords(h.platform, rsp(h.platform), 3);
  };
  assert.equal(h.os.run(100_000).outcome, "done");
  assert.deepEqual(h.os.exits, [{ pid: 1, exitCode: 0, signal: 0, reason: "" }]);
  assert.deepEqual(frame, [[0x400009, 0], [0x246, 0], [0x400009, 0]]); // RCX, R11, RIP
  assert.equal(h.lab.stats.get("pv.bounce.syscall"), 1);
});

Deno.test("INT n with a DPL-0 trap-table entry: #GP(vector * 8 + 2) at the INT; INT3 bounces", () => {
  const g = bootPvOs();
  g.os.spawnProgram([0xcd, 0x0e]); // int 0x0e: #PF's entry has DPL 0
  g.os.spawnProgram([0xcc, 0xeb, 0xfe]); // int3 (DPL 3: allowed), then it would spin
  const frames: [number, number][][] = [];
  g.lab.stats.trace = (event, _address, detail) => {
    if (event === "trap.delivered" && detail === 13) {
      frames.push(qwords(g.platform, rsp(g.platform), 4));
    }
  };
  assert.equal(g.os.run(100_000).outcome, "done");
  assert.deepEqual(g.os.exits, [
    { pid: 1, exitCode: 0, signal: 11, reason: "vector 13 in user mode" },
    { pid: 2, exitCode: 0, signal: 11, reason: "vector 3 in user mode" },
  ]);
  // #GP's error code names the IDT entry (bit 1); RIP stays at the INT.
  assert.deepEqual(frames, [[[0, 0], [0, 0], [0x0e * 8 + 2, 0], [0x400000, 0]]]);
  assert.equal(g.lab.stats.get("pv.bounce.other"), 2); // the #GP, the INT3
});

Deno.test("IRETQ in user mode runs as on the processor (ring 3 to ring 3)", () => {
  const native = createLab({ platform: "native", memoryMiB: 8 });
  const nativeOs = GuestOs.forLab(native);
  nativeOs.spawnProgram(USER_IRETQ);
  assert.equal(nativeOs.run(100_000).outcome, "done");
  const g = bootPvOs();
  g.os.spawnProgram(USER_IRETQ);
  assert.equal(g.os.run(100_000).outcome, "done");
  assert.deepEqual(g.os.exits, [{ pid: 1, exitCode: 0, signal: 0, reason: "" }]);
  assert.deepEqual(g.os.exits, nativeOs.exits);
  assert.equal(g.lab.stats.get("pv.bounce.other"), 0);
});

// --- Hostile guest kernels ---------------------------------------------------------------

/**
 * A guest whose int 0x80 entry points at `kernelCode` in its program's text (a user page,
 * which the kernel may execute: no SMEP): the program's `int 0x80` enters kernel mode
 * there, with events masked, so the guest kernel executes `kernelCode`.
 */
function hijacked(kernelCode: number[], iopl?: number): PvOs {
  const g = bootPvOs();
  const table = kernelPage(g);
  write64(g, table, 0x80 | ((3 | 4) << 8) | (KERNEL_CS << 16));
  write64(g, table + 8, 0x400010);
  write64(g, table + 16, 0);
  write64(g, table + 24, 0);
  assert.equal(hypercall(g.platform, 0, table), 0); // set_trap_table: replaces entry 0x80
  if (iopl !== undefined) {
    write64(g, table + 0x100, iopl);
    assert.equal(hypercall(g.platform, 33, 6, table + 0x100), 0); // PHYSDEVOP_set_iopl
  }
  const code = [0xcd, 0x80];
  while (code.length < 0x10) code.push(0x90);
  g.os.spawnProgram([...code, ...kernelCode]);
  return g;
}

const OOPS = "guest kernel oops: vector 13 error code 0 in kernel mode";

Deno.test("HLT, LIDT, LGDT, SYSRET, IRETQ in the PV kernel: #GP bounced, as in ring 3", () => {
  const cases: [string, number[]][] = [
    ["hlt", [0xf4]],
    ["lidt [rax]", [0x0f, 0x01, 0x18]],
    ["lgdt [rax]", [0x0f, 0x01, 0x10]],
    ["sysretq", [0x48, 0x0f, 0x07]],
    ["iretq", [0x48, 0xcf]],
  ];
  for (const [what, bytes] of cases) {
    const g = hijacked(bytes);
    let frame: [number, number][] = [];
    g.lab.stats.trace = (event, _address, detail) => {
      if (event === "trap.delivered" && detail === 13) {
        frame = qwords(g.platform, rsp(g.platform), 6);
      }
    };
    assert.deepEqual(g.os.run(100_000), { outcome: "crashed", reason: OOPS }, what);
    // From kernel mode with events masked: CS has RPL 0 and the saved mask 1, IF clear.
    assert.deepEqual(frame.slice(2), [[0, 0], [0x400010, 0], [KERNEL_CS, 1], [0x2, 0]], what);
    assert.equal(g.lab.stats.get("pv.bounce.other"), 1, what);
  }
});

Deno.test("CLI/STI in the PV kernel: skipped at virtual IOPL 1 (mask untouched), #GP at IOPL 0", () => {
  const g = hijacked([0xfb, 0xfa, 0xf4]); // sti; cli; hlt
  assert.deepEqual(g.os.run(100_000), { outcome: "crashed", reason: OOPS });
  assert.equal(g.lab.stats.get("pv.emulatedPrivOp"), 2);
  assert.equal(g.v.upcallMask, 1); // STI did not enable events
  const h = hijacked([0xfa], 0);
  assert.deepEqual(h.os.run(100_000), { outcome: "crashed", reason: OOPS });
  assert.equal(h.lab.stats.get("pv.emulatedPrivOp"), 0);
});

Deno.test("port I/O in the PV kernel: the domain's ports reach the device, others do not", () => {
  // mov eax, 0x20; out 0x20, al (the PIC: not the domain's); in al, 0x21; hlt.
  const g = hijacked([0xb8, 0x20, 0, 0, 0, 0xe6, 0x20, 0xe4, 0x21, 0xf4]);
  const values: number[] = [];
  g.lab.stats.trace = (event) => {
    if (event === "pv.emulatedPrivOp") values.push(g.platform.interpreter.regLo(0) & 0xff);
  };
  assert.deepEqual(g.os.run(100_000), { outcome: "crashed", reason: OOPS });
  assert.deepEqual(values, [0x20, 0xff]); // the IN reads all ones (guest_io_read)
  assert.equal(g.lab.stats.get("dev.eoi"), 0); // the OUT was dropped
  assert.deepEqual([g.lab.stats.get("pv.emulatedPrivOp"), g.lab.stats.get("pv.ioDenied")], [2, 2]);
  // At virtual IOPL 0 even the keyboard's port is #GP.
  const h = hijacked([0xe4, 0x60], 0);
  assert.deepEqual(h.os.run(100_000), { outcome: "crashed", reason: OOPS });
  assert.equal(h.lab.stats.get("pv.emulatedPrivOp"), 0);
});

Deno.test("a trap table without the entry an exception needs crashes the domain, with the reason", () => {
  const g = bootPvOs();
  assert.equal(hypercall(g.platform, 0, 0), 0); // set_trap_table(NULL): no entries at all
  g.os.spawnProgram(GETPID_EXIT);
  const result = g.os.run(100_000);
  // int 0x80 has no entry: #GP(0x402) for the guest, and #GP has none either.
  assert.deepEqual(result, {
    outcome: "crashed",
    reason: "unhandled trap: vector 13 (error code 1026, cr2 0x0000000000000000) at " +
      "0x0000000000400005 has no handler in the trap table (pv_inject_event)",
  });
  assert.equal(g.lab.stats.get("domain.crash"), 1);
});

Deno.test("an event callback of 0 crashes the domain at the first upcall, with the reason", () => {
  const g = bootPvOs();
  g.v.callbacks[0] = 0; // as a guest that never registered one
  g.os.spawnProgram(SPIN_FOREVER);
  g.platform.board.setTimerPeriod(500);
  assert.deepEqual(g.os.run(10_000), {
    outcome: "crashed",
    reason: "event upcall: bounce frame: no handler address (create_bounce_frame_bad_bounce_ip)",
  });
});
