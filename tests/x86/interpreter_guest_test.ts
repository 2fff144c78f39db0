/**
 * The interpreter as the CPU of a whole guest OS: the ordinary integer instructions of
 * its stubs and user programs against the Intel SDM Vol. 2 pages (PUSH, POP, CMP, TEST,
 * XOR, INC, DEC, Jcc, MOVZX, MOV), guest mode (RET always pops), the host-service gate
 * (STEP_SERVICE, returnFromService) with saveContext / restoreContext, and rings 1 and 2
 * (Vol. 3A 6.14 frames, Vol. 2 IRET / POPF / PUSHF at CPL 1).
 *
 * Flag results are checked against a BigInt model written from the SDM's definitions
 * (Vol. 1 3.4.3.1, Appendix B), for every pair of edge values 0, 1, 0x7f.., 0x80.., 0xff..
 * at every operand size, with all status flags clear and all set beforehand.
 *
 * Layout of every test's address space (tests/x86/_vcpu_fixture.ts): user code at CODE,
 * kernel code at KCODE, a user stack, a kernel stack below RSP0, a writable and a
 * read-only data page, the IDT, and an unmapped host-service page at SERVICE.
 */

import assert from "node:assert/strict";
import { PAGE_SIZE } from "../../lib/x86/address.ts";
import {
  Interpreter,
  InterpreterContext,
  KERNEL_CS,
  KERNEL_SS,
  RFLAGS_IF,
  STEP_FAULT,
  STEP_HALT,
  STEP_LIMIT,
  STEP_OK,
  STEP_RETURN,
  STEP_SERVICE,
  STEP_UNSUPPORTED,
  USER_CS,
  USER_SS,
  VECTOR_BP,
  VECTOR_SS,
} from "../../lib/x86/interpreter.ts";
import { PFEC_USER, PFEC_WRITE, RFLAGS_AC } from "../../lib/x86/paging_control.ts";
import { PTE_PRESENT, PTE_USER, PTE_WRITABLE } from "../../lib/x86/pte.ts";
import { VECTOR_GP, VECTOR_PF } from "../../lib/x86/vcpu.ts";
import { buildVcpuFixture, type VcpuFixture } from "./_vcpu_fixture.ts";

const P = PTE_PRESENT;
const RW = PTE_PRESENT | PTE_WRITABLE;
const URW = PTE_PRESENT | PTE_WRITABLE | PTE_USER;

const CODE = 0x40_0000; // user code (the kernel may run it too: no SMEP)
const CODE_FRAME = 0x20_0000;
const KCODE = 0x41_0000; // kernel code (supervisor)
const KCODE_FRAME = 0x21_0000;
const STACK = 0x50_0000; // user stack page
const STACK_FRAME = 0x22_0000;
const KSTACK = 0x51_0000; // kernel stack page; RSP0 is its top
const KSTACK_FRAME = 0x23_0000;
const RSP0 = KSTACK + PAGE_SIZE;
const DATA = 0x52_0000;
const DATA_FRAME = 0x24_0000;
const READ_ONLY = 0x53_0000;
const READ_ONLY_FRAME = 0x25_0000;
const IDT = 0x54_0000;
const IDT_FRAME = 0x26_0000;
const SERVICE = 0x60_0000; // never mapped: the gate fires before any fetch
const UNMAPPED = 0x70_0000;
const TOP = 0x7fff_ffff_f000; // the last page of the lower half
const TOP_FRAME = 0x27_0000;

const RAX = 0, RCX = 1, RDX = 2, RBX = 3, RSP = 4, RDI = 7, R14 = 14, R15 = 15;

// RFLAGS bits.
const CF = 0x1, PF = 0x4, AF = 0x10, ZF = 0x40, SF = 0x80, IF = RFLAGS_IF, OF = 0x800;
const ARITH = CF | PF | AF | ZF | SF | OF;
const IOPL1 = 0x1000, IOPL3 = 0x3000;

const NON_CANONICAL = 0x0000_8000_0000_0000n;

interface Machine {
  f: VcpuFixture;
  it: Interpreter;
}

/**
 * `user` at CODE, `kernel` at KCODE; RIP at CODE, RSP in the middle of the user stack,
 * CPL 0, systemInstructions off, an IDT (limit 0xfff) with no gates and RSP0 set.
 */
function machine(user: readonly number[], kernel: readonly number[] = []): Machine {
  const f = buildVcpuFixture();
  f.map(CODE, CODE_FRAME, P | PTE_USER);
  f.map(KCODE, KCODE_FRAME, P);
  f.map(STACK, STACK_FRAME, URW);
  f.map(KSTACK, KSTACK_FRAME, RW);
  f.map(DATA, DATA_FRAME, URW);
  f.map(READ_ONLY, READ_ONLY_FRAME, P | PTE_USER);
  f.map(IDT, IDT_FRAME, RW);
  f.map(TOP, TOP_FRAME, P);
  user.forEach((b, i) => f.memory.write8(CODE_FRAME + i, b));
  kernel.forEach((b, i) => f.memory.write8(KCODE_FRAME + i, b));
  const it = new Interpreter(f.cpu);
  it.idtrBase = IDT;
  it.idtrLimit = 0xfff;
  it.rsp0 = RSP0;
  it.rip = CODE;
  it.setReg(RSP, STACK + 0x800);
  return { f, it };
}

/** Writes `code` at the start of the user code page (over what was there). */
function load(f: VcpuFixture, code: readonly number[], frame = CODE_FRAME): void {
  code.forEach((b, i) => f.memory.write8(frame + i, b));
}

/** Writes a present 64-bit gate for `vector` (DPL 3) to `offset`. */
function setGate(f: VcpuFixture, vector: number, offset: number, trap = false): void {
  const base = IDT_FRAME + 16 * vector;
  f.memory.write32(base, (KERNEL_CS << 16) | (offset & 0xffff));
  f.memory.write32(
    base + 4,
    ((offset & 0xffff0000) | 0x8000 | (3 << 13) | ((trap ? 0xf : 0xe) << 8)) >>> 0,
  );
  f.memory.write32(base + 8, 0);
  f.memory.write32(base + 12, 0);
}

function get64(it: Interpreter, r: number): bigint {
  return (BigInt(it.regHi(r)) << 32n) | BigInt(it.regLo(r));
}

function set64(it: Interpreter, r: number, value: bigint): void {
  const v = BigInt.asUintN(64, value);
  it.setReg(r, Number(v & 0xffff_ffffn), Number(v >> 32n));
}

function read64(f: VcpuFixture, pa: number): bigint {
  return (BigInt(f.memory.read32(pa + 4)) << 32n) | BigInt(f.memory.read32(pa));
}

function write64(f: VcpuFixture, pa: number, value: bigint): void {
  const v = BigInt.asUintN(64, value);
  f.memory.write32(pa, Number(v & 0xffff_ffffn));
  f.memory.write32(pa + 4, Number(v >> 32n));
}

function counters(f: VcpuFixture, names: readonly string[]): Record<string, number> {
  return Object.fromEntries(names.map((n) => [n, f.stats.get(n)]));
}

function exceptionOf(f: VcpuFixture): [number, number] {
  return [f.cpu.exception.vector, f.cpu.exception.errorCode];
}

/** All 16 registers as bigints. */
function allRegs(it: Interpreter): bigint[] {
  return Array.from({ length: 16 }, (_, r) => get64(it, r));
}

/** Little-endian bytes of a 32-bit displacement. */
function rel32(from: number, to: number): number[] {
  const d = (to - from) | 0;
  return [d & 0xff, (d >>> 8) & 0xff, (d >>> 16) & 0xff, (d >>> 24) & 0xff];
}

// --- The flag model (SDM Vol. 1 3.4.3.1) --------------------------------------------------

const SIZES = [1, 2, 4, 8] as const;

/** 0, 1, 0x7f.., 0x80.., 0xff.. at `bits`. */
function edgeValues(bits: bigint): bigint[] {
  const top = 1n << (bits - 1n);
  return [0n, 1n, top - 1n, top, (1n << bits) - 1n];
}

function parityFlag(value: bigint): number {
  let ones = 0;
  for (let i = 0n; i < 8n; i++) ones += Number((value >> i) & 1n);
  return ones % 2 === 0 ? PF : 0;
}

/** ZF, SF, PF of `result` at `bits`. */
function resultFlags(result: bigint, bits: bigint): number {
  return (result === 0n ? ZF : 0) | ((result >> (bits - 1n)) & 1n ? SF : 0) | parityFlag(result);
}

/** a - b at `bits`: the result and CF, OF, AF, ZF, SF, PF. */
function subModel(a: bigint, b: bigint, bits: bigint): [bigint, number] {
  const mask = (1n << bits) - 1n;
  const result = (a - b) & mask;
  const sa = (a >> (bits - 1n)) & 1n,
    sb = (b >> (bits - 1n)) & 1n,
    sr = (result >> (bits - 1n)) & 1n;
  let flags = resultFlags(result, bits);
  if (a < b) flags |= CF;
  if (sa !== sb && sr !== sa) flags |= OF;
  if (((a ^ b ^ result) & 0x10n) !== 0n) flags |= AF;
  return [result, flags];
}

/** a + b at `bits`. */
function addModel(a: bigint, b: bigint, bits: bigint): [bigint, number] {
  const mask = (1n << bits) - 1n;
  const result = (a + b) & mask;
  const sa = (a >> (bits - 1n)) & 1n,
    sb = (b >> (bits - 1n)) & 1n,
    sr = (result >> (bits - 1n)) & 1n;
  let flags = resultFlags(result, bits);
  if (a + b > mask) flags |= CF;
  if (sa === sb && sr !== sa) flags |= OF;
  if (((a ^ b ^ result) & 0x10n) !== 0n) flags |= AF;
  return [result, flags];
}

/** `value` written into the low `size` bytes of register image `old` (4 zero-extends). */
function merge(old: bigint, value: bigint, size: number): bigint {
  if (size === 8 || size === 4) return value;
  const mask = (1n << BigInt(8 * size)) - 1n;
  return (old & ~mask) | value;
}

// What fills the bits of RAX/RCX above the operand, so that a wrong width shows.
const FILL = 0xa5a5_a5a5_5a5a_5a5an;

// Register-register encodings with RAX the destination (r/m) and RCX the source (reg).
const ENCODINGS: Record<string, Record<number, number[]>> = {
  cmp: { 1: [0x38, 0xc8], 2: [0x66, 0x39, 0xc8], 4: [0x39, 0xc8], 8: [0x48, 0x39, 0xc8] },
  test: { 1: [0x84, 0xc8], 2: [0x66, 0x85, 0xc8], 4: [0x85, 0xc8], 8: [0x48, 0x85, 0xc8] },
  xor: { 1: [0x30, 0xc8], 2: [0x66, 0x31, 0xc8], 4: [0x31, 0xc8], 8: [0x48, 0x31, 0xc8] },
  inc: { 1: [0xfe, 0xc0], 2: [0x66, 0xff, 0xc0], 4: [0xff, 0xc0], 8: [0x48, 0xff, 0xc0] },
  dec: { 1: [0xfe, 0xc8], 2: [0x66, 0xff, 0xc8], 4: [0xff, 0xc8], 8: [0x48, 0xff, 0xc8] },
};

/** The model's RAX and RFLAGS after `op` with RAX = a, RCX = b, RFLAGS = `before`. */
function expected(
  op: string,
  size: number,
  a: bigint,
  b: bigint,
  before: number,
): [bigint, number] {
  const bits = BigInt(8 * size);
  const old = size === 8 ? a : (FILL & ~((1n << bits) - 1n)) | a;
  switch (op) {
    case "cmp":
      return [old, (before & ~ARITH) | subModel(a, b, bits)[1]];
    case "test": {
      const r = a & b;
      return [old, (before & ~ARITH) | resultFlags(r, bits)];
    }
    case "xor": {
      const r = a ^ b;
      return [merge(old, r, size), (before & ~ARITH) | resultFlags(r, bits)];
    }
    case "inc": {
      const [r, flags] = addModel(a, 1n, bits);
      return [merge(old, r, size), (before & CF) | (before & ~ARITH) | (flags & ~CF)];
    }
    default: {
      const [r, flags] = subModel(a, 1n, bits);
      return [merge(old, r, size), (before & CF) | (before & ~ARITH) | (flags & ~CF)];
    }
  }
}

// --- CMP, TEST, XOR, INC, DEC: register forms against the model -----------------------------

for (const op of ["cmp", "test", "xor", "inc", "dec"]) {
  Deno.test(`Interpreter.step() ${op} sets RAX and RFLAGS as the SDM model for every size and edge value`, () => {
    const { f, it } = machine([]);
    let cases = 0;
    for (const size of SIZES) {
      const bits = BigInt(8 * size);
      const code = ENCODINGS[op]![size]!;
      load(f, code);
      for (const a of edgeValues(bits)) {
        for (const b of edgeValues(bits)) {
          for (const before of [0x2, 0x2 | ARITH]) {
            const rax = size === 8 ? a : (FILL & ~((1n << bits) - 1n)) | a;
            const rcx = size === 8 ? b : (FILL & ~((1n << bits) - 1n)) | b;
            set64(it, RAX, rax);
            set64(it, RCX, rcx);
            it.rflags = before;
            it.rip = CODE;
            assert.equal(it.step(), STEP_OK);
            const [raxAfter, flags] = expected(op, size, a, b, before);
            const label = `${op} size ${size} a 0x${a.toString(16)} b 0x${b.toString(16)} ` +
              `flags 0x${before.toString(16)}`;
            assert.equal(get64(it, RAX).toString(16), raxAfter.toString(16), label);
            assert.equal(get64(it, RCX), rcx, label);
            assert.equal(it.rflags.toString(16), flags.toString(16), label);
            assert.equal(it.rip, CODE + code.length, label);
            cases++;
          }
        }
      }
    }
    assert.equal(cases, 4 * 5 * 5 * 2);
    assert.equal(f.stats.get("cpu.instructions"), cases);
  });
}

// Hand-checked rows that anchor the model (SDM Vol. 1 3.4.3.1).
const anchorCases: [string, number[], bigint, bigint, number, bigint, number][] = [
  // name, code, rax, rcx, rflags before, rax after, rflags after
  ["cmp eax, ecx: 0 - 1 borrows", [0x39, 0xc8], 0n, 1n, 0x2, 0n, 0x2 | CF | PF | AF | SF],
  ["cmp eax, ecx: equal", [0x39, 0xc8], 5n, 5n, 0x2 | CF, 5n, 0x2 | ZF | PF],
  [
    "cmp eax, ecx: 0x80000000 - 1 overflows",
    [0x39, 0xc8],
    0x8000_0000n,
    1n,
    0x2,
    0x8000_0000n,
    0x2 | OF | AF | PF,
  ],
  ["cmp al, cl: 0x7f - 0xff", [0x38, 0xc8], 0x7fn, 0xffn, 0x2, 0x7fn, 0x2 | CF | OF | SF],
  [
    "test eax, ecx: no common bit",
    [0x85, 0xc8],
    0xf0n,
    0x0fn,
    0x2 | CF | OF | AF,
    0xf0n,
    0x2 | ZF | PF,
  ],
  [
    "xor eax, eax clears RAX, bits 63:32 too",
    [0x31, 0xc0],
    0xffff_ffff_ffff_ffffn,
    0n,
    0x2 | CF,
    0n,
    0x2 | ZF | PF,
  ],
  [
    "xor rax, rcx",
    [0x48, 0x31, 0xc8],
    0xff00n,
    0x8000_0000_0000_ff00n,
    0x2,
    0x8000_0000_0000_0000n,
    0x2 | SF | PF,
  ],
  [
    "inc eax: 0x7fffffff overflows, keeps CF",
    [0xff, 0xc0],
    0x7fff_ffffn,
    0n,
    0x2 | CF,
    0x8000_0000n,
    0x2 | CF | OF | SF | AF | PF,
  ],
  [
    "inc eax: 0xffffffff wraps to 0, CF stays clear",
    [0xff, 0xc0],
    0xffff_ffffn,
    0n,
    0x2,
    0n,
    0x2 | ZF | AF | PF,
  ],
  [
    "dec rax: 0 wraps to all ones, keeps CF",
    [0x48, 0xff, 0xc8],
    0n,
    0n,
    0x2 | CF,
    0xffff_ffff_ffff_ffffn,
    0x2 | CF | SF | AF | PF,
  ],
  ["dec ecx via ff c9: 1 to 0", [0xff, 0xc9], 0n, 1n, 0x2, 0n, 0x2 | ZF | PF],
];
for (const [name, code, rax, rcx, before, raxAfter, after] of anchorCases) {
  Deno.test(`Interpreter.step() ${name}`, () => {
    const { it } = machine(code);
    set64(it, RAX, rax);
    set64(it, RCX, rcx);
    it.rflags = before;
    assert.equal(it.step(), STEP_OK);
    assert.equal(get64(it, RAX).toString(16), raxAfter.toString(16));
    assert.equal(it.rflags.toString(16), after.toString(16));
  });
}
Deno.test("Interpreter.step() dec ecx (ff c9) writes RCX, not RAX", () => {
  const { it } = machine([0xff, 0xc9]);
  set64(it, RCX, 1n);
  set64(it, RAX, 7n);
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([get64(it, RCX), get64(it, RAX)], [0n, 7n]);
});

// --- Accumulator, immediate and byte forms ------------------------------------------------------

const immediateCases: [string, number[], bigint, bigint, number][] = [
  // name, code, rax before, rax after, rflags after (before: 0x2)
  ["cmp al, 0x7f (3C)", [0x3c, 0x7f], 0x1_0000_0080n, 0x1_0000_0080n, 0x2 | OF | AF],
  ["cmp eax, 0x1000 (3D)", [0x3d, 0x00, 0x10, 0, 0], 0x1000n, 0x1000n, 0x2 | ZF | PF],
  [
    "cmp rax, -1 (48 3D, imm32 sign-extended)",
    [0x48, 0x3d, 0xff, 0xff, 0xff, 0xff],
    0xffff_ffff_ffff_ffffn,
    0xffff_ffff_ffff_ffffn,
    0x2 | ZF | PF,
  ],
  [
    "cmp rax, 0x80000000 sign-extended (48 81 /7)",
    [0x48, 0x81, 0xf8, 0, 0, 0, 0x80],
    0n,
    0n,
    0x2 | CF | PF,
  ],
  ["cmp eax, -1 (83 /7 ib)", [0x83, 0xf8, 0xff], 0xffff_ffffn, 0xffff_ffffn, 0x2 | ZF | PF],
  ["cmp al, 0 (80 /7)", [0x80, 0xf8, 0x00], 0x80n, 0x80n, 0x2 | SF],
  [
    "xor al, 0xff (34) keeps bits 63:8",
    [0x34, 0xff],
    0x1234_5678_9abc_de0fn,
    0x1234_5678_9abc_def0n,
    0x2 | SF | PF,
  ],
  [
    "xor eax, imm32 (35) zero-extends",
    [0x35, 0x78, 0x56, 0x34, 0x12],
    0xffff_ffff_0000_0000n,
    0x1234_5678n,
    0x2 | PF,
  ],
  [
    "xor rax, imm32 sign-extended (48 35)",
    [0x48, 0x35, 0, 0, 0, 0x80],
    0n,
    0xffff_ffff_8000_0000n,
    0x2 | SF | PF,
  ],
  [
    "xor ax, imm16 (66 35)",
    [0x66, 0x35, 0xff, 0xff],
    0x1_0000_00ffn,
    0x1_0000_ff00n,
    0x2 | SF | PF,
  ],
  ["xor eax, 1 (83 /6)", [0x83, 0xf0, 0x01], 1n, 0n, 0x2 | ZF | PF],
  ["xor al, 0x80 (80 /6)", [0x80, 0xf0, 0x80], 0x80n, 0n, 0x2 | ZF | PF],
  ["test al, 0x80 (A8)", [0xa8, 0x80], 0x180n, 0x180n, 0x2 | SF],
  ["test eax, 0x200 (A9)", [0xa9, 0x00, 0x02, 0, 0], 0x1_0000_0000n, 0x1_0000_0000n, 0x2 | ZF | PF],
  [
    "test rax, -1 (48 A9)",
    [0x48, 0xa9, 0xff, 0xff, 0xff, 0xff],
    0x8000_0000_0000_0000n,
    0x8000_0000_0000_0000n,
    0x2 | SF | PF,
  ],
  ["test ah, 0x80 (F6 /0)", [0xf6, 0xc4, 0x80], 0x8000n, 0x8000n, 0x2 | SF],
  [
    "test eax, imm32 (F7 /0)",
    [0xf7, 0xc0, 0, 0, 0, 0x80],
    0x8000_0001n,
    0x8000_0001n,
    0x2 | SF | PF,
  ],
  ["add al, 0x7f (04)", [0x04, 0x7f], 0x1n, 0x80n, 0x2 | OF | SF | AF],
  ["or eax, 0x100 (0D)", [0x0d, 0x00, 0x01, 0, 0], 0xffff_ffff_0000_0001n, 0x101n, 0x2],
  ["and al, 0xf0 (24)", [0x24, 0xf0], 0x3cn, 0x30n, 0x2 | PF],
  ["sub eax, 1 (2D)", [0x2d, 1, 0, 0, 0], 0n, 0xffff_ffffn, 0x2 | CF | SF | AF | PF],
  ["sub al, 1 (2C)", [0x2c, 1], 0x100n, 0x1ffn, 0x2 | CF | SF | AF | PF],
  ["add al, 0xff (80 /0)", [0x80, 0xc0, 0xff], 0x1n, 0x0n, 0x2 | CF | ZF | AF | PF],
];
for (const [name, code, rax, raxAfter, after] of immediateCases) {
  Deno.test(`Interpreter.step() ${name}`, () => {
    const { f, it } = machine(code);
    set64(it, RAX, rax);
    assert.equal(it.step(), STEP_OK);
    assert.equal(get64(it, RAX).toString(16), raxAfter.toString(16));
    assert.equal(it.rflags.toString(16), after.toString(16));
    assert.equal(it.rip, CODE + code.length);
    assert.equal(f.stats.get("cpu.read") + f.stats.get("cpu.write"), 0);
  });
}

Deno.test("Interpreter.step() cmp and test on a read-only page read it and write nothing", () => {
  const code = [
    [0x39, 0x07], // cmp [rdi], eax
    [0x48, 0x85, 0x07], // test [rdi], rax
    [0x80, 0x3f, 0x2a], // cmp byte [rdi], 0x2a
    [0xf6, 0x07, 0x01], // test byte [rdi], 1
    [0x3b, 0x07], // cmp eax, [rdi]
  ].flat();
  const { f, it } = machine(code);
  f.memory.write32(READ_ONLY_FRAME, 0x2a);
  set64(it, RDI, BigInt(READ_ONLY));
  set64(it, RAX, 0x2an);
  const flags: number[] = [];
  for (let i = 0; i < 5; i++) {
    assert.equal(it.step(), STEP_OK);
    flags.push(it.rflags);
  }
  assert.deepEqual(flags, [0x2 | ZF | PF, 0x2, 0x2 | ZF | PF, 0x2 | ZF | PF, 0x2 | ZF | PF]);
  assert.deepEqual(counters(f, ["cpu.read", "cpu.write", "cpu.instructions"]), {
    "cpu.read": 5,
    "cpu.write": 0,
    "cpu.instructions": 5,
  });
  assert.equal(get64(it, RAX), 0x2an);
});

Deno.test("Interpreter.step() xor/inc/dec with memory operands read and write through the vCPU", () => {
  const code = [
    [0x31, 0x07], // xor [rdi], eax
    [0xf0, 0x48, 0x31, 0x47, 0x08], // lock xor [rdi+8], rax
    [0x80, 0x77, 0x10, 0xff], // xor byte [rdi+0x10], 0xff
    [0xfe, 0x47, 0x18], // inc byte [rdi+0x18]
    [0x48, 0xff, 0x4f, 0x20], // dec qword [rdi+0x20]
    [0x33, 0x47, 0x28], // xor eax, [rdi+0x28]
  ].flat();
  const { f, it } = machine(code);
  f.memory.write32(DATA_FRAME, 0xffff_0000);
  write64(f, DATA_FRAME + 8, 0x1234_5678_9abc_def0n);
  f.memory.write32(DATA_FRAME + 0x10, 0x1234_560f);
  f.memory.write32(DATA_FRAME + 0x18, 0xaaaa_aaff);
  write64(f, DATA_FRAME + 0x20, 0n);
  f.memory.write32(DATA_FRAME + 0x28, 0xffff_ffff);
  set64(it, RDI, BigInt(DATA));
  set64(it, RAX, 0xffff_ffff_0000_ffffn);
  it.rflags = 0x2 | CF;
  for (let i = 0; i < 6; i++) assert.equal(it.step(), STEP_OK, `instruction ${i}`);
  assert.equal(f.memory.read32(DATA_FRAME).toString(16), "ffffffff");
  assert.equal(read64(f, DATA_FRAME + 8).toString(16), "edcba9879abc210f");
  assert.equal(f.memory.read32(DATA_FRAME + 0x10).toString(16), "123456f0");
  assert.equal(
    f.memory.read32(DATA_FRAME + 0x18).toString(16),
    "aaaaaa00",
    "inc carries out of the byte only",
  );
  assert.equal(read64(f, DATA_FRAME + 0x20), 0xffff_ffff_ffff_ffffn);
  assert.equal(get64(it, RAX).toString(16), "ffff0000"); // 0x0000ffff ^ 0xffffffff, zero-extended
  assert.equal(it.rflags, 0x2 | SF | PF, "the last xor clears CF");
  assert.deepEqual(counters(f, ["cpu.read", "cpu.write"]), { "cpu.read": 6, "cpu.write": 5 });
});

Deno.test("Interpreter.step() inc [mem] on a read-only page is a #PF write with nothing changed", () => {
  const { f, it } = machine([0xff, 0x07]); // inc dword [rdi]
  set64(it, RDI, BigInt(READ_ONLY));
  f.memory.write32(READ_ONLY_FRAME, 41);
  it.rflags = 0x2 | CF;
  assert.equal(it.step(), STEP_FAULT);
  assert.equal(f.cpu.exception.vector, VECTOR_PF);
  assert.equal(f.cpu.exception.errorCode & PFEC_WRITE, PFEC_WRITE);
  assert.deepEqual([it.rip, it.rflags, f.memory.read32(READ_ONLY_FRAME)], [CODE, 0x2 | CF, 41]);
});

// --- Jcc -----------------------------------------------------------------------------------------

const CONDITION_NAMES = "o no b ae e ne be a s ns p np l ge le g".split(" ");

/** The SDM's Jcc table (Vol. 2 Jcc; Vol. 1 Table B-1), written out as booleans. */
function isTaken(cc: number, flags: number): boolean {
  const cf = (flags & CF) !== 0, pf = (flags & PF) !== 0, zf = (flags & ZF) !== 0;
  const sf = (flags & SF) !== 0, of = (flags & OF) !== 0;
  return [
    of,
    !of,
    cf,
    !cf,
    zf,
    !zf,
    cf || zf,
    !cf && !zf,
    sf,
    !sf,
    pf,
    !pf,
    sf !== of,
    sf === of,
    zf || sf !== of,
    !zf && sf === of,
  ][cc]!;
}

/** Every combination of CF, PF, ZF, SF, OF (with AF set in half, which no Jcc reads). */
const FLAG_COMBINATIONS = Array.from({ length: 64 }, (_, i) => {
  const bits = [CF, PF, ZF, SF, OF, AF];
  return bits.reduce((flags, bit, k) => ((i >> k) & 1 ? flags | bit : flags), 0x2);
});

for (let cc = 0; cc < 16; cc++) {
  Deno.test(`Interpreter.step() j${CONDITION_NAMES[cc]} (rel8 and rel32) against every flag combination`, () => {
    const short = [0x70 + cc, 0x10];
    const near = [0x0f, 0x80 + cc, 0x00, 0x01, 0x00, 0x00];
    const { f, it } = machine([]);
    let taken = 0;
    for (const code of [short, near]) {
      load(f, code);
      const displacement = code.length === 2 ? 0x10 : 0x100;
      for (const flags of FLAG_COMBINATIONS) {
        it.rip = CODE;
        it.rflags = flags;
        assert.equal(it.step(), STEP_OK);
        const isJump = isTaken(cc, flags);
        if (isJump) taken++;
        const next = CODE + code.length;
        assert.equal(it.rip, isJump ? next + displacement : next, `flags 0x${flags.toString(16)}`);
        assert.equal(it.rflags, flags);
      }
    }
    assert.ok(taken > 0 && taken < 128, "both outcomes occur");
    assert.equal(f.stats.get("cpu.instructions"), 128, "taken or not, one instruction each");
  });
}

Deno.test("Interpreter.step() Jcc backwards, and a taken Jcc to a non-canonical target is #GP(0)", () => {
  const { f, it } = machine([0x90, 0x90, 0x74, 0xfc]); // nop; nop; je $-2 (to CODE)
  it.rip = CODE + 2;
  it.rflags = 0x2 | ZF;
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.rip, CODE);
  // jne rel32 +0x7fffffff from the last page of the lower half.
  load(f, [0x0f, 0x85, 0xff, 0xff, 0xff, 0x7f], TOP_FRAME);
  it.rip = TOP;
  it.rflags = 0x2;
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual(exceptionOf(f), [VECTOR_GP, 0]);
  assert.equal(it.rip, TOP);
  it.rflags = 0x2 | ZF; // not taken: the target is never checked
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.rip, TOP + 6);
});

// --- MOVZX and MOV --------------------------------------------------------------------------------

const movzxCases: [string, number[], bigint, bigint][] = [
  // name, code, rax before, rax after (RBX = 0x8180, [rdi] = 0xfedc_ba98)
  ["movzx eax, byte [rdi]", [0x0f, 0xb6, 0x07], 0xffff_ffff_ffff_ffffn, 0x98n],
  ["movzx rax, word [rdi]", [0x48, 0x0f, 0xb7, 0x07], 0xffff_ffff_ffff_ffffn, 0xba98n],
  ["movzx eax, bh", [0x0f, 0xb6, 0xc7], 0xffff_ffff_ffff_ffffn, 0x81n],
  ["movzx eax, bl", [0x0f, 0xb6, 0xc3], 0xffff_ffff_ffff_ffffn, 0x80n],
  [
    "movzx ax, bl keeps bits 63:16",
    [0x66, 0x0f, 0xb6, 0xc3],
    0xffff_ffff_ffff_ffffn,
    0xffff_ffff_ffff_0080n,
  ],
  ["movzx eax, bx", [0x0f, 0xb7, 0xc3], 0xffff_ffff_ffff_ffffn, 0x8180n],
];
for (const [name, code, rax, raxAfter] of movzxCases) {
  Deno.test(`Interpreter.step() ${name}`, () => {
    const { f, it } = machine(code);
    f.memory.write32(DATA_FRAME, 0xfedc_ba98);
    set64(it, RDI, BigInt(DATA));
    set64(it, RBX, 0x8180n);
    set64(it, RAX, rax);
    it.rflags = 0x2 | CF | ZF;
    assert.equal(it.step(), STEP_OK);
    assert.equal(get64(it, RAX).toString(16), raxAfter.toString(16));
    assert.equal(it.rflags, 0x2 | CF | ZF, "MOVZX changes no flag");
  });
}

Deno.test("Interpreter.step() movzx r15d, byte [rdi] after `in al, dx` (a driver's read)", () => {
  const code = [0xec, 0x88, 0x07, 0x44, 0x0f, 0xb6, 0x3f]; // in al, dx; mov [rdi], al; movzx r15d, [rdi]
  const { f, it } = machine(code);
  it.systemInstructions = true;
  it.ports = { read: (port, size) => (port === 0x3f8 && size === 1 ? 0xc3 : 0), write: () => {} };
  set64(it, RDX, 0x3f8n);
  set64(it, RDI, BigInt(DATA));
  set64(it, R15, -1n);
  for (let i = 0; i < 3; i++) assert.equal(it.step(), STEP_OK);
  assert.equal(get64(it, R15), 0xc3n);
  assert.equal(f.memory.read8(DATA_FRAME), 0xc3);
});

Deno.test("Interpreter.step() mov r64, imm64; mov r32, imm32 zero-extends; mov byte [rax], imm8; mov rdi, rsp", () => {
  const code = [
    [0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11], // mov rax, 0x1122334455667788
    [0xb9, 0xff, 0xff, 0xff, 0xff], // mov ecx, 0xffffffff
    [0x49, 0xbe, 0, 0, 0, 0x80, 0xff, 0xff, 0xff, 0xff], // mov r14, 0xffffffff80000000
    [0x48, 0xc7, 0xc2, 0xfe, 0xff, 0xff, 0xff], // mov rdx, -2 (C7 /0, imm32 sign-extended)
    [0x48, 0x89, 0xe7], // mov rdi, rsp
    [0x48, 0x89, 0xd8], // mov rax, rbx
    [0xc6, 0x00, 0x2a], // mov byte [rax], 0x2a
  ].flat();
  const { f, it } = machine(code);
  set64(it, RCX, -1n);
  set64(it, RBX, BigInt(DATA + 3));
  f.memory.write32(DATA_FRAME, 0xffff_ffff);
  for (let i = 0; i < 7; i++) assert.equal(it.step(), STEP_OK);
  assert.equal(get64(it, RCX), 0xffff_ffffn);
  assert.equal(get64(it, R14), 0xffff_ffff_8000_0000n);
  assert.equal(get64(it, RDX), 0xffff_ffff_ffff_fffen);
  assert.equal(get64(it, RDI), BigInt(STACK + 0x800));
  assert.equal(f.memory.read32(DATA_FRAME).toString(16), "2affffff");
  assert.equal(it.rip, CODE + code.length);
  const first = machine(code.slice(0, 10));
  assert.equal(first.it.step(), STEP_OK);
  assert.equal(get64(first.it, RAX), 0x1122_3344_5566_7788n);
});

// --- PUSH / POP ------------------------------------------------------------------------------

/** The qword at user-stack linear address `va`. */
function stackQword(f: VcpuFixture, va: number): bigint {
  return read64(f, STACK_FRAME + (va - STACK));
}

Deno.test("Interpreter.step() push rax; push r15; pop rbx; pop r14 round trip", () => {
  const { f, it } = machine([0x50, 0x41, 0x57, 0x5b, 0x41, 0x5e]);
  set64(it, RAX, 0x1122_3344_5566_7788n);
  set64(it, R15, 0xffff_ffff_8000_0000n);
  it.rflags = 0x2 | CF;
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.step(), STEP_OK);
  assert.equal(get64(it, RSP), BigInt(STACK + 0x7f0));
  assert.deepEqual([stackQword(f, STACK + 0x7f8), stackQword(f, STACK + 0x7f0)], [
    0x1122_3344_5566_7788n,
    0xffff_ffff_8000_0000n,
  ]);
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([get64(it, RBX), get64(it, R14), get64(it, RSP)], [
    0xffff_ffff_8000_0000n,
    0x1122_3344_5566_7788n,
    BigInt(STACK + 0x800),
  ]);
  assert.deepEqual([it.rip, it.rflags], [CODE + 6, 0x2 | CF]);
  assert.deepEqual(counters(f, ["cpu.read", "cpu.write", "cpu.instructions"]), {
    "cpu.read": 2,
    "cpu.write": 2,
    "cpu.instructions": 4,
  });
});

const pushCases: [string, number[], bigint][] = [
  // name, code, the qword pushed (RSP = STACK + 0x800, [rdi] = 0x8877665544332211)
  ["push 0x1 (6A)", [0x6a, 0x01], 1n],
  ["push -1 (6A, sign-extended)", [0x6a, 0xff], 0xffff_ffff_ffff_ffffn],
  ["push 0x12345678 (68)", [0x68, 0x78, 0x56, 0x34, 0x12], 0x1234_5678n],
  ["push 0x80000000 (68, sign-extended)", [0x68, 0, 0, 0, 0x80], 0xffff_ffff_8000_0000n],
  ["push [rdi] (FF /6)", [0xff, 0x37], 0x8877_6655_4433_2211n],
  ["push [rsp] (addressed with the old RSP)", [0xff, 0x34, 0x24], 0xaaaa_bbbb_cccc_ddddn],
  ["push rsp (the old RSP)", [0x54], BigInt(STACK + 0x800)],
  ["push rax (FF /6, register)", [0xff, 0xf0], 0x0102_0304_0506_0708n],
];
for (const [name, code, pushed] of pushCases) {
  Deno.test(`Interpreter.step() ${name}`, () => {
    const { f, it } = machine(code);
    f.memory.write32(DATA_FRAME, 0x4433_2211);
    f.memory.write32(DATA_FRAME + 4, 0x8877_6655);
    write64(f, STACK_FRAME + 0x800, 0xaaaa_bbbb_cccc_ddddn);
    set64(it, RDI, BigInt(DATA));
    set64(it, RAX, 0x0102_0304_0506_0708n);
    assert.equal(it.step(), STEP_OK);
    assert.equal(stackQword(f, STACK + 0x7f8).toString(16), pushed.toString(16));
    assert.deepEqual([get64(it, RSP), it.rip], [BigInt(STACK + 0x7f8), CODE + code.length]);
  });
}

Deno.test("Interpreter.step() pop rsp loads the popped value (the increment is lost)", () => {
  const { f, it } = machine([0x5c]);
  write64(f, STACK_FRAME + 0x800, 0x1234_5678n);
  assert.equal(it.step(), STEP_OK);
  assert.equal(get64(it, RSP), 0x1234_5678n);
});

Deno.test("Interpreter.step() pop [rdi] and pop [rsp] (addressed with the incremented RSP)", () => {
  const { f, it } = machine([0x8f, 0x07, 0x8f, 0x04, 0x24]);
  write64(f, STACK_FRAME + 0x800, 0x1111n);
  write64(f, STACK_FRAME + 0x808, 0x2222n);
  write64(f, STACK_FRAME + 0x810, 0x3333n);
  set64(it, RDI, BigInt(DATA + 8));
  assert.equal(it.step(), STEP_OK);
  assert.equal(read64(f, DATA_FRAME + 8), 0x1111n);
  assert.equal(it.step(), STEP_OK); // pops 0x2222, stores it at the new RSP (STACK + 0x810)
  assert.equal(get64(it, RSP), BigInt(STACK + 0x810));
  assert.deepEqual([stackQword(f, STACK + 0x808), stackQword(f, STACK + 0x810)], [
    0x2222n,
    0x2222n,
  ]);
});

Deno.test("Interpreter.step() pop [mem] to a read-only page faults with RSP unchanged", () => {
  const { f, it } = machine([0x8f, 0x07]);
  set64(it, RDI, BigInt(READ_ONLY));
  const before = allRegs(it);
  assert.equal(it.step(), STEP_FAULT);
  assert.equal(f.cpu.exception.vector, VECTOR_PF);
  assert.deepEqual([allRegs(it), it.rip], [before, CODE]);
  set64(it, RDI, NON_CANONICAL);
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual(exceptionOf(f), [VECTOR_GP, 0]);
  assert.deepEqual([allRegs(it).slice(0, 5), get64(it, RSP)], [
    before.slice(0, 5),
    BigInt(STACK + 0x800),
  ]);
});

const stackFaultCases: [string, number[], bigint, number][] = [
  // name, code, RSP, vector (error code 0 for #SS)
  ["push rax onto an unmapped page", [0x50], BigInt(UNMAPPED + 8), VECTOR_PF],
  ["push 1 onto an unmapped page", [0x6a, 0x01], BigInt(UNMAPPED + 8), VECTOR_PF],
  ["push rax onto a read-only page", [0x50], BigInt(READ_ONLY + 8), VECTOR_PF],
  ["pop rax from an unmapped page", [0x58], BigInt(UNMAPPED), VECTOR_PF],
  ["push rax with RSP - 8 non-canonical", [0x50], NON_CANONICAL + 8n, VECTOR_SS],
  ["pop rax with a non-canonical RSP", [0x58], NON_CANONICAL, VECTOR_SS],
  ["push [rdi] with RSP - 8 non-canonical", [0xff, 0x37], NON_CANONICAL + 8n, VECTOR_SS],
];
for (const [name, code, rsp, vector] of stackFaultCases) {
  Deno.test(`Interpreter.step() ${name} faults with RSP and everything unchanged`, () => {
    const { f, it } = machine(code);
    set64(it, RSP, rsp);
    set64(it, RDI, BigInt(DATA));
    const before = allRegs(it);
    assert.equal(it.step(), STEP_FAULT);
    assert.equal(f.cpu.exception.vector, vector);
    if (vector === VECTOR_SS) assert.equal(f.cpu.exception.errorCode, 0);
    assert.deepEqual([allRegs(it), it.rip, it.rflags], [before, CODE, 0x2]);
    assert.equal(f.stats.get("cpu.instructions"), 0);
    if (vector === VECTOR_SS) assert.equal(f.stats.get("cpu.ss"), 1);
  });
}

Deno.test("Interpreter.step() push and pop at CPL 3 use user accesses (a supervisor stack #PFs with U=1)", () => {
  const { f, it } = machine([0x50]);
  f.ctl.cpl = 3;
  it.setReg(RSP, KSTACK + 0x800);
  assert.equal(it.step(), STEP_FAULT);
  assert.equal(f.cpu.exception.errorCode & (PFEC_USER | PFEC_WRITE), PFEC_USER | PFEC_WRITE);
  assert.equal(get64(it, RSP), BigInt(KSTACK + 0x800));
});

for (
  const [name, code] of [["push ax (66 50)", [0x66, 0x50]], ["pop ax (66 58)", [0x66, 0x58]], [
    "push imm16 (66 68)",
    [0x66, 0x68, 0x34, 0x12],
  ]] as const
) {
  Deno.test(`Interpreter.step() ${name} is STEP_UNSUPPORTED with nothing executed`, () => {
    const { f, it } = machine(code);
    const before = allRegs(it);
    assert.equal(it.step(), STEP_UNSUPPORTED);
    assert.deepEqual([allRegs(it), it.rip, it.decoded.length], [before, CODE, code.length]);
    assert.equal(f.stats.get("cpu.write") + f.stats.get("cpu.read"), 0);
  });
}

// --- Whole programs in guest mode ------------------------------------------------------------

const LOOP5 = [
  [0xb9, 0x05, 0x00, 0x00, 0x00], // mov ecx, 5
  [0x83, 0xc0, 0x02], // l: add eax, 2
  [0xff, 0xc9], // dec ecx
  [0x75, 0xf9], // jnz l
  [0xcc], // int3
].flat();

Deno.test("runGuest() runs a user loop at CPL 3 to its INT3 and the kernel's #BP handler", () => {
  const { f, it } = machine(LOOP5, [0xf4]); // the handler: hlt
  it.systemInstructions = true;
  setGate(f, VECTOR_BP, KCODE);
  f.ctl.cpl = 3;
  it.rflags = 0x2 | IF;
  assert.equal(it.runGuest(), STEP_HALT);
  assert.deepEqual([get64(it, RAX), get64(it, RCX)], [10n, 0n]);
  assert.deepEqual([it.rip, f.ctl.cpl, get64(it, RSP)], [KCODE + 1, 0, BigInt(RSP0 - 40)]);
  assert.equal(read64(f, KSTACK_FRAME + 0x1000 - 40), BigInt(CODE + LOOP5.length)); // after int3
  assert.deepEqual(counters(f, ["cpu.instructions", "cpu.softwareInterrupts", "cpu.fetch"]), {
    "cpu.instructions": 1 + 3 * 5 + 1 + 1,
    "cpu.softwareInterrupts": 1,
    "cpu.fetch": 1 + 3 * 5 + 1 + 1,
  });
  assert.equal(it.deliveries[VECTOR_BP], 1);
});

// sum 1..10 through a helper that reads its argument from the stack (assembled with GNU as).
const SUM = [
  [0x31, 0xc0], // xor eax, eax
  [0xb9, 0x0a, 0x00, 0x00, 0x00], // mov ecx, 10
  [0x51], // l: push rcx
  [0xe8, 0x0c, 0x00, 0x00, 0x00], // call add_it
  [0x59], // pop rcx
  [0xff, 0xc9], // dec ecx
  [0x75, 0xf5], // jnz l
  [0x83, 0xf8, 0x37], // cmp eax, 55
  [0x74, 0x01], // je ok
  [0xf4], // hlt (a #GP at CPL 3)
  [0xcc], // ok: int3
  [0x8b, 0x54, 0x24, 0x08], // add_it: mov edx, [rsp+8]
  [0x01, 0xd0], // add eax, edx
  [0xc3], // ret
].flat();

Deno.test("runGuest() runs a user program with PUSH, CALL, RET, POP, CMP and Jcc", () => {
  const { f, it } = machine(SUM, [0xf4]);
  it.systemInstructions = true;
  setGate(f, VECTOR_BP, KCODE);
  f.ctl.cpl = 3;
  assert.equal(it.runGuest(), STEP_HALT);
  assert.deepEqual([get64(it, RAX), get64(it, RCX), get64(it, RDX)], [55n, 0n, 1n]);
  assert.equal(read64(f, KSTACK_FRAME + 0x1000 - 40), BigInt(CODE + SUM.length - 7)); // after int3
  assert.equal(
    read64(f, KSTACK_FRAME + 0x1000 - 16),
    BigInt(STACK + 0x800),
    "the user RSP, balanced",
  );
  assert.deepEqual(counters(f, ["cpu.instructions", "cpu.write", "cpu.read"]), {
    "cpu.instructions": 2 + 10 * 8 + 3 + 1,
    "cpu.write": 10 * 2 + 5, // push, call; the #BP frame
    "cpu.read": 10 * 3 + 2, // mov, ret, pop; the gate
  });
});

Deno.test("runGuest() pops RET's return address with no CALL; run() returns STEP_RETURN instead", () => {
  const { f, it } = machine([0xc3, 0xf4]); // ret; hlt
  write64(f, STACK_FRAME + 0x800, BigInt(CODE + 1));
  assert.equal(it.guestMode, false);
  assert.equal(it.runGuest(), STEP_HALT);
  assert.equal(it.guestMode, true);
  assert.deepEqual([it.rip, get64(it, RSP)], [CODE + 2, BigInt(STACK + 0x808)]);
  assert.equal(f.stats.get("cpu.instructions"), 2);
  it.setReg(RSP, STACK + 0x800);
  it.rip = CODE;
  assert.equal(it.resume(), STEP_HALT, "resume() keeps guest mode");
  it.setReg(RSP, STACK + 0x800);
  assert.equal(it.run(CODE), STEP_RETURN);
  assert.equal(it.guestMode, false);
  assert.deepEqual([it.rip, get64(it, RSP)], [CODE, BigInt(STACK + 0x800)]);
});

Deno.test("runGuest() RET from an unmapped stack faults with RSP and RIP unchanged", () => {
  const { f, it } = machine([0xc3]);
  it.setReg(RSP, UNMAPPED);
  assert.equal(it.runGuest(), STEP_FAULT);
  assert.equal(f.cpu.exception.vector, VECTOR_PF);
  assert.deepEqual([it.rip, get64(it, RSP)], [CODE, BigInt(UNMAPPED)]);
});

// --- The host-service gate and contexts ------------------------------------------------------

// Kernel code at KCODE: `call SERVICE + 0x30; mov ebx, eax; hlt`; a routine at KCODE + 0x40
// that the host runs meanwhile: `mov eax, 7; push rax; pop rdx; ret`.
const STUB = [0xe8, ...rel32(KCODE + 5, SERVICE + 0x30), 0x89, 0xc3, 0xf4];
const ROUTINE = KCODE + 0x40;
const ROUTINE_CODE = [0xb8, 7, 0, 0, 0, 0x50, 0x5a, 0xc3];

function serviceMachine(): Machine {
  const kernel = [...STUB, ...new Array(0x40 - STUB.length).fill(0xcc), ...ROUTINE_CODE];
  const m = machine([], kernel);
  m.it.systemInstructions = true;
  m.it.serviceBase = SERVICE;
  m.it.serviceLimit = PAGE_SIZE;
  m.it.rip = KCODE;
  m.it.setReg(RSP, RSP0 - 0x100);
  return m;
}

Deno.test("a call into the service page stops with STEP_SERVICE; the host runs a routine, edits RAX and returns", () => {
  const { f, it } = serviceMachine();
  assert.equal(it.runGuest(), STEP_SERVICE);
  assert.deepEqual([it.rip, it.serviceNumber, get64(it, RSP)], [
    SERVICE + 0x30,
    3,
    BigInt(RSP0 - 0x108),
  ]);
  assert.equal(read64(f, KSTACK_FRAME + 0xef8), BigInt(KCODE + 5), "the return address");
  assert.deepEqual(counters(f, ["cpu.instructions", "cpu.fetch"]), {
    "cpu.instructions": 1,
    "cpu.fetch": 1,
  });
  assert.equal(it.step(), STEP_SERVICE, "stays there until the host returns");

  const saved = new InterpreterContext();
  it.saveContext(saved);
  assert.equal(it.run(ROUTINE), STEP_RETURN); // clobbers RAX, RDX, RIP and the mode
  assert.deepEqual([get64(it, RAX), get64(it, RDX), it.guestMode], [7n, 7n, false]);
  saved.regs[2 * RAX] = 42; // the service's result
  it.restoreContext(saved);
  assert.deepEqual([it.rip, get64(it, RAX), get64(it, RDX), it.guestMode], [
    SERVICE + 0x30,
    42n,
    0n,
    true,
  ]);

  assert.equal(it.returnFromService(), STEP_OK);
  assert.deepEqual([it.rip, get64(it, RSP)], [KCODE + 5, BigInt(RSP0 - 0x100)]);
  assert.equal(it.runGuest(), STEP_HALT);
  assert.equal(get64(it, RBX), 42n);
  assert.equal(f.stats.get("cpu.instructions"), 1 + 3 + 1 + 2); // call, routine, the return, mov + hlt
});

Deno.test("the service number is floor((RIP - serviceBase) / 16); the range ends at serviceLimit", () => {
  const { f, it } = serviceMachine();
  it.serviceLimit = 0x100;
  for (const [offset, number] of [[0, 0], [0xf, 0], [0x10, 1], [0x3f, 3], [0xff, 15]]) {
    it.rip = SERVICE + offset!;
    assert.equal(it.step(), STEP_SERVICE);
    assert.equal(it.serviceNumber, number);
  }
  it.rip = SERVICE + 0x100; // past the range: fetched, and the page is not mapped
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual([f.cpu.exception.vector, f.cpu.exception.cr2], [VECTOR_PF, SERVICE + 0x100]);
  it.serviceBase = -1; // no range
  it.rip = SERVICE;
  assert.equal(it.step(), STEP_FAULT);
  assert.equal(f.stats.get("cpu.instructions"), 0);
});

Deno.test("the service gate needs systemInstructions; without it the page is fetched", () => {
  const { f, it } = serviceMachine();
  it.systemInstructions = false;
  it.rip = SERVICE;
  assert.equal(it.step(), STEP_FAULT);
  assert.equal(f.cpu.exception.vector, VECTOR_PF);
});

Deno.test("a pending interrupt is delivered before the service gate", () => {
  const { f, it } = serviceMachine();
  setGate(f, 0x20, KCODE + 0x80);
  it.rflags = 0x2 | IF;
  it.rip = SERVICE + 0x10;
  it.raiseInterrupt(0x20);
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.rip, KCODE + 0x80);
  assert.equal(
    read64(f, KSTACK_FRAME + 0x1000 - 0x100 - 40),
    BigInt(SERVICE + 0x10),
    "the pushed RIP",
  );
  it.rip = SERVICE + 0x10;
  assert.equal(it.step(), STEP_SERVICE, "IF is now 0");
});

Deno.test("returnFromService() to another thread's stack (a context switch) lands at its return address", () => {
  const { f, it } = serviceMachine();
  assert.equal(it.runGuest(), STEP_SERVICE);
  const saved = new InterpreterContext();
  it.saveContext(saved);
  write64(f, KSTACK_FRAME + 0x400, BigInt(KCODE + 7)); // the other thread's frame: at hlt
  saved.regs[2 * RSP] = KSTACK + 0x400;
  saved.regs[2 * RSP + 1] = 0;
  it.restoreContext(saved);
  assert.equal(it.returnFromService(), STEP_OK);
  assert.deepEqual([it.rip, get64(it, RSP)], [KCODE + 7, BigInt(KSTACK + 0x408)]);
});

const returnFaultCases: [string, bigint, bigint, [number, number]][] = [
  // name, RSP, the qword at RSP, fault
  ["an unmapped stack", BigInt(UNMAPPED), 0n, [VECTOR_PF, 0]],
  ["a non-canonical RSP", NON_CANONICAL, 0n, [VECTOR_SS, 0]],
  ["a non-canonical return address", BigInt(KSTACK + 0x400), NON_CANONICAL, [VECTOR_GP, 0]],
];
for (const [name, rsp, target, fault] of returnFaultCases) {
  Deno.test(`returnFromService() with ${name} faults with nothing changed`, () => {
    const { f, it } = serviceMachine();
    assert.equal(it.runGuest(), STEP_SERVICE);
    write64(f, KSTACK_FRAME + 0x400, target);
    set64(it, RSP, rsp);
    const before = allRegs(it);
    assert.equal(it.returnFromService(), STEP_FAULT);
    assert.deepEqual(exceptionOf(f), fault);
    assert.deepEqual([allRegs(it), it.rip], [before, SERVICE + 0x30]);
    assert.equal(f.stats.get("cpu.instructions"), 1);
  });
}

Deno.test("returnFromService() in routine mode closes the frame the stub's call opened", () => {
  const { it } = serviceMachine();
  assert.equal(it.run(KCODE), STEP_SERVICE);
  assert.equal(it.returnFromService(), STEP_OK);
  // Depth back to 0: a RET now returns to TypeScript instead of popping.
  const saved = new InterpreterContext();
  it.saveContext(saved);
  assert.deepEqual([saved.callDepth, saved.guestMode], [0, false]);
});

Deno.test("saveContext() / restoreContext() round-trip every field", () => {
  const { f, it } = machine([0xfb]); // sti
  it.systemInstructions = true;
  for (let r = 0; r < 16; r++) it.setReg(r, 0x1000 * r + 1, 0x10 * r);
  it.fsBase = 0x7f00_0000_0000;
  it.gsBase = 0xffff_8000_1000; // 48-bit linear: 0xffffffff80001000
  f.ctl.cpl = 2;
  it.rflags = 0x2 | CF | IOPL3;
  assert.equal(it.runGuest(1), STEP_LIMIT); // after the STI: IF set, the shadow on
  const saved = new InterpreterContext();
  it.saveContext(saved);
  assert.deepEqual(
    [saved.rip, saved.rflags, saved.fsBase, saved.gsBase, saved.cpl],
    [CODE + 1, 0x2 | CF | IOPL3 | IF, 0x7f00_0000_0000, 0xffff_8000_1000, 2],
  );
  assert.deepEqual([saved.callDepth, saved.guestMode, saved.interruptShadow], [0, true, true]);
  assert.deepEqual([...saved.regs], [...it.regs]);

  // Clobber everything, restore, save again: the same context.
  it.regs.fill(0xdead);
  Object.assign(it, { rip: KCODE, rflags: 0x2, fsBase: 0, gsBase: 0 });
  f.ctl.cpl = 0;
  assert.equal(it.run(KCODE, 0), STEP_LIMIT); // routine mode
  it.restoreContext(saved);
  const again = new InterpreterContext();
  it.saveContext(again);
  assert.deepEqual({ ...again, regs: [...again.regs] }, { ...saved, regs: [...saved.regs] });
  assert.equal(f.ctl.cpl, 2);

  // The restored shadow holds off a pending interrupt for one instruction.
  setGate(f, 0x20, KCODE);
  load(f, [0x90, 0x90], CODE_FRAME + 1);
  it.raiseInterrupt(0x20);
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.rip, CODE + 2, "the nop ran");
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.rip, KCODE, "then the interrupt");
});

Deno.test("restoreContext() restores a CALL depth and syncs AC to the paging control", () => {
  const { f, it } = machine([0xc3, 0xf4]);
  write64(f, STACK_FRAME + 0x800, BigInt(CODE + 1));
  const context = new InterpreterContext();
  it.saveContext(context);
  context.callDepth = 1;
  context.rflags = 0x2 | RFLAGS_AC;
  it.restoreContext(context);
  assert.equal(f.ctl.rflags & RFLAGS_AC, RFLAGS_AC);
  assert.equal(it.resume(), STEP_HALT, "routine mode, depth 1: RET pops");
  context.rflags = 0x2;
  it.restoreContext(context);
  assert.equal(f.ctl.rflags & RFLAGS_AC, 0);
});

Deno.test("restoreContext() rejects a bad RIP or CPL with a RangeError and changes nothing", () => {
  const { f, it } = machine([]);
  const context = new InterpreterContext();
  it.saveContext(context);
  context.regs[0] = 99;
  context.cpl = 4;
  assert.throws(() => it.restoreContext(context), RangeError);
  context.cpl = 0;
  context.rip = 2 ** 48;
  assert.throws(() => it.restoreContext(context), RangeError);
  assert.deepEqual([it.regLo(RAX), it.rip, f.ctl.cpl], [0, CODE, 0]);
});

// --- Rings 1 and 2 -----------------------------------------------------------------------------

for (const cpl of [0, 1, 2, 3]) {
  const cs = cpl === 3 ? USER_CS : KERNEL_CS | cpl;
  const ss = cpl === 3 ? USER_SS : KERNEL_SS | cpl;
  Deno.test(`deliverEvent() from CPL ${cpl} pushes CS 0x${cs.toString(16)} and SS 0x${ss.toString(16)}; IRETQ returns to CPL ${cpl}`, () => {
    const { f, it } = machine([], [0x48, 0xcf]); // the handler: iretq
    it.systemInstructions = true;
    setGate(f, 0x20, KCODE);
    f.ctl.cpl = cpl;
    const stack = cpl === 0 ? KSTACK + 0x800 : STACK + 0x800;
    it.setReg(RSP, stack);
    it.rip = CODE + 0x10;
    it.rflags = 0x2 | IF;
    assert.equal(it.deliverEvent(0x20, -1, false), STEP_OK);
    const top = cpl === 0 ? KSTACK + 0x800 : RSP0; // a privilege change switches to RSP0
    const frame = [0, 1, 2, 3, 4].map((k) => read64(f, KSTACK_FRAME + (top - KSTACK) - 40 + 8 * k));
    assert.deepEqual(frame, [
      BigInt(CODE + 0x10),
      BigInt(cs),
      BigInt(0x2 | IF),
      BigInt(stack),
      BigInt(ss),
    ]);
    assert.deepEqual([f.ctl.cpl, it.rflags], [0, 0x2]);
    assert.equal(it.step(), STEP_OK);
    assert.deepEqual([f.ctl.cpl, it.rip, get64(it, RSP), it.rflags], [
      cpl,
      CODE + 0x10,
      BigInt(stack),
      0x2 | IF,
    ]);
  });
}

/** IRETQ at CPL 1 from the kernel stack with `frame` (RIP, CS, RFLAGS, RSP, SS). */
function iretAtCpl1(frame: readonly bigint[], rflags: number): Machine {
  const m = machine([], [0x48, 0xcf]);
  frame.forEach((v, k) => write64(m.f, KSTACK_FRAME + 0x800 + 8 * k, v));
  m.it.systemInstructions = true;
  m.f.ctl.cpl = 1;
  m.it.rip = KCODE;
  m.it.setReg(RSP, KSTACK + 0x800);
  m.it.rflags = rflags;
  return m;
}

Deno.test("IRETQ from CPL 1 to a CS with RPL 3 goes to CPL 3 without loading IF or IOPL (CPL 1 > IOPL 0)", () => {
  const frame = [
    BigInt(CODE),
    BigInt(USER_CS),
    BigInt(0x2 | IF | IOPL3 | CF),
    BigInt(STACK + 0x800),
    BigInt(USER_SS),
  ];
  const { f, it } = iretAtCpl1(frame, 0x2);
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([f.ctl.cpl, it.rip, get64(it, RSP), it.rflags], [
    3,
    CODE,
    BigInt(STACK + 0x800),
    0x2 | CF,
  ]);
  const other = iretAtCpl1(frame.map((v, k) => (k === 2 ? 0x2n : v)), 0x2 | IF);
  assert.equal(other.it.step(), STEP_OK);
  assert.equal(other.it.rflags, 0x2 | IF, "IF = 1 stays");
});

Deno.test("IRETQ from CPL 1 with IOPL 1 loads IF but not IOPL", () => {
  const frame = [
    BigInt(CODE),
    BigInt(USER_CS),
    BigInt(0x2 | IF | IOPL3),
    BigInt(STACK),
    BigInt(USER_SS),
  ];
  const { it } = iretAtCpl1(frame, 0x2 | IOPL1);
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.rflags, 0x2 | IF | IOPL1);
});

Deno.test("IRETQ from CPL 1 to CPL 0 (CS.RPL < CPL) is #GP(CS) with nothing changed", () => {
  const frame = [BigInt(KCODE), BigInt(KERNEL_CS), 0x2n, BigInt(KSTACK), BigInt(KERNEL_SS)];
  const { f, it } = iretAtCpl1(frame, 0x2);
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual(exceptionOf(f), [VECTOR_GP, KERNEL_CS]);
  assert.deepEqual([f.ctl.cpl, it.rip, get64(it, RSP)], [1, KCODE, BigInt(KSTACK + 0x800)]);
});

const ring1FlagCases: [string, number, number, number][] = [
  // name, rflags before, popped image, rflags after
  ["IOPL 0 keeps IF = 0 when popping IF = 1", 0x2, 0x2 | IF | CF, 0x2 | CF],
  ["IOPL 0 keeps IF = 1 when popping IF = 0", 0x2 | IF, 0x2, 0x2 | IF],
  ["IOPL 1 loads IF, keeps IOPL", 0x2 | IOPL1, 0x2 | IF | IOPL3, 0x2 | IF | IOPL1],
];
for (const [name, before, image, after] of ring1FlagCases) {
  Deno.test(`POPFQ at CPL 1, ${name}`, () => {
    const { f, it } = machine([], [0x9d]);
    it.systemInstructions = true;
    f.ctl.cpl = 1;
    it.rip = KCODE;
    it.setReg(RSP, KSTACK + 0x800);
    it.rflags = before;
    write64(f, KSTACK_FRAME + 0x800, BigInt(image));
    assert.equal(it.step(), STEP_OK);
    assert.equal(it.rflags.toString(16), after.toString(16));
    assert.equal(get64(it, RSP), BigInt(KSTACK + 0x808));
  });
}

Deno.test("PUSHFQ at CPL 1 shows the real IF (and IOPL)", () => {
  const { f, it } = machine([], [0x9c, 0x9c]);
  it.systemInstructions = true;
  f.ctl.cpl = 1;
  it.rip = KCODE;
  it.setReg(RSP, KSTACK + 0x800);
  it.rflags = 0x2 | IF;
  assert.equal(it.step(), STEP_OK);
  it.rflags = 0x2;
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([read64(f, KSTACK_FRAME + 0x7f8), read64(f, KSTACK_FRAME + 0x7f0)], [
    BigInt(0x2 | IF),
    0x2n,
  ]);
});
