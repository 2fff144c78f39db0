/**
 * The interpreter against the Intel SDM Vol. 2 instruction pages (MOV, XCHG, CMPXCHG,
 * CMPXCHG8B/16B, ADD/OR/AND/SUB, BTS/BTR, STOS/MOVS with REP, MOV CRn, INVLPG, INVPCID,
 * CALL/RET) and Vol. 3A 6.9 / 4.7 for fetch faults, running real instruction bytes from a
 * kernel text page through the vCPU.
 *
 * Layout of every test's address space (tests/x86/_vcpu_fixture.ts): code at CODE
 * (supervisor, read-only, executable), two writable data pages at DATA, a stack page;
 * DATA + 0x2000 is left unmapped so string instructions can run into it.
 */

import assert from "node:assert/strict";
import { PAGE_SIZE, UPPER_HALF_START } from "../../lib/x86/address.ts";
import {
  OP_IN,
  OP_INT,
  OP_INT3,
  OP_IRET,
  OP_LGDT,
  OP_MOV_TO_CR,
  OP_MOVS,
  OP_PUSHF,
  OP_STOS,
  OP_SYSCALL,
  OP_WBINVD,
} from "../../lib/x86/decode.ts";
import {
  Interpreter,
  STEP_FAULT,
  STEP_HALT,
  STEP_INTERCEPT,
  STEP_LIMIT,
  STEP_OK,
  STEP_RETURN,
  STEP_UNSUPPORTED,
  VECTOR_SS,
} from "../../lib/x86/interpreter.ts";
import {
  CR0_PE,
  CR4_PAE,
  CR4_PCIDE,
  CR4_PGE,
  EFER_LMA,
  EFER_LME,
  EFER_NXE,
  type PagingControlInit,
  PFEC_FETCH,
  PFEC_PRESENT,
  PFEC_USER,
  PFEC_WRITE,
} from "../../lib/x86/paging_control.ts";
import { Prng } from "../../lib/x86/prng.ts";
import { PTE_PRESENT, PTE_USER, PTE_WRITABLE } from "../../lib/x86/pte.ts";
import type { Stats } from "../../lib/x86/stats.ts";
import { VECTOR_GP, VECTOR_PF, VECTOR_UD } from "../../lib/x86/vcpu.ts";
import { buildVcpuFixture, PML4_ADDRESS, type VcpuFixture } from "./_vcpu_fixture.ts";

const P = PTE_PRESENT;
const RW = PTE_PRESENT | PTE_WRITABLE;
const URW = PTE_PRESENT | PTE_WRITABLE | PTE_USER;

const CODE = 0x40_0000;
const CODE_FRAME = 0x20_0000;
const DATA = 0x60_0000; // two writable pages; DATA + 0x2000 is not mapped
const DATA_FRAME = 0x30_0000;
const READ_ONLY = 0x68_0000; // a read-only data page
const READ_ONLY_FRAME = 0x34_0000;
const STACK = 0x70_0000;
const STACK_FRAME = 0x38_0000;
const SPARE_FRAME = 0x3c_0000;

const RAX = 0, RCX = 1, RDX = 2, RBX = 3, RSP = 4, RSI = 6, RDI = 7, R8 = 8;

// RFLAGS bits.
const CF = 0x1, PF = 0x4, AF = 0x10, ZF = 0x40, SF = 0x80, IF = 0x200, DF = 0x400, OF = 0x800;

const PCIDE_CR4 = CR4_PAE | CR4_PGE | CR4_PCIDE;
const NON_CANONICAL = 0x0000_8000_0000_0000n;

interface Setup {
  ctl?: PagingControlInit;
  tlbEnabled?: boolean;
  /** Leaf flags of the code page; default P (supervisor, read-only). */
  codeFlags?: number;
  codeXd?: boolean;
}

interface Machine {
  f: VcpuFixture;
  it: Interpreter;
}

/** An address space with `code` at CODE and an interpreter there, RSP at the stack top. */
function machine(code: readonly number[], setup: Setup = {}): Machine {
  const options: { ctl?: PagingControlInit; tlbEnabled?: boolean } = {};
  if (setup.ctl !== undefined) options.ctl = setup.ctl;
  if (setup.tlbEnabled !== undefined) options.tlbEnabled = setup.tlbEnabled;
  const f = buildVcpuFixture(options);
  f.map(CODE, CODE_FRAME, setup.codeFlags ?? P, PAGE_SIZE, { xd: setup.codeXd ?? false });
  f.map(DATA, DATA_FRAME, URW);
  f.map(DATA + PAGE_SIZE, DATA_FRAME + PAGE_SIZE, URW);
  f.map(READ_ONLY, READ_ONLY_FRAME, P | PTE_USER);
  f.map(STACK, STACK_FRAME, URW);
  code.forEach((b, i) => f.memory.write8(CODE_FRAME + i, b));
  const it = new Interpreter(f.cpu);
  it.rip = CODE;
  set64(it, RSP, BigInt(STACK + PAGE_SIZE));
  return { f, it };
}

function set64(it: Interpreter, r: number, value: bigint): void {
  const v = BigInt.asUintN(64, value);
  it.setReg(r, Number(v & 0xffff_ffffn), Number(v >> 32n));
}

function get64(it: Interpreter, r: number): bigint {
  return (BigInt(it.regHi(r)) << 32n) | BigInt(it.regLo(r));
}

function write64(f: VcpuFixture, pa: number, value: bigint): void {
  const v = BigInt.asUintN(64, value);
  f.memory.write32(pa, Number(v & 0xffff_ffffn));
  f.memory.write32(pa + 4, Number(v >> 32n));
}

function read64(f: VcpuFixture, pa: number): bigint {
  return (BigInt(f.memory.read32(pa + 4)) << 32n) | BigInt(f.memory.read32(pa));
}

function counters(stats: Stats, names: readonly string[]): Record<string, number> {
  return Object.fromEntries(names.map((n) => [n, stats.get(n)]));
}

function exceptionOf(f: VcpuFixture): { vector: number; errorCode: number; cr2: number } {
  const e = f.cpu.exception;
  return { vector: e.vector, errorCode: e.errorCode, cr2: e.cr2 };
}

/** The 16 registers as bigints, for before/after comparisons. */
function allRegs(it: Interpreter): bigint[] {
  return Array.from({ length: 16 }, (_, r) => get64(it, r));
}

const RET = 0xc3;

// --- The kernel's page-table routines ---------------------------------------------------

interface RoutineCase {
  name: string;
  code: number[];
  regs: Record<number, bigint>;
  /** Qword at DATA before the run. */
  before: bigint;
  after: bigint;
  /** Registers after the run (only those listed). */
  regsAfter: Record<number, bigint>;
  rflags: number;
  reads: number;
  writes: number;
}

const PTE = 0x8000_0000_1234_5007n; // XD | frame 0x12345 | U | W | P
const routines: RoutineCase[] = [
  {
    name: "mov [rdi], rsi",
    code: [0x48, 0x89, 0x37],
    regs: { [RSI]: PTE },
    before: 0n,
    after: PTE,
    regsAfter: { [RSI]: PTE },
    rflags: 0x2,
    reads: 0,
    writes: 1,
  },
  {
    name: "mov rax, [rdi]",
    code: [0x48, 0x8b, 0x07],
    regs: { [RAX]: -1n },
    before: PTE,
    after: PTE,
    regsAfter: { [RAX]: PTE },
    rflags: 0x2,
    reads: 1,
    writes: 0,
  },
  {
    name: "xchg [rdi], rsi (old value ends in rsi)",
    code: [0x48, 0x87, 0x37],
    regs: { [RSI]: PTE },
    before: 0x1111_2007n,
    after: PTE,
    regsAfter: { [RSI]: 0x1111_2007n },
    rflags: 0x2,
    reads: 1,
    writes: 1,
  },
  {
    name: "lock cmpxchg [rdi], rsi that matches",
    code: [0xf0, 0x48, 0x0f, 0xb1, 0x37],
    regs: { [RAX]: 0x1111_2007n, [RSI]: PTE },
    before: 0x1111_2007n,
    after: PTE,
    regsAfter: { [RAX]: 0x1111_2007n, [RSI]: PTE },
    rflags: 0x2 | ZF | PF,
    reads: 1,
    writes: 1,
  },
  {
    name: "lock cmpxchg [rdi], rsi that does not match (old value written back)",
    code: [0xf0, 0x48, 0x0f, 0xb1, 0x37],
    regs: { [RAX]: 0x9999n, [RSI]: PTE },
    before: 0x1111n,
    after: 0x1111n,
    regsAfter: { [RAX]: 0x1111n, [RSI]: PTE },
    rflags: 0x2 | PF, // 0x9999 - 0x1111 = 0x8888: no borrow, even parity
    reads: 1,
    writes: 1,
  },
  {
    name: "lock or [rdi], rsi",
    code: [0xf0, 0x48, 0x09, 0x37],
    regs: { [RSI]: 0x63n },
    before: 0x1234_5000n,
    after: 0x1234_5063n,
    regsAfter: {},
    rflags: 0x2 | PF,
    reads: 1,
    writes: 1,
  },
  {
    name: "lock and [rdi], rsi (clear R/W)",
    code: [0xf0, 0x48, 0x21, 0x37],
    regs: { [RSI]: ~0x2n },
    before: PTE,
    after: PTE & ~0x2n,
    regsAfter: {},
    rflags: 0x2 | SF | PF, // result 0x...5005: SF from bit 63, low byte 0x05 even
    reads: 1,
    writes: 1,
  },
  {
    name: "lock bts qword [rdi], 1 on a clear bit",
    code: [0xf0, 0x48, 0x0f, 0xba, 0x2f, 0x01],
    regs: {},
    before: 0x5001n,
    after: 0x5003n,
    regsAfter: {},
    rflags: 0x2,
    reads: 1,
    writes: 1,
  },
  {
    name: "lock bts qword [rdi], 1 on a set bit",
    code: [0xf0, 0x48, 0x0f, 0xba, 0x2f, 0x01],
    regs: {},
    before: 0x5003n,
    after: 0x5003n,
    regsAfter: {},
    rflags: 0x2 | CF,
    reads: 1,
    writes: 1,
  },
  {
    name: "lock btr qword [rdi], 1",
    code: [0xf0, 0x48, 0x0f, 0xba, 0x37, 0x01],
    regs: {},
    before: 0x8000_0000_0000_5003n,
    after: 0x8000_0000_0000_5001n,
    regsAfter: {},
    rflags: 0x2 | CF,
    reads: 1,
    writes: 1,
  },
];

for (const c of routines) {
  Deno.test(`Interpreter.run() executes the routine "${c.name}; ret"`, () => {
    const { f, it } = machine([...c.code, RET]);
    write64(f, DATA_FRAME + 0x18, c.before);
    set64(it, RDI, BigInt(DATA + 0x18));
    for (const [r, v] of Object.entries(c.regs)) set64(it, Number(r), v);
    assert.equal(it.run(CODE), STEP_RETURN);
    assert.equal(it.rip, CODE + c.code.length, "RIP is left at the RET");
    assert.equal(read64(f, DATA_FRAME + 0x18), c.after);
    for (const [r, v] of Object.entries(c.regsAfter)) {
      assert.equal(get64(it, Number(r)), BigInt.asUintN(64, v), `register ${r}`);
    }
    assert.equal(get64(it, RDI), BigInt(DATA + 0x18));
    assert.equal(it.rflags, c.rflags);
    assert.deepEqual(
      counters(f.stats, ["cpu.instructions", "cpu.fetch", "cpu.read", "cpu.write", "cpu.pf"]),
      {
        "cpu.instructions": 1,
        "cpu.fetch": 2,
        "cpu.read": c.reads,
        "cpu.write": c.writes,
        "cpu.pf": 0,
      },
    );
  });
}

Deno.test("Interpreter.run() clears a page with mov ecx, 512; mov eax, 0; rep stosq", () => {
  const code = [0xb9, 0x00, 0x02, 0x00, 0x00, 0xb8, 0x00, 0x00, 0x00, 0x00, 0xf3, 0x48, 0xab];
  const { f, it } = machine([...code, RET]);
  for (let i = 0; i < 1024; i++) f.memory.write32(DATA_FRAME + 4 * i, 0xdead_0000 + i);
  f.memory.write32(DATA_FRAME + PAGE_SIZE, 0x1234_5678); // the next page is not touched
  set64(it, RAX, -1n);
  set64(it, RCX, 0xffff_ffff_0000_0000n);
  set64(it, RDI, BigInt(DATA));
  assert.equal(it.run(CODE), STEP_RETURN);
  for (let i = 0; i < 1024; i++) assert.equal(f.memory.read32(DATA_FRAME + 4 * i), 0, `word ${i}`);
  assert.equal(f.memory.read32(DATA_FRAME + PAGE_SIZE), 0x1234_5678);
  assert.deepEqual([get64(it, RAX), get64(it, RCX), get64(it, RDI)], [
    0n,
    0n,
    BigInt(DATA + PAGE_SIZE),
  ]);
  assert.deepEqual(
    counters(f.stats, [
      "cpu.instructions",
      "cpu.fetch",
      "cpu.write",
      "walk.count",
      "tlb.miss",
      "tlb.hit",
    ]),
    {
      "cpu.instructions": 3,
      "cpu.fetch": 4,
      "cpu.write": 512,
      "walk.count": 2, // the code page and the data page, once each
      "tlb.miss": 2,
      "tlb.hit": 3 + 511,
    },
  );
});

Deno.test("Interpreter.step() rep stosq into a not-present page faults with the progress in RCX/RDI, and resumes", () => {
  const { f, it } = machine([0xf3, 0x48, 0xab, RET]);
  set64(it, RAX, 0x5555_6666_7777_8888n);
  set64(it, RCX, 512n);
  set64(it, RDI, BigInt(DATA + PAGE_SIZE + 0x800)); // 256 qwords left in the mapped page
  assert.equal(it.run(CODE), STEP_FAULT);
  assert.equal(it.rip, CODE);
  assert.deepEqual(exceptionOf(f), {
    vector: VECTOR_PF,
    errorCode: PFEC_WRITE,
    cr2: DATA + 0x2000,
  });
  assert.deepEqual([get64(it, RCX), get64(it, RDI)], [256n, BigInt(DATA + 0x2000)]);
  assert.equal(read64(f, DATA_FRAME + PAGE_SIZE + 0xff8), 0x5555_6666_7777_8888n);
  assert.deepEqual(counters(f.stats, ["cpu.instructions", "cpu.write", "cpu.pf"]), {
    "cpu.instructions": 0,
    "cpu.write": 257,
    "cpu.pf": 1,
  });

  f.map(DATA + 0x2000, SPARE_FRAME, RW); // the guest's fault handler maps the page
  assert.equal(it.resume(), STEP_RETURN);
  assert.deepEqual([get64(it, RCX), get64(it, RDI)], [0n, BigInt(DATA + 0x2800)]);
  for (let i = 0; i < 256; i++) {
    assert.equal(read64(f, SPARE_FRAME + 8 * i), 0x5555_6666_7777_8888n, `qword ${i}`);
  }
  assert.equal(read64(f, SPARE_FRAME + 0x800), 0n);
  assert.deepEqual(counters(f.stats, ["cpu.instructions", "cpu.write"]), {
    "cpu.instructions": 1,
    "cpu.write": 513,
  });
});

Deno.test("Interpreter.run() copies qwords with rep movsq, across a destination page boundary", () => {
  const { f, it } = machine([0xf3, 0x48, 0xa5, RET]);
  for (let i = 0; i < 64; i++) write64(f, DATA_FRAME + 0x100 + 8 * i, BigInt(i) << 40n | 0x7n);
  set64(it, RSI, BigInt(DATA + 0x100));
  set64(it, RDI, BigInt(DATA + 0xf00)); // 32 qwords in the first page, 32 in the second
  set64(it, RCX, 64n);
  assert.equal(it.run(CODE), STEP_RETURN);
  for (let i = 0; i < 64; i++) {
    assert.equal(read64(f, DATA_FRAME + 0xf00 + 8 * i), BigInt(i) << 40n | 0x7n, `qword ${i}`);
  }
  assert.deepEqual([get64(it, RCX), get64(it, RSI), get64(it, RDI)], [
    0n,
    BigInt(DATA + 0x300),
    BigInt(DATA + 0x1100),
  ]);
  assert.deepEqual(counters(f.stats, ["cpu.read", "cpu.write", "cpu.instructions"]), {
    "cpu.read": 64,
    "cpu.write": 64,
    "cpu.instructions": 1,
  });
});

Deno.test("Interpreter.step() string instructions without REP do one element; DF=1 goes down", () => {
  const { f, it } = machine([0xaa, 0x66, 0xab, 0xab, 0x48, 0xa5, 0xa4]);
  set64(it, RAX, 0x1122_3344_5566_7788n);
  set64(it, RCX, 7n);
  set64(it, RDI, BigInt(DATA + 0x100));
  set64(it, RSI, BigInt(DATA + 0x200));
  write64(f, DATA_FRAME + 0x200, 0xaaaa_bbbb_cccc_ddddn);
  assert.equal(it.step(), STEP_OK); // stosb
  assert.equal(it.step(), STEP_OK); // stosw
  assert.equal(it.step(), STEP_OK); // stosd
  assert.deepEqual(
    [f.memory.read8(DATA_FRAME + 0x100), f.memory.read16(DATA_FRAME + 0x101)],
    [0x88, 0x7788],
  );
  assert.equal(f.memory.read32(DATA_FRAME + 0x103), 0x5566_7788);
  assert.equal(get64(it, RDI), BigInt(DATA + 0x107));
  it.rflags |= DF;
  assert.equal(it.step(), STEP_OK); // movsq, down
  assert.equal(read64(f, DATA_FRAME + 0x107), 0xaaaa_bbbb_cccc_ddddn);
  assert.deepEqual([get64(it, RDI), get64(it, RSI)], [BigInt(DATA + 0xff), BigInt(DATA + 0x1f8)]);
  assert.equal(it.step(), STEP_OK); // movsb, down
  assert.deepEqual([get64(it, RDI), get64(it, RSI)], [BigInt(DATA + 0xfe), BigInt(DATA + 0x1f7)]);
  assert.equal(get64(it, RCX), 7n, "RCX is not a count without REP");
});

Deno.test("Interpreter.step() rep stos with RCX=0 does nothing; a 67 prefix counts in ECX and uses EDI", () => {
  const { f, it } = machine([0xf3, 0x48, 0xab, 0x67, 0xf3, 0xab]);
  set64(it, RCX, 0n);
  set64(it, RDI, BigInt(DATA));
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.rip, CODE + 3);
  assert.equal(f.stats.get("cpu.write"), 0);
  set64(it, RAX, 0xabcdn);
  set64(it, RCX, 0xffff_ffff_0000_0002n); // ECX = 2
  set64(it, RDI, 0xffff_ffff_0000_0000n | BigInt(DATA)); // EDI = DATA
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([f.memory.read32(DATA_FRAME), f.memory.read32(DATA_FRAME + 4)], [
    0xabcd,
    0xabcd,
  ]);
  assert.deepEqual([get64(it, RCX), get64(it, RDI)], [0n, BigInt(DATA + 8)]);
});

// --- Fast REP path against the element-by-element path ------------------------------------

interface StringCase {
  name: string;
  code: number[];
  /** What both paths return. */
  result: number;
  regs: Record<number, bigint>;
  rflags?: number;
  setup?: Setup;
}

const stringCases: StringCase[] = [
  {
    name: "rep stosq over a page",
    result: STEP_RETURN,
    code: [0xf3, 0x48, 0xab],
    regs: { [RDI]: BigInt(DATA), [RCX]: 512n, [RAX]: 7n },
  },
  {
    name: "rep stosq into the not-present page",
    result: STEP_FAULT,
    code: [0xf3, 0x48, 0xab],
    regs: { [RDI]: BigInt(DATA + 0x1f00), [RCX]: 100n, [RAX]: 7n },
  },
  {
    name: "rep stosq unaligned, across a page",
    result: STEP_RETURN,
    code: [0xf3, 0x48, 0xab],
    regs: { [RDI]: BigInt(DATA + 0xf03), [RCX]: 300n, [RAX]: -1n },
  },
  {
    name: "rep stosd down (DF=1)",
    result: STEP_RETURN,
    code: [0xf3, 0xab],
    regs: { [RDI]: BigInt(DATA + 0x1010), [RCX]: 1000n, [RAX]: 0x1234n },
    rflags: 0x2 | DF,
  },
  {
    name: "rep stosb, F2 prefix",
    result: STEP_FAULT,
    code: [0xf2, 0xaa],
    regs: { [RDI]: BigInt(DATA + 0xff0), [RCX]: 5000n, [RAX]: 0x5an },
  },
  {
    name: "rep movsq across both pages",
    result: STEP_RETURN,
    code: [0xf3, 0x48, 0xa5],
    regs: { [RSI]: BigInt(DATA + 0xe08), [RDI]: BigInt(DATA + 0x1800), [RCX]: 200n },
  },
  {
    name: "rep movsq with the source running into the not-present page",
    result: STEP_FAULT,
    code: [0xf3, 0x48, 0xa5],
    regs: { [RSI]: BigInt(DATA + 0x1f00), [RDI]: BigInt(DATA), [RCX]: 64n },
  },
  {
    name: "rep movsq overlapping (dst = src + 8)",
    result: STEP_RETURN,
    code: [0xf3, 0x48, 0xa5],
    regs: { [RSI]: BigInt(DATA + 0x10), [RDI]: BigInt(DATA + 0x18), [RCX]: 400n },
  },
  {
    name: "rep movsw down (DF=1)",
    result: STEP_FAULT,
    code: [0xf3, 0x66, 0xa5],
    regs: { [RSI]: BigInt(DATA + 0x1ffe), [RDI]: BigInt(DATA + 0x0ffe), [RCX]: 3000n },
    rflags: 0x2 | DF,
  },
  {
    name: "rep movsq from the read-only page into the code page (write faults)",
    result: STEP_FAULT,
    code: [0xf3, 0x48, 0xa5],
    regs: { [RSI]: BigInt(READ_ONLY), [RDI]: BigInt(CODE + 0x100), [RCX]: 8n },
  },
  {
    name: "rep stosq with the TLB off",
    result: STEP_RETURN,
    code: [0xf3, 0x48, 0xab],
    regs: { [RDI]: BigInt(DATA + 0x800), [RCX]: 400n, [RAX]: 3n },
    setup: { tlbEnabled: false },
  },
  {
    name: "rep movsq with paging off (physical addresses)",
    result: STEP_RETURN,
    code: [0xf3, 0x48, 0xa5],
    regs: { [RSI]: BigInt(DATA_FRAME), [RDI]: BigInt(DATA_FRAME + 0xc00), [RCX]: 600n },
    setup: { ctl: { cr0: CR0_PE, efer: 0, cr4: CR4_PAE } },
  },
];

for (const c of stringCases) {
  Deno.test(`Interpreter fast REP path matches element by element: ${c.name}`, () => {
    const results = [true, false].map((fast) => {
      const setup = c.setup ?? {};
      const paging = setup.ctl?.cr0 === undefined;
      const { f, it } = machine([...c.code, RET], setup);
      it.fastStrings = fast;
      for (let i = 0; i < 2048; i++) f.memory.write32(DATA_FRAME + 4 * i, 0x0101_0101 * (i & 0xff));
      for (let i = 0; i < 1024; i++) f.memory.write32(READ_ONLY_FRAME + 4 * i, 0xc0de_0000 + i);
      for (const [r, v] of Object.entries(c.regs)) set64(it, Number(r), v);
      it.rflags = c.rflags ?? 0x2;
      f.stats.reset();
      const result = it.run(paging ? CODE : CODE_FRAME);
      const stats = f.stats.snapshot();
      const words: number[] = [];
      for (let i = 0; i < 2048; i++) words.push(f.memory.read32(DATA_FRAME + 4 * i));
      return {
        result,
        rip: it.rip,
        regs: allRegs(it),
        rflags: it.rflags,
        exception: exceptionOf(f),
        stats,
        words,
        tlbEntries: f.cpu.tlb.validEntries(),
        data: [f.cpu.data, f.cpu.dataHi],
      };
    });
    assert.deepEqual(results[0], results[1]);
    assert.equal(results[0]!.result, c.result);
    assert.ok(results[0]!.stats["cpu.write"]! > 0);
  });
}

Deno.test("Interpreter fast REP path calls cpu.write for two elements per page, counting all", () => {
  for (const fast of [true, false]) {
    const { f, it } = machine([0xf3, 0x48, 0xab, RET]);
    it.fastStrings = fast;
    const write = f.cpu.write.bind(f.cpu);
    let calls = 0;
    f.cpu.write = (...args: Parameters<typeof write>) => {
      calls++;
      return write(...args);
    };
    set64(it, RDI, BigInt(DATA));
    set64(it, RCX, 1024n);
    assert.equal(it.run(CODE), STEP_RETURN);
    // The first element of a page walks; the second hits without a walk; the rest follow.
    assert.equal(calls, fast ? 4 : 1024);
    assert.deepEqual(counters(f.stats, ["cpu.write", "walk.count", "tlb.hit", "tlb.miss"]), {
      "cpu.write": 1024,
      "walk.count": 3, // code, DATA, DATA + 0x1000
      "tlb.hit": 1 + 1022,
      "tlb.miss": 3,
    });
  }
});

// --- Operand sizes and registers ---------------------------------------------------------

interface RegisterCase {
  name: string;
  code: number[];
  regs: Record<number, bigint>;
  memory?: bigint;
  expect: Record<number, bigint>;
  expectMemory?: bigint;
  rflags?: number;
}

const registerCases: RegisterCase[] = [
  {
    name: "mov eax, [rdi] zero-extends",
    code: [0x8b, 0x07],
    regs: { [RAX]: -1n },
    memory: 0x1_2345_6789n,
    expect: { [RAX]: 0x2345_6789n },
  },
  {
    name: "mov eax, esi zero-extends",
    code: [0x89, 0xf0],
    regs: { [RAX]: -1n, [RSI]: 0xaaaa_bbbb_cccc_ddddn },
    expect: { [RAX]: 0xcccc_ddddn },
  },
  {
    name: "mov ax, si keeps bits 63:16",
    code: [0x66, 0x89, 0xf0],
    regs: { [RAX]: 0x1111_1111_1111_1111n, [RSI]: 0x2222n },
    expect: { [RAX]: 0x1111_1111_1111_2222n },
  },
  {
    name: "mov eax, imm32 (B8) zero-extends",
    code: [0xb8, 0xff, 0xff, 0xff, 0xff],
    regs: { [RAX]: 0x1234_0000_0000_0000n },
    expect: { [RAX]: 0xffff_ffffn },
  },
  {
    name: "mov rax, imm32 (REX.W C7) sign-extends",
    code: [0x48, 0xc7, 0xc0, 0xff, 0xff, 0xff, 0xff],
    regs: {},
    expect: { [RAX]: 0xffff_ffff_ffff_ffffn },
  },
  {
    name: "mov r8, imm64 (REX.WB B8)",
    code: [0x49, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11],
    regs: {},
    expect: { [R8]: 0x1122_3344_5566_7788n },
  },
  {
    name: "mov qword [rdi], imm32 (C7) sign-extends",
    code: [0x48, 0xc7, 0x07, 0x00, 0x00, 0x00, 0x80],
    regs: {},
    memory: 0n,
    expect: {},
    expectMemory: 0xffff_ffff_8000_0000n,
  },
  {
    name: "mov byte [rdi], imm8 (C6) writes one byte",
    code: [0xc6, 0x07, 0xab],
    regs: {},
    memory: 0x1111_1111_1111_1111n,
    expect: {},
    expectMemory: 0x1111_1111_1111_11abn,
  },
  {
    name: "mov ah, bl writes bits 15:8 of rax",
    code: [0x88, 0xdc],
    regs: { [RAX]: 0x1111_1111_1111_1111n, [RBX]: 0xabn },
    expect: { [RAX]: 0x1111_1111_1111_ab11n },
  },
  {
    name: "mov spl, bl (REX) writes the low byte of rsp",
    code: [0x40, 0x88, 0xdc],
    regs: { [RSP]: 0x7000_1000n, [RBX]: 0xabn },
    expect: { [RSP]: 0x7000_10abn },
  },
  {
    name: "mov [rdi], bh stores bits 15:8 of rbx",
    code: [0x88, 0x3f],
    regs: { [RBX]: 0xcd00n },
    memory: 0x1111n,
    expect: {},
    expectMemory: 0x11cdn,
  },
  {
    name: "mov [rdi], dil (REX) stores the low byte of rdi",
    code: [0x40, 0x88, 0x3f],
    regs: {},
    memory: 0x1111n,
    expect: {},
    expectMemory: 0x1100n | BigInt((DATA + 0x18) & 0xff),
  },
  {
    name: "mov ch, [rdi] loads into bits 15:8 of rcx",
    code: [0x8a, 0x2f],
    regs: { [RCX]: 0xffff_ffff_ffff_ffffn },
    memory: 0x42n,
    expect: { [RCX]: 0xffff_ffff_ffff_42ffn },
  },
  {
    name: "xchg al, ah",
    code: [0x86, 0xe0],
    regs: { [RAX]: 0x1234n },
    expect: { [RAX]: 0x3412n },
  },
  {
    name: "xchg [rdi], esi zero-extends esi",
    code: [0x87, 0x37],
    regs: { [RSI]: 0xffff_ffff_0000_0001n },
    memory: 0x9999_9999_0000_0005n,
    expect: { [RSI]: 5n },
    expectMemory: 0x9999_9999_0000_0001n,
  },
  {
    name: "xchg rsi, r8 (registers)",
    code: [0x4c, 0x87, 0xc6],
    regs: { [RSI]: 1n, [R8]: 2n },
    expect: { [RSI]: 2n, [R8]: 1n },
  },
  {
    name: "cmpxchg ecx, esi that matches: ecx <- esi zero-extended, rax untouched",
    code: [0x0f, 0xb1, 0xf1],
    regs: { [RAX]: 0xaaaa_aaaa_0000_0002n, [RCX]: 0xffff_ffff_0000_0002n, [RSI]: 9n },
    expect: { [RAX]: 0xaaaa_aaaa_0000_0002n, [RCX]: 9n },
    rflags: 0x2 | ZF | PF,
  },
  {
    name: "cmpxchg ecx, esi that does not match: eax <- ecx zero-extended, rcx untouched",
    code: [0x0f, 0xb1, 0xf1],
    regs: { [RAX]: 0xaaaa_aaaa_0000_0001n, [RCX]: 0xffff_ffff_0000_0002n, [RSI]: 9n },
    expect: { [RAX]: 2n, [RCX]: 0xffff_ffff_0000_0002n },
    rflags: 0x2 | CF | SF | AF | PF, // 1 - 2 borrows
  },
  {
    name: "cmpxchg byte [rdi], bl compares with al",
    code: [0x0f, 0xb0, 0x1f],
    regs: { [RAX]: 0xff33n, [RBX]: 0x44n },
    memory: 0x1133n,
    expect: { [RAX]: 0xff33n },
    expectMemory: 0x1144n,
    rflags: 0x2 | ZF | PF,
  },
  {
    name: "cmpxchg8b [rdi] that matches stores ecx:ebx",
    code: [0x0f, 0xc7, 0x0f],
    regs: {
      [RAX]: 0xffff_0000_1111_1111n,
      [RDX]: 0xffff_0000_2222_2222n,
      [RBX]: 0x3333_3333n,
      [RCX]: 0x4444_4444n,
    },
    memory: 0x2222_2222_1111_1111n,
    expect: { [RAX]: 0xffff_0000_1111_1111n, [RDX]: 0xffff_0000_2222_2222n },
    expectMemory: 0x4444_4444_3333_3333n,
    rflags: 0x2 | ZF,
  },
  {
    name: "cmpxchg8b [rdi] that does not match loads edx:eax, zero-extended",
    code: [0x0f, 0xc7, 0x0f],
    regs: { [RAX]: 0xffff_0000_1111_1111n, [RDX]: 0xffff_0000_0000_0000n },
    memory: 0x2222_2222_1111_1111n,
    expect: { [RAX]: 0x1111_1111n, [RDX]: 0x2222_2222n },
    expectMemory: 0x2222_2222_1111_1111n,
    rflags: 0x2,
  },
];

for (const c of registerCases) {
  Deno.test(`Interpreter.step() ${c.name}`, () => {
    const { f, it } = machine(c.code);
    set64(it, RDI, BigInt(DATA + 0x18));
    if (c.memory !== undefined) write64(f, DATA_FRAME + 0x18, c.memory);
    for (const [r, v] of Object.entries(c.regs)) set64(it, Number(r), v);
    const before = allRegs(it);
    assert.equal(it.step(), STEP_OK);
    assert.equal(it.rip, CODE + c.code.length);
    const expected = before.slice();
    for (const [r, v] of Object.entries(c.expect)) expected[Number(r)] = BigInt.asUintN(64, v);
    assert.deepEqual(allRegs(it), expected);
    if (c.expectMemory !== undefined) assert.equal(read64(f, DATA_FRAME + 0x18), c.expectMemory);
    else if (c.memory !== undefined) assert.equal(read64(f, DATA_FRAME + 0x18), c.memory);
    assert.equal(it.rflags, c.rflags ?? 0x2);
  });
}

// --- Arithmetic flags --------------------------------------------------------------------

const ADD_RAX_RSI = [0x48, 0x01, 0xf0];
const SUB_RAX_RSI = [0x48, 0x29, 0xf0];
const arithmeticCases: [string, number[], bigint, bigint, bigint, number][] = [
  // name, code, rax, rsi, rax after, rflags after
  [
    "add rax, rsi signed overflow",
    ADD_RAX_RSI,
    0x7fff_ffff_ffff_ffffn,
    1n,
    1n << 63n,
    OF | SF | AF | PF,
  ],
  ["add rax, rsi carry to zero", ADD_RAX_RSI, -1n, 1n, 0n, CF | ZF | AF | PF],
  ["add rax, rsi carry between halves", ADD_RAX_RSI, 0xffff_ffffn, 1n, 1n << 32n, AF | PF],
  ["sub rax, rsi borrow", SUB_RAX_RSI, 0n, 1n, -1n, CF | SF | AF | PF],
  ["sub rax, rsi signed overflow", SUB_RAX_RSI, 1n << 63n, 1n, (1n << 63n) - 1n, OF | AF | PF],
  ["sub rax, rsi borrow between halves", SUB_RAX_RSI, 1n << 32n, 1n, 0xffff_ffffn, AF | PF],
  ["sub rax, rsi equal", SUB_RAX_RSI, 0x1234n, 0x1234n, 0n, ZF | PF],
  [
    "add eax, esi signed overflow",
    [0x01, 0xf0],
    0xffff_ffff_7fff_ffffn,
    1n,
    0x8000_0000n,
    OF | SF | AF | PF,
  ],
  [
    "sub eax, esi borrow",
    [0x29, 0xf0],
    0xffff_ffff_0000_0000n,
    1n,
    0xffff_ffffn,
    CF | SF | AF | PF,
  ],
  [
    "add ax, si carry keeps bits 63:16",
    [0x66, 0x01, 0xf0],
    0x5555_ffffn,
    1n,
    0x5555_0000n,
    CF | ZF | AF | PF,
  ],
  ["sub rax, -1 (83 /5 ib)", [0x48, 0x83, 0xe8, 0xff], 5n, 0n, 6n, CF | AF | PF],
  [
    "add rax, imm32 sign-extended (81 /0 id)",
    [0x48, 0x81, 0xc0, 0, 0, 0, 0x80],
    0x8000_0000n,
    0n,
    0n,
    CF | ZF | PF,
  ],
  ["or rax, rsi clears CF and OF", [0x48, 0x09, 0xf0], 0x80n, 0x1n, 0x81n, PF],
  [
    "and rax, imm8 -16 (83 /4 ib)",
    [0x48, 0x83, 0xe0, 0xf0],
    0x8000_0000_0000_00ffn,
    0n,
    0x8000_0000_0000_00f0n,
    SF | PF,
  ],
  ["and eax, esi to zero", [0x21, 0xf0], 0xff00_ff00n, 0x00ff_00ffn, 0n, ZF | PF],
];

for (const [name, code, rax, rsi, raxAfter, flags] of arithmeticCases) {
  Deno.test(`Interpreter.step() ${name} sets the flags`, () => {
    const { it } = machine(code);
    set64(it, RAX, rax);
    set64(it, RSI, rsi);
    it.rflags = 0x2 | CF | OF; // stale flags the instruction must overwrite
    assert.equal(it.step(), STEP_OK);
    assert.deepEqual([get64(it, RAX), get64(it, RSI)], [BigInt.asUintN(64, raxAfter), rsi]);
    assert.equal(it.rflags, 0x2 | flags);
  });
}

Deno.test("Interpreter.step() add rsi, rax (03: destination in ModRM.reg)", () => {
  const { it } = machine([0x48, 0x03, 0xf0]);
  set64(it, RAX, 2n);
  set64(it, RSI, 3n);
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([get64(it, RAX), get64(it, RSI)], [2n, 5n]);
  assert.equal(it.rflags, 0x2 | PF);
});

// --- BTS / BTR ------------------------------------------------------------------------------

const BTS_Q = [0x48, 0x0f, 0xab, 0x37];
const bitCases: [string, number[], bigint, number, bigint, bigint, boolean][] = [
  // name, code, bit offset in rsi, byte offset from rdi touched, qword there before, after, CF
  ["bts [rdi], rsi with offset 130: two qwords up", BTS_Q, 130n, 16, 0n, 0x4n, false],
  [
    "bts [rdi], rsi with offset -1: bit 63 of the qword below",
    BTS_Q,
    -1n,
    -8,
    0n,
    1n << 63n,
    false,
  ],
  ["bts dword [rdi], esi with offset 33", [0x0f, 0xab, 0x37], 33n, 4, 0n, 0x2n, false],
  [
    "bts dword [rdi], esi with offset -1 (0xffffffff)",
    [0x0f, 0xab, 0x37],
    0xffff_ffffn,
    -4,
    0n,
    0x8000_0000n,
    false,
  ],
  [
    "bts word [rdi], si with offset -1 (0xffff)",
    [0x66, 0x0f, 0xab, 0x37],
    0xffffn,
    -2,
    0n,
    0x8000n,
    false,
  ],
  ["btr [rdi], rsi with offset 64*3+5", [0x48, 0x0f, 0xb3, 0x37], 197n, 24, 0x21n, 0x1n, true],
  [
    "btr [rdi], rsi with offset -64: bit 0 of the qword below",
    [0x48, 0x0f, 0xb3, 0x37],
    -64n,
    -8,
    0x3n,
    0x2n,
    true,
  ],
];

for (const [name, code, offset, at, before, expected, cf] of bitCases) {
  Deno.test(`Interpreter.step() ${name}`, () => {
    const { f, it } = machine(code);
    write64(f, DATA_FRAME + 0x100 + at, before);
    set64(it, RDI, BigInt(DATA + 0x100));
    set64(it, RSI, offset);
    assert.equal(it.step(), STEP_OK);
    assert.equal(read64(f, DATA_FRAME + 0x100 + at), expected);
    assert.equal(f.memory.read16(DATA_FRAME + 0x100), 0, "the operand at rdi itself is not it");
    assert.equal(it.rflags, 0x2 | (cf ? CF : 0));
  });
}

Deno.test("Interpreter.step() bts/btr take an imm8 or register offset modulo the width", () => {
  const { f, it } = machine([
    0x48,
    0x0f,
    0xba,
    0x2f,
    0x41, // bts qword [rdi], 65 -> bit 1
    0x48,
    0x0f,
    0xab,
    0xf0, //       bts rax, rsi (rsi = 100 -> bit 36)
    0x0f,
    0xb3,
    0xf0, //             btr eax, esi (esi = 100 -> bit 4), zero-extends
  ]);
  set64(it, RDI, BigInt(DATA));
  set64(it, RSI, 100n);
  set64(it, RAX, 0x10n);
  assert.equal(it.step(), STEP_OK);
  assert.equal(read64(f, DATA_FRAME), 2n);
  assert.equal(it.step(), STEP_OK);
  assert.equal(get64(it, RAX), (1n << 36n) | 0x10n);
  assert.equal(it.rflags & CF, 0);
  assert.equal(it.step(), STEP_OK);
  assert.equal(get64(it, RAX), 0n);
  assert.equal(it.rflags & CF, CF);
});

Deno.test("Interpreter.step() cmpxchg16b compares rdx:rax and needs 16-byte alignment", () => {
  const { f, it } = machine([0x48, 0x0f, 0xc7, 0x0f, 0x48, 0x0f, 0xc7, 0x0f]);
  write64(f, DATA_FRAME + 0x20, 0x1111n);
  write64(f, DATA_FRAME + 0x28, 0x2222n);
  set64(it, RDI, BigInt(DATA + 0x20));
  set64(it, RAX, 0x1111n);
  set64(it, RDX, 0x2222n);
  set64(it, RBX, 0x3333n);
  set64(it, RCX, 0x4444n);
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([read64(f, DATA_FRAME + 0x20), read64(f, DATA_FRAME + 0x28)], [
    0x3333n,
    0x4444n,
  ]);
  assert.equal(it.rflags, 0x2 | ZF);
  assert.equal(it.step(), STEP_OK); // now differs: loads rdx:rax
  assert.deepEqual([get64(it, RAX), get64(it, RDX)], [0x3333n, 0x4444n]);
  assert.equal(it.rflags, 0x2);
  it.rip = CODE;
  set64(it, RDI, BigInt(DATA + 0x28));
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual(exceptionOf(f).vector, VECTOR_GP);
  assert.equal(f.stats.get("cpu.read"), 4, "alignment is checked before the access");
});

// --- Faults on read-modify-write instructions ------------------------------------------------

const readOnlyCases: [string, number[]][] = [
  ["lock cmpxchg that matches", [0xf0, 0x48, 0x0f, 0xb1, 0x37]],
  ["lock cmpxchg that does not match", [0xf0, 0x48, 0x0f, 0xb1, 0x37]],
  ["xchg", [0x48, 0x87, 0x37]],
  ["lock or", [0xf0, 0x48, 0x09, 0x37]],
  ["lock bts", [0xf0, 0x48, 0x0f, 0xba, 0x2f, 0x01]],
  ["cmpxchg8b that does not match", [0x0f, 0xc7, 0x0f]],
];

for (const [name, code] of readOnlyCases) {
  Deno.test(`Interpreter.step() ${name} on a read-only page faults with P|W and changes nothing`, () => {
    const { f, it } = machine(code);
    write64(f, READ_ONLY_FRAME + 0x40, 0x5000n);
    set64(it, RDI, BigInt(READ_ONLY + 0x40));
    set64(it, RAX, name.includes("does not") ? 0x6000n : 0x5000n);
    set64(it, RSI, 0x7000n);
    it.rflags = 0x2 | OF;
    const before = allRegs(it);
    assert.equal(it.step(), STEP_FAULT);
    assert.deepEqual(exceptionOf(f), {
      vector: VECTOR_PF,
      errorCode: PFEC_PRESENT | PFEC_WRITE,
      cr2: READ_ONLY + 0x40,
    });
    assert.deepEqual(allRegs(it), before);
    assert.equal(it.rflags, 0x2 | OF);
    assert.equal(it.rip, CODE);
    assert.equal(read64(f, READ_ONLY_FRAME + 0x40), 0x5000n);
    assert.deepEqual(counters(f.stats, ["cpu.read", "cpu.write", "cpu.instructions"]), {
      "cpu.read": 1,
      "cpu.write": 1,
      "cpu.instructions": 0,
    });
  });
}

// --- Addressing -----------------------------------------------------------------------------

Deno.test("Interpreter.step() RIP-relative loads and stores use the next instruction's address", () => {
  const code = new Array(0x100).fill(0x90);
  code.splice(0x10, 8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11);
  code.push(0x48, 0x8b, 0x05, ...le32(0x10 - 0x107)); //     +0x100 mov rax, [rip - 0xf7]
  code.push(0x48, 0x89, 0x35, ...le32(DATA + 8 - (CODE + 0x10e))); // mov [rip + disp], rsi
  const { f, it } = machine(code);
  set64(it, RSI, 0xabcdn);
  it.rip = CODE + 0x100;
  assert.equal(it.step(), STEP_OK);
  assert.equal(get64(it, RAX), 0x1122_3344_5566_7788n);
  assert.equal(it.step(), STEP_OK);
  assert.equal(read64(f, DATA_FRAME + 8), 0xabcdn);
});

const addressCases: [string, number[], Record<number, bigint>, number, number?][] = [
  // name, code (stores rsi), registers, DATA offset written, fs base
  ["[rdi + rax*8]", [0x48, 0x89, 0x34, 0xc7], { [RDI]: BigInt(DATA), [RAX]: 3n }, 24],
  ["[rdi + r8*8 - 8] (REX.X, disp8)", [0x4a, 0x89, 0x74, 0xc7, 0xf8], {
    [RDI]: BigInt(DATA),
    [R8]: 5n,
  }, 32],
  ["[rdi + rax*8] with rax = -1 wraps", [0x48, 0x89, 0x34, 0xc7], {
    [RDI]: BigInt(DATA + 0x48),
    [RAX]: -1n,
  }, 0x40],
  ["[rax*4 + disp32] (no base)", [0x48, 0x89, 0x34, 0x85, ...le32(DATA)], { [RAX]: 4n }, 16],
  ["[rbx + rcx*2 + disp32]", [0x48, 0x89, 0xb4, 0x4b, ...le32(0x100)], {
    [RBX]: BigInt(DATA),
    [RCX]: 0x10n,
  }, 0x120],
  ["[edi] (67) ignores bits 63:32 of rdi", [0x67, 0x48, 0x89, 0x37], {
    [RDI]: 0xffff_ffff_0000_0000n | BigInt(DATA + 0x50),
  }, 0x50],
  ["[edi + disp32] (67) wraps at 2^32", [0x67, 0x48, 0x89, 0xb7, ...le32(DATA + 0x60)], {
    [RDI]: 0xffff_fff0n,
  }, 0x50],
  ["fs:[rdi]", [0x64, 0x48, 0x89, 0x37], { [RDI]: 0x60n }, 0x60, DATA],
];

function le32(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
}

for (const [name, code, regs, offset, fsBase] of addressCases) {
  Deno.test(`Interpreter.step() addresses ${name}`, () => {
    const { f, it } = machine(code);
    for (const [r, v] of Object.entries(regs)) set64(it, Number(r), v);
    set64(it, RSI, 0x0bad_cafen);
    if (fsBase !== undefined) it.fsBase = fsBase;
    assert.equal(it.step(), STEP_OK);
    assert.equal(read64(f, DATA_FRAME + offset), 0x0bad_cafen);
  });
}

Deno.test("Interpreter.step() gs:[rdi] adds the GS base, upper-half bases included", () => {
  const kernel = UPPER_HALF_START + 0x5000; // 0xffff_8000_0000_5000
  const { f, it } = machine([0x65, 0x48, 0x89, 0x37]);
  f.map(kernel, SPARE_FRAME, RW);
  it.gsBase = kernel;
  set64(it, RDI, 0x28n);
  set64(it, RSI, 0x99n);
  assert.equal(it.step(), STEP_OK);
  assert.equal(read64(f, SPARE_FRAME + 0x28), 0x99n);
});

const nonCanonicalCases: [string, number[], Record<number, bigint>, number?][] = [
  ["mov [rdi], rsi", [0x48, 0x89, 0x37], { [RDI]: NON_CANONICAL }],
  ["mov rax, [rdi]", [0x48, 0x8b, 0x07], { [RDI]: 0xfff0_0000_0000_0000n }],
  ["lock cmpxchg [rdi], rsi", [0xf0, 0x48, 0x0f, 0xb1, 0x37], { [RDI]: NON_CANONICAL + 8n }],
  [
    "fs:[rdi] with the base past the lower half",
    [0x64, 0x48, 0x89, 0x37],
    { [RDI]: 0x1000n },
    0x7fff_ffff_f000,
  ],
  ["rep stosq with rdi non-canonical", [0xf3, 0x48, 0xab], { [RDI]: NON_CANONICAL, [RCX]: 4n }],
  ["bts [rdi], rsi whose bit offset leaves the lower half", [0x48, 0x0f, 0xab, 0x37], {
    [RDI]: NON_CANONICAL - 8n,
    [RSI]: 64n,
  }],
];

for (const [name, code, regs, fsBase] of nonCanonicalCases) {
  Deno.test(`Interpreter.step() ${name} with a non-canonical address raises #GP(0)`, () => {
    const { f, it } = machine(code);
    for (const [r, v] of Object.entries(regs)) set64(it, Number(r), v);
    if (fsBase !== undefined) it.fsBase = fsBase;
    const before = allRegs(it);
    assert.equal(it.step(), STEP_FAULT);
    assert.deepEqual([exceptionOf(f).vector, exceptionOf(f).errorCode], [VECTOR_GP, 0]);
    assert.deepEqual(allRegs(it), before);
    assert.equal(it.rip, CODE);
    assert.deepEqual(counters(f.stats, ["cpu.gp", "cpu.read", "cpu.write", "cpu.pf"]), {
      "cpu.gp": 1,
      "cpu.read": 0,
      "cpu.write": 0,
      "cpu.pf": 0,
    });
  });
}

// --- Control registers and TLB instructions ----------------------------------------------------

const MOV_CR3_RAX = [0x0f, 0x22, 0xd8];
const MOV_RCX_CR3 = [0x0f, 0x20, 0xd9];

Deno.test("Interpreter.run() mov cr3, rax with bit 63 and PCIDE keeps the PCID's TLB entries", () => {
  for (const noFlush of [true, false]) {
    const { f, it } = machine([...MOV_CR3_RAX, ...MOV_RCX_CR3, RET], {
      ctl: { cr4: PCIDE_CR4, cr3: PML4_ADDRESS | 1 },
    });
    assert.ok(f.cpu.read(DATA, 8)); // a PCID-1 entry for DATA
    set64(it, RAX, (noFlush ? 1n << 63n : 0n) | BigInt(PML4_ADDRESS | 1));
    assert.equal(it.run(CODE), STEP_RETURN);
    assert.equal(f.ctl.cr3, PML4_ADDRESS | 1);
    assert.equal(get64(it, RCX), BigInt(PML4_ADDRESS | 1), "bit 63 is not stored");
    const missBefore = f.stats.get("tlb.miss");
    assert.ok(f.cpu.read(DATA, 8));
    assert.equal(f.stats.get("tlb.miss") - missBefore, noFlush ? 0 : 1);
    assert.deepEqual(counters(f.stats, ["cpu.cr3Write", "tlb.flush.cr3", "cpu.instructions"]), {
      "cpu.cr3Write": 1,
      "tlb.flush.cr3": noFlush ? 0 : 1,
      "cpu.instructions": 2,
    });
  }
});

Deno.test("Interpreter.run() mov cr3, rax flushes non-global entries and the next accesses walk", () => {
  const { f, it } = machine([...MOV_CR3_RAX, 0x48, 0x8b, 0x07, RET]);
  assert.ok(f.cpu.read(DATA, 8));
  set64(it, RAX, BigInt(PML4_ADDRESS));
  set64(it, RDI, BigInt(DATA));
  write64(f, DATA_FRAME, 0x77n);
  assert.equal(it.run(CODE), STEP_RETURN);
  assert.equal(get64(it, RAX), 0x77n);
  assert.deepEqual(counters(f.stats, ["tlb.flush.cr3", "tlb.miss"]), {
    "tlb.flush.cr3": 1,
    "tlb.miss": 1 + 1 + 1 + 1, // DATA, code, code again after the flush, DATA again
  });
});

const cr3GpCases: [string, bigint, PagingControlInit][] = [
  ["a bit at MAXPHYADDR (46)", 1n << 46n | BigInt(PML4_ADDRESS), {}],
  ["bit 62", 1n << 62n | BigInt(PML4_ADDRESS), {}],
  ["bit 52", 1n << 52n | BigInt(PML4_ADDRESS), {}],
  ["bit 63 with PCIDE=0", 1n << 63n | BigInt(PML4_ADDRESS), {}],
];

for (const [name, value, ctl] of cr3GpCases) {
  Deno.test(`Interpreter.step() mov cr3, rax with ${name} raises #GP(0) and keeps CR3`, () => {
    const { f, it } = machine(MOV_CR3_RAX, { ctl });
    set64(it, RAX, value);
    assert.equal(it.step(), STEP_FAULT);
    assert.deepEqual([exceptionOf(f).vector, exceptionOf(f).errorCode], [VECTOR_GP, 0]);
    assert.equal(f.ctl.cr3, PML4_ADDRESS);
    assert.equal(it.rip, CODE);
    assert.deepEqual(counters(f.stats, ["cpu.gp", "cpu.cr3Write", "cpu.instructions"]), {
      "cpu.gp": 1,
      "cpu.cr3Write": 0,
      "cpu.instructions": 0,
    });
  });
}

Deno.test("Interpreter.step() moves to and from CR0, CR2, CR4 and CR8", () => {
  const { f, it } = machine([
    0x0f,
    0x20,
    0xc0, //       mov rax, cr0
    0x0f,
    0x22,
    0xc0, //       mov cr0, rax
    0x0f,
    0x22,
    0xd6, //       mov cr2, rsi
    0x0f,
    0x20,
    0xd1, //       mov rcx, cr2
    0x0f,
    0x20,
    0xe2, //       mov rdx, cr4
    0x44,
    0x0f,
    0x22,
    0xc3, // mov cr8, rbx
    0x44,
    0x0f,
    0x20,
    0xc7, // mov rdi, cr8
    0x0f,
    0x22,
    0xe0, //       mov cr4, rax (cr0's value: clears PAE in long mode -> #GP)
  ]);
  set64(it, RSI, 0xffff_8000_0000_1234n);
  set64(it, RBX, 9n);
  for (let i = 0; i < 7; i++) assert.equal(it.step(), STEP_OK, `instruction ${i}`);
  assert.equal(get64(it, RAX), BigInt(f.ctl.cr0));
  assert.equal(f.cpu.exception.cr2, UPPER_HALF_START + 0x1234);
  assert.equal(get64(it, RCX), 0xffff_8000_0000_1234n);
  assert.equal(get64(it, RDX), BigInt(f.ctl.cr4));
  assert.equal(it.cr8, 9);
  assert.equal(get64(it, RDI), 9n);
  assert.equal(it.step(), STEP_FAULT);
  assert.equal(exceptionOf(f).vector, VECTOR_GP);
});

Deno.test("Interpreter.step() mov cr0/cr4/cr8 with reserved high bits raises #GP(0)", () => {
  for (
    const [code, value] of [
      [[0x0f, 0x22, 0xc0], 1n << 32n],
      [[0x0f, 0x22, 0xe0], 1n << 40n],
      [[0x44, 0x0f, 0x22, 0xc0], 16n],
    ] as [number[], bigint][]
  ) {
    const { f, it } = machine(code);
    const cr0 = f.ctl.cr0;
    set64(it, RAX, BigInt(cr0) | value);
    assert.equal(it.step(), STEP_FAULT);
    assert.equal(exceptionOf(f).vector, VECTOR_GP);
    assert.deepEqual([f.ctl.cr0, it.cr8], [cr0, 0]);
  }
});

const cpl3Cases: [string, number[]][] = [
  ["mov cr3, rax", MOV_CR3_RAX],
  ["mov rax, cr3", [0x0f, 0x20, 0xd8]],
  ["mov cr0, rax", [0x0f, 0x22, 0xc0]],
  ["mov cr4, rax", [0x0f, 0x22, 0xe0]],
  ["invlpg [rdi]", [0x0f, 0x01, 0x3f]],
  ["invpcid rax, [rdi]", [0x66, 0x0f, 0x38, 0x82, 0x07]],
  ["hlt", [0xf4]],
  ["cli", [0xfa]],
  ["sti", [0xfb]],
  ["wbinvd", [0x0f, 0x09]],
  ["lgdt [rdi]", [0x0f, 0x01, 0x17]],
];

for (const [name, code] of cpl3Cases) {
  Deno.test(`Interpreter.step() ${name} at CPL 3 raises #GP(0), before any intercept`, () => {
    const { f, it } = machine(code, { ctl: { cpl: 3 }, codeFlags: P | PTE_USER });
    it.intercepts.fill(1);
    set64(it, RAX, BigInt(PML4_ADDRESS));
    set64(it, RDI, BigInt(DATA));
    const before = allRegs(it);
    assert.equal(it.step(), STEP_FAULT);
    assert.deepEqual([exceptionOf(f).vector, exceptionOf(f).errorCode], [VECTOR_GP, 0]);
    assert.deepEqual(allRegs(it), before);
    assert.deepEqual([it.rip, it.rflags, f.ctl.cr3], [CODE, 0x2, PML4_ADDRESS]);
    assert.deepEqual(counters(f.stats, ["cpu.gp", "tlb.flush.invlpg", "cpu.instructions"]), {
      "cpu.gp": 1,
      "tlb.flush.invlpg": 0,
      "cpu.instructions": 0,
    });
  });
}

Deno.test("Interpreter.step() at CPL 3 runs unprivileged instructions from a user page", () => {
  const { f, it } = machine([0x48, 0x89, 0x37, RET], { ctl: { cpl: 3 }, codeFlags: P | PTE_USER });
  set64(it, RDI, BigInt(DATA));
  set64(it, RSI, 5n);
  assert.equal(it.run(CODE), STEP_RETURN);
  assert.equal(read64(f, DATA_FRAME), 5n);
});

Deno.test("Interpreter.run() invlpg [rdi] drops the TLB entry; a non-canonical operand is a NOP", () => {
  const { f, it } = machine([0x0f, 0x01, 0x3f, RET]);
  assert.ok(f.cpu.read(DATA + 0x10, 8));
  set64(it, RDI, BigInt(DATA + 0x123));
  assert.equal(it.run(CODE), STEP_RETURN);
  let misses = f.stats.get("tlb.miss");
  assert.ok(f.cpu.read(DATA + 0x10, 8));
  assert.equal(f.stats.get("tlb.miss") - misses, 1, "the entry was dropped");
  assert.equal(f.stats.get("tlb.flush.invlpg"), 1);

  set64(it, RDI, NON_CANONICAL);
  assert.equal(it.run(CODE), STEP_RETURN);
  misses = f.stats.get("tlb.miss");
  assert.ok(f.cpu.read(DATA + 0x10, 8));
  assert.equal(f.stats.get("tlb.miss") - misses, 0, "nothing was dropped");
  assert.deepEqual(counters(f.stats, ["tlb.flush.invlpg", "cpu.gp", "cpu.instructions"]), {
    "tlb.flush.invlpg": 1,
    "cpu.gp": 0,
    "cpu.instructions": 2,
  });
});

const INVPCID = [0x66, 0x0f, 0x38, 0x82, 0x07];
const invpcidCases: [string, bigint, bigint, bigint, boolean | "gp"][] = [
  // name, type (rax), descriptor qword 0 (PCID), qword 1 (address), DATA entry dropped
  ["type 0 drops one address", 0n, 1n, BigInt(DATA), true],
  ["type 0 for another PCID keeps it", 0n, 2n, BigInt(DATA), false],
  ["type 1 drops the PCID", 1n, 1n, 0n, true],
  ["type 2 drops everything", 2n, 0n, 0n, true],
  ["type 3 drops non-global entries", 3n, 0n, 0n, true],
  ["type 0 with a non-canonical address raises #GP", 0n, 1n, NON_CANONICAL, "gp"],
  ["type 4 raises #GP", 4n, 0n, 0n, "gp"],
  ["a type with high bits raises #GP", 1n << 32n, 0n, 0n, "gp"],
  ["descriptor bits 63:12 set raises #GP", 1n, 0x1001n, 0n, "gp"],
];

for (const [name, type, pcid, address, outcome] of invpcidCases) {
  Deno.test(`Interpreter.step() invpcid ${name}`, () => {
    const { f, it } = machine(INVPCID, { ctl: { cr4: PCIDE_CR4, cr3: PML4_ADDRESS | 1 } });
    assert.ok(f.cpu.read(DATA, 8));
    write64(f, DATA_FRAME + 0xff8, pcid); // the descriptor straddles the two data pages
    write64(f, DATA_FRAME + 0x1000, address);
    set64(it, RDI, BigInt(DATA + 0xff8));
    set64(it, RAX, type);
    const result = it.step();
    if (outcome === "gp") {
      assert.equal(result, STEP_FAULT);
      assert.equal(exceptionOf(f).vector, VECTOR_GP);
      assert.equal(it.rip, CODE);
      return;
    }
    assert.equal(result, STEP_OK);
    const misses = f.stats.get("tlb.miss");
    assert.ok(f.cpu.read(DATA, 8));
    assert.equal(f.stats.get("tlb.miss") - misses, outcome ? 1 : 0);
    assert.equal(f.stats.get("tlb.flush.invpcid"), 1);
  });
}

Deno.test("Interpreter.step() invpcid with the descriptor's second half not present faults there", () => {
  const { f, it } = machine(INVPCID, { ctl: { cr4: PCIDE_CR4, cr3: PML4_ADDRESS | 1 } });
  set64(it, RDI, BigInt(DATA + 0x1ff8));
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual(exceptionOf(f), { vector: VECTOR_PF, errorCode: 0, cr2: DATA + 0x2000 });
  assert.equal(f.stats.get("tlb.flush.invpcid"), 0);
});

// --- Fetch -------------------------------------------------------------------------------------

for (
  const [name, efer, errorCode] of [
    ["with NXE (I/D set)", EFER_LME | EFER_LMA | EFER_NXE, PFEC_FETCH],
    ["without NXE or SMEP (I/D clear)", EFER_LME | EFER_LMA, 0],
  ] as [string, number, number][]
) {
  Deno.test(`Interpreter.step() an instruction running into a not-present page faults there ${name}`, () => {
    const { f, it } = machine([], { ctl: { efer } });
    f.memory.write8(CODE_FRAME + 0xffe, 0x48);
    f.memory.write8(CODE_FRAME + 0xfff, 0x89); // mov [rdi], rsi continues on the next page
    set64(it, RDI, BigInt(DATA));
    it.rip = CODE + 0xffe;
    assert.equal(it.step(), STEP_FAULT);
    assert.deepEqual(exceptionOf(f), { vector: VECTOR_PF, errorCode, cr2: CODE + PAGE_SIZE });
    assert.equal(it.rip, CODE + 0xffe);
    assert.deepEqual(counters(f.stats, ["cpu.fetch", "cpu.write", "cpu.instructions"]), {
      "cpu.fetch": 2,
      "cpu.write": 0,
      "cpu.instructions": 0,
    });

    f.map(CODE + PAGE_SIZE, SPARE_FRAME, P);
    f.memory.write8(SPARE_FRAME, 0x37);
    f.memory.write8(SPARE_FRAME + 1, RET);
    set64(it, RSI, 0x1234n);
    assert.equal(it.resume(), STEP_RETURN);
    assert.equal(it.rip, CODE + PAGE_SIZE + 1);
    assert.equal(read64(f, DATA_FRAME), 0x1234n);
    assert.deepEqual(counters(f.stats, ["cpu.fetch", "cpu.instructions"]), {
      "cpu.fetch": 2 + 2 + 1,
      "cpu.instructions": 1,
    });
  });
}

Deno.test("Interpreter.step() does not touch the next page when the instruction ends on this one", () => {
  const { f, it } = machine([]);
  f.memory.write8(CODE_FRAME + 0xfff, 0x90); // nop, last byte of the page
  it.rip = CODE + 0xfff;
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.rip, CODE + PAGE_SIZE);
  assert.deepEqual(counters(f.stats, ["cpu.fetch", "cpu.pf"]), { "cpu.fetch": 1, "cpu.pf": 0 });
  assert.equal(it.step(), STEP_FAULT); // now the fetch itself
  assert.deepEqual(exceptionOf(f), {
    vector: VECTOR_PF,
    errorCode: PFEC_FETCH,
    cr2: CODE + PAGE_SIZE,
  });
});

Deno.test("Interpreter.step() fetching from an XD page raises #PF with P|I/D", () => {
  const { f, it } = machine([0x90], { codeXd: true });
  assert.equal(it.run(CODE + 0), STEP_FAULT);
  assert.deepEqual(exceptionOf(f), {
    vector: VECTOR_PF,
    errorCode: PFEC_PRESENT | PFEC_FETCH,
    cr2: CODE,
  });
  assert.deepEqual(counters(f.stats, ["cpu.fetch", "cpu.pf", "cpu.instructions"]), {
    "cpu.fetch": 1,
    "cpu.pf": 1,
    "cpu.instructions": 0,
  });
});

Deno.test("Interpreter.step() fetching a supervisor page at CPL 3 raises #PF with P|U|I/D", () => {
  const { f, it } = machine([0x90], { ctl: { cpl: 3 } });
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual(exceptionOf(f), {
    vector: VECTOR_PF,
    errorCode: PFEC_PRESENT | PFEC_USER | PFEC_FETCH,
    cr2: CODE,
  });
});

Deno.test("Interpreter.step() an instruction crossing from the lower half into the hole raises #GP", () => {
  const top = UPPER_HALF_START - PAGE_SIZE;
  const { f, it } = machine([]);
  f.map(top, SPARE_FRAME, P);
  f.memory.write8(SPARE_FRAME + 0xfff, 0x48);
  it.rip = top + 0xfff;
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual([exceptionOf(f).vector, f.stats.get("cpu.fetch")], [VECTOR_GP, 1]);
  f.memory.write8(SPARE_FRAME + 0xfff, 0x90); // a nop ending at 2^47: RIP would be non-canonical
  assert.equal(it.step(), STEP_FAULT);
  assert.equal(exceptionOf(f).vector, VECTOR_GP);
  assert.equal(it.rip, top + 0xfff);
});

const udCases: [string, number[]][] = [
  ["x87 fld1", [0xd9, 0xe8]],
  ["ud2", [0x0f, 0x0b]],
  ["lock on a register destination", [0xf0, 0x48, 0x09, 0xf7]],
  ["lock mov", [0xf0, 0x48, 0x89, 0x37]],
  ["pause (f3 90)", [0xf3, 0x90]],
];

for (const [name, code] of udCases) {
  Deno.test(`Interpreter.step() ${name} raises #UD`, () => {
    const { f, it } = machine(code);
    assert.equal(it.step(), STEP_FAULT);
    assert.deepEqual(exceptionOf(f), { vector: VECTOR_UD, errorCode: 0, cr2: 0 });
    assert.equal(it.rip, CODE);
    assert.deepEqual(counters(f.stats, ["cpu.ud", "cpu.gp", "cpu.instructions"]), {
      "cpu.ud": 1,
      "cpu.gp": 0,
      "cpu.instructions": 0,
    });
  });
}

Deno.test("Interpreter.step() 15 bytes decode; a 16th prefix raises #GP(0)", () => {
  const { f, it } = machine([...new Array(14).fill(0x2e), 0x90, ...new Array(15).fill(0x2e), 0x90]);
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.rip, CODE + 15);
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual([exceptionOf(f).vector, exceptionOf(f).errorCode], [VECTOR_GP, 0]);
  assert.deepEqual(counters(f.stats, ["cpu.gp", "cpu.ud", "cpu.instructions"]), {
    "cpu.gp": 1,
    "cpu.ud": 0,
    "cpu.instructions": 1,
  });
});

// --- Intercepts and unsupported instructions -------------------------------------------------

Deno.test("Interpreter.step() returns STEP_INTERCEPT for an intercepted op; skip() moves past it", () => {
  const { f, it } = machine([...MOV_CR3_RAX, 0x48, 0x89, 0x37, RET]);
  it.intercepts[OP_MOV_TO_CR] = 1;
  set64(it, RAX, 0x5000n);
  set64(it, RDI, BigInt(DATA));
  set64(it, RSI, 3n);
  assert.equal(it.run(CODE), STEP_INTERCEPT);
  assert.equal(it.rip, CODE);
  assert.deepEqual([it.decoded.op, it.decoded.crRegister, it.decoded.rm, it.decoded.length], [
    OP_MOV_TO_CR,
    3,
    RAX,
    3,
  ]);
  assert.equal(f.ctl.cr3, PML4_ADDRESS, "nothing executed");
  assert.equal(f.stats.get("cpu.instructions"), 0);
  it.skip(); // the caller emulated it
  assert.equal(it.rip, CODE + 3);
  assert.equal(it.resume(), STEP_RETURN);
  assert.equal(read64(f, DATA_FRAME), 3n);
  assert.equal(f.stats.get("cpu.instructions"), 1);
});

const unsupportedCases: [string, number[], number][] = [
  ["syscall", [0x0f, 0x05], OP_SYSCALL],
  ["in al, 0x60", [0xe4, 0x60], OP_IN],
  ["iretq", [0x48, 0xcf], OP_IRET],
  ["pushfq", [0x9c], OP_PUSHF],
  ["lgdt [rdi]", [0x0f, 0x01, 0x17], OP_LGDT],
  ["int 0x80", [0xcd, 0x80], OP_INT],
  ["int3", [0xcc], OP_INT3],
  ["wbinvd", [0x0f, 0x09], OP_WBINVD],
];

for (const [name, code, op] of unsupportedCases) {
  Deno.test(`Interpreter.step() ${name} is STEP_UNSUPPORTED with nothing executed`, () => {
    const { f, it } = machine(code);
    const before = allRegs(it);
    assert.equal(it.step(), STEP_UNSUPPORTED);
    assert.deepEqual([it.rip, it.decoded.op, it.decoded.length], [CODE, op, code.length]);
    assert.deepEqual(allRegs(it), before);
    assert.deepEqual(counters(f.stats, ["cpu.instructions", "cpu.read", "cpu.write"]), {
      "cpu.instructions": 0,
      "cpu.read": 0,
      "cpu.write": 0,
    });
  });
}

// --- Control flow -------------------------------------------------------------------------------

Deno.test("Interpreter.run() call and ret through a stack; the outer ret returns", () => {
  const { f, it } = machine([
    0xe8,
    0x05,
    0x00,
    0x00,
    0x00, // +0  call +5 (to +10)
    0x48,
    0x89,
    0x37, //             +5  mov [rdi], rsi
    RET, //                          +8  ret: back to TypeScript
    0x90, //                         +9
    0x48,
    0x89,
    0x77,
    0x08, //       +10 mov [rdi+8], rsi
    RET, //                          +14 ret to +5
  ]);
  set64(it, RDI, BigInt(DATA));
  set64(it, RSI, 0x42n);
  assert.equal(it.run(CODE), STEP_RETURN);
  assert.equal(it.rip, CODE + 8);
  assert.equal(get64(it, RSP), BigInt(STACK + PAGE_SIZE));
  assert.equal(read64(f, STACK_FRAME + PAGE_SIZE - 8), BigInt(CODE + 5), "the return address");
  assert.deepEqual([read64(f, DATA_FRAME), read64(f, DATA_FRAME + 8)], [0x42n, 0x42n]);
  assert.deepEqual(counters(f.stats, ["cpu.instructions", "cpu.read", "cpu.write"]), {
    "cpu.instructions": 4,
    "cpu.read": 1,
    "cpu.write": 3,
  });
});

Deno.test("Interpreter.run() call from upper-half code pushes a canonical return address", () => {
  const kernel = UPPER_HALF_START + 0x10_0000; // 0xffff_8000_0010_0000
  const { f, it } = machine([]);
  f.map(kernel, SPARE_FRAME, P);
  [0xe8, 0x01, 0x00, 0x00, 0x00, RET, RET].forEach((b, i) => f.memory.write8(SPARE_FRAME + i, b));
  assert.equal(it.run(kernel), STEP_RETURN);
  assert.equal(it.rip, kernel + 5);
  assert.equal(read64(f, STACK_FRAME + PAGE_SIZE - 8), 0xffff_8000_0010_0005n);
});

Deno.test("Interpreter.step() call with the stack not present faults with RSP unchanged", () => {
  const { f, it } = machine([0xe8, 0x00, 0x00, 0x00, 0x00]);
  set64(it, RSP, BigInt(DATA + 0x2008)); // pushes to DATA + 0x2000: not mapped
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual(exceptionOf(f), {
    vector: VECTOR_PF,
    errorCode: PFEC_WRITE,
    cr2: DATA + 0x2000,
  });
  assert.deepEqual([get64(it, RSP), it.rip], [BigInt(DATA + 0x2008), CODE]);
  set64(it, RSP, NON_CANONICAL + 8n);
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual([exceptionOf(f).vector, f.stats.get("cpu.ss")], [VECTOR_SS, 1]);
});

Deno.test("Interpreter.step() ret to a non-canonical address raises #GP with RSP unchanged", () => {
  const { f, it } = machine([0xe8, 0x00, 0x00, 0x00, 0x00, RET]);
  assert.equal(it.run(CODE, 1), STEP_LIMIT); // the call
  write64(f, STACK_FRAME + PAGE_SIZE - 8, NON_CANONICAL);
  assert.equal(it.step(), STEP_FAULT);
  assert.equal(exceptionOf(f).vector, VECTOR_GP);
  assert.deepEqual([get64(it, RSP), it.rip], [BigInt(STACK + PAGE_SIZE - 8), CODE + 5]);
});

Deno.test("Interpreter.step() jmp rel8/rel32, nop, cli/sti and hlt", () => {
  const { it } = machine([
    0xeb,
    0x02, //                   +0 jmp +2 (to +4)
    0x0f,
    0x0b, //                   +2 ud2 (skipped)
    0xe9,
    0x01,
    0x00,
    0x00,
    0x00, // +4 jmp +1 (to +10)
    0xcc, //                         +9 int3 (skipped)
    0x0f,
    0x1f,
    0x44,
    0x00,
    0x00, // +10 nop dword [rax+rax]
    0xfb, //                         +15 sti
    0xfa, //                         +16 cli
    0xfb, //                         +17 sti
    0xf4, //                         +18 hlt
    0xeb,
    0xe9, //                   +19 jmp -23 (to -2): back before CODE
  ]);
  for (
    const [rip, rflags] of [[4, 0x2], [10, 0x2], [15, 0x2], [16, 0x2 | IF], [17, 0x2], [
      18,
      0x2 | IF,
    ]]
  ) {
    assert.equal(it.step(), STEP_OK);
    assert.deepEqual([it.rip, it.rflags], [CODE + rip!, rflags]);
  }
  assert.equal(it.step(), STEP_HALT);
  assert.equal(it.rip, CODE + 19);
  assert.equal(it.step(), STEP_OK);
  assert.equal(it.rip, CODE - 2);
});

Deno.test("Interpreter.step() jmp to a non-canonical target raises #GP(0) at the jmp", () => {
  const top = UPPER_HALF_START - PAGE_SIZE;
  const { f, it } = machine([]);
  f.map(top, SPARE_FRAME, P);
  [0xe9, 0x00, 0x10, 0x00, 0x00].forEach((b, i) => f.memory.write8(SPARE_FRAME + i, b)); // +0x1000
  it.rip = top;
  assert.equal(it.step(), STEP_FAULT);
  assert.deepEqual([exceptionOf(f).vector, it.rip], [VECTOR_GP, top]);
});

Deno.test("Interpreter.run() stops with STEP_LIMIT after maxSteps", () => {
  const { f, it } = machine([0xeb, 0xfe]); // jmp $
  assert.equal(it.run(CODE, 10), STEP_LIMIT);
  assert.equal(it.rip, CODE);
  assert.equal(f.stats.get("cpu.instructions"), 10);
  assert.equal(it.resume(5), STEP_LIMIT);
  assert.equal(f.stats.get("cpu.instructions"), 15);
});

Deno.test("Interpreter.run() rejects a RIP that is not a 48-bit linear value", () => {
  const { it } = machine([]);
  assert.throws(() => it.run(2 ** 48), RangeError);
  assert.throws(() => it.run(-1), RangeError);
  assert.throws(() => it.setReg(16, 0), RangeError);
});

Deno.test("Interpreter.step() pauses a long REP after 2^16 iterations and continues it", () => {
  const { f, it } = machine([0xf3, 0xaa, RET]); // rep stosb
  const big = 0x4000_0000; // a 2 MiB page, so 2^16 bytes fit in it
  f.map(big, 0x8000_0000, RW, 0x20_0000);
  set64(it, RDI, BigInt(big));
  set64(it, RCX, 0x1_0010n);
  set64(it, RAX, 0xeen);
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([it.rip, get64(it, RCX), get64(it, RDI)], [CODE, 0x10n, BigInt(big + 0x1_0000)]);
  assert.equal(f.stats.get("cpu.instructions"), 0);
  assert.equal(it.step(), STEP_OK);
  assert.deepEqual([it.rip, get64(it, RCX)], [CODE + 2, 0n]);
  assert.deepEqual(counters(f.stats, ["cpu.instructions", "cpu.write"]), {
    "cpu.instructions": 1,
    "cpu.write": 0x1_0010,
  });
  assert.equal(f.memory.read8(0x8000_0000 + 0x1_000f), 0xee);
});

// --- Fuzz ----------------------------------------------------------------------------------------

Deno.test("Interpreter.step() never throws on random bytes and returns a defined result", () => {
  const { f, it } = machine([], { codeFlags: P | PTE_USER });
  const random = new Prng(20240611);
  const ctl = f.ctl;
  const saved = { cr0: ctl.cr0, cr3: ctl.cr3, cr4: ctl.cr4 };
  const pointers = [DATA, DATA + 0xff8, DATA + 0x1ff8, READ_ONLY, STACK + 0x800, CODE, 0];
  const seen = new Set<number>();
  for (let i = 0; i < 20000; i++) {
    // The instruction near the page end half the time, so fetches cross into the unmapped page.
    const offset = random.chance(0.5) ? 0xff0 + random.below(16) : random.below(0xf00);
    for (let k = 0; k < 16 && offset + k < PAGE_SIZE; k++) {
      f.memory.write8(CODE_FRAME + offset + k, random.below(256));
    }
    for (let r = 0; r < 16; r++) {
      const pick = random.below(4);
      if (pick === 0) it.setReg(r, random.nextU32(), random.nextU32());
      else if (pick === 1) it.setReg(r, random.below(64));
      else set64(it, r, BigInt(pointers[random.below(pointers.length)]! + 8 * random.below(4)));
    }
    it.rflags = 0x2 | (random.chance(0.2) ? DF : 0);
    ctl.cpl = random.chance(0.25) ? 3 : 0;
    it.rip = CODE + offset;
    const regs = allRegs(it);
    const rflags = it.rflags;
    const result = it.step();
    assert.ok(result >= STEP_OK && result <= STEP_UNSUPPORTED, `result ${result} at ${i}`);
    seen.add(result);
    if (result === STEP_FAULT) {
      assert.ok([VECTOR_UD, VECTOR_SS, VECTOR_GP, VECTOR_PF].includes(f.cpu.exception.vector));
    }
    if (result !== STEP_OK && result !== STEP_HALT) {
      assert.equal(it.rip, CODE + offset, `RIP moved on result ${result} at ${i}`);
      assert.equal(it.rflags, rflags);
      const op = it.decoded.op;
      const isString = result === STEP_FAULT && (op === OP_STOS || op === OP_MOVS);
      const after = allRegs(it);
      for (let r = 0; r < 16; r++) {
        if (isString && (r === RCX || r === RSI || r === RDI)) continue;
        assert.equal(after[r], regs[r], `register ${r} changed on result ${result} at ${i}`);
      }
    }
    // Undo what random control-register writes did.
    ctl.cr0 = saved.cr0;
    ctl.cr4 = saved.cr4;
    ctl.cr3 = saved.cr3;
    f.cpu.tlb.flushAll();
  }
  assert.deepEqual([...seen].sort((a, b) => a - b), [
    STEP_OK,
    STEP_FAULT,
    STEP_RETURN,
    STEP_HALT,
    STEP_UNSUPPORTED,
  ]);
});
