// Encodings below were checked against GNU objdump (binutils) in Intel syntax; where
// objdump's display differs from hardware (it drops the effect of a 66 prefix before an
// ignored REX), the SDM rule is followed (Vol. 2 §2.2.1: a misplaced REX is ignored).
import assert from "node:assert/strict";
import {
  DecodedInstruction,
  decodeInstruction,
  FORM_IMM,
  FORM_NONE,
  FORM_REG_IMM,
  FORM_REG_RM,
  FORM_RM,
  FORM_RM_IMM,
  FORM_RM_REG,
  formatInstruction,
  OP_ADD,
  OP_AND,
  OP_BTR,
  OP_BTS,
  OP_CALL,
  OP_CLI,
  OP_CMP,
  OP_CMPXCHG,
  OP_CMPXCHG16B,
  OP_CMPXCHG8B,
  OP_DEC,
  OP_HLT,
  OP_IN,
  OP_INC,
  OP_INT,
  OP_INT3,
  OP_INVALID,
  OP_INVLPG,
  OP_INVPCID,
  OP_IRET,
  OP_JCC,
  OP_JMP,
  OP_LGDT,
  OP_LIDT,
  OP_MOV,
  OP_MOV_FROM_CR,
  OP_MOV_TO_CR,
  OP_MOVS,
  OP_MOVZX,
  OP_NOP,
  OP_OR,
  OP_OUT,
  OP_POP,
  OP_POPF,
  OP_PUSH,
  OP_PUSHF,
  OP_RET,
  OP_SGDT,
  OP_SIDT,
  OP_STI,
  OP_STOS,
  OP_SUB,
  OP_SYSCALL,
  OP_SYSRET,
  OP_TEST,
  OP_WBINVD,
  OP_XCHG,
  OP_XOR,
} from "../../lib/x86/decode.ts";

/** "48 89 37" -> bytes. */
function parseHex(text: string): Uint8Array {
  const parts = text.trim().split(/\s+/);
  return new Uint8Array(parts.map((h) => parseInt(h, 16)));
}

function repeatHex(byte: string, count: number): string {
  return Array(count).fill(byte).join(" ");
}

type Fields = Partial<Record<keyof DecodedInstruction, number | boolean>>;

interface ValidCase {
  hex: string;
  text: string;
  fields: Fields;
}

function assertFields(d: DecodedInstruction, fields: Fields, label: string): void {
  for (const [key, value] of Object.entries(fields)) {
    assert.equal(d[key as keyof DecodedInstruction], value, `${label}: field ${key}`);
  }
}

// Every valid case: exact length (from the hex), Intel-syntax text and the fields named.
const VALID_CASES: ValidCase[] = [
  // MOV, the page-table writes.
  {
    hex: "48 89 37",
    text: "mov qword ptr [rdi], rsi",
    fields: {
      op: OP_MOV,
      form: FORM_RM_REG,
      opcode: 0x89,
      operandSize: 8,
      addressSize: 8,
      rex: 0x48,
      hasModrm: true,
      mod: 0,
      reg: 6,
      rm: 7,
      isMemory: true,
      base: 7,
      index: -1,
      disp: 0,
      ripRelative: false,
      lock: false,
      immSize: 0,
    },
  },
  {
    hex: "48 89 74 24 08",
    text: "mov qword ptr [rsp+0x8], rsi",
    fields: { mod: 1, rm: 4, base: 4, index: -1, disp: 8 },
  },
  {
    hex: "48 89 05 78 56 34 12",
    text: "mov qword ptr [rip+0x12345678], rax",
    fields: { ripRelative: true, base: -1, index: -1, disp: 0x12345678, reg: 0 },
  },
  {
    hex: "4c 89 04 c7",
    text: "mov qword ptr [rdi+rax*8], r8",
    fields: { reg: 8, base: 7, index: 0, scale: 8, rex: 0x4c },
  },
  {
    hex: "48 b8 88 77 66 55 44 33 22 11",
    text: "mov rax, 0x1122334455667788",
    fields: {
      op: OP_MOV,
      form: FORM_REG_IMM,
      reg: 0,
      operandSize: 8,
      immSize: 8,
      imm: 0x55667788,
      immHi: 0x11223344,
      hasModrm: false,
    },
  },
  {
    hex: "49 bf 00 00 00 80 ff ff ff ff",
    text: "mov r15, 0xffffffff80000000",
    fields: { reg: 15, imm: -0x80000000, immHi: -1 },
  },
  {
    hex: "b8 78 56 34 12",
    text: "mov eax, 0x12345678",
    fields: { form: FORM_REG_IMM, operandSize: 4, immSize: 4, imm: 0x12345678, immHi: 0 },
  },
  {
    hex: "b8 ff ff ff ff",
    text: "mov eax, 0xffffffff",
    fields: { imm: -1, immHi: 0 }, // a 32-bit MOV zero-extends into the register
  },
  {
    hex: "66 41 b9 34 12",
    text: "mov r9w, 0x1234",
    fields: { reg: 9, operandSize: 2, immSize: 2, imm: 0x1234 },
  },
  {
    hex: "48 c7 07 ff ff ff ff",
    text: "mov qword ptr [rdi], 0xffffffffffffffff",
    fields: { form: FORM_RM_IMM, operandSize: 8, immSize: 4, imm: -1, immHi: -1 },
  },
  {
    hex: "c7 47 08 01 00 00 00",
    text: "mov dword ptr [rdi+0x8], 0x1",
    fields: { operandSize: 4, disp: 8, imm: 1, reg: 0 },
  },
  {
    hex: "c6 07 80",
    text: "mov byte ptr [rdi], 0x80",
    fields: { operandSize: 1, immSize: 1, imm: 0x80, immHi: 0 },
  },
  {
    hex: "66 c7 07 34 12",
    text: "mov word ptr [rdi], 0x1234",
    fields: { operandSize: 2, immSize: 2, imm: 0x1234 },
  },
  { hex: "41 c6 00 ff", text: "mov byte ptr [r8], 0xff", fields: { base: 8, imm: 0xff } },
  {
    hex: "48 8b 45 f8",
    text: "mov rax, qword ptr [rbp-0x8]",
    fields: { form: FORM_REG_RM, base: 5, disp: -8 },
  },
  { hex: "89 d8", text: "mov eax, ebx", fields: { mod: 3, rm: 0, reg: 3, isMemory: false } },
  { hex: "8a 27", text: "mov ah, byte ptr [rdi]", fields: { operandSize: 1, reg: 4, rex: 0 } },
  { hex: "40 8a 27", text: "mov spl, byte ptr [rdi]", fields: { reg: 4, rex: 0x40 } },
  { hex: "8a e0", text: "mov ah, al", fields: { reg: 4, rm: 0, isMemory: false } },
  {
    hex: "48 8b 87 00 00 00 00",
    text: "mov rax, qword ptr [rdi]",
    fields: { mod: 2, base: 7, disp: 0 }, // disp32 of zero is still 4 bytes
  },
  {
    hex: "64 48 8b 04 25 28 00 00 00",
    text: "mov rax, qword ptr fs:[0x28]",
    fields: { segment: 0x64, base: -1, index: -1, disp: 0x28, ripRelative: false },
  },
  {
    hex: "65 48 8b 04 25 00 00 00 00",
    text: "mov rax, qword ptr gs:[0x0]",
    fields: { segment: 0x65, base: -1, index: -1 },
  },
  {
    hex: "8b 04 25 00 10 00 80",
    text: "mov eax, dword ptr [0xffffffff80001000]",
    fields: { base: -1, index: -1, disp: -0x7ffff000 },
  },
  {
    hex: "67 8b 07",
    text: "mov eax, dword ptr [edi]",
    fields: { addressSize: 4, base: 7 },
  },
  {
    hex: "67 48 89 05 10 00 00 00",
    text: "mov qword ptr [eip+0x10], rax",
    fields: { addressSize: 4, ripRelative: true, disp: 0x10 },
  },
  // SIB and ModRM special cases (SDM Vol. 2 Tables 2-2, 2-3, 2-5).
  {
    hex: "49 8b 04 24",
    text: "mov rax, qword ptr [r12]",
    fields: { rm: 12, base: 12, index: -1 }, // r12 as base needs a SIB byte
  },
  {
    hex: "49 8b 45 00",
    text: "mov rax, qword ptr [r13]",
    fields: { mod: 1, base: 13, disp: 0 }, // r13 as base needs a displacement
  },
  {
    hex: "4b 8b 44 6c 7f",
    text: "mov rax, qword ptr [r12+r13*2+0x7f]",
    fields: { base: 12, index: 13, scale: 2, disp: 0x7f },
  },
  {
    hex: "8b 04 20",
    text: "mov eax, dword ptr [rax]",
    fields: { base: 0, index: -1 }, // SIB index 100 without REX.X: no index
  },
  {
    hex: "42 8b 04 20",
    text: "mov eax, dword ptr [rax+r12]",
    fields: { base: 0, index: 12, scale: 1 }, // with REX.X it is r12
  },
  {
    hex: "41 8b 04 25 00 10 00 00",
    text: "mov eax, dword ptr [0x1000]",
    fields: { base: -1, index: -1, disp: 0x1000 }, // SIB base 101, mod 0: no base even with REX.B
  },
  {
    hex: "8b 04 65 00 01 00 00",
    text: "mov eax, dword ptr [0x100]",
    fields: { base: -1, index: -1, scale: 2, disp: 0x100 },
  },
  {
    hex: "8b 44 25 08",
    text: "mov eax, dword ptr [rbp+0x8]",
    fields: { base: 5, index: -1, disp: 8 }, // SIB base 101 with mod 1 is rbp
  },
  {
    hex: "41 8b 05 10 00 00 00",
    text: "mov eax, dword ptr [rip+0x10]",
    // mod 0, rm 101 is RIP-relative even with REX.B
    fields: { ripRelative: true, base: -1, rm: 13 },
  },
  {
    hex: "44 03 3d f0 ff ff ff",
    text: "add r15d, dword ptr [rip-0x10]",
    fields: { op: OP_ADD, form: FORM_REG_RM, reg: 15, ripRelative: true, disp: -16 },
  },
  // Prefix rules.
  {
    hex: "66 48 89 37",
    text: "mov qword ptr [rdi], rsi",
    fields: { operandSize: 8 }, // REX.W overrides 66
  },
  {
    hex: "48 66 89 37",
    text: "mov word ptr [rdi], si",
    fields: { operandSize: 2, rex: 0 }, // a REX followed by a legacy prefix is ignored
  },
  {
    hex: "48 40 89 37",
    text: "mov dword ptr [rdi], esi",
    fields: { operandSize: 4, rex: 0x40 }, // only the REX right before the opcode counts
  },
  {
    hex: "66 49 45 b8 01 a0",
    text: "mov r8w, 0xa001",
    fields: { operandSize: 2, rex: 0x45, reg: 8 }, // an ignored REX does not cancel 66
  },
  {
    hex: "2e 48 89 37",
    text: "mov qword ptr [rdi], rsi",
    fields: { segment: 0 }, // CS/DS/ES/SS overrides are null in 64-bit mode
  },
  {
    hex: "64 65 48 89 37",
    text: "mov qword ptr gs:[rdi], rsi",
    fields: { segment: 0x65 }, // the last FS/GS override wins
  },
  {
    hex: "65 2e 48 89 37",
    text: "mov qword ptr gs:[rdi], rsi",
    fields: { segment: 0x65 },
  },
  // XCHG and CMPXCHG: the atomic page-table updates.
  {
    hex: "48 87 37",
    text: "xchg qword ptr [rdi], rsi",
    fields: { op: OP_XCHG, form: FORM_RM_REG, lock: true, lockPrefix: false, operandSize: 8 },
  },
  {
    hex: "48 87 f7",
    text: "xchg rdi, rsi",
    fields: { op: OP_XCHG, lock: false, isMemory: false, rm: 7, reg: 6 },
  },
  {
    hex: "f0 48 87 37",
    text: "lock xchg qword ptr [rdi], rsi",
    fields: { lock: true, lockPrefix: true },
  },
  {
    hex: "86 07",
    text: "xchg byte ptr [rdi], al",
    fields: { op: OP_XCHG, operandSize: 1, lock: true },
  },
  {
    hex: "f0 48 0f b1 37",
    text: "lock cmpxchg qword ptr [rdi], rsi",
    fields: {
      op: OP_CMPXCHG,
      form: FORM_RM_REG,
      opcode: 0x0fb1,
      operandSize: 8,
      lock: true,
      lockPrefix: true,
      base: 7,
      reg: 6,
    },
  },
  {
    hex: "f0 48 0f b1 77 08",
    text: "lock cmpxchg qword ptr [rdi+0x8], rsi",
    fields: { disp: 8 },
  },
  {
    hex: "48 0f b1 37",
    text: "cmpxchg qword ptr [rdi], rsi",
    fields: { op: OP_CMPXCHG, lock: false, lockPrefix: false },
  },
  {
    hex: "48 f0 0f b1 37",
    text: "lock cmpxchg dword ptr [rdi], esi",
    fields: { operandSize: 4, rex: 0 }, // the REX before F0 is ignored
  },
  {
    hex: "f0 0f b0 0f",
    text: "lock cmpxchg byte ptr [rdi], cl",
    fields: { operandSize: 1 },
  },
  {
    hex: "40 0f b0 37",
    text: "cmpxchg byte ptr [rdi], sil",
    fields: { operandSize: 1, reg: 6, rex: 0x40 },
  },
  {
    hex: "f2 f0 48 0f b1 37",
    text: "lock cmpxchg qword ptr [rdi], rsi",
    fields: { rep: 0xf2, lock: true }, // XACQUIRE hint
  },
  {
    hex: "f0 0f c7 0f",
    text: "lock cmpxchg8b qword ptr [rdi]",
    fields: { op: OP_CMPXCHG8B, form: FORM_RM, operandSize: 4, reg: 1, lock: true },
  },
  {
    hex: "f0 48 0f c7 0f",
    text: "lock cmpxchg16b xmmword ptr [rdi]",
    fields: { op: OP_CMPXCHG16B, operandSize: 8 },
  },
  // ALU read-modify-write forms.
  {
    hex: "f0 48 01 07",
    text: "lock add qword ptr [rdi], rax",
    fields: { op: OP_ADD, form: FORM_RM_REG, lock: true },
  },
  {
    hex: "48 03 07",
    text: "add rax, qword ptr [rdi]",
    fields: { op: OP_ADD, form: FORM_REG_RM },
  },
  {
    hex: "48 09 c8",
    text: "or rax, rcx",
    fields: { op: OP_OR, form: FORM_RM_REG, rm: 0, reg: 1 },
  },
  { hex: "0b 07", text: "or eax, dword ptr [rdi]", fields: { op: OP_OR, form: FORM_REG_RM } },
  { hex: "21 07", text: "and dword ptr [rdi], eax", fields: { op: OP_AND } },
  { hex: "23 07", text: "and eax, dword ptr [rdi]", fields: { op: OP_AND } },
  { hex: "29 07", text: "sub dword ptr [rdi], eax", fields: { op: OP_SUB } },
  { hex: "2b 07", text: "sub eax, dword ptr [rdi]", fields: { op: OP_SUB } },
  {
    hex: "f0 48 81 4f 10 78 56 34 12",
    text: "lock or qword ptr [rdi+0x10], 0x12345678",
    fields: { op: OP_OR, form: FORM_RM_IMM, reg: 1, immSize: 4, imm: 0x12345678, immHi: 0 },
  },
  {
    hex: "f0 48 83 27 fe",
    text: "lock and qword ptr [rdi], 0xfffffffffffffffe",
    fields: { op: OP_AND, reg: 4, immSize: 1, imm: -2, immHi: -1 },
  },
  {
    hex: "48 83 ec 08",
    text: "sub rsp, 0x8",
    fields: { op: OP_SUB, form: FORM_RM_IMM, rm: 4, isMemory: false, imm: 8 },
  },
  {
    hex: "4c 81 c0 00 10 00 00",
    text: "add rax, 0x1000",
    fields: { op: OP_ADD, reg: 0, rex: 0x4c }, // REX.R does not extend a /digit
  },
  { hex: "66 81 07 34 12", text: "add word ptr [rdi], 0x1234", fields: { immSize: 2 } },
  // BTS/BTR.
  {
    hex: "f0 48 0f ab 07",
    text: "lock bts qword ptr [rdi], rax",
    fields: { op: OP_BTS, form: FORM_RM_REG, lock: true },
  },
  { hex: "48 0f b3 f8", text: "btr rax, rdi", fields: { op: OP_BTR, isMemory: false } },
  {
    hex: "f0 48 0f ba 37 05",
    text: "lock btr qword ptr [rdi], 0x5",
    fields: { op: OP_BTR, form: FORM_RM_IMM, reg: 6, immSize: 1, imm: 5 },
  },
  {
    hex: "48 0f ba 2f 3f",
    text: "bts qword ptr [rdi], 0x3f",
    fields: { op: OP_BTS, reg: 5, imm: 63 },
  },
  // String stores.
  {
    hex: "f3 48 ab",
    text: "rep stosq",
    fields: { op: OP_STOS, form: FORM_NONE, rep: 0xf3, operandSize: 8, hasModrm: false },
  },
  { hex: "f3 ab", text: "rep stosd", fields: { op: OP_STOS, operandSize: 4 } },
  { hex: "f3 aa", text: "rep stosb", fields: { op: OP_STOS, operandSize: 1 } },
  { hex: "48 ab", text: "stosq", fields: { rep: 0 } },
  { hex: "f3 48 a5", text: "rep movsq", fields: { op: OP_MOVS, operandSize: 8 } },
  { hex: "f3 a4", text: "rep movsb", fields: { op: OP_MOVS, operandSize: 1 } },
  { hex: "f2 f3 ab", text: "rep stosd", fields: { rep: 0xf3 } }, // the last F2/F3 wins
  { hex: "67 f3 48 ab", text: "rep stosq", fields: { addressSize: 4 } },
  // Control registers and TLB.
  {
    hex: "0f 22 d8",
    text: "mov cr3, rax",
    fields: {
      op: OP_MOV_TO_CR,
      form: FORM_RM,
      opcode: 0x0f22,
      crRegister: 3,
      rm: 0,
      operandSize: 8,
      isMemory: false,
    },
  },
  { hex: "0f 20 d8", text: "mov rax, cr3", fields: { op: OP_MOV_FROM_CR, crRegister: 3 } },
  { hex: "0f 20 d0", text: "mov rax, cr2", fields: { crRegister: 2 } },
  { hex: "0f 22 e3", text: "mov cr4, rbx", fields: { crRegister: 4, rm: 3 } },
  { hex: "0f 22 c0", text: "mov cr0, rax", fields: { crRegister: 0 } },
  { hex: "44 0f 22 c0", text: "mov cr8, rax", fields: { crRegister: 8, reg: 8 } },
  { hex: "41 0f 22 c0", text: "mov cr0, r8", fields: { crRegister: 0, rm: 8 } },
  {
    hex: "0f 22 18",
    text: "mov cr3, rax",
    fields: { mod: 0, isMemory: false, rm: 0 }, // mod bits ignored: no SIB, no displacement
  },
  {
    hex: "0f 01 3f",
    text: "invlpg [rdi]",
    fields: { op: OP_INVLPG, form: FORM_RM, opcode: 0x0f01, reg: 7, base: 7, isMemory: true },
  },
  {
    hex: "0f 01 bc 98 00 10 00 00",
    text: "invlpg [rax+rbx*4+0x1000]",
    fields: { base: 0, index: 3, scale: 4, disp: 0x1000 },
  },
  {
    hex: "66 0f 38 82 07",
    text: "invpcid rax, [rdi]",
    fields: { op: OP_INVPCID, form: FORM_REG_RM, opcode: 0x0f3882, reg: 0, base: 7 },
  },
  { hex: "0f 09", text: "wbinvd", fields: { op: OP_WBINVD, opcode: 0x0f09 } },
  // Descriptor tables.
  { hex: "0f 01 17", text: "lgdt [rdi]", fields: { op: OP_LGDT, reg: 2 } },
  { hex: "0f 01 1f", text: "lidt [rdi]", fields: { op: OP_LIDT, reg: 3 } },
  { hex: "0f 01 07", text: "sgdt [rdi]", fields: { op: OP_SGDT, reg: 0 } },
  { hex: "0f 01 0f", text: "sidt [rdi]", fields: { op: OP_SIDT, reg: 1 } },
  // Interrupts, flags, ports, system calls.
  { hex: "fa", text: "cli", fields: { op: OP_CLI, form: FORM_NONE } },
  { hex: "fb", text: "sti", fields: { op: OP_STI } },
  { hex: "f4", text: "hlt", fields: { op: OP_HLT } },
  { hex: "48 cf", text: "iretq", fields: { op: OP_IRET, operandSize: 8 } },
  { hex: "cf", text: "iretd", fields: { op: OP_IRET, operandSize: 4 } },
  { hex: "66 cf", text: "iretw", fields: { op: OP_IRET, operandSize: 2 } },
  { hex: "9c", text: "pushfq", fields: { op: OP_PUSHF, operandSize: 8 } },
  { hex: "9d", text: "popfq", fields: { op: OP_POPF, operandSize: 8 } },
  { hex: "66 9c", text: "pushfw", fields: { op: OP_PUSHF, operandSize: 2 } },
  {
    hex: "e4 60",
    text: "in al, 0x60",
    fields: { op: OP_IN, form: FORM_IMM, operandSize: 1, imm: 0x60 },
  },
  { hex: "e5 60", text: "in eax, 0x60", fields: { op: OP_IN, operandSize: 4 } },
  { hex: "ec", text: "in al, dx", fields: { op: OP_IN, form: FORM_NONE, operandSize: 1 } },
  { hex: "ed", text: "in eax, dx", fields: { op: OP_IN, operandSize: 4 } },
  { hex: "e6 80", text: "out 0x80, al", fields: { op: OP_OUT, imm: 0x80, immHi: 0 } },
  { hex: "e7 70", text: "out 0x70, eax", fields: { op: OP_OUT, operandSize: 4 } },
  { hex: "ee", text: "out dx, al", fields: { op: OP_OUT, operandSize: 1 } },
  { hex: "66 ef", text: "out dx, ax", fields: { op: OP_OUT, operandSize: 2 } },
  { hex: "48 ef", text: "out dx, eax", fields: { operandSize: 4 } }, // REX.W has no effect
  { hex: "0f 05", text: "syscall", fields: { op: OP_SYSCALL } },
  { hex: "48 0f 07", text: "sysretq", fields: { op: OP_SYSRET, operandSize: 8 } },
  { hex: "0f 07", text: "sysret", fields: { op: OP_SYSRET, operandSize: 4 } },
  { hex: "cd 80", text: "int 0x80", fields: { op: OP_INT, form: FORM_IMM, imm: 0x80 } },
  { hex: "cc", text: "int3", fields: { op: OP_INT3 } },
  // Branches: imm is relative to the next instruction; text shows $ (this instruction).
  { hex: "c3", text: "ret", fields: { op: OP_RET, operandSize: 8 } },
  { hex: "f3 c3", text: "ret", fields: { op: OP_RET, rep: 0xf3 } },
  { hex: "eb 0e", text: "jmp $+0x10", fields: { op: OP_JMP, immSize: 1, imm: 14 } },
  { hex: "eb fe", text: "jmp $+0x0", fields: { imm: -2, immHi: -1 } },
  { hex: "e9 fb 0f 00 00", text: "jmp $+0x1000", fields: { op: OP_JMP, immSize: 4 } },
  { hex: "e8 fb 0f 00 00", text: "call $+0x1000", fields: { op: OP_CALL, imm: 0xffb } },
  { hex: "e8 f0 ff ff ff", text: "call $-0xb", fields: { imm: -16 } },
  // The ALU block's byte and accumulator forms (rm 0: AL/AX/EAX/RAX, no ModRM).
  { hex: "00 c8", text: "add al, cl", fields: { op: OP_ADD, form: FORM_RM_REG, operandSize: 1 } },
  { hex: "02 07", text: "add al, byte ptr [rdi]", fields: { form: FORM_REG_RM, operandSize: 1 } },
  {
    hex: "04 7f",
    text: "add al, 0x7f",
    fields: { op: OP_ADD, form: FORM_RM_IMM, rm: 0, hasModrm: false, isMemory: false, imm: 0x7f },
  },
  { hex: "05 ff ff ff ff", text: "add eax, 0xffffffff", fields: { operandSize: 4, immSize: 4 } },
  {
    hex: "48 05 00 00 00 80",
    text: "add rax, 0xffffffff80000000",
    fields: { operandSize: 8, immSize: 4, imm: -0x80000000, immHi: -1 },
  },
  { hex: "66 05 34 12", text: "add ax, 0x1234", fields: { operandSize: 2, immSize: 2 } },
  { hex: "0c 01", text: "or al, 0x1", fields: { op: OP_OR, operandSize: 1 } },
  { hex: "0d 00 01 00 00", text: "or eax, 0x100", fields: { op: OP_OR, operandSize: 4 } },
  { hex: "24 f0", text: "and al, 0xf0", fields: { op: OP_AND, imm: 0xf0 } },
  {
    hex: "48 25 00 f0 ff ff",
    text: "and rax, 0xfffffffffffff000",
    fields: { op: OP_AND, imm: -0x1000, immHi: -1 },
  },
  { hex: "2c 01", text: "sub al, 0x1", fields: { op: OP_SUB, operandSize: 1 } },
  { hex: "2d 01 00 00 00", text: "sub eax, 0x1", fields: { op: OP_SUB } },
  {
    hex: "80 07 80",
    text: "add byte ptr [rdi], 0x80",
    fields: { op: OP_ADD, form: FORM_RM_IMM, operandSize: 1, immSize: 1, imm: 0x80, immHi: 0 },
  },
  { hex: "80 c1 ff", text: "add cl, 0xff", fields: { rm: 1, isMemory: false } },
  { hex: "41 80 20 fe", text: "and byte ptr [r8], 0xfe", fields: { op: OP_AND, base: 8 } },
  { hex: "80 4f 08 01", text: "or byte ptr [rdi+0x8], 0x1", fields: { op: OP_OR, disp: 8 } },
  { hex: "80 2f 01", text: "sub byte ptr [rdi], 0x1", fields: { op: OP_SUB, reg: 5 } },
  // XOR.
  {
    hex: "48 31 c0",
    text: "xor rax, rax",
    fields: { op: OP_XOR, form: FORM_RM_REG, operandSize: 8, rm: 0, reg: 0 },
  },
  { hex: "31 c0", text: "xor eax, eax", fields: { op: OP_XOR, operandSize: 4 } },
  { hex: "30 e4", text: "xor ah, ah", fields: { operandSize: 1, rm: 4, reg: 4, rex: 0 } },
  { hex: "40 30 e4", text: "xor spl, spl", fields: { rex: 0x40 } },
  { hex: "32 07", text: "xor al, byte ptr [rdi]", fields: { op: OP_XOR, form: FORM_REG_RM } },
  { hex: "48 33 07", text: "xor rax, qword ptr [rdi]", fields: { op: OP_XOR, operandSize: 8 } },
  { hex: "34 ff", text: "xor al, 0xff", fields: { op: OP_XOR, form: FORM_RM_IMM, rm: 0 } },
  { hex: "35 78 56 34 12", text: "xor eax, 0x12345678", fields: { imm: 0x12345678 } },
  {
    hex: "48 35 ff ff ff ff",
    text: "xor rax, 0xffffffffffffffff",
    fields: { imm: -1, immHi: -1 },
  },
  { hex: "80 37 01", text: "xor byte ptr [rdi], 0x1", fields: { op: OP_XOR, reg: 6 } },
  { hex: "81 f1 00 00 01 00", text: "xor ecx, 0x10000", fields: { op: OP_XOR, rm: 1 } },
  { hex: "48 83 f0 ff", text: "xor rax, 0xffffffffffffffff", fields: { immSize: 1 } },
  {
    hex: "f0 48 31 07",
    text: "lock xor qword ptr [rdi], rax",
    fields: { op: OP_XOR, lock: true, lockPrefix: true },
  },
  { hex: "f0 80 37 01", text: "lock xor byte ptr [rdi], 0x1", fields: { lock: true } },
  // CMP.
  { hex: "38 c8", text: "cmp al, cl", fields: { op: OP_CMP, form: FORM_RM_REG, operandSize: 1 } },
  { hex: "39 07", text: "cmp dword ptr [rdi], eax", fields: { op: OP_CMP, form: FORM_RM_REG } },
  { hex: "48 39 f8", text: "cmp rax, rdi", fields: { rm: 0, reg: 7 } },
  { hex: "3a 07", text: "cmp al, byte ptr [rdi]", fields: { op: OP_CMP, form: FORM_REG_RM } },
  { hex: "3b 47 08", text: "cmp eax, dword ptr [rdi+0x8]", fields: { form: FORM_REG_RM } },
  { hex: "3c 0a", text: "cmp al, 0xa", fields: { op: OP_CMP, form: FORM_RM_IMM, rm: 0 } },
  { hex: "3d 00 10 00 00", text: "cmp eax, 0x1000", fields: { operandSize: 4, immSize: 4 } },
  { hex: "48 3d ff 0f 00 00", text: "cmp rax, 0xfff", fields: { operandSize: 8 } },
  { hex: "80 3f 00", text: "cmp byte ptr [rdi], 0x0", fields: { op: OP_CMP, reg: 7 } },
  {
    hex: "48 81 3f 00 00 00 80",
    text: "cmp qword ptr [rdi], 0xffffffff80000000",
    fields: { op: OP_CMP, imm: -0x80000000, immHi: -1 },
  },
  { hex: "48 83 ff ff", text: "cmp rdi, 0xffffffffffffffff", fields: { rm: 7, immSize: 1 } },
  { hex: "83 7d fc 00", text: "cmp dword ptr [rbp-0x4], 0x0", fields: { base: 5, disp: -4 } },
  // TEST.
  { hex: "84 c0", text: "test al, al", fields: { op: OP_TEST, form: FORM_RM_REG, operandSize: 1 } },
  { hex: "85 c0", text: "test eax, eax", fields: { op: OP_TEST, operandSize: 4 } },
  { hex: "48 85 ff", text: "test rdi, rdi", fields: { operandSize: 8, rm: 7, reg: 7 } },
  { hex: "84 27", text: "test byte ptr [rdi], ah", fields: { reg: 4, isMemory: true } },
  {
    hex: "a8 01",
    text: "test al, 0x1",
    fields: { op: OP_TEST, form: FORM_RM_IMM, rm: 0, hasModrm: false, operandSize: 1 },
  },
  { hex: "a9 00 02 00 00", text: "test eax, 0x200", fields: { immSize: 4 } },
  { hex: "48 a9 01 00 00 00", text: "test rax, 0x1", fields: { operandSize: 8 } },
  { hex: "66 a9 ff 7f", text: "test ax, 0x7fff", fields: { operandSize: 2, immSize: 2 } },
  { hex: "f6 07 01", text: "test byte ptr [rdi], 0x1", fields: { op: OP_TEST, reg: 0 } },
  { hex: "f6 c4 80", text: "test ah, 0x80", fields: { rm: 4, isMemory: false } },
  { hex: "f7 c1 00 00 00 80", text: "test ecx, 0x80000000", fields: { operandSize: 4 } },
  {
    hex: "48 f7 07 ff ff ff ff",
    text: "test qword ptr [rdi], 0xffffffffffffffff",
    fields: { imm: -1, immHi: -1 },
  },
  { hex: "66 f7 07 34 12", text: "test word ptr [rdi], 0x1234", fields: { immSize: 2 } },
  // INC and DEC.
  { hex: "fe c0", text: "inc al", fields: { op: OP_INC, form: FORM_RM, operandSize: 1 } },
  { hex: "fe 0f", text: "dec byte ptr [rdi]", fields: { op: OP_DEC, reg: 1 } },
  { hex: "ff c1", text: "inc ecx", fields: { op: OP_INC, rm: 1, operandSize: 4 } },
  { hex: "ff c9", text: "dec ecx", fields: { op: OP_DEC, rm: 1 } },
  { hex: "48 ff c7", text: "inc rdi", fields: { operandSize: 8, rm: 7 } },
  { hex: "48 ff 0f", text: "dec qword ptr [rdi]", fields: { op: OP_DEC, operandSize: 8 } },
  { hex: "66 ff 07", text: "inc word ptr [rdi]", fields: { operandSize: 2 } },
  { hex: "41 ff c0", text: "inc r8d", fields: { rm: 8 } },
  { hex: "f0 ff 07", text: "lock inc dword ptr [rdi]", fields: { op: OP_INC, lock: true } },
  { hex: "f0 48 ff 0f", text: "lock dec qword ptr [rdi]", fields: { op: OP_DEC, lock: true } },
  // PUSH and POP: 64-bit by default; 50+r / 58+r put the register in rm.
  {
    hex: "50",
    text: "push rax",
    fields: { op: OP_PUSH, form: FORM_RM, rm: 0, operandSize: 8, hasModrm: false },
  },
  { hex: "55", text: "push rbp", fields: { rm: 5 } },
  { hex: "41 57", text: "push r15", fields: { rm: 15, operandSize: 8 } },
  { hex: "54", text: "push rsp", fields: { rm: 4 } },
  { hex: "48 50", text: "push rax", fields: { operandSize: 8 } },
  { hex: "66 50", text: "push ax", fields: { operandSize: 2 } },
  { hex: "58", text: "pop rax", fields: { op: OP_POP, form: FORM_RM, rm: 0, operandSize: 8 } },
  { hex: "5c", text: "pop rsp", fields: { op: OP_POP, rm: 4 } },
  { hex: "41 5f", text: "pop r15", fields: { rm: 15 } },
  {
    hex: "8f 07",
    text: "pop qword ptr [rdi]",
    fields: { op: OP_POP, form: FORM_RM, isMemory: true, base: 7, operandSize: 8 },
  },
  { hex: "41 8f 00", text: "pop qword ptr [r8]", fields: { base: 8 } },
  { hex: "8f c0", text: "pop rax", fields: { op: OP_POP, isMemory: false, rm: 0 } },
  {
    hex: "ff 37",
    text: "push qword ptr [rdi]",
    fields: { op: OP_PUSH, form: FORM_RM, reg: 6, operandSize: 8 },
  },
  { hex: "ff 74 24 08", text: "push qword ptr [rsp+0x8]", fields: { base: 4, disp: 8 } },
  { hex: "48 ff 37", text: "push qword ptr [rdi]", fields: { operandSize: 8 } },
  { hex: "ff f0", text: "push rax", fields: { op: OP_PUSH, isMemory: false, rm: 0 } },
  {
    hex: "6a 01",
    text: "push 0x1",
    fields: { op: OP_PUSH, form: FORM_IMM, immSize: 1, imm: 1, immHi: 0, operandSize: 8 },
  },
  { hex: "6a ff", text: "push 0xffffffffffffffff", fields: { imm: -1, immHi: -1 } },
  { hex: "68 78 56 34 12", text: "push 0x12345678", fields: { immSize: 4, imm: 0x12345678 } },
  {
    hex: "68 00 00 00 80",
    text: "push 0xffffffff80000000",
    fields: { imm: -0x80000000, immHi: -1 },
  },
  { hex: "66 68 34 12", text: "push 0x1234", fields: { operandSize: 2, immSize: 2 } },
  { hex: "66 6a ff", text: "push 0xffff", fields: { operandSize: 2, immSize: 1 } },
  // Jcc: condition in SDM order O, NO, B, AE, E, NE, BE, A, S, NS, P, NP, L, GE, LE, G.
  {
    hex: "70 10",
    text: "jo $+0x12",
    fields: { op: OP_JCC, form: FORM_IMM, condition: 0, immSize: 1, imm: 0x10, operandSize: 8 },
  },
  { hex: "72 fe", text: "jb $+0x0", fields: { condition: 2, imm: -2, immHi: -1 } },
  { hex: "74 00", text: "je $+0x2", fields: { condition: 4 } },
  { hex: "75 f9", text: "jne $-0x5", fields: { condition: 5, imm: -7 } },
  { hex: "7f 80", text: "jg $-0x7e", fields: { condition: 15, imm: -128 } },
  { hex: "f2 75 00", text: "jne $+0x3", fields: { rep: 0xf2 } }, // BND hint, ignored
  {
    hex: "0f 84 00 10 00 00",
    text: "je $+0x1006",
    fields: { op: OP_JCC, opcode: 0x0f84, condition: 4, immSize: 4, imm: 0x1000 },
  },
  { hex: "0f 8c fa ff ff ff", text: "jl $+0x0", fields: { condition: 12, imm: -6 } },
  { hex: "0f 8f 00 00 00 80", text: "jg $-0x7ffffffa", fields: { condition: 15 } },
  // MOVZX: operandSize is the destination's; the source is a byte (B6) or a word (B7).
  {
    hex: "0f b6 c0",
    text: "movzx eax, al",
    fields: { op: OP_MOVZX, form: FORM_REG_RM, opcode: 0x0fb6, operandSize: 4, rm: 0 },
  },
  { hex: "0f b6 c4", text: "movzx eax, ah", fields: { rm: 4, rex: 0 } },
  { hex: "40 0f b6 c4", text: "movzx eax, spl", fields: { rm: 4, rex: 0x40 } },
  { hex: "0f b6 07", text: "movzx eax, byte ptr [rdi]", fields: { isMemory: true } },
  { hex: "48 0f b6 07", text: "movzx rax, byte ptr [rdi]", fields: { operandSize: 8 } },
  { hex: "0f b7 07", text: "movzx eax, word ptr [rdi]", fields: { opcode: 0x0fb7 } },
  { hex: "48 0f b7 c1", text: "movzx rax, cx", fields: { operandSize: 8, rm: 1 } },
  { hex: "66 0f b6 07", text: "movzx ax, byte ptr [rdi]", fields: { operandSize: 2 } },
  { hex: "44 0f b6 3f", text: "movzx r15d, byte ptr [rdi]", fields: { reg: 15 } },
  // The MOVs a guest's startup code uses.
  { hex: "b9 05 00 00 00", text: "mov ecx, 0x5", fields: { op: OP_MOV, reg: 1, imm: 5 } },
  { hex: "48 89 e7", text: "mov rdi, rsp", fields: { op: OP_MOV, rm: 7, reg: 4 } },
  { hex: "c6 00 2a", text: "mov byte ptr [rax], 0x2a", fields: { operandSize: 1, imm: 0x2a } },
  // NOPs.
  { hex: "90", text: "nop", fields: { op: OP_NOP, form: FORM_NONE } },
  { hex: "66 90", text: "nop", fields: { op: OP_NOP } },
  { hex: "48 90", text: "nop", fields: { op: OP_NOP } },
  { hex: "0f 1f 00", text: "nop dword ptr [rax]", fields: { op: OP_NOP, form: FORM_RM } },
  { hex: "0f 1f 44 00 00", text: "nop dword ptr [rax+rax]", fields: { base: 0, index: 0 } },
  { hex: "66 0f 1f 04 00", text: "nop word ptr [rax+rax]", fields: { operandSize: 2 } },
  {
    hex: "66 0f 1f 84 00 00 00 00 00",
    text: "nop word ptr [rax+rax]",
    fields: { mod: 2, disp: 0 },
  },
];

for (const c of VALID_CASES) {
  Deno.test(`decodeInstruction() decodes ${c.hex} as "${c.text}"`, () => {
    const bytes = parseHex(c.hex);
    const d = new DecodedInstruction();
    assert.equal(decodeInstruction(bytes, 0, d), bytes.length);
    assert.equal(d.length, bytes.length);
    assert.equal(d.tooLong, false);
    assertFields(d, c.fields, c.hex);
    assert.equal(formatInstruction(d), c.text);
  });
}

Deno.test("decodeInstruction() ignores the bytes after an instruction", () => {
  const d = new DecodedInstruction();
  for (const c of VALID_CASES) {
    const bytes = parseHex(c.hex);
    const padded = new Uint8Array(bytes.length + 16).fill(0xff);
    padded.set(bytes, 5);
    assert.equal(decodeInstruction(padded, 5, d), bytes.length, c.hex);
    assert.equal(formatInstruction(d), c.text, c.hex);
  }
});

Deno.test("decodeInstruction() returns -1 for every proper prefix of a valid encoding", () => {
  const d = new DecodedInstruction();
  for (const c of VALID_CASES) {
    const bytes = parseHex(c.hex);
    for (let n = 0; n < bytes.length; n++) {
      assert.equal(decodeInstruction(bytes.subarray(0, n), 0, d), -1, `${c.hex} cut to ${n}`);
      assert.equal(d.op, OP_INVALID);
      assert.equal(d.length, 0);
      assert.equal(d.tooLong, false);
    }
  }
});

const INVALID_CASES: Array<{ hex: string; why: string }> = [
  // LOCK only on a memory destination of ADD/OR/AND/SUB/XCHG/CMPXCHG/CMPXCHG8B/BTS/BTR.
  { hex: "f0 48 89 37", why: "lock mov" },
  { hex: "f0 c7 07 00 00 00 00", why: "lock mov imm" },
  { hex: "f0 48 01 f8", why: "lock add to a register" },
  { hex: "f0 48 03 07", why: "lock add with a register destination" },
  { hex: "f0 48 83 e8 01", why: "lock sub from a register" },
  { hex: "f0 48 87 f7", why: "lock xchg of registers" },
  { hex: "f0 48 0f b1 f7", why: "lock cmpxchg to a register" },
  { hex: "f0 48 0f ba e8 05", why: "lock bts on a register" },
  { hex: "f0 48 ab", why: "lock stos" },
  { hex: "f0 fa", why: "lock cli" },
  { hex: "f0 90", why: "lock nop" },
  { hex: "f0 0f 22 d8", why: "lock mov cr3 (AMD's CR8 alias is not modelled)" },
  { hex: "f0 0f 01 3f", why: "lock invlpg" },
  // Control registers other than CR0, CR2, CR3, CR4, CR8.
  { hex: "0f 22 c8", why: "mov cr1" },
  { hex: "0f 22 e8", why: "mov cr5" },
  { hex: "0f 20 f0", why: "mov from cr6" },
  { hex: "0f 22 f8", why: "mov cr7" },
  { hex: "44 0f 22 c8", why: "mov cr9" },
  { hex: "44 0f 20 f8", why: "mov from cr15" },
  // Register forms that are other instructions, and digits outside the subset.
  { hex: "0f 01 f8", why: "swapgs (0F 01 /7 with mod 3)" },
  { hex: "0f 01 c1", why: "vmcall" },
  { hex: "0f 01 d9", why: "vmmcall" },
  { hex: "0f 01 27", why: "smsw m (/4)" },
  { hex: "0f 01 37", why: "lmsw m (/6)" },
  { hex: "66 0f 38 82 c7", why: "invpcid with a register operand" },
  { hex: "0f 38 82 07", why: "invpcid without its 66 prefix" },
  { hex: "f3 66 0f 38 82 07", why: "invpcid with F3" },
  { hex: "0f c7 c8", why: "cmpxchg8b with a register operand" },
  { hex: "0f c7 37", why: "vmptrld (0F C7 /6)" },
  { hex: "0f ba 27 05", why: "bt imm8 (/4)" },
  { hex: "0f ba 3f 05", why: "btc imm8 (/7)" },
  { hex: "0f 1f 48 00", why: "reserved-NOP 0F 1F /1" },
  { hex: "48 83 17 01", why: "adc (83 /2)" },
  { hex: "48 83 1f 01", why: "sbb (83 /3)" },
  { hex: "80 17 01", why: "adc (80 /2)" },
  { hex: "10 c8", why: "adc r/m8, r8" },
  { hex: "1b 07", why: "sbb r32, r/m32" },
  { hex: "14 01", why: "adc al, imm8" },
  { hex: "82 c0 01", why: "82 (invalid in 64-bit mode)" },
  { hex: "f6 17", why: "not (F6 /2)" },
  { hex: "f7 1f", why: "neg (F7 /3)" },
  { hex: "f7 0f 00 00 00 00", why: "F7 /1 (reserved alias of TEST)" },
  { hex: "fe 17", why: "FE /2" },
  { hex: "ff 17", why: "call [rdi] (FF /2)" },
  { hex: "ff 27", why: "jmp [rdi] (FF /4)" },
  { hex: "ff 3f", why: "FF /7" },
  { hex: "8f 0f", why: "8F /1 (AMD XOP)" },
  { hex: "f0 48 39 07", why: "lock cmp" },
  { hex: "f0 80 3f 00", why: "lock cmp imm" },
  { hex: "f0 48 85 07", why: "lock test" },
  { hex: "f0 f6 07 01", why: "lock test imm" },
  { hex: "f0 ff c0", why: "lock inc of a register" },
  { hex: "f0 ff 37", why: "lock push" },
  { hex: "f0 8f 07", why: "lock pop" },
  { hex: "f0 34 01", why: "lock xor al, imm8 (a register destination)" },
  { hex: "f0 0f b6 07", why: "lock movzx" },
  { hex: "f0 75 00", why: "lock jne" },
  { hex: "66 75 00", why: "66 on jcc rel8 (model-specific)" },
  { hex: "66 0f 84 00 00 00 00", why: "66 on jcc rel32 (model-specific)" },
  { hex: "f2 0f 84 00 00 00 00", why: "F2 before 0F 84 (BND jcc, not modelled)" },
  { hex: "f3 0f b6 07", why: "F3 before 0F B6" },
  { hex: "c7 f8 00 00 00 00", why: "xbegin (C7 F8)" },
  { hex: "c6 f8 00", why: "xabort (C6 F8)" },
  { hex: "c7 0f 00 00 00 00", why: "C7 /1" },
  // Prefixes that select other instructions.
  { hex: "f3 90", why: "pause" },
  { hex: "41 90", why: "xchg r8d, eax" },
  { hex: "91", why: "xchg ecx, eax" },
  { hex: "f3 0f 09", why: "wbnoinvd" },
  { hex: "66 0f 09", why: "66 0F 09 is reserved" },
  { hex: "f3 0f 05", why: "F3 before a 0F opcode" },
  { hex: "f3 0f b1 37", why: "xrelease cmpxchg without lock" },
  { hex: "f3 0f 1e fa", why: "endbr64" },
  { hex: "66 c3", why: "66 on a near ret (model-specific)" },
  { hex: "66 eb 00", why: "66 on jmp rel8 (model-specific)" },
  { hex: "66 e9 00 00 00 00", why: "66 on jmp rel32 (model-specific)" },
  { hex: "66 e8 00 00 00 00", why: "66 on call rel32 (model-specific)" },
  // Outside the subset entirely.
  { hex: "c4 e2 79 18 07", why: "VEX vbroadcastss" },
  { hex: "c5 f8 77", why: "VEX vzeroupper" },
  { hex: "62 f1 7c 48 10 07", why: "EVEX vmovups" },
  { hex: "d9 e8", why: "x87 fld1" },
  { hex: "0f 0f c1 9e", why: "3DNow pfadd" },
  { hex: "0f 0b", why: "ud2" },
  { hex: "0f ff", why: "ud0" },
  { hex: "0f b8 07", why: "jmpe (0F B8)" },
  { hex: "0f be 07", why: "movsx (not in the subset)" },
];

for (const c of INVALID_CASES) {
  Deno.test(`decodeInstruction() rejects ${c.why} (${c.hex})`, () => {
    const d = new DecodedInstruction();
    assert.equal(decodeInstruction(parseHex(c.hex), 0, d), 0);
    assert.equal(d.op, OP_INVALID);
    assert.equal(d.form, FORM_NONE);
    assert.equal(d.length, 0);
    assert.equal(d.tooLong, false);
    assert.equal(formatInstruction(d), "(bad)");
  });
}

Deno.test("decodeInstruction() accepts 15 bytes and rejects 16 with tooLong", () => {
  const d = new DecodedInstruction();
  const cases: Array<{ hex: string; length: number }> = [
    { hex: repeatHex("66", 14) + " 90", length: 15 },
    { hex: repeatHex("66", 13) + " 0f 05", length: 15 },
    { hex: repeatHex("66", 5) + " 48 b8 88 77 66 55 44 33 22 11", length: 15 },
    { hex: "2e 64 67 48 81 84 88 11 22 33 44 55 66 77 88", length: 15 },
    { hex: repeatHex("48", 14) + " 90", length: 15 },
  ];
  for (const c of cases) {
    assert.equal(decodeInstruction(parseHex(c.hex), 0, d), c.length, c.hex);
    assert.equal(d.tooLong, false);
    const longer = parseHex("3e " + c.hex); // one more (null) prefix: 16 bytes
    assert.equal(decodeInstruction(longer, 0, d), 0, "3e " + c.hex);
    assert.equal(d.tooLong, true);
    assert.equal(d.op, OP_INVALID);
    assert.equal(d.length, 0);
  }
});

Deno.test("decodeInstruction() rejects every valid case padded to 16 bytes with prefixes", () => {
  const d = new DecodedInstruction();
  for (const c of VALID_CASES) {
    const bytes = parseHex(c.hex);
    const padded = parseHex(repeatHex("3e", 16 - bytes.length) + " " + c.hex);
    const paddedToFifteen = padded.subarray(1);
    assert.equal(decodeInstruction(paddedToFifteen, 0, d), 15, c.hex);
    // Only 15 bytes are there, yet the 16th is known to be needed: #GP, not a fetch.
    assert.equal(decodeInstruction(padded.subarray(0, 15), 0, d), 0, c.hex);
    assert.equal(d.tooLong, true, c.hex);
    assert.equal(decodeInstruction(padded, 0, d), 0, c.hex);
    assert.equal(d.tooLong, true, c.hex);
  }
});

Deno.test("decodeInstruction() reports tooLong as soon as the encoding passes 15 bytes", () => {
  const d = new DecodedInstruction();
  // 4 prefixes, 81 /0, SIB, disp32, imm32: 16 bytes. Once the displacement is read, the
  // immediate is known to end past byte 15, whether or not its bytes are there.
  const sixteen = parseHex("2e 2e 64 67 48 81 84 88 11 22 33 44 55 66 77 88");
  for (let n = 12; n <= 16; n++) {
    assert.equal(decodeInstruction(sixteen.subarray(0, n), 0, d), 0, `${n} bytes`);
    assert.equal(d.tooLong, true);
  }
  for (let n = 0; n < 12; n++) {
    assert.equal(decodeInstruction(sixteen.subarray(0, n), 0, d), -1, `${n} bytes`);
    assert.equal(d.tooLong, false);
  }
  assert.equal(decodeInstruction(parseHex(repeatHex("66", 15)), 0, d), 0);
  assert.equal(d.tooLong, true);
  assert.equal(decodeInstruction(parseHex(repeatHex("66", 14)), 0, d), -1);
  assert.equal(decodeInstruction(parseHex(repeatHex("66", 40)), 0, d), 0);
  assert.equal(d.tooLong, true);
});

Deno.test("decodeInstruction() checks LOCK only after reading the whole instruction", () => {
  // A fetch #PF on the rest of the instruction comes before the #UD (SDM Vol. 3 §6.9).
  const d = new DecodedInstruction();
  assert.equal(decodeInstruction(parseHex("f0 48 89"), 0, d), -1);
  assert.equal(decodeInstruction(parseHex("f0 48 89 37"), 0, d), 0);
  assert.equal(decodeInstruction(parseHex("f0 48 83 e8"), 0, d), -1);
  assert.equal(decodeInstruction(parseHex("f0 48 83 e8 01"), 0, d), 0);
});

Deno.test("decodeInstruction() decodes at an offset inside a larger buffer", () => {
  const code = parseHex("90 48 89 37 f3 48 ab c3");
  const d = new DecodedInstruction();
  const texts: string[] = [];
  let offset = 0;
  while (offset < code.length) {
    const length = decodeInstruction(code, offset, d);
    assert.ok(length > 0);
    texts.push(formatInstruction(d));
    offset += length;
  }
  assert.deepEqual(texts, ["nop", "mov qword ptr [rdi], rsi", "rep stosq", "ret"]);
  assert.equal(decodeInstruction(code, code.length, d), -1);
});

Deno.test("decodeInstruction() treats an offset outside the buffer as invalid", () => {
  const code = parseHex("90");
  const d = new DecodedInstruction();
  for (const offset of [-1, 0.5, 2, NaN, Infinity]) {
    assert.equal(decodeInstruction(code, offset, d), 0, String(offset));
    assert.equal(d.op, OP_INVALID);
  }
});

Deno.test("decodeInstruction() resets every field when the record is reused", () => {
  const d = new DecodedInstruction();
  decodeInstruction(parseHex("f0 65 67 4c 0f b1 74 24 08"), 0, d);
  assert.equal(d.segment, 0x65);
  decodeInstruction(parseHex("90"), 0, d);
  const fresh = new DecodedInstruction();
  decodeInstruction(parseHex("90"), 0, fresh);
  assert.deepEqual({ ...d }, { ...fresh });
  assert.deepEqual(Object.keys(d), Object.keys(new DecodedInstruction()));
});

// Exhaustive opcode tables: with every ModRM digit, exactly the subset's opcodes decode.
const ONE_BYTE_PREFIXES = new Set(
  parseHex("26 2e 36 3e 64 65 66 67 f0 f2 f3 40 41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f"),
);
// Opcodes whose ModRM digit (if any) does not matter.
const SUBSET_ONE_BYTE = new Set(
  parseHex(
    // ADD, OR, AND, SUB, XOR, CMP in all six forms (ADC 10-15 and SBB 18-1D are not).
    "00 01 02 03 04 05 08 09 0a 0b 0c 0d 20 21 22 23 24 25 28 29 2a 2b 2c 2d " +
      "30 31 32 33 34 35 38 39 3a 3b 3c 3d " +
      "50 51 52 53 54 55 56 57 58 59 5a 5b 5c 5d 5e 5f 68 6a " +
      "70 71 72 73 74 75 76 77 78 79 7a 7b 7c 7d 7e 7f 84 85 " +
      "86 87 88 89 8a 8b 90 9c 9d a4 a5 a8 a9 aa ab b8 b9 ba bb bc bd be bf " +
      "c3 cc cd cf e4 e5 e6 e7 e8 e9 eb ec ed ee ef f4 fa fb",
  ),
);
const SUBSET_TWO_BYTE = new Set(
  parseHex("05 07 09 80 81 82 83 84 85 86 87 88 89 8a 8b 8c 8d 8e 8f ab b0 b1 b3 b6 b7"),
);

function isSubsetOneByteOpcode(opcode: number, digit: number): boolean {
  switch (opcode) {
    case 0x80:
    case 0x81:
    case 0x83:
      return digit !== 2 && digit !== 3; // not ADC, SBB
    case 0x8f:
    case 0xc6:
    case 0xc7:
    case 0xf6:
    case 0xf7:
      return digit === 0;
    case 0xfe:
      return digit <= 1;
    case 0xff:
      return digit <= 1 || digit === 6;
    default:
      return SUBSET_ONE_BYTE.has(opcode);
  }
}

function isSubsetTwoByteOpcode(opcode2: number, digit: number): boolean {
  switch (opcode2) {
    case 0x01:
      return digit <= 3 || digit === 7;
    case 0x1f:
      return digit === 0;
    case 0x20:
    case 0x22:
      return digit === 0 || digit === 2 || digit === 3 || digit === 4;
    case 0xba:
      return digit === 5 || digit === 6;
    case 0xc7:
      return digit === 1;
    default:
      return SUBSET_TWO_BYTE.has(opcode2);
  }
}

Deno.test("decodeInstruction() accepts exactly the subset's one-byte opcodes", () => {
  const d = new DecodedInstruction();
  const bytes = new Uint8Array(16);
  for (let digit = 0; digit < 8; digit++) {
    for (let opcode = 0; opcode < 256; opcode++) {
      if (ONE_BYTE_PREFIXES.has(opcode) || opcode === 0x0f) continue;
      bytes[0] = opcode;
      bytes[1] = (digit << 3) | 7; // ModRM: [rdi] with this digit
      const result = decodeInstruction(bytes, 0, d);
      const label = `opcode ${opcode.toString(16)} /${digit}`;
      assert.equal(result > 0, isSubsetOneByteOpcode(opcode, digit), label);
      assert.notEqual(result, -1, label);
    }
  }
});

Deno.test("decodeInstruction() accepts exactly the subset's 0F opcodes", () => {
  const d = new DecodedInstruction();
  const bytes = new Uint8Array(16);
  bytes[0] = 0x0f;
  for (let digit = 0; digit < 8; digit++) {
    for (let opcode2 = 0; opcode2 < 256; opcode2++) {
      bytes[1] = opcode2;
      bytes[2] = (digit << 3) | 7; // ModRM: [rdi] with this digit (CR number for 0F 20/22)
      const result = decodeInstruction(bytes, 0, d);
      const label = `opcode 0f ${opcode2.toString(16)} /${digit}`;
      assert.equal(result > 0, isSubsetTwoByteOpcode(opcode2, digit), label);
      assert.notEqual(result, -1, label);
    }
  }
});

Deno.test("decodeInstruction() accepts INVPCID as the only 66 0F 38 opcode", () => {
  const d = new DecodedInstruction();
  const bytes = parseHex("66 0f 38 00 07 00 00 00 00 00 00");
  for (let opcode3 = 0; opcode3 < 256; opcode3++) {
    bytes[3] = opcode3;
    assert.equal(decodeInstruction(bytes, 0, d) > 0, opcode3 === 0x82, opcode3.toString(16));
  }
});

// Property test: xorshift32 (Marsaglia 2003) with a fixed seed, so failures reproduce.
function makeXorshift32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
}

const FUZZ_PREFIXES = [0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x64, 0x65, 0x48, 0x4c, 0x41, 0x40];
const FUZZ_OPENERS = [
  [0x39],
  [0x80],
  [0xf7],
  [0xff],
  [0x0f, 0x84],
  [0x0f, 0xb6],
  [0x89],
  [0x8b],
  [0x87],
  [0x81],
  [0x83],
  [0xc7],
  [0xb8],
  [0xab],
  [0x0f, 0x01],
  [0x0f, 0x22],
  [0x0f, 0xb1],
  [0x0f, 0xba],
  [0x0f, 0xc7],
  [0x0f, 0x38, 0x82],
];

function snapshot(d: DecodedInstruction): string {
  return JSON.stringify(d);
}

Deno.test("decodeInstruction() is total, bounded and deterministic on 200k random inputs", () => {
  const next = makeXorshift32(0x2545f491);
  const first = new DecodedInstruction();
  const second = new DecodedInstruction();
  const buffer = new Uint8Array(24);
  const counts = { valid: 0, invalid: 0, truncated: 0 };
  for (let i = 0; i < 200_000; i++) {
    // Half uniform bytes; half shaped like the subset (prefixes, opcode, random tail).
    let n = 0;
    if ((i & 1) === 1) {
      const prefixCount = next() % 5;
      for (let k = 0; k < prefixCount; k++) {
        buffer[n++] = FUZZ_PREFIXES[next() % FUZZ_PREFIXES.length];
      }
      for (const b of FUZZ_OPENERS[next() % FUZZ_OPENERS.length]) buffer[n++] = b;
    }
    while (n < buffer.length) buffer[n++] = next() & 0xff;
    const offset = next() % 4;
    const available = next() % (buffer.length - offset + 1);
    const bytes = buffer.subarray(0, offset + available);

    const result = decodeInstruction(bytes, offset, first);
    assert.ok(result === -1 || result === 0 || (result >= 1 && result <= 15), `result ${result}`);
    assert.ok(result <= available);
    if (result === -1) assert.ok(available < 15);
    assert.equal(decodeInstruction(bytes, offset, second), result);
    assert.equal(snapshot(second), snapshot(first));

    if (result > 0) {
      counts.valid++;
      assert.equal(first.length, result);
      assert.notEqual(formatInstruction(first), "(bad)");
      // The length depends only on the instruction's own bytes ...
      assert.equal(decodeInstruction(bytes.subarray(0, offset + result), offset, second), result);
      // ... and every shorter fetch asks for more.
      const cut = offset + (next() % result);
      assert.equal(decodeInstruction(bytes.subarray(0, cut), offset, second), -1);
    } else if (result === 0) {
      counts.invalid++;
      assert.equal(first.op, OP_INVALID);
      assert.equal(first.length, 0);
    } else {
      counts.truncated++;
      assert.equal(first.op, OP_INVALID);
      assert.equal(first.tooLong, false);
    }
  }
  // The generator must reach all three outcomes often, or the property says little.
  assert.ok(counts.valid > 20_000, JSON.stringify(counts));
  assert.ok(counts.invalid > 20_000, JSON.stringify(counts));
  assert.ok(counts.truncated > 5_000, JSON.stringify(counts));
});

Deno.test("formatInstruction() prints (bad) for a failed decode", () => {
  const d = new DecodedInstruction();
  assert.equal(formatInstruction(d), "(bad)");
  decodeInstruction(parseHex("0f 0b"), 0, d);
  assert.equal(formatInstruction(d), "(bad)");
});
