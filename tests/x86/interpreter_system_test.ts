/**
 * The interpreter's system side (issue 9) against the Intel SDM: Vol. 3A 6.12-6.15 for
 * event delivery in IA-32e mode (64-bit gates, the stack frame, Table 6-5 for double
 * faults), Vol. 2 for INT n / INT3 / IRET / SYSCALL / SYSRET / PUSHF / POPF / CLI / STI /
 * IN / OUT / LGDT / LIDT / SGDT / SIDT.
 *
 * Layout of every test's address space (tests/x86/_vcpu_fixture.ts): kernel code at KCODE
 * (supervisor), user code at UCODE, the IDT at IDT (supervisor, writable), a kernel stack
 * page below RSP0, a user stack page and a user data page.
 */

import assert from "node:assert/strict";
import { PAGE_SIZE } from "../../lib/x86/address.ts";
import { OP_INT, OP_SYSCALL } from "../../lib/x86/decode.ts";
import {
  CR4_UMIP,
  Interpreter,
  KERNEL_CS,
  KERNEL_SS,
  RFLAGS_IF,
  STEP_FAULT,
  STEP_HALT,
  STEP_INTERCEPT,
  STEP_LIMIT,
  STEP_OK,
  STEP_TRIPLE_FAULT,
  STEP_UNSUPPORTED,
  USER_CS,
  USER_SS,
  VECTOR_BP,
  VECTOR_DF,
  VECTOR_NP,
  VECTOR_SS,
} from "../../lib/x86/interpreter.ts";
import { PFEC_WRITE, RFLAGS_AC } from "../../lib/x86/paging_control.ts";
import type { PortBus } from "../../lib/x86/port_bus.ts";
import { Prng } from "../../lib/x86/prng.ts";
import { PTE_PRESENT, PTE_USER, PTE_WRITABLE } from "../../lib/x86/pte.ts";
import { VECTOR_GP, VECTOR_PF, VECTOR_UD } from "../../lib/x86/vcpu.ts";
import { buildVcpuFixture, type VcpuFixture } from "./_vcpu_fixture.ts";

const P = PTE_PRESENT;
const RW = PTE_PRESENT | PTE_WRITABLE;
const URW = PTE_PRESENT | PTE_WRITABLE | PTE_USER;

const KCODE = 0x40_0000;
const KCODE_FRAME = 0x20_0000;
const UCODE = 0x50_0000;
const UCODE_FRAME = 0x24_0000;
const IDT = 0x60_0000;
const IDT_FRAME = 0x28_0000;
const KSTACK = 0x70_0000; // one page; RSP0 is its top
const KSTACK_FRAME = 0x2c_0000;
const RSP0 = KSTACK + PAGE_SIZE;
const USTACK = 0x80_0000;
const USTACK_FRAME = 0x30_0000;
const UDATA = 0x90_0000;
const UDATA_FRAME = 0x34_0000;
const UNMAPPED = 0xa0_0000;

const RAX = 0, RCX = 1, RDX = 2, RSP = 4, R11 = 11;

// RFLAGS bits.
const CF = 0x1, TF = 0x100, IF = RFLAGS_IF, DF = 0x400, NT = 0x4000, RF = 0x10000;
const VM = 0x20000, VIF = 0x80000, VIP = 0x100000;
const IOPL3 = 0x3000;

const TRAP_GATE = 0xf;
const INTERRUPT_GATE = 0xe;

interface Machine {
  f: VcpuFixture;
  it: Interpreter;
}

/**
 * `user` at UCODE, `kernel` at KCODE, an empty IDT (limit 0xfff), RSP0 and a user RSP;
 * systemInstructions on, CPL 3, RIP at UCODE.
 */
function machine(user: readonly number[], kernel: readonly number[] = []): Machine {
  const f = buildVcpuFixture();
  f.map(KCODE, KCODE_FRAME, P);
  f.map(UCODE, UCODE_FRAME, P | PTE_USER);
  f.map(IDT, IDT_FRAME, RW);
  f.map(KSTACK, KSTACK_FRAME, RW);
  f.map(USTACK, USTACK_FRAME, URW);
  f.map(UDATA, UDATA_FRAME, URW);
  user.forEach((b, i) => f.memory.write8(UCODE_FRAME + i, b));
  kernel.forEach((b, i) => f.memory.write8(KCODE_FRAME + i, b));
  const it = new Interpreter(f.cpu);
  it.systemInstructions = true;
  it.idtrBase = IDT;
  it.idtrLimit = 0xfff;
  it.rsp0 = RSP0;
  it.rip = UCODE;
  it.setReg(RSP, USTACK + 0x800);
  f.ctl.cpl = 3;
  return { f, it };
}

interface GateOptions {
  type?: number;
  dpl?: number;
  present?: boolean;
  selector?: number;
  /** Offset 63:32; default 0. */
  offsetHigh?: number;
}

/** Writes the 64-bit gate for `vector` pointing at 32-bit `offset`. */
function setGate(f: VcpuFixture, vector: number, offset: number, options: GateOptions = {}): void {
  const base = IDT_FRAME + 16 * vector;
  const type = options.type ?? INTERRUPT_GATE;
  const attributes = (offset & 0xffff0000) | ((options.present ?? true) ? 0x8000 : 0) |
    ((options.dpl ?? 0) << 13) | (type << 8);
  f.memory.write32(base, ((options.selector ?? KERNEL_CS) << 16) | (offset & 0xffff));
  f.memory.write32(base + 4, attributes >>> 0);
  f.memory.write32(base + 8, options.offsetHigh ?? 0);
  f.memory.write32(base + 12, 0);
}

function get64(it: Interpreter, r: number): bigint {
  return (BigInt(it.regHi(r)) << 32n) | BigInt(it.regLo(r));
}

function set64(it: Interpreter, r: number, value: bigint): void {
  const v = BigInt.asUintN(64, value);
  it.setReg(r, Number(v & 0xffff_ffffn), Number(v >> 32n));
}

/** `count` qwords from linear `va` in the kernel stack page, lowest address first. */
function kernelStack(f: VcpuFixture, va: number, count: number): bigint[] {
  const pa = KSTACK_FRAME + (va - KSTACK);
  return Array.from(
    { length: count },
    (_, k) =>
      (BigInt(f.memory.read32(pa + 8 * k + 4)) << 32n) | BigInt(f.memory.read32(pa + 8 * k)),
  );
}

function exceptionOf(f: VcpuFixture): [number, number] {
  return [f.cpu.exception.vector, f.cpu.exception.errorCode];
}

function counters(f: VcpuFixture, names: readonly string[]): Record<string, number> {
  return Object.fromEntries(names.map((n) => [n, f.stats.get(n)]));
}

const IRETQ = [0x48, 0xcf];
const SYSRETQ = [0x48, 0x0f, 0x07];
const INT_80 = [0xcd, 0x80];

// --- INT n / IRETQ ------------------------------------------------------------------------

Deno.test("INT 0x80 from CPL 3 pushes SS, RSP, RFLAGS, CS, RIP on RSP0 and IRETQ returns", () => {
  const { f, it } = machine(INT_80, IRETQ);
  setGate(f, 0x80, KCODE, { type: TRAP_GATE, dpl: 3 });
  it.rflags = 0x2 | IF | CF;
  it.setReg(RSP, USTACK + 0x7f8); // not 16-byte aligned: the user stack is not realigned
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([it.rip, f.ctl.cpl, get64(it, RSP)], [KCODE, 0, BigInt(RSP0 - 40)]);
  assert.deepEqual(kernelStack(f, RSP0 - 40, 5), [
    BigInt(UCODE + 2), // RIP of the next instruction
    BigInt(USER_CS),
    BigInt(0x2 | IF | CF),
    BigInt(USTACK + 0x7f8),
    BigInt(USER_SS),
  ]);
  assert.equal(it.rflags, 0x2 | IF | CF, "a trap gate keeps IF");
  assert.equal(it.step(), STEP_OK); // iretq
  assert.deepEqual([it.rip, f.ctl.cpl, get64(it, RSP), it.rflags], [
    UCODE + 2,
    3,
    BigInt(USTACK + 0x7f8),
    0x2 | IF | CF,
  ]);
  assert.deepEqual(
    counters(f, ["cpu.softwareInterrupts", "cpu.instructions", "cpu.exceptionsDelivered"]),
    { "cpu.softwareInterrupts": 1, "cpu.instructions": 2, "cpu.exceptionsDelivered": 0 },
  );
  assert.equal(it.deliveries[0x80], 1);
});

const gateTypeCases: [string, number, number][] = [
  ["interrupt gate (0xE) clears IF", INTERRUPT_GATE, 0x2],
  ["trap gate (0xF) keeps IF", TRAP_GATE, 0x2 | IF],
];
for (const [name, type, rflags] of gateTypeCases) {
  Deno.test(`deliverEvent() through a ${name}; TF, NT, RF, VM are cleared`, () => {
    const { f, it } = machine([]);
    setGate(f, 32, KCODE, { type });
    it.rflags = 0x2 | IF | TF | NT | RF | VM;
    assert.equal(it.deliverEvent(32, -1, false), STEP_OK);
    assert.equal(it.rflags, rflags);
    assert.deepEqual(kernelStack(f, RSP0 - 24, 1), [BigInt(0x2 | IF | TF | NT | RF | VM)]);
  });
}

Deno.test("deliverEvent() at CPL 0 stays on the current stack, aligned down to 16 bytes", () => {
  const { f, it } = machine([]);
  setGate(f, 14, KCODE + 0x100);
  f.ctl.cpl = 0;
  it.rip = KCODE + 0x42;
  it.setReg(RSP, KSTACK + 0x808); // aligned down to 0x800 first (SDM 6.14.2)
  assert.equal(it.deliverEvent(14, PFEC_WRITE, false), STEP_OK);
  assert.equal(get64(it, RSP), BigInt(KSTACK + 0x800 - 48));
  assert.deepEqual(kernelStack(f, KSTACK + 0x800 - 48, 6), [
    BigInt(PFEC_WRITE),
    BigInt(KCODE + 0x42),
    BigInt(KERNEL_CS),
    0x2n,
    BigInt(KSTACK + 0x808),
    BigInt(KERNEL_SS),
  ]);
  assert.deepEqual([it.rip, f.ctl.cpl], [KCODE + 0x100, 0]);
});

Deno.test("deliverEvent() jumps to a gate offset in the upper half (bits 63:32 from the gate)", () => {
  const { f, it } = machine([]);
  setGate(f, 3, 0x8000_1000, { offsetHigh: 0xffff_ffff });
  assert.equal(it.deliverEvent(3, -1, false), STEP_OK);
  assert.equal(it.rip, 0xffff_8000_1000);
});

Deno.test("INT 0x80 through a DPL-0 gate from CPL 3 is #GP(0x80*8+2) with nothing changed", () => {
  const { f, it } = machine(INT_80, [0xf4]);
  setGate(f, 0x80, KCODE, { dpl: 0 });
  setGate(f, 13, KCODE + 0x10);
  it.rflags = 0x2 | IF;
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual(exceptionOf(f), [VECTOR_GP, 0x80 * 8 + 2]);
  assert.deepEqual([it.rip, f.ctl.cpl, get64(it, RSP)], [UCODE, 3, BigInt(USTACK + 0x800)]);
  // The caller (the "hardware" of a platform) then delivers the #GP with its error code.
  assert.equal(it.deliverEvent(VECTOR_GP, f.cpu.exception.errorCode, false), STEP_OK);
  assert.deepEqual(kernelStack(f, RSP0 - 48, 2), [BigInt(0x80 * 8 + 2), BigInt(UCODE)]);
  assert.deepEqual([it.rip, f.ctl.cpl], [KCODE + 0x10, 0]);
});

Deno.test("INT3 is vector 3 with the next RIP pushed, and checks the gate DPL", () => {
  const { f, it } = machine([0xcc]);
  setGate(f, VECTOR_BP, KCODE, { dpl: 3 });
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual(kernelStack(f, RSP0 - 40, 1), [BigInt(UCODE + 1)]);
  const other = machine([0xcc]);
  setGate(other.f, VECTOR_BP, KCODE, { dpl: 0 });
  assert.equal(other.it.step(), STEP_FAULT);
  assert.deepEqual(exceptionOf(other.f), [VECTOR_GP, 3 * 8 + 2]);
});

// The checks of SDM 6.12.1 / 6.14.1 in order, for a software event (EXT = 0) and an
// exception (EXT = 1). Delivered at CPL 0 so the DPL check passes.
const gateCheckCases: {
  name: string;
  vector: number;
  limit?: number;
  gate?: GateOptions | null;
  offset?: number;
  expect: [number, number, number]; // vector, error code (software), error code (exception)
}[] = [
  {
    name: "a vector beyond IDTR.limit is #GP(v*8+2+EXT)",
    vector: 0x40,
    limit: 0x40 * 16 + 14,
    expect: [VECTOR_GP, 0x40 * 8 + 2, 0x40 * 8 + 3],
  },
  {
    name: "a gate of type 0xC (call gate) is #GP(v*8+2+EXT)",
    vector: 0x41,
    gate: { type: 0xc },
    expect: [VECTOR_GP, 0x41 * 8 + 2, 0x41 * 8 + 3],
  },
  {
    name: "a not-present gate is #NP(v*8+2+EXT)",
    vector: 0x42,
    gate: { present: false },
    expect: [VECTOR_NP, 0x42 * 8 + 2, 0x42 * 8 + 3],
  },
  {
    name: "a null code selector is #GP(EXT)",
    vector: 0x43,
    gate: { selector: 0x3 },
    expect: [VECTOR_GP, 0, 1],
  },
  {
    name: "a non-canonical offset is #GP(EXT)",
    vector: 0x44,
    gate: { offsetHigh: 0x0000_8000 },
    expect: [VECTOR_GP, 0, 1],
  },
];
for (const c of gateCheckCases) {
  Deno.test(`deliverEvent(): ${c.name}`, () => {
    for (const software of [true, false]) {
      const { f, it } = machine([]);
      f.ctl.cpl = 0;
      it.setReg(RSP, KSTACK + 0x800);
      if (c.limit !== undefined) it.idtrLimit = c.limit;
      if (c.gate !== null) setGate(f, c.vector, KCODE, c.gate ?? {});
      it.rip = KCODE + 7;
      if (software) {
        assert.equal(it.deliverEvent(c.vector, -1, true), STEP_FAULT);
        assert.deepEqual(exceptionOf(f), [c.expect[0], c.expect[1]]);
        assert.deepEqual([it.rip, get64(it, RSP)], [KCODE + 7, BigInt(KSTACK + 0x800)]);
      } else {
        // No handler for the resulting fault either: a benign event (vector >= 32) faults
        // into #GP/#NP, whose gate is empty (type 0): #GP again, contributory twice: #DF,
        // whose gate is empty too: triple fault.
        assert.equal(it.deliverEvent(c.vector, -1, false), STEP_TRIPLE_FAULT);
      }
    }
  });
}

// --- Double and triple faults (SDM Vol. 3A Table 6-5) -------------------------------------

Deno.test("deliverEvent(#GP) through a not-present gate becomes #DF with error code 0", () => {
  const { f, it } = machine([]);
  setGate(f, VECTOR_GP, KCODE, { present: false });
  setGate(f, VECTOR_DF, KCODE + 0x80);
  it.rip = UCODE + 5;
  assert.equal(it.deliverEvent(VECTOR_GP, 0, false), STEP_OK);
  assert.deepEqual([it.rip, f.ctl.cpl, get64(it, RSP)], [KCODE + 0x80, 0, BigInt(RSP0 - 48)]);
  assert.deepEqual(kernelStack(f, RSP0 - 48, 6), [
    0n, // #DF's error code
    BigInt(UCODE + 5),
    BigInt(USER_CS),
    0x2n,
    BigInt(USTACK + 0x800),
    BigInt(USER_SS),
  ]);
  assert.deepEqual(
    counters(f, ["cpu.doubleFaults", "cpu.exceptionsDelivered", "cpu.tripleFaults"]),
    { "cpu.doubleFaults": 1, "cpu.exceptionsDelivered": 1, "cpu.tripleFaults": 0 },
  );
  assert.equal(it.deliveries[VECTOR_DF], 1);
});

// First event, the fault its delivery raises, and what is delivered (Table 6-5).
const doubleFaultCases: [string, number, number, number][] = [
  ["#UD (benign) then #NP: #NP delivered", VECTOR_UD, -1, VECTOR_NP],
  ["external vector 0x30 (benign) then #NP: #NP delivered", 0x30, -1, VECTOR_NP],
  ["#GP (contributory) then #NP (contributory): #DF", VECTOR_GP, 0, VECTOR_DF],
  ["#SS (contributory) then #NP: #DF", VECTOR_SS, 0, VECTOR_DF],
  ["#PF then #NP (contributory): #DF", VECTOR_PF, 2, VECTOR_DF],
];
for (const [name, first, code, delivered] of doubleFaultCases) {
  Deno.test(`deliverEvent(): ${name}`, () => {
    const { f, it } = machine([]);
    setGate(f, first, KCODE, { present: false });
    setGate(f, VECTOR_NP, KCODE + 0x10);
    setGate(f, VECTOR_DF, KCODE + 0x20);
    assert.equal(it.deliverEvent(first, code, false), STEP_OK);
    assert.equal(it.rip, delivered === VECTOR_DF ? KCODE + 0x20 : KCODE + 0x10);
    const errorCode = delivered === VECTOR_DF ? 0 : first * 8 + 3; // #NP: IDT | EXT
    assert.deepEqual(kernelStack(f, RSP0 - 48, 1), [BigInt(errorCode)]);
  });
}

Deno.test("deliverEvent(#GP) then #PF on the kernel stack: #PF delivered (contributory, PF)", () => {
  const { f, it } = machine([]);
  setGate(f, VECTOR_GP, KCODE);
  setGate(f, VECTOR_PF, KCODE + 0x10);
  setGate(f, VECTOR_DF, KCODE + 0x20);
  it.rsp0 = UNMAPPED + PAGE_SIZE;
  f.ctl.cpl = 3;
  // The #PF's own delivery uses the same unmapped stack: #PF then #PF is #DF, whose delivery
  // faults again: triple fault, with the last fault reported and the state as before.
  it.rip = UCODE + 3;
  assert.equal(it.deliverEvent(VECTOR_GP, 0, false), STEP_TRIPLE_FAULT);
  assert.deepEqual([f.cpu.exception.vector, f.cpu.exception.cr2], [
    VECTOR_PF,
    UNMAPPED + PAGE_SIZE - 8,
  ]);
  assert.equal(f.cpu.exception.errorCode, PFEC_WRITE, "a supervisor write (U/S = 0)");
  assert.deepEqual([it.rip, f.ctl.cpl, get64(it, RSP)], [UCODE + 3, 3, BigInt(USTACK + 0x800)]);
  assert.deepEqual(counters(f, ["cpu.doubleFaults", "cpu.tripleFaults", "cpu.pf"]), {
    "cpu.doubleFaults": 1,
    "cpu.tripleFaults": 1,
    "cpu.pf": 3,
  });
  // With a mapped stack for CPL 0 code, the #PF is what reaches its handler.
  const other = machine([]);
  setGate(other.f, VECTOR_GP, KCODE);
  setGate(other.f, VECTOR_PF, KCODE + 0x10);
  other.f.ctl.cpl = 0;
  other.it.setReg(RSP, UNMAPPED + 0x10);
  assert.equal(other.it.deliverEvent(VECTOR_GP, 0, false), STEP_TRIPLE_FAULT);
});

Deno.test("a fault while delivering #DF (its gate not present) is STEP_TRIPLE_FAULT", () => {
  const { f, it } = machine([]);
  setGate(f, VECTOR_GP, KCODE, { present: false });
  setGate(f, VECTOR_DF, KCODE, { present: false });
  assert.equal(it.deliverEvent(VECTOR_GP, 0, false), STEP_TRIPLE_FAULT);
  assert.deepEqual(exceptionOf(f), [VECTOR_NP, VECTOR_DF * 8 + 3]);
  assert.deepEqual([it.rip, f.ctl.cpl], [UCODE, 3]);
  assert.equal(f.stats.get("cpu.exceptionsDelivered"), 0);
});

Deno.test("deliverEvent() reads the gate with implicit supervisor reads (a user IDT page is fine, an unmapped one #PF)", () => {
  const { f, it } = machine([]);
  it.idtrBase = UNMAPPED;
  assert.equal(it.deliverEvent(0x80, -1, true), STEP_FAULT);
  assert.deepEqual([f.cpu.exception.vector, f.cpu.exception.cr2], [VECTOR_PF, UNMAPPED + 0x800]);
  assert.equal(f.cpu.exception.errorCode, 0, "supervisor read of a not-present page");
});

Deno.test("deliverEvent() rejects a bad vector or error code with a RangeError", () => {
  const { it } = machine([]);
  assert.throws(() => it.deliverEvent(256, -1, false), RangeError);
  assert.throws(() => it.deliverEvent(1.5, -1, false), RangeError);
  assert.throws(() => it.deliverEvent(13, -2, false), RangeError);
  assert.throws(() => it.deliverEvent(13, 2 ** 32, false), RangeError);
  assert.throws(() => it.raiseInterrupt(-1), RangeError);
});

// --- IRETQ checks ---------------------------------------------------------------------------

/**
 * IRETQ at KCODE and CPL `cpl` with the frame `rip, cs, rflags, rsp, ss` at KSTACK + 0x800
 * (code and stack made user pages for CPL 3).
 */
function iretFrom(frame: readonly bigint[], cpl = 0, rflags = 0x2): Machine {
  const m = machine([], IRETQ);
  if (cpl === 3) {
    m.f.map(KCODE, KCODE_FRAME, P | PTE_USER);
    m.f.map(KSTACK, KSTACK_FRAME, URW);
  }
  m.f.ctl.cpl = cpl;
  m.it.rip = KCODE;
  m.it.rflags = rflags;
  const sp = KSTACK + 0x800;
  m.it.setReg(RSP, sp);
  frame.forEach((v, k) => {
    m.f.memory.write32(KSTACK_FRAME + 0x800 + 8 * k, Number(v & 0xffff_ffffn));
    m.f.memory.write32(KSTACK_FRAME + 0x800 + 8 * k + 4, Number(v >> 32n));
  });
  return m;
}

const iretFaultCases: [string, bigint[], number, [number, number]][] = [
  ["a null CS", [BigInt(UCODE), 0n, 2n, 0n, BigInt(USER_SS)], 0, [VECTOR_GP, 0]],
  [
    "CS.RPL < CPL (to CPL 0 from CPL 3)",
    [BigInt(UCODE), BigInt(KERNEL_CS), 2n, 0n, BigInt(KERNEL_SS)],
    3,
    [VECTOR_GP, KERNEL_CS],
  ],
  ["a null SS to CPL 3", [BigInt(UCODE), BigInt(USER_CS), 2n, 0n, 0n], 0, [VECTOR_GP, 0]],
  [
    "SS.RPL != CS.RPL",
    [BigInt(UCODE), BigInt(USER_CS), 2n, 0n, BigInt(KERNEL_SS)],
    0,
    [VECTOR_GP, KERNEL_SS],
  ],
  [
    "a non-canonical RIP",
    [0x0000_8000_0000_0000n, BigInt(USER_CS), 2n, 0n, BigInt(USER_SS)],
    0,
    [VECTOR_GP, 0],
  ],
];
for (const [name, frame, cpl, expected] of iretFaultCases) {
  Deno.test(`IRETQ with ${name} faults with nothing changed`, () => {
    const { f, it } = iretFrom(frame, cpl);
    it.rip = KCODE;
    assert.equal(it.step(), STEP_FAULT);
    assert.deepEqual(exceptionOf(f), expected);
    assert.deepEqual([it.rip, f.ctl.cpl, get64(it, RSP)], [KCODE, cpl, BigInt(KSTACK + 0x800)]);
  });
}

Deno.test("IRETQ with NT set is #GP(0) (no task return in IA-32e mode)", () => {
  const { f, it } = iretFrom([BigInt(UCODE), BigInt(USER_CS), 2n, 0n, BigInt(USER_SS)], 0, 2 | NT);
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual(exceptionOf(f), [VECTOR_GP, 0]);
});

Deno.test("IRETQ to CPL 0 with a null SS is allowed (64-bit mode) and keeps CPL 0", () => {
  const { f, it } = iretFrom([BigInt(KCODE + 0x10), BigInt(KERNEL_CS), 0x2n, 0x1234n, 0n]);
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([it.rip, f.ctl.cpl, get64(it, RSP)], [KCODE + 0x10, 0, 0x1234n]);
});

// RFLAGS loaded by IRET from a popped image with every defined flag set, by the CPL the
// IRET runs at and IOPL (SDM Vol. 2 IRET, "Operation"). IRET at CPL 3 returns to CPL 3.
const ALL_FLAGS = 0x3f7fd7; // CF..OF, IOPL 3, NT, RF, VM, AC, VIF, VIP, ID (not bit 15)
const iretFlagCases: [number, number, number][] = [
  // cpl, rflags before (IOPL), rflags after
  [0, 0x2, (ALL_FLAGS & ~VM & ~NT) | 0x2 | NT], // everything but VM
  [3, 0x2, (ALL_FLAGS & ~VM & ~IF & ~IOPL3 & ~VIF & ~VIP) | 0x2],
  [3, 0x2 | IOPL3, (ALL_FLAGS & ~VM & ~VIF & ~VIP) | 0x2],
];
for (const [cpl, before, after] of iretFlagCases) {
  Deno.test(`IRETQ at CPL ${cpl} with IOPL ${(before >>> 12) & 3} loads RFLAGS 0x${after.toString(16)}`, () => {
    const cs = cpl === 0 ? KERNEL_CS : USER_CS;
    const ss = cpl === 0 ? KERNEL_SS : USER_SS;
    const frame = [BigInt(UCODE), BigInt(cs), BigInt(ALL_FLAGS), 0n, BigInt(ss)];
    const { it } = iretFrom(frame, cpl, before);
    // NT is loaded, so a second IRET would fault; one is enough.
    assert.equal(it.step(), STEP_OK);
    assert.equal(it.rflags.toString(16), after.toString(16));
  });
}

// --- SYSCALL / SYSRET -----------------------------------------------------------------------

Deno.test("SYSCALL then SYSRETQ: RCX, R11, FMASK, CPL and RFLAGS round trip", () => {
  const { f, it } = machine([0x0f, 0x05], SYSRETQ);
  it.lstar = KCODE;
  it.fmask = IF | TF | DF | RFLAGS_AC;
  it.rflags = 0x2 | IF | DF | CF | RFLAGS_AC;
  f.ctl.rflags = RFLAGS_AC | 0x2;
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual(
    [it.rip, f.ctl.cpl, get64(it, RCX), get64(it, R11), it.rflags, get64(it, RSP)],
    [
      KCODE,
      0,
      BigInt(UCODE + 2),
      BigInt(0x2 | IF | DF | CF | RFLAGS_AC),
      0x2 | CF,
      BigInt(USTACK + 0x800),
    ],
  );
  assert.equal(f.ctl.rflags & RFLAGS_AC, 0, "AC (SMAP) follows RFLAGS");
  assert.equal(it.step(), STEP_OK); // sysretq
  assert.deepEqual([it.rip, f.ctl.cpl, it.rflags], [UCODE + 2, 3, 0x2 | IF | DF | CF | RFLAGS_AC]);
  assert.deepEqual(counters(f, ["cpu.syscalls", "cpu.instructions"]), {
    "cpu.syscalls": 1,
    "cpu.instructions": 2,
  });
});

Deno.test("SYSRETQ loads RFLAGS = (R11 & 0x3C7FD7) | 2: RF, VM and reserved bits cleared", () => {
  const { f, it } = machine([], SYSRETQ);
  f.ctl.cpl = 0;
  it.rip = KCODE;
  it.setReg(R11, 0xffff_ffff, 0xffff_ffff);
  set64(it, RCX, 0xffff_8000_0000_1000n);
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([it.rflags, it.rip, f.ctl.cpl], [
    0x3c7fd7,
    0xffff_8000_0000_1000 - 2 ** 64 + 2 ** 48,
    3,
  ]);
});

const sysretFaultCases: [string, number, bigint][] = [
  ["at CPL 3", 3, BigInt(UCODE)],
  ["with a non-canonical RCX (at CPL 0, as Intel)", 0, 0x0000_8000_0000_0000n],
];
for (const [name, cpl, rcx] of sysretFaultCases) {
  Deno.test(`SYSRETQ ${name} is #GP(0) with nothing changed`, () => {
    const { f, it } = machine([], SYSRETQ);
    f.map(KCODE, KCODE_FRAME, P | PTE_USER);
    f.ctl.cpl = cpl;
    it.rip = KCODE;
    set64(it, RCX, rcx);
    assert.equal(it.step(), STEP_FAULT);
    assert.deepEqual(exceptionOf(f), [VECTOR_GP, 0]);
    assert.deepEqual([it.rip, f.ctl.cpl], [KCODE, cpl]);
  });
}

Deno.test("SYSRETQ at CPL 3 faults before an intercept; SYSCALL can be intercepted", () => {
  const { f, it } = machine([0x0f, 0x05], SYSRETQ);
  it.intercepts[OP_SYSCALL] = 1;
  assert.equal(it.step(), STEP_INTERCEPT);
  assert.deepEqual([it.rip, f.ctl.cpl], [UCODE, 3]);
});

// --- CLI / STI / PUSHF / POPF ---------------------------------------------------------------

// CLI and STI at each CPL and IOPL: allowed when CPL <= IOPL (SDM Vol. 2 CLI, STI; no PVI).
for (const cpl of [0, 3]) {
  for (const iopl of [0, 3]) {
    for (const [name, byte] of [["CLI", 0xfa], ["STI", 0xfb]] as const) {
      const allowed = cpl <= iopl;
      Deno.test(`${name} at CPL ${cpl}, IOPL ${iopl} ${allowed ? "executes" : "is #GP(0)"}`, () => {
        const { f, it } = machine([byte]);
        f.ctl.cpl = cpl;
        const before = 0x2 | (iopl << 12) | (byte === 0xfa ? IF : 0);
        it.rflags = before;
        assert.equal(it.step(), allowed ? STEP_OK : STEP_FAULT);
        assert.equal(it.rflags, allowed ? before ^ IF : before);
        if (!allowed) assert.deepEqual(exceptionOf(f), [VECTOR_GP, 0]);
      });
    }
  }
}

Deno.test("CLI at CPL 3 without systemInstructions is #GP(0) whatever IOPL (as before)", () => {
  const { f, it } = machine([0xfa]);
  it.systemInstructions = false;
  it.rflags = 0x2 | IOPL3 | IF;
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual(exceptionOf(f), [VECTOR_GP, 0]);
});

// POPFQ of an image with IF, IOPL 3, VM, RF, VIF, VIP, AC and CF set (SDM Vol. 2 POPF).
const POPPED = IF | IOPL3 | VM | RF | VIF | VIP | RFLAGS_AC | CF;
const popfCases: [string, number, number, number][] = [
  // name, cpl, rflags before, rflags after
  ["CPL 0 loads IF and IOPL", 0, 0x2 | RF, 0x2 | IF | IOPL3 | RFLAGS_AC | CF],
  ["CPL 3, IOPL 0 keeps IF and IOPL, silently", 3, 0x2, 0x2 | RFLAGS_AC | CF],
  ["CPL 3, IOPL 0 keeps IF = 1 when popping 0", 3, 0x2 | IF, 0x2 | IF | RFLAGS_AC | CF],
  ["CPL 3, IOPL 3 loads IF, keeps IOPL", 3, 0x2 | IOPL3, 0x2 | IF | IOPL3 | RFLAGS_AC | CF],
];
for (const [name, cpl, before, after] of popfCases) {
  Deno.test(`POPFQ at ${name}; VM, VIF, VIP are kept and RF cleared`, () => {
    const { f, it } = machine([0x9d]);
    f.ctl.cpl = cpl;
    it.rflags = before;
    const popped = name.includes("popping 0") ? RFLAGS_AC | CF : POPPED;
    f.memory.write32(USTACK_FRAME + 0x800, popped);
    assert.equal(it.step(), STEP_OK);
    assert.equal(it.rflags.toString(16), after.toString(16));
    assert.equal(get64(it, RSP), BigInt(USTACK + 0x808));
  });
}

Deno.test("POPF (66 9D) loads only FLAGS (bits 15:0) and keeps RF", () => {
  const { f, it } = machine([0x66, 0x9d]);
  f.ctl.cpl = 0;
  it.rflags = 0x2 | RF;
  f.memory.write32(USTACK_FRAME + 0x800, 0xffff_ffff);
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.rflags.toString(16), (0x7fd7 | RF).toString(16)); // NT, IOPL, IF..CF; bit 15 reserved
  assert.equal(get64(it, RSP), BigInt(USTACK + 0x802));
});

Deno.test("PUSHFQ pushes RFLAGS with VM and RF cleared; PUSHF (66) pushes 2 bytes", () => {
  const { f, it } = machine([0x9c, 0x66, 0x9c]);
  it.rflags = 0x2 | IF | VM | RF | VIF | CF;
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual(
    [f.memory.read32(USTACK_FRAME + 0x7f8), f.memory.read32(USTACK_FRAME + 0x7fc)],
    [0x2 | IF | VIF | CF, 0],
  );
  f.memory.write32(USTACK_FRAME + 0x7f4, 0);
  assert.equal(it.step(), STEP_OK);
  assert.equal(f.memory.read32(USTACK_FRAME + 0x7f4), (0x2 | IF | CF) << 16);
  assert.equal(get64(it, RSP), BigInt(USTACK + 0x7f6));
});

Deno.test("PUSHFQ onto a read-only or unmapped stack faults with RSP unchanged", () => {
  const { f, it } = machine([0x9c]);
  it.setReg(RSP, UNMAPPED + 8);
  assert.equal(it.step(), STEP_FAULT);
  assert.equal(f.cpu.exception.vector, VECTOR_PF);
  assert.equal(get64(it, RSP), BigInt(UNMAPPED + 8));
  set64(it, RSP, 0x0000_8000_0000_0000n);
  assert.equal(it.step(), STEP_FAULT);
  assert.equal(f.cpu.exception.vector, VECTOR_SS);
});

// --- SGDT / SIDT / LGDT / LIDT --------------------------------------------------------------

Deno.test("SIDT at CPL 3 stores the real IDTR (no UMIP): the deprivileged kernel sees it", () => {
  const { f, it } = machine([0x0f, 0x01, 0x0f, 0x0f, 0x01, 0x47, 0x10]); // sidt [rdi]; sgdt [rdi+16]
  it.idtrBase = 0xffff_8000_0012_3000;
  it.idtrLimit = 0xfff;
  it.gdtrBase = 0x5000;
  it.gdtrLimit = 0x7f;
  it.setReg(7, UDATA);
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.step(), STEP_OK);
  const m = f.memory;
  assert.deepEqual(
    [m.read16(UDATA_FRAME), m.read32(UDATA_FRAME + 2), m.read32(UDATA_FRAME + 6)],
    [0xfff, 0x0012_3000, 0xffff_8000],
  );
  assert.deepEqual(
    [m.read16(UDATA_FRAME + 16), m.read32(UDATA_FRAME + 18), m.read32(UDATA_FRAME + 22)],
    [0x7f, 0x5000, 0],
  );
});

Deno.test("SIDT at CPL 3 with CR4.UMIP is #GP(0); at CPL 0 it still stores", () => {
  const { f, it } = machine([0x0f, 0x01, 0x0f]);
  f.ctl.cr4 = f.ctl.cr4 | CR4_UMIP;
  it.setReg(7, UDATA);
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual(exceptionOf(f), [VECTOR_GP, 0]);
  f.ctl.cpl = 0;
  assert.equal(it.step(), STEP_OK);
});

Deno.test("LIDT and LGDT at CPL 0 load limit and base; at CPL 3 they are #GP(0)", () => {
  const { f, it } = machine([0x0f, 0x01, 0x1f, 0x0f, 0x01, 0x57, 0x10]); // lidt [rdi]; lgdt [rdi+16]
  const m = f.memory;
  m.write16(UDATA_FRAME, 0x1ff);
  m.write32(UDATA_FRAME + 2, 0x0000_4000);
  m.write32(UDATA_FRAME + 6, 0xffff_ffff);
  m.write16(UDATA_FRAME + 16, 0x3f);
  m.write32(UDATA_FRAME + 18, 0x6000);
  m.write32(UDATA_FRAME + 22, 0);
  it.setReg(7, UDATA);
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual(exceptionOf(f), [VECTOR_GP, 0]);
  f.ctl.cpl = 0;
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([it.idtrLimit, it.idtrBase, it.gdtrLimit, it.gdtrBase], [
    0x1ff,
    2 ** 48 - 2 ** 32 + 0x4000,
    0x3f,
    0x6000,
  ]);
});

Deno.test("LIDT with a non-canonical base is #GP(0) and keeps the IDTR", () => {
  const { f, it } = machine([0x0f, 0x01, 0x1f]);
  f.ctl.cpl = 0;
  f.memory.write32(UDATA_FRAME + 6, 0x0001_0000);
  it.setReg(7, UDATA);
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual([it.idtrBase, it.idtrLimit], [IDT, 0xfff]);
});

// --- IN / OUT -------------------------------------------------------------------------------

class RecordingBus implements PortBus {
  readonly writes: [number, number, number][] = [];
  readonly reads: [number, number][] = [];
  read(port: number, size: number): number {
    this.reads.push([port, size]);
    return port === 0x60 ? 0x1c : 0xdead_beef;
  }
  write(port: number, size: number, value: number): void {
    this.writes.push([port, size, value]);
  }
}

Deno.test("IN and OUT go through the PortBus with their port and size", () => {
  // in al, 0x60; in eax, dx; out dx, al; out 0x80, ax
  const { f, it } = machine([0xe4, 0x60, 0xed, 0xee, 0x66, 0xe7, 0x80]);
  const bus = new RecordingBus();
  it.ports = bus;
  f.ctl.cpl = 0;
  it.setReg(RAX, 0x1111_1111, 0x2222_2222);
  it.setReg(RDX, 0x1234_03f8);
  assert.equal(it.resume(4), STEP_LIMIT);
  assert.deepEqual(bus.reads, [[0x60, 1], [0x3f8, 4]]);
  assert.deepEqual(bus.writes, [[0x3f8, 1, 0xef], [0x80, 2, 0xbeef]]);
  assert.equal(get64(it, RAX), 0xdead_beefn, "IN EAX zero-extends into RAX");
  assert.equal(f.stats.get("cpu.portIo"), 4);
});

Deno.test("IN AL keeps the rest of RAX; with no bus it reads all ones", () => {
  const { f, it } = machine([0xe4, 0x60]);
  f.ctl.cpl = 0;
  it.setReg(RAX, 0x1234_5600, 0x77);
  assert.equal(it.step(), STEP_OK);
  assert.equal(get64(it, RAX), 0x77_1234_56ffn);
});

for (const [iopl, result] of [[0, STEP_FAULT], [3, STEP_OK]] as const) {
  Deno.test(`IN at CPL 3 with IOPL ${iopl} ${result === STEP_OK ? "executes" : "is #GP(0) before the intercept"}`, () => {
    const { f, it } = machine([0xe4, 0x60]);
    it.rflags = 0x2 | (iopl << 12);
    it.ports = new RecordingBus();
    assert.equal(it.step(), result);
    if (result === STEP_FAULT) {
      assert.deepEqual(exceptionOf(f), [VECTOR_GP, 0]);
      assert.equal(get64(it, RAX), 0n);
    } else {
      assert.equal(get64(it, RAX), 0x1cn);
    }
  });
}

// --- External interrupts --------------------------------------------------------------------

Deno.test("a pending interrupt waits while IF = 0, then is delivered one instruction after STI", () => {
  // nop; sti; nop; nop
  const { f, it } = machine([0x90, 0xfb, 0x90, 0x90]);
  setGate(f, 0x20, KCODE);
  it.rflags = 0x2 | IOPL3; // IF = 0; IOPL 3 lets CPL 3 run STI
  it.raiseInterrupt(0x20);
  assert.equal(it.pendingInterrupt, 0x20);
  assert.equal(it.step(), STEP_OK); // nop, IF = 0
  assert.deepEqual([it.rip, it.pendingInterrupt], [UCODE + 1, 0x20]);
  assert.equal(it.step(), STEP_OK); // sti
  assert.equal(it.step(), STEP_OK); // nop in the STI shadow
  assert.deepEqual([it.rip, it.pendingInterrupt], [UCODE + 3, 0x20]);
  assert.equal(it.step(), STEP_OK); // delivered, no instruction executed
  assert.deepEqual([it.rip, f.ctl.cpl, it.pendingInterrupt], [KCODE, 0, -1]);
  assert.deepEqual(kernelStack(f, RSP0 - 40, 5), [
    BigInt(UCODE + 3),
    BigInt(USER_CS),
    BigInt(0x2 | IOPL3 | IF),
    BigInt(USTACK + 0x800),
    BigInt(USER_SS),
  ]);
  assert.equal(it.rflags, 0x2 | IOPL3, "an interrupt gate clears IF");
  assert.deepEqual(counters(f, ["cpu.interrupts", "cpu.instructions"]), {
    "cpu.interrupts": 1,
    "cpu.instructions": 3,
  });
});

Deno.test("pending interrupts go highest vector first; HLT is woken by the next step()", () => {
  const { f, it } = machine([], [0xf4, 0xf4]);
  setGate(f, 0x21, KCODE);
  setGate(f, 0x30, KCODE);
  f.ctl.cpl = 0;
  it.rip = KCODE;
  it.setReg(RSP, KSTACK + 0x800);
  it.raiseInterrupt(0x21);
  it.raiseInterrupt(0x30);
  it.raiseInterrupt(0x30);
  assert.equal(it.step(), STEP_HALT); // IF = 0
  it.rflags = 0x2 | IF;
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.deliveries[0x30], 1);
  assert.equal(it.pendingInterrupt, 0x21, "0x30 raised twice is delivered once");
  it.rflags |= IF;
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([it.deliveries[0x21], it.pendingInterrupt], [1, -1]);
});

Deno.test("without systemInstructions nothing changes: INT is unsupported, interrupts wait", () => {
  const { f, it } = machine(INT_80);
  it.systemInstructions = false;
  setGate(f, 0x80, KCODE, { dpl: 3 });
  it.rflags = 0x2 | IF;
  it.raiseInterrupt(0x20);
  assert.equal(it.step(), STEP_UNSUPPORTED);
  assert.deepEqual([it.rip, it.decoded.op, f.ctl.cpl], [UCODE, OP_INT, 3]);
  for (const code of [IRETQ, [0x9c], [0xe4, 0x60], [0x0f, 0x01, 0x0f]]) {
    const other = machine(code);
    other.it.systemInstructions = false;
    other.f.ctl.cpl = 0;
    assert.equal(other.it.step(), STEP_UNSUPPORTED);
  }
});

Deno.test("an interrupt whose delivery hits a not-present gate delivers #NP instead", () => {
  const { f, it } = machine([0x90]);
  setGate(f, 0x22, KCODE, { present: false });
  setGate(f, VECTOR_NP, KCODE + 0x10);
  it.rflags = 0x2 | IF;
  it.raiseInterrupt(0x22);
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([it.rip, it.pendingInterrupt], [KCODE + 0x10, -1]);
  assert.deepEqual(kernelStack(f, RSP0 - 48, 1), [BigInt(0x22 * 8 + 3)]);
  assert.deepEqual(counters(f, ["cpu.interrupts", "cpu.exceptionsDelivered"]), {
    "cpu.interrupts": 0,
    "cpu.exceptionsDelivered": 1,
  });
});

// --- Fuzz -----------------------------------------------------------------------------------

Deno.test("step() with systemInstructions never throws on random bytes, IDTs and interrupts", () => {
  const { f, it } = machine([]);
  f.map(KCODE, KCODE_FRAME, P | PTE_USER);
  const random = new Prng(20250909);
  const ctl = f.ctl;
  const saved = { cr0: ctl.cr0, cr3: ctl.cr3, cr4: ctl.cr4, efer: ctl.efer };
  const pointers = [UDATA, UDATA + 0xff8, USTACK + 0x800, KSTACK + 0x800, IDT, UNMAPPED, 0];
  const bus = new RecordingBus();
  const seen = new Set<number>();
  // Gates with random attributes (and some valid ones) for a third of the vectors.
  for (let v = 0; v < 256; v++) {
    if (random.chance(0.3)) {
      setGate(f, v, random.chance(0.5) ? KCODE + random.below(0x1000) : random.nextU32(), {
        type: random.chance(0.7) ? INTERRUPT_GATE + random.below(2) : random.below(16),
        dpl: random.below(4),
        present: random.chance(0.8),
        selector: random.chance(0.9) ? KERNEL_CS : random.below(4),
        offsetHigh: random.chance(0.9) ? 0 : random.nextU32(),
      });
    }
  }
  for (let i = 0; i < 20000; i++) {
    const offset = random.below(0xff0);
    const frame = random.chance(0.5) ? UCODE_FRAME : KCODE_FRAME;
    for (let k = 0; k < 16; k++) f.memory.write8(frame + offset + k, random.below(256));
    // Bias towards the system opcodes.
    if (random.chance(0.4)) {
      const systems = [
        [0xcd],
        [0xcc],
        [0x48, 0xcf],
        [0x0f, 0x05],
        [0x48, 0x0f, 0x07],
        [0x9c],
        [
          0x9d,
        ],
        [0xe4],
        [0xee],
        [0x0f, 0x01],
        [0xfa],
        [0xfb],
        [0xf4],
      ];
      systems[random.below(systems.length)]!.forEach((b, k) =>
        f.memory.write8(frame + offset + k, b)
      );
    }
    for (let r = 0; r < 16; r++) {
      const pick = random.below(3);
      if (pick === 0) it.setReg(r, random.nextU32(), random.nextU32());
      else if (pick === 1) it.setReg(r, random.below(64));
      else it.setReg(r, pointers[random.below(pointers.length)]! + 8 * random.below(4));
    }
    it.rflags = (random.nextU32() & 0x3f7fd5) | 0x2;
    it.rsp0 = random.chance(0.8) ? RSP0 : UNMAPPED + PAGE_SIZE;
    it.idtrLimit = random.chance(0.9) ? 0xfff : random.below(0x1000);
    it.lstar = random.chance(0.5) ? KCODE : random.below(0x10000) * 2 ** 32 + random.nextU32();
    it.fmask = random.nextU32();
    it.ports = random.chance(0.5) ? bus : null;
    if (random.chance(0.1)) it.raiseInterrupt(random.below(256));
    ctl.cpl = random.chance(0.5) ? 3 : 0;
    it.rip = (frame === UCODE_FRAME ? UCODE : KCODE) + offset;
    const result = it.step();
    assert.ok(result >= STEP_OK && result <= STEP_TRIPLE_FAULT, `result ${result} at ${i}`);
    seen.add(result);
    if (result === STEP_FAULT) {
      const vector = f.cpu.exception.vector;
      assert.ok(
        [VECTOR_UD, VECTOR_SS, VECTOR_GP, VECTOR_PF, VECTOR_NP].includes(vector),
        `${vector}`,
      );
    }
    if (random.chance(0.05)) {
      const v = random.below(256);
      const r = it.deliverEvent(
        v,
        random.chance(0.5) ? -1 : random.below(0x10000),
        random.chance(0.3),
      );
      assert.ok([STEP_OK, STEP_FAULT, STEP_TRIPLE_FAULT].includes(r));
    }
    ctl.cr0 = saved.cr0;
    ctl.cr4 = saved.cr4;
    ctl.cr3 = saved.cr3;
    ctl.efer = saved.efer;
    f.cpu.tlb.flushAll();
  }
  for (const result of [STEP_OK, STEP_FAULT, STEP_HALT, STEP_TRIPLE_FAULT]) {
    assert.ok(seen.has(result), `never saw ${result}`);
  }
  // Every delivery is counted once, under one of the three kinds.
  const deliveries = it.deliveries.reduce((a, b) => a + b, 0);
  const kinds = f.stats.get("cpu.interrupts") + f.stats.get("cpu.exceptionsDelivered") +
    f.stats.get("cpu.softwareInterrupts");
  assert.equal(deliveries, kinds);
  assert.ok(deliveries > 0);
  assert.ok(f.stats.get("cpu.syscalls") > 0 && f.stats.get("cpu.portIo") > 0);
});
