/**
 * The guest kernel's text page (lib/guest/kernel_text.ts): every routine decodes
 * (lib/x86/decode.ts) to the instructions its comment names and ends in RET; routines
 * start at 16-byte boundaries in declaration order without overlapping; the rest of the
 * page is INT3.
 */

import assert from "node:assert/strict";
import {
  HYPERCALL_PAGE_OFFSET,
  SERVICE_COUNT,
  SERVICE_OFFSET,
  SYSTEM_TEXT_OFFSET,
} from "../../lib/guest/entry_text.ts";
import {
  KERNEL_ROUTINES,
  type KernelRoutine,
  KernelText,
  RAX,
  RCX,
  RDI,
  RSI,
} from "../../lib/guest/kernel_text.ts";
import { KERNEL_TEXT_BASE } from "../../lib/guest/layout.ts";
import { PAGE_SIZE } from "../../lib/x86/address.ts";
import {
  DecodedInstruction,
  decodeInstruction,
  FORM_NONE,
  FORM_REG_IMM,
  FORM_RM,
  FORM_RM_REG,
  formatInstruction,
  OP_AND,
  OP_CMPXCHG,
  OP_INVLPG,
  OP_MOV,
  OP_MOV_FROM_CR,
  OP_MOV_TO_CR,
  OP_MOVS,
  OP_OR,
  OP_RET,
  OP_STOS,
  OP_XCHG,
} from "../../lib/x86/decode.ts";

const ROUTINE_NAMES = Object.keys(KERNEL_ROUTINES) as KernelRoutine[];

/** The fields of `DecodedInstruction` a test may name. */
type Fields = Partial<
  Pick<
    DecodedInstruction,
    | "op"
    | "form"
    | "length"
    | "operandSize"
    | "lock"
    | "lockPrefix"
    | "rep"
    | "isMemory"
    | "base"
    | "index"
    | "disp"
    | "reg"
    | "rm"
    | "imm"
    | "immHi"
    | "crRegister"
  >
>;

/**
 * Decodes the routine at `offset` of `bytes` up to and including its first RET (or the
 * first failed decode) and returns, per instruction, the fields `expected` names for it.
 */
function decodeRoutine(bytes: Uint8Array, offset: number, expected: readonly Fields[]): Fields[] {
  const d = new DecodedInstruction();
  const out: Fields[] = [];
  for (let k = 0; k < 16; k++) {
    const length = decodeInstruction(bytes, offset, d);
    const wanted = Object.keys(expected[k] ?? { op: 0, length: 0 }) as (keyof Fields)[];
    out.push(Object.fromEntries(wanted.map((key) => [key, d[key]])) as Fields);
    if (length <= 0 || d.op === OP_RET) break;
    offset += length;
  }
  return out;
}

/** `[rdi]` with RSI as the source, 8 bytes: the entry-writing routines' operands. */
const QWORD_RDI_RSI = {
  form: FORM_RM_REG,
  operandSize: 8,
  isMemory: true,
  base: RDI,
  index: -1,
  disp: 0,
  reg: RSI,
} as const;

const RET: Fields = { op: OP_RET, form: FORM_NONE, length: 1, lock: false, rep: 0 };

/** MOV r32, imm32 (B8+r). */
function movImm32(reg: number, imm: number): Fields {
  return { op: OP_MOV, form: FORM_REG_IMM, length: 5, operandSize: 4, reg, imm, immHi: 0 };
}

/** What each routine decodes to, instruction by instruction. */
const EXPECTED: Record<KernelRoutine, Fields[]> = {
  setEntry: [{ op: OP_MOV, length: 3, lock: false, ...QWORD_RDI_RSI }, RET],
  // XCHG with memory is atomic without a LOCK prefix (SDM Vol. 2, XCHG).
  exchangeEntry: [{ op: OP_XCHG, length: 3, lock: true, lockPrefix: false, ...QWORD_RDI_RSI }, RET],
  compareExchangeEntry: [
    { op: OP_CMPXCHG, length: 5, lock: true, lockPrefix: true, ...QWORD_RDI_RSI },
    RET,
  ],
  orEntry: [{ op: OP_OR, length: 4, lock: true, lockPrefix: true, ...QWORD_RDI_RSI }, RET],
  andEntry: [{ op: OP_AND, length: 4, lock: true, lockPrefix: true, ...QWORD_RDI_RSI }, RET],
  writeCr3: [
    { op: OP_MOV_TO_CR, form: FORM_RM, length: 3, operandSize: 8, crRegister: 3, rm: RAX },
    RET,
  ],
  reloadCr3: [
    { op: OP_MOV_FROM_CR, form: FORM_RM, length: 3, operandSize: 8, crRegister: 3, rm: RAX },
    { op: OP_MOV_TO_CR, form: FORM_RM, length: 3, operandSize: 8, crRegister: 3, rm: RAX },
    RET,
  ],
  invlpg: [
    { op: OP_INVLPG, form: FORM_RM, length: 3, isMemory: true, base: RDI, index: -1, disp: 0 },
    RET,
  ],
  clearPage: [
    movImm32(RCX, 512),
    movImm32(RAX, 0),
    { op: OP_STOS, form: FORM_NONE, length: 3, operandSize: 8, rep: 0xf3, lock: false },
    RET,
  ],
  copyPage: [
    movImm32(RCX, 512),
    { op: OP_MOVS, form: FORM_NONE, length: 3, operandSize: 8, rep: 0xf3, lock: false },
    RET,
  ],
  copyQwords: [
    { op: OP_MOVS, form: FORM_NONE, length: 3, operandSize: 8, rep: 0xf3, lock: false },
    RET,
  ],
};

Deno.test("KERNEL_ROUTINES lists the routines in their layout order", () => {
  assert.deepEqual(ROUTINE_NAMES, [
    "setEntry",
    "exchangeEntry",
    "compareExchangeEntry",
    "orEntry",
    "andEntry",
    "writeCr3",
    "reloadCr3",
    "invlpg",
    "clearPage",
    "copyPage",
    "copyQwords",
  ]);
});

for (const name of ROUTINE_NAMES) {
  Deno.test(`KernelText routine ${name} decodes to its instructions and ends in RET`, () => {
    const text = new KernelText(KERNEL_TEXT_BASE);
    const offset = text.address(name) - KERNEL_TEXT_BASE;
    const expected = EXPECTED[name];
    assert.deepEqual(decodeRoutine(text.bytes, offset, expected), expected);
    const total = expected.reduce((sum, f) => sum + f.length!, 0);
    assert.equal(total, KERNEL_ROUTINES[name].length, "RET is the routine's last byte");
  });
}

Deno.test("KernelText routines read as their comments say (formatInstruction)", () => {
  const text = new KernelText(0);
  const d = new DecodedInstruction();
  const listing = ROUTINE_NAMES.map((name) => {
    const lines: string[] = [];
    for (let at = text.address(name); lines.length < 8;) {
      const length = decodeInstruction(text.bytes, at, d);
      lines.push(formatInstruction(d));
      if (length <= 0 || d.op === OP_RET) break;
      at += length;
    }
    return [name, lines.join("; ")];
  });
  assert.deepEqual(Object.fromEntries(listing), {
    setEntry: "mov qword ptr [rdi], rsi; ret",
    exchangeEntry: "xchg qword ptr [rdi], rsi; ret",
    compareExchangeEntry: "lock cmpxchg qword ptr [rdi], rsi; ret",
    orEntry: "lock or qword ptr [rdi], rsi; ret",
    andEntry: "lock and qword ptr [rdi], rsi; ret",
    writeCr3: "mov cr3, rax; ret",
    reloadCr3: "mov rax, cr3; mov cr3, rax; ret",
    invlpg: "invlpg [rdi]; ret",
    clearPage: "mov ecx, 0x200; mov eax, 0x0; rep stosq; ret",
    copyPage: "mov ecx, 0x200; rep movsq; ret",
    copyQwords: "rep movsq; ret",
  });
});

Deno.test("KernelText.address() is the base plus 16 bytes per routine, in order", () => {
  const text = new KernelText(KERNEL_TEXT_BASE);
  assert.deepEqual(
    ROUTINE_NAMES.map((name) => text.address(name) - KERNEL_TEXT_BASE),
    [0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160],
  );
  assert.equal(text.address("setEntry"), 0xffff_8100_0000);
  assert.equal(text.address("copyQwords"), 0xffff_8100_00a0);
  assert.equal(new KernelText(0x40_0000).address("invlpg"), 0x40_0070);
});

Deno.test("KernelText routines start on 16-byte boundaries and do not overlap", () => {
  const text = new KernelText(KERNEL_TEXT_BASE);
  let previousEnd = 0;
  for (const name of ROUTINE_NAMES) {
    const offset = text.address(name) - KERNEL_TEXT_BASE;
    const code = KERNEL_ROUTINES[name];
    assert.equal(offset % 16, 0, name);
    assert.ok(offset >= previousEnd, `${name} starts at ${offset}, before ${previousEnd}`);
    assert.deepEqual([...text.bytes.subarray(offset, offset + code.length)], [...code], name);
    previousEnd = offset + code.length;
  }
});

Deno.test("KernelText pads with INT3 (0xcc) up to the system text and over the service range", () => {
  const text = new KernelText(KERNEL_TEXT_BASE);
  assert.equal(text.bytes.length, PAGE_SIZE);
  const end = text.address("copyQwords") - KERNEL_TEXT_BASE + 16;
  assert.equal(end, 176);
  const gap = text.bytes.subarray(end, SYSTEM_TEXT_OFFSET);
  assert.ok(gap.every((b) => b === 0xcc));
  // The service range is never fetched (the gate runs the kernel's C code); if it were,
  // INT3 would trap.
  const services = text.bytes.subarray(SERVICE_OFFSET, SERVICE_OFFSET + 16 * SERVICE_COUNT);
  assert.ok(services.every((b) => b === 0xcc));
  // Natively nothing follows the service range: the rest of the page is INT3 too.
  assert.ok(text.bytes.subarray(SERVICE_OFFSET).every((b) => b === 0xcc));
  assert.equal(text.serviceRange.base, KERNEL_TEXT_BASE + SERVICE_OFFSET);
});

Deno.test("KernelText of the pv flavour holds Xen's hypercall page at 0x800", () => {
  const text = new KernelText(KERNEL_TEXT_BASE, "pv");
  const at = (
    n: number,
  ) => [...text.bytes.subarray(HYPERCALL_PAGE_OFFSET + 32 * n).subarray(0, 14)];
  // push rcx; push r11; mov eax, 29; syscall; pop r11; pop rcx; ret
  assert.deepEqual(at(29), [
    0x51,
    0x41,
    0x53,
    0xb8,
    29,
    0,
    0,
    0,
    0x0f,
    0x05,
    0x41,
    0x5b,
    0x59,
    0xc3,
  ]);
  // iret: push rcx; push r11; push rax; mov eax, 23; syscall (no return)
  assert.deepEqual(at(23).slice(0, 11), [0x51, 0x41, 0x53, 0x50, 0xb8, 23, 0, 0, 0, 0x0f, 0x05]);
  assert.equal(text.entry("eventCallback") > KERNEL_TEXT_BASE, true);
  assert.equal(new KernelText(KERNEL_TEXT_BASE).entry("eventCallback"), -1);
});

Deno.test("KernelText lays out the same bytes whatever the base", () => {
  assert.deepEqual(new KernelText(0).bytes, new KernelText(KERNEL_TEXT_BASE).bytes);
});
