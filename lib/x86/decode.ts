/**
 * An x86-64 instruction decoder for the small subset the lab executes: the guest kernel's
 * page-table writes and privileged instructions, run by the vCPU interpreter, the faulting
 * instruction a hypervisor fetches and emulates after a write to a write-protected guest
 * page table, and the ordinary integer instructions of a small guest OS's assembly stubs
 * and user programs (PUSH/POP, CMP/TEST/XOR/INC/DEC, Jcc, MOVZX).
 *
 * Everything outside the subset decodes as {@linkcode OP_INVALID} (the vCPU raises #UD).
 * Encodings follow the Intel SDM Vol. 2, chapter 2 (instruction format, 64-bit mode) and
 * appendix A (opcode maps); only 64-bit mode is modelled.
 *
 * @module
 */

// ---------------------------------------------------------------------------------------
// Operations. `DecodedInstruction.op` is one of these; `form` says where the operands are.
// ---------------------------------------------------------------------------------------

/**
 * Not in the subset, or not a valid encoding: the vCPU raises #UD (#GP when `tooLong`).
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { DecodedInstruction, decodeInstruction, OP_INVALID } from "./decode.ts";
 *
 * const d = new DecodedInstruction();
 * assert.equal(decodeInstruction(new Uint8Array([0xd9, 0xe8]), 0, d), 0); // x87 fld1
 * assert.equal(d.op, OP_INVALID);
 * ```
 */
export const OP_INVALID = 0;
/** MOV: 88/89 (r/m, r), 8A/8B (r, r/m), C6/C7 /0 (r/m, imm), B8+r (r, imm32/imm64). */
export const OP_MOV = 1;
/** XCHG r/m, r: 86/87; atomic (`lock` set) when the r/m operand is memory. */
export const OP_XCHG = 2;
/** CMPXCHG r/m, r: 0F B0/B1; compares with AL/AX/EAX/RAX. */
export const OP_CMPXCHG = 3;
/** CMPXCHG8B m64: 0F C7 /1 (operandSize 4: EDX:EAX against 8 bytes of memory). */
export const OP_CMPXCHG8B = 4;
/** CMPXCHG16B m128: REX.W 0F C7 /1 (operandSize 8: RDX:RAX against 16 bytes). */
export const OP_CMPXCHG16B = 5;
/**
 * ADD: 00/01 (r/m, r), 02/03 (r, r/m), 04/05 (AL/rAX, imm), 80 /0, 81 /0 imm, 83 /0 imm8.
 * Every ALU operation of the subset has these six forms plus group 1 (SDM Vol. 2 Table A-2).
 */
export const OP_ADD = 6;
/** OR: 08/09 (r/m, r), 0A/0B (r, r/m), 0C/0D (AL/rAX, imm), 80/81/83 /1. */
export const OP_OR = 7;
/** AND: 20/21 (r/m, r), 22/23 (r, r/m), 24/25 (AL/rAX, imm), 80/81/83 /4. */
export const OP_AND = 8;
/** SUB: 28/29 (r/m, r), 2A/2B (r, r/m), 2C/2D (AL/rAX, imm), 80/81/83 /5. */
export const OP_SUB = 9;
/** BTS r/m, r (0F AB) and BTS r/m, imm8 (0F BA /5). */
export const OP_BTS = 10;
/** BTR r/m, r (0F B3) and BTR r/m, imm8 (0F BA /6). */
export const OP_BTR = 11;
/** STOSB/W/D/Q: AA, AB; `rep` holds an F3/F2 prefix. */
export const OP_STOS = 12;
/** MOVSB/W/D/Q: A4, A5; `rep` holds an F3/F2 prefix. */
export const OP_MOVS = 13;
/** MOV CRn, r64: 0F 22 /r (`crRegister` = ModRM.reg with REX.R; source GPR in `rm`). */
export const OP_MOV_TO_CR = 14;
/** MOV r64, CRn: 0F 20 /r (`crRegister` = ModRM.reg with REX.R; destination GPR in `rm`). */
export const OP_MOV_FROM_CR = 15;
/** INVLPG m: 0F 01 /7 with a memory operand. */
export const OP_INVLPG = 16;
/** INVPCID r64, m128: 66 0F 38 82 /r (type in `reg`, descriptor in memory). */
export const OP_INVPCID = 17;
/** WBINVD: 0F 09. */
export const OP_WBINVD = 18;
/** CLI: FA. */
export const OP_CLI = 19;
/** STI: FB. */
export const OP_STI = 20;
/** HLT: F4. */
export const OP_HLT = 21;
/** NOP: 90 (without REX.B or F3) and 0F 1F /0 (multi-byte NOP with an r/m operand). */
export const OP_NOP = 22;
/** IRET/IRETD (CF, operandSize 4), IRETQ (REX.W CF, 8), IRETW (66 CF, 2). */
export const OP_IRET = 23;
/** IN AL/AX/EAX, imm8 (E4, E5) or DX (EC, ED). */
export const OP_IN = 24;
/** OUT imm8 (E6, E7) or DX (EE, EF), AL/AX/EAX. */
export const OP_OUT = 25;
/** PUSHFQ: 9C (PUSHFW with 66). */
export const OP_PUSHF = 26;
/** POPFQ: 9D (POPFW with 66). */
export const OP_POPF = 27;
/** LGDT m: 0F 01 /2 (2-byte limit then 8-byte base). */
export const OP_LGDT = 28;
/** LIDT m: 0F 01 /3 (2-byte limit then 8-byte base). */
export const OP_LIDT = 29;
/** SGDT m: 0F 01 /0. */
export const OP_SGDT = 30;
/** SIDT m: 0F 01 /1. */
export const OP_SIDT = 31;
/** SYSCALL: 0F 05. */
export const OP_SYSCALL = 32;
/** SYSRET: 0F 07 (to 32-bit code, operandSize 4) or REX.W 0F 07 (SYSRETQ, 8). */
export const OP_SYSRET = 33;
/** INT imm8: CD ib (vector in `imm`). */
export const OP_INT = 34;
/** INT3: CC. */
export const OP_INT3 = 35;
/** Near RET: C3. */
export const OP_RET = 36;
/** Near JMP rel8 (EB) / rel32 (E9); `imm` is the displacement from the next instruction. */
export const OP_JMP = 37;
/** Near CALL rel32: E8; `imm` is the displacement from the next instruction. */
export const OP_CALL = 38;
/**
 * PUSH: 50+r (FORM_RM, the register in `rm`), FF /6 (FORM_RM), 6A ib and 68 id
 * (FORM_IMM, sign-extended to 64 bits). 64-bit by default; 66 makes it 16-bit.
 */
export const OP_PUSH = 39;
/** POP: 58+r (FORM_RM, the register in `rm`), 8F /0 (FORM_RM). 64-bit by default. */
export const OP_POP = 40;
/** CMP (SUB without the store): 38/39, 3A/3B, 3C/3D, 80/81/83 /7. Never lockable. */
export const OP_CMP = 41;
/**
 * TEST (AND without the store): 84/85 (FORM_RM_REG), A8/A9 (AL/rAX, imm), F6 /0 ib and
 * F7 /0 imm (FORM_RM_IMM). Never lockable.
 */
export const OP_TEST = 42;
/** XOR: 30/31 (r/m, r), 32/33 (r, r/m), 34/35 (AL/rAX, imm), 80/81/83 /6. */
export const OP_XOR = 43;
/** INC r/m: FE /0, FF /0 (FORM_RM); CF unchanged. */
export const OP_INC = 44;
/** DEC r/m: FE /1, FF /1 (FORM_RM); CF unchanged. */
export const OP_DEC = 45;
/**
 * Jcc: 70+cc rel8, 0F 80+cc rel32 (FORM_IMM); `condition` holds cc and `imm` the
 * displacement from the next instruction.
 */
export const OP_JCC = 46;
/**
 * MOVZX r, r/m8 (0F B6) and r, r/m16 (0F B7), FORM_REG_RM; `operandSize` is the
 * destination's size, the source's is 1 for 0F B6 and 2 for 0F B7 (see `opcode`).
 */
export const OP_MOVZX = 47;

// ---------------------------------------------------------------------------------------
// Operand forms: where the destination and the source of `op` are.
// ---------------------------------------------------------------------------------------

/** No explicit operands (CLI, STOS, IN AL, DX, ...). */
export const FORM_NONE = 0;
/** Destination ModRM.rm (register or memory), source ModRM.reg. */
export const FORM_RM_REG = 1;
/** Destination ModRM.reg, source ModRM.rm (register or memory). */
export const FORM_REG_RM = 2;
/**
 * Destination ModRM.rm (register or memory), source `imm`/`immHi`. The accumulator forms
 * (04/05, 0C/0D, 24/25, 2C/2D, 34/35, 3C/3D, A8/A9) have no ModRM byte: `rm` is 0
 * (AL/AX/EAX/RAX) and `isMemory` false.
 */
export const FORM_RM_IMM = 3;
/** Destination register `reg` (from the opcode byte, B8+r), source `imm`/`immHi`. */
export const FORM_REG_IMM = 4;
/** One immediate: a port (IN/OUT), a vector (INT) or a branch displacement (JMP/CALL). */
export const FORM_IMM = 5;
/**
 * One ModRM.rm operand: INVLPG, LGDT..SIDT, CMPXCHG8B/16B, NOP m, the GPR of MOV CR,
 * INC/DEC, PUSH/POP r/m. PUSH/POP 50+r/58+r have no ModRM byte: `rm` is the register
 * from the opcode byte (with REX.B) and `isMemory` false.
 */
export const FORM_RM = 6;

/** The architectural limit on instruction length (SDM Vol. 2 §2.3.11); longer is #GP. */
const MAX_LENGTH = 15;

// Internal failure codes; decodeInstruction maps them to its public return values.
const NEED_MORE = -1;
const TOO_LONG = -2;
const BAD = -3;

/**
 * The result of {@linkcode decodeInstruction}: a fixed-shape record the caller allocates
 * once and passes to every decode, so decoding allocates nothing.
 *
 * Registers are numbered 0=rax, 1=rcx, 2=rdx, 3=rbx, 4=rsp, 5=rbp, 6=rsi, 7=rdi,
 * 8..15=r8..r15. For byte operands without a REX prefix, 4..7 mean ah, ch, dh, bh
 * (SDM Vol. 2 §2.2.1.2); `rex` tells the two apart.
 *
 * When a decode fails, `op` is {@linkcode OP_INVALID}, `form` is {@linkcode FORM_NONE},
 * `length` is 0 and the other fields (except `tooLong`) must not be used.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { DecodedInstruction, decodeInstruction, OP_MOV } from "./decode.ts";
 *
 * const d = new DecodedInstruction(); // allocate once, reuse for every decode
 * decodeInstruction(new Uint8Array([0x48, 0x89, 0x37]), 0, d); // mov [rdi], rsi
 * assert.equal(d.op, OP_MOV);
 * assert.equal(d.base, 7);
 * assert.equal(d.reg, 6);
 * ```
 */
export class DecodedInstruction {
  /** One of the `OP_*` constants. */
  op: number = OP_INVALID;
  /** One of the `FORM_*` constants. */
  form: number = FORM_NONE;
  /** The opcode bytes packed big-endian, without prefixes: 0x89, 0x0fb1, 0x0f3882. */
  opcode: number = 0;
  /** Total bytes consumed, prefixes included (1..15); 0 after a failed decode. */
  length: number = 0;
  /**
   * Size in bytes of the data operand: 1, 2, 4 or 8. Where the instruction has none it is
   * the operand-size attribute (4; 8 with REX.W; 2 with 66) and has no effect.
   */
  operandSize: number = 4;
  /** Address size in bytes: 8, or 4 with a 67 prefix (addresses wrap at 2^32). */
  addressSize: number = 8;
  /** The REX byte in effect (0x40..0x4f), or 0. */
  rex: number = 0;
  /** The instruction is atomic: a LOCK prefix, or XCHG with a memory operand. */
  lock: boolean = false;
  /** An F0 (LOCK) prefix was present. */
  lockPrefix: boolean = false;
  /** The last F3 or F2 prefix, or 0. */
  rep: number = 0;
  /**
   * The FS (0x64) or GS (0x65) override in effect, or 0. CS/SS/DS/ES overrides are read
   * but have no effect in 64-bit mode (SDM Vol. 1 §3.3.7.1), so they leave this 0.
   */
  segment: number = 0;
  /** The decode failed because the instruction is longer than 15 bytes (#GP). */
  tooLong: boolean = false;
  /** A ModRM byte was read; `mod`, `reg` and `rm` are valid. */
  hasModrm: boolean = false;
  /** ModRM.mod (0..3). */
  mod: number = 0;
  /**
   * ModRM.reg extended by REX.R; the raw 3-bit digit for /digit opcodes (80, 81, 83, 8F,
   * C6, C7, F6, F7, FE, FF, 0F 01, 0F 1F, 0F BA, 0F C7), where REX.R does not apply. For
   * B8+r, the register.
   */
  reg: number = 0;
  /** ModRM.rm extended by REX.B (a register when `isMemory` is false). */
  rm: number = 0;
  /** The r/m operand is in memory (mod != 3). */
  isMemory: boolean = false;
  /** Base register of the memory operand, or -1 (absolute disp32, or RIP-relative). */
  base: number = -1;
  /** Index register of the memory operand, or -1. */
  index: number = -1;
  /** Scale applied to `index`: 1, 2, 4 or 8 (as encoded; meaningless when `index` is -1). */
  scale: number = 1;
  /** Displacement, signed 32-bit (disp8 sign-extended). */
  disp: number = 0;
  /** The address is `disp` plus the address of the next instruction. */
  ripRelative: boolean = false;
  /** Bytes of immediate in the encoding: 0, 1, 2, 4 or 8. */
  immSize: number = 0;
  /**
   * Low 32 bits of the immediate extended to 64 bits as the opcode says (sign-extended for
   * 83 ib, 6A ib, every id of a 4- or 8-byte operand (05, 81, 68, A9, C7, F7, ...) and
   * rel8/rel32; zero-extended otherwise: ib of a byte operand, iw, B8+r imm32), as a signed
   * 32-bit number.
   */
  imm: number = 0;
  /** High 32 bits of that 64-bit immediate, signed 32-bit: imm64 bits, or 0 / -1. */
  immHi: number = 0;
  /** Control register number for MOV to/from CR (0, 2, 3, 4, 8), or -1. */
  crRegister: number = -1;
  /**
   * Jcc condition (the low 4 opcode bits), or -1: 0 O, 1 NO, 2 B, 3 AE, 4 E, 5 NE, 6 BE,
   * 7 A, 8 S, 9 NS, 10 P, 11 NP, 12 L, 13 GE, 14 LE, 15 G (SDM Vol. 1 Table B-1).
   */
  condition: number = -1;
}

/** Clears every field; keeps the object's shape (all fields always exist). */
function resetDecoded(out: DecodedInstruction): void {
  out.op = OP_INVALID;
  out.form = FORM_NONE;
  out.opcode = 0;
  out.length = 0;
  out.operandSize = 4;
  out.addressSize = 8;
  out.rex = 0;
  out.lock = false;
  out.lockPrefix = false;
  out.rep = 0;
  out.segment = 0;
  out.tooLong = false;
  out.hasModrm = false;
  out.mod = 0;
  out.reg = 0;
  out.rm = 0;
  out.isMemory = false;
  out.base = -1;
  out.index = -1;
  out.scale = 1;
  out.disp = 0;
  out.ripRelative = false;
  out.immSize = 0;
  out.imm = 0;
  out.immHi = 0;
  out.crRegister = -1;
  out.condition = -1;
}

/** Marks `out` as failed and turns an internal code into the public return value. */
function fail(out: DecodedInstruction, code: number): number {
  out.op = OP_INVALID;
  out.form = FORM_NONE;
  out.length = 0;
  out.tooLong = code === TOO_LONG;
  return code === NEED_MORE ? -1 : 0;
}

/*
 * Instruction format in 64-bit mode (SDM Vol. 2 §2.1 Figure 2-1, §2.2.1):
 *
 *   +-----------------+-----+--------+-------+-----+--------------+-------------+
 *   | legacy prefixes | REX | opcode | ModRM | SIB | displacement | immediate   |
 *   | any number      | 0/1 | 1-3 B  | 0/1 B | 0/1 | 0, 1 or 4 B  | 0,1,2,4,8 B |
 *   +-----------------+-----+--------+-------+-----+--------------+-------------+
 *   at most 15 bytes in all (§2.3.11)
 *
 *   REX   = 0100 W R X B    W: 64-bit operand   R: extends ModRM.reg
 *                           X: extends SIB.index   B: extends ModRM.rm, SIB.base, opcode reg
 *   ModRM = mod(7:6) reg(5:3) rm(2:0)       SIB = scale(7:6) index(5:3) base(2:0)
 *
 * ModRM special cases (Tables 2-2, 2-3, 2-5; REX.B/REX.X do not change which case applies):
 *   mod=3                  register operand rm
 *   rm=100                 a SIB byte follows
 *   mod=0, rm=101          RIP-relative disp32 (§2.2.1.6)
 *   SIB base=101, mod=0    no base, disp32
 *   SIB index=100, !REX.X  no index
 *   mod=1 / mod=2          disp8 / disp32 follows
 */

/**
 * Reads ModRM, SIB and displacement at `p` into `out`; returns the position after them,
 * or NEED_MORE / TOO_LONG. `end` is the first position past the 15-byte limit.
 */
function readModrm(
  bytes: Uint8Array,
  p: number,
  end: number,
  rex: number,
  out: DecodedInstruction,
): number {
  if (p >= end) return TOO_LONG;
  if (p >= bytes.length) return NEED_MORE;
  const modrm = bytes[p++];
  const mod = modrm >>> 6;
  const rmLow = modrm & 7;
  out.hasModrm = true;
  out.mod = mod;
  out.reg = ((modrm >>> 3) & 7) | ((rex & 4) << 1);
  out.rm = rmLow | ((rex & 1) << 3);
  if (mod === 3) return p;

  out.isMemory = true;
  let dispSize = mod === 1 ? 1 : mod === 2 ? 4 : 0;
  if (rmLow === 4) {
    if (p >= end) return TOO_LONG;
    if (p >= bytes.length) return NEED_MORE;
    const sib = bytes[p++];
    out.scale = 1 << (sib >>> 6);
    const index = ((sib >>> 3) & 7) | ((rex & 2) << 2);
    out.index = index === 4 ? -1 : index;
    if ((sib & 7) === 5 && mod === 0) {
      dispSize = 4; // no base register
    } else {
      out.base = (sib & 7) | ((rex & 1) << 3);
    }
  } else if (rmLow === 5 && mod === 0) {
    out.ripRelative = true;
    dispSize = 4;
  } else {
    out.base = out.rm;
  }

  if (dispSize === 0) return p;
  if (p + dispSize > end) return TOO_LONG;
  if (p + dispSize > bytes.length) return NEED_MORE;
  out.disp = dispSize === 1
    ? (bytes[p] << 24) >> 24
    : bytes[p] | (bytes[p + 1] << 8) | (bytes[p + 2] << 16) | (bytes[p + 3] << 24);
  return p + dispSize;
}

/**
 * Reads a `size`-byte little-endian immediate at `p` into `out.imm`/`out.immHi`,
 * sign-extending it to 64 bits when `isSigned`; returns the position after it, or
 * NEED_MORE / TOO_LONG.
 */
function readImmediate(
  bytes: Uint8Array,
  p: number,
  end: number,
  size: number,
  isSigned: boolean,
  out: DecodedInstruction,
): number {
  if (p + size > end) return TOO_LONG;
  if (p + size > bytes.length) return NEED_MORE;
  out.immSize = size;
  let lo: number;
  if (size === 1) {
    lo = isSigned ? (bytes[p] << 24) >> 24 : bytes[p];
  } else if (size === 2) {
    lo = bytes[p] | (bytes[p + 1] << 8); // imm16 always fills a 16-bit operand
  } else {
    lo = bytes[p] | (bytes[p + 1] << 8) | (bytes[p + 2] << 16) | (bytes[p + 3] << 24);
  }
  out.imm = lo;
  if (size === 8) {
    out.immHi = bytes[p + 4] | (bytes[p + 5] << 8) | (bytes[p + 6] << 16) |
      (bytes[p + 7] << 24);
  } else {
    out.immHi = isSigned ? lo >> 31 : 0;
  }
  return p + size;
}

/**
 * Reads the immediate of an operand of `size` bytes (Ib, Iw, Iz): imm8 or imm16 as is,
 * imm32 (sign-extended to 64 bits, for a qword operand too); see readImmediate.
 */
function readOperandImmediate(
  bytes: Uint8Array,
  p: number,
  end: number,
  size: number,
  out: DecodedInstruction,
): number {
  return readImmediate(bytes, p, end, size === 8 ? 4 : size, size >= 4, out);
}

/*
 * The ALU block of the one-byte map and group 1 (SDM Vol. 2 Tables ): opcode bits
 * 5:3 (or the ModRM digit of 80/81/83) name the operation, opcode bits 2:0 the form.
 *
 *   row   0 ADD  1 OR  2 ADC  3 SBB  4 AND  5 SUB  6 XOR  7 CMP     (ADC, SBB: not modelled)
 *   col   0 Eb,Gb  1 Ev,Gv  2 Gb,Eb  3 Gv,Ev  4 AL,Ib  5 rAX,Iz  (6, 7: prefixes, 0F, ...)
 */
const ALU_OPS = [OP_ADD, OP_OR, OP_INVALID, OP_INVALID, OP_AND, OP_SUB, OP_XOR, OP_CMP];

/** 0F opcodes of the subset that accept F2/F3 as XACQUIRE/XRELEASE hints with LOCK. */
function isHleCandidate(opcode2: number): boolean {
  return opcode2 === 0xb0 || opcode2 === 0xb1 || opcode2 === 0xab || opcode2 === 0xb3 ||
    opcode2 === 0xba || opcode2 === 0xc7;
}

/**
 * LOCK is allowed only on these operations with a memory destination (SDM Vol. 2, LOCK);
 * anywhere else it is #UD.
 */
function isLockable(op: number, form: number, isMemory: boolean): boolean {
  if (!isMemory || form === FORM_REG_RM) return false;
  switch (op) {
    case OP_ADD:
    case OP_OR:
    case OP_AND:
    case OP_SUB:
    case OP_XOR:
    case OP_INC:
    case OP_DEC:
    case OP_XCHG:
    case OP_CMPXCHG:
    case OP_CMPXCHG8B:
    case OP_CMPXCHG16B:
    case OP_BTS:
    case OP_BTR:
      return true;
    default:
      return false;
  }
}

/**
 * Decodes one 64-bit-mode instruction starting at `bytes[offset]` into `out` (which it
 * overwrites). Reads only bytes `offset .. min(offset + 15, bytes.length) - 1`, allocates
 * nothing and never throws.
 *
 * Prefix rules (SDM Vol. 2 §2.1.1, §2.2.1): legacy prefixes may repeat, the last F2/F3
 * and the last FS/GS override win; a REX prefix counts only when the opcode follows it
 * directly (a REX followed by a legacy prefix or another REX is ignored); REX.W overrides
 * 66. F2/F3 before a 0F opcode select a different instruction (WBNOINVD, POPCNT, ...), so
 * they make it invalid here, except as XACQUIRE/XRELEASE on a LOCKed CMPXCHG,
 * CMPXCHG8B/16B, BTS or BTR. On one-byte opcodes F2/F3 are kept in `rep` and ignored
 * (hints, or REP on STOS/MOVS), except F3 90, which is PAUSE, not NOP. LOCK is #UD except
 * on a memory destination of ADD/OR/AND/SUB/XOR/INC/DEC/XCHG/CMPXCHG/CMPXCHG8B/16B/BTS/BTR.
 * A 66 prefix on a near JMP/CALL/RET/Jcc is model-specific in 64-bit mode (Intel ignores
 * it, AMD truncates RIP), so it is invalid here.
 *
 * Once the opcode names an instruction of the subset, all its bytes are read before prefix
 * rules are checked, so a truncated instruction reports -1 rather than 0, as an
 * instruction-fetch #PF precedes a decode #UD (SDM Vol. 3 §6.9, Table 6-2). The 15-byte
 * limit is checked as bytes are needed: once the encoding needs a 16th byte the result is
 * `tooLong`, whether or not that byte is in `bytes`.
 *
 * @param bytes The code bytes.
 * @param offset Index of the instruction's first byte; an offset that is not an integer
 *   in 0..bytes.length decodes as invalid.
 * @param out Receives the result; reused across calls.
 * @returns The instruction length (1..15) on success. 0 when the bytes are not in the
 *   subset or not valid (`out.op` = OP_INVALID; `out.tooLong` is true when the
 *   instruction would exceed 15 bytes). -1 when the bytes end before the instruction does
 *   (fetch more, or raise #PF for the next page).
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { DecodedInstruction, decodeInstruction, OP_CMPXCHG } from "./decode.ts";
 *
 * const d = new DecodedInstruction();
 * const code = new Uint8Array([0xf0, 0x48, 0x0f, 0xb1, 0x37]); // lock cmpxchg [rdi], rsi
 * assert.equal(decodeInstruction(code, 0, d), 5);
 * assert.equal(d.op, OP_CMPXCHG);
 * assert.equal(d.lock, true);
 * assert.equal(decodeInstruction(code.subarray(0, 4), 0, d), -1); // truncated
 * ```
 */
export function decodeInstruction(
  bytes: Uint8Array,
  offset: number,
  out: DecodedInstruction,
): number {
  resetDecoded(out);
  const limit = bytes.length;
  if (!(offset >= 0 && offset <= limit) || Math.floor(offset) !== offset) return fail(out, BAD);
  const end = offset + MAX_LENGTH;

  // Legacy prefixes and REX (SDM Vol. 2 §2.1.1, §2.2.1).
  let p = offset;
  let rex = 0;
  let hasOpsizePrefix = false;
  let opcode = 0;
  for (;;) {
    if (p >= end) return fail(out, TOO_LONG);
    if (p >= limit) return fail(out, NEED_MORE);
    const b = bytes[p++];
    if ((b & 0xf0) === 0x40) {
      rex = b; // counts only if the opcode comes next: a later REX replaces it
      continue;
    }
    if (b === 0x66) hasOpsizePrefix = true;
    else if (b === 0x67) out.addressSize = 4;
    else if (b === 0xf0) out.lockPrefix = true;
    else if (b === 0xf2 || b === 0xf3) out.rep = b;
    else if (b === 0x64 || b === 0x65) out.segment = b;
    else if (b !== 0x26 && b !== 0x2e && b !== 0x36 && b !== 0x3e) { // null in 64-bit mode
      opcode = b;
      break;
    }
    rex = 0; // a REX followed by a legacy prefix is ignored
  }
  out.rex = rex;
  out.opcode = opcode;
  const isRexW = (rex & 8) !== 0;
  // Operand-size attribute of a "v" operand (SDM Vol. 2 §2.2.1.2, Table 2-4).
  const vsize = isRexW ? 8 : hasOpsizePrefix ? 2 : 4;
  // PUSH and POP default to 64 bits in 64-bit mode; 66 makes them 16-bit (SDM Vol. 2 PUSH).
  const stackSize = vsize === 2 ? 2 : 8;

  let op = OP_INVALID;
  let form = FORM_NONE;
  let size = vsize;

  switch (opcode) {
    case 0x50:
    case 0x51:
    case 0x52:
    case 0x53:
    case 0x54:
    case 0x55:
    case 0x56:
    case 0x57:
    case 0x58:
    case 0x59:
    case 0x5a:
    case 0x5b:
    case 0x5c:
    case 0x5d:
    case 0x5e:
    case 0x5f:
      op = opcode < 0x58 ? OP_PUSH : OP_POP;
      form = FORM_RM;
      out.rm = (opcode & 7) | ((rex & 1) << 3);
      size = stackSize;
      break;
    case 0x68:
    case 0x6a:
      op = OP_PUSH;
      form = FORM_IMM;
      size = stackSize;
      p = readImmediate(bytes, p, end, opcode === 0x6a ? 1 : size === 2 ? 2 : 4, true, out);
      break;
    case 0x70:
    case 0x71:
    case 0x72:
    case 0x73:
    case 0x74:
    case 0x75:
    case 0x76:
    case 0x77:
    case 0x78:
    case 0x79:
    case 0x7a:
    case 0x7b:
    case 0x7c:
    case 0x7d:
    case 0x7e:
    case 0x7f:
      op = OP_JCC;
      form = FORM_IMM;
      size = 8;
      out.condition = opcode & 15;
      p = readImmediate(bytes, p, end, 1, true, out);
      break;
    case 0x80:
    case 0x81:
    case 0x83: {
      // Group 1 (SDM Vol. 2 Table A-6); 82 is #UD in 64-bit mode.
      form = FORM_RM_IMM;
      if (opcode === 0x80) size = 1;
      p = readModrm(bytes, p, end, rex, out);
      if (p < 0) break;
      out.reg &= 7;
      op = ALU_OPS[out.reg]!;
      if (op === OP_INVALID) return fail(out, BAD); // ADC, SBB
      p = opcode === 0x83
        ? readImmediate(bytes, p, end, 1, true, out)
        : readOperandImmediate(bytes, p, end, size, out);
      break;
    }
    case 0x84:
    case 0x85:
      op = OP_TEST;
      form = FORM_RM_REG;
      size = opcode === 0x84 ? 1 : vsize;
      p = readModrm(bytes, p, end, rex, out);
      break;
    case 0x86:
    case 0x87:
      op = OP_XCHG;
      form = FORM_RM_REG;
      size = opcode === 0x86 ? 1 : vsize;
      p = readModrm(bytes, p, end, rex, out);
      break;
    case 0x88:
    case 0x89:
      op = OP_MOV;
      form = FORM_RM_REG;
      size = opcode === 0x88 ? 1 : vsize;
      p = readModrm(bytes, p, end, rex, out);
      break;
    case 0x8a:
    case 0x8b:
      op = OP_MOV;
      form = FORM_REG_RM;
      size = opcode === 0x8a ? 1 : vsize;
      p = readModrm(bytes, p, end, rex, out);
      break;
    case 0x8f:
      p = readModrm(bytes, p, end, rex, out);
      if (p < 0) break;
      out.reg &= 7;
      if (out.reg !== 0) return fail(out, BAD); // 8F /1../7: AMD's XOP prefix
      op = OP_POP;
      form = FORM_RM;
      size = stackSize;
      break;
    case 0x90:
      // With REX.B this is XCHG r8, rAX; with F3 it is PAUSE (SDM Vol. 2, NOP and PAUSE).
      if ((rex & 1) !== 0 || out.rep !== 0) return fail(out, BAD);
      op = OP_NOP;
      break;
    case 0x9c:
    case 0x9d:
      op = opcode === 0x9c ? OP_PUSHF : OP_POPF;
      size = hasOpsizePrefix && !isRexW ? 2 : 8; // default 64-bit in 64-bit mode
      break;
    case 0xa4:
    case 0xa5:
      op = OP_MOVS;
      size = opcode === 0xa4 ? 1 : vsize;
      break;
    case 0xa8:
    case 0xa9:
      op = OP_TEST;
      form = FORM_RM_IMM; // rm 0: AL/AX/EAX/RAX
      size = opcode === 0xa8 ? 1 : vsize;
      p = readOperandImmediate(bytes, p, end, size, out);
      break;
    case 0xaa:
    case 0xab:
      op = OP_STOS;
      size = opcode === 0xaa ? 1 : vsize;
      break;
    case 0xb8:
    case 0xb9:
    case 0xba:
    case 0xbb:
    case 0xbc:
    case 0xbd:
    case 0xbe:
    case 0xbf:
      op = OP_MOV;
      form = FORM_REG_IMM;
      out.reg = (opcode & 7) | ((rex & 1) << 3);
      p = readImmediate(bytes, p, end, size, false, out); // imm16, imm32 or imm64
      break;
    case 0xc3:
      op = OP_RET;
      size = 8;
      break;
    case 0xc6:
    case 0xc7:
      op = OP_MOV;
      form = FORM_RM_IMM;
      size = opcode === 0xc6 ? 1 : vsize;
      p = readModrm(bytes, p, end, rex, out);
      if (p < 0) break;
      out.reg &= 7;
      if (out.reg !== 0) return fail(out, BAD); // C6 F8 XABORT, C7 F8 XBEGIN, others #UD
      p = readOperandImmediate(bytes, p, end, size, out);
      break;
    case 0xcc:
      op = OP_INT3;
      break;
    case 0xcd:
      op = OP_INT;
      form = FORM_IMM;
      p = readImmediate(bytes, p, end, 1, false, out);
      break;
    case 0xcf:
      op = OP_IRET;
      break;
    case 0xe4:
    case 0xe5:
    case 0xe6:
    case 0xe7:
      op = opcode < 0xe6 ? OP_IN : OP_OUT;
      form = FORM_IMM;
      size = (opcode & 1) === 0 ? 1 : size === 2 ? 2 : 4; // REX.W has no effect
      p = readImmediate(bytes, p, end, 1, false, out);
      break;
    case 0xe8:
    case 0xe9:
      op = opcode === 0xe8 ? OP_CALL : OP_JMP;
      form = FORM_IMM;
      size = 8;
      p = readImmediate(bytes, p, end, 4, true, out);
      break;
    case 0xeb:
      op = OP_JMP;
      form = FORM_IMM;
      size = 8;
      p = readImmediate(bytes, p, end, 1, true, out);
      break;
    case 0xec:
    case 0xed:
    case 0xee:
    case 0xef:
      op = opcode < 0xee ? OP_IN : OP_OUT;
      size = (opcode & 1) === 0 ? 1 : size === 2 ? 2 : 4;
      break;
    case 0xf4:
      op = OP_HLT;
      break;
    case 0xfa:
      op = OP_CLI;
      break;
    case 0xfb:
      op = OP_STI;
      break;
    case 0xf6:
    case 0xf7:
      // Group 3 (SDM Vol. 2 Table A-6): only /0 TEST (NOT, NEG, MUL, DIV are not modelled).
      size = opcode === 0xf6 ? 1 : vsize;
      p = readModrm(bytes, p, end, rex, out);
      if (p < 0) break;
      out.reg &= 7;
      if (out.reg !== 0) return fail(out, BAD);
      op = OP_TEST;
      form = FORM_RM_IMM;
      p = readOperandImmediate(bytes, p, end, size, out);
      break;
    case 0xfe:
    case 0xff: {
      // Groups 4 and 5: /0 INC, /1 DEC, FF /6 PUSH (CALL/JMP indirect are not modelled).
      size = opcode === 0xfe ? 1 : vsize;
      p = readModrm(bytes, p, end, rex, out);
      if (p < 0) break;
      out.reg &= 7;
      const digit = out.reg;
      form = FORM_RM;
      if (digit === 0 || digit === 1) {
        op = digit === 0 ? OP_INC : OP_DEC;
      } else if (digit === 6 && opcode === 0xff) {
        op = OP_PUSH;
        size = stackSize;
      } else {
        return fail(out, BAD);
      }
      break;
    }
    case 0x0f: {
      // Two-byte opcode map (SDM Vol. 2 Table A-3).
      if (p >= end) return fail(out, TOO_LONG);
      if (p >= limit) return fail(out, NEED_MORE);
      const opcode2 = bytes[p++];
      out.opcode = 0x0f00 | opcode2;
      // F2/F3 before a 0F opcode select other instructions (F3 0F 09 WBNOINVD, F3 0F B8
      // POPCNT, ...) or are reserved. The one use kept is XACQUIRE/XRELEASE with LOCK on
      // CMPXCHG, CMPXCHG8B/16B, BTS and BTR (SDM Vol. 2, XACQUIRE/XRELEASE), checked below.
      if (out.rep !== 0 && !isHleCandidate(opcode2)) return fail(out, BAD);
      switch (opcode2) {
        case 0x01: {
          p = readModrm(bytes, p, end, rex, out);
          if (p < 0) break;
          out.reg &= 7;
          if (!out.isMemory) return fail(out, BAD); // mod=3: SWAPGS, VMCALL, CLAC, ...
          const digit = out.reg;
          op = digit === 0
            ? OP_SGDT
            : digit === 1
            ? OP_SIDT
            : digit === 2
            ? OP_LGDT
            : digit === 3
            ? OP_LIDT
            : digit === 7
            ? OP_INVLPG
            : OP_INVALID;
          if (op === OP_INVALID) return fail(out, BAD); // SMSW, LMSW, RSTORSSP, ...
          form = FORM_RM;
          size = 8;
          break;
        }
        case 0x05:
          op = OP_SYSCALL;
          break;
        case 0x07:
          op = OP_SYSRET;
          size = isRexW ? 8 : 4;
          break;
        case 0x09:
          if (hasOpsizePrefix) return fail(out, BAD); // 66 0F 09 is reserved
          op = OP_WBINVD;
          break;
        case 0x1f:
          p = readModrm(bytes, p, end, rex, out);
          if (p < 0) break;
          out.reg &= 7;
          if (out.reg !== 0) return fail(out, BAD); // reserved-NOP space, not in subset
          op = OP_NOP;
          form = FORM_RM;
          break;
        case 0x20:
        case 0x22: {
          // MOV to/from CR: always register operands, the mod bits are ignored
          // (SDM Vol. 2, MOV-Move to/from Control Registers), so no SIB or displacement.
          if (p >= end) return fail(out, TOO_LONG);
          if (p >= limit) return fail(out, NEED_MORE);
          const modrm = bytes[p++];
          out.hasModrm = true;
          out.mod = modrm >>> 6;
          out.reg = ((modrm >>> 3) & 7) | ((rex & 4) << 1);
          out.rm = (modrm & 7) | ((rex & 1) << 3);
          const cr = out.reg;
          if (cr !== 0 && cr !== 2 && cr !== 3 && cr !== 4 && cr !== 8) return fail(out, BAD);
          out.crRegister = cr;
          op = opcode2 === 0x22 ? OP_MOV_TO_CR : OP_MOV_FROM_CR;
          form = FORM_RM;
          size = 8;
          break;
        }
        case 0x80:
        case 0x81:
        case 0x82:
        case 0x83:
        case 0x84:
        case 0x85:
        case 0x86:
        case 0x87:
        case 0x88:
        case 0x89:
        case 0x8a:
        case 0x8b:
        case 0x8c:
        case 0x8d:
        case 0x8e:
        case 0x8f:
          op = OP_JCC;
          form = FORM_IMM;
          size = 8;
          out.condition = opcode2 & 15;
          p = readImmediate(bytes, p, end, 4, true, out);
          break;
        case 0xb6:
        case 0xb7:
          op = OP_MOVZX; // operandSize is the destination's; the source is 1 or 2 bytes
          form = FORM_REG_RM;
          p = readModrm(bytes, p, end, rex, out);
          break;
        case 0x38: {
          // Three-byte map 0F 38 (SDM Vol. 2 Table A-4): only INVPCID, which needs 66.
          if (p >= end) return fail(out, TOO_LONG);
          if (p >= limit) return fail(out, NEED_MORE);
          const opcode3 = bytes[p++];
          out.opcode = 0x0f3800 | opcode3;
          if (opcode3 !== 0x82 || !hasOpsizePrefix) return fail(out, BAD);
          p = readModrm(bytes, p, end, rex, out);
          if (p < 0) break;
          if (!out.isMemory) return fail(out, BAD);
          op = OP_INVPCID;
          form = FORM_REG_RM;
          size = 8;
          break;
        }
        case 0xab:
        case 0xb3:
          op = opcode2 === 0xab ? OP_BTS : OP_BTR;
          form = FORM_RM_REG;
          p = readModrm(bytes, p, end, rex, out);
          break;
        case 0xb0:
        case 0xb1:
          op = OP_CMPXCHG;
          form = FORM_RM_REG;
          size = opcode2 === 0xb0 ? 1 : vsize;
          p = readModrm(bytes, p, end, rex, out);
          break;
        case 0xba:
          p = readModrm(bytes, p, end, rex, out);
          if (p < 0) break;
          out.reg &= 7;
          op = out.reg === 5 ? OP_BTS : out.reg === 6 ? OP_BTR : OP_INVALID;
          if (op === OP_INVALID) return fail(out, BAD); // BT, BTC
          form = FORM_RM_IMM;
          p = readImmediate(bytes, p, end, 1, false, out);
          break;
        case 0xc7:
          p = readModrm(bytes, p, end, rex, out);
          if (p < 0) break;
          out.reg &= 7;
          if (out.reg !== 1 || !out.isMemory) return fail(out, BAD); // RDRAND, VMPTRLD, ...
          op = isRexW ? OP_CMPXCHG16B : OP_CMPXCHG8B;
          form = FORM_RM;
          size = isRexW ? 8 : 4;
          break;
        default:
          return fail(out, BAD);
      }
      break;
    }
    default: {
      // The ALU block 00..3D (see ALU_OPS). Anything else is not in the subset: x87, VEX
      // (C4/C5), EVEX (62), ...
      const column = opcode & 7;
      if (opcode >= 0x40 || column > 5) return fail(out, BAD);
      op = ALU_OPS[opcode >>> 3]!;
      if (op === OP_INVALID) return fail(out, BAD); // ADC, SBB
      if ((column & 1) === 0) size = 1;
      if (column < 4) {
        form = column < 2 ? FORM_RM_REG : FORM_REG_RM;
        p = readModrm(bytes, p, end, rex, out);
      } else {
        form = FORM_RM_IMM; // rm 0: AL/AX/EAX/RAX
        p = readOperandImmediate(bytes, p, end, size, out);
      }
      break;
    }
  }
  if (p < 0) return fail(out, p);

  // Prefix rules that need the whole instruction.
  const isMemory = out.isMemory;
  if (out.lockPrefix && !isLockable(op, form, isMemory)) return fail(out, BAD);
  if (out.rep !== 0 && opcode === 0x0f && !out.lockPrefix) return fail(out, BAD); // see above
  if (hasOpsizePrefix && (op === OP_JMP || op === OP_CALL || op === OP_RET || op === OP_JCC)) {
    return fail(out, BAD);
  }

  out.op = op;
  out.form = form;
  out.operandSize = size;
  out.lock = out.lockPrefix || (op === OP_XCHG && isMemory);
  out.length = p - offset;
  return out.length;
}

// ---------------------------------------------------------------------------------------
// Disassembly (Intel syntax), for explanations and traces; not on a hot path.
// ---------------------------------------------------------------------------------------

const REG64 = "rax rcx rdx rbx rsp rbp rsi rdi r8 r9 r10 r11 r12 r13 r14 r15".split(" ");
const REG32 = "eax ecx edx ebx esp ebp esi edi r8d r9d r10d r11d r12d r13d r14d r15d".split(" ");
const REG16 = "ax cx dx bx sp bp si di r8w r9w r10w r11w r12w r13w r14w r15w".split(" ");
const REG8_REX = "al cl dl bl spl bpl sil dil r8b r9b r10b r11b r12b r13b r14b r15b".split(" ");
const REG8_LEGACY = ["al", "cl", "dl", "bl", "ah", "ch", "dh", "bh"];

/** Base mnemonic of each operation; sizes and prefixes are added by formatInstruction. */
const MNEMONICS: Record<number, string> = {
  [OP_MOV]: "mov",
  [OP_XCHG]: "xchg",
  [OP_CMPXCHG]: "cmpxchg",
  [OP_CMPXCHG8B]: "cmpxchg8b",
  [OP_CMPXCHG16B]: "cmpxchg16b",
  [OP_ADD]: "add",
  [OP_OR]: "or",
  [OP_AND]: "and",
  [OP_SUB]: "sub",
  [OP_BTS]: "bts",
  [OP_BTR]: "btr",
  [OP_STOS]: "stos",
  [OP_MOVS]: "movs",
  [OP_MOV_TO_CR]: "mov",
  [OP_MOV_FROM_CR]: "mov",
  [OP_INVLPG]: "invlpg",
  [OP_INVPCID]: "invpcid",
  [OP_WBINVD]: "wbinvd",
  [OP_CLI]: "cli",
  [OP_STI]: "sti",
  [OP_HLT]: "hlt",
  [OP_NOP]: "nop",
  [OP_IRET]: "iret",
  [OP_IN]: "in",
  [OP_OUT]: "out",
  [OP_PUSHF]: "pushf",
  [OP_POPF]: "popf",
  [OP_LGDT]: "lgdt",
  [OP_LIDT]: "lidt",
  [OP_SGDT]: "sgdt",
  [OP_SIDT]: "sidt",
  [OP_SYSCALL]: "syscall",
  [OP_SYSRET]: "sysret",
  [OP_INT]: "int",
  [OP_INT3]: "int3",
  [OP_RET]: "ret",
  [OP_JMP]: "jmp",
  [OP_CALL]: "call",
  [OP_PUSH]: "push",
  [OP_POP]: "pop",
  [OP_CMP]: "cmp",
  [OP_TEST]: "test",
  [OP_XOR]: "xor",
  [OP_INC]: "inc",
  [OP_DEC]: "dec",
  [OP_JCC]: "j",
  [OP_MOVZX]: "movzx",
};

/** Jcc mnemonics by condition (the ones objdump prints). */
const CONDITION_NAMES = "o no b ae e ne be a s ns p np l ge le g".split(" ");

/** Name of general-purpose register `n` at operand size `size` bytes. */
function registerName(n: number, size: number, hasRex: boolean): string {
  switch (size) {
    case 8:
      return REG64[n];
    case 4:
      return REG32[n];
    case 2:
      return REG16[n];
    default:
      return hasRex ? REG8_REX[n] : REG8_LEGACY[n];
  }
}

/** Unsigned hex of a 64-bit value given as two 32-bit halves. */
function hex64(hi: number, lo: number): string {
  if (hi === 0) return "0x" + (lo >>> 0).toString(16);
  return "0x" + (hi >>> 0).toString(16) + (lo >>> 0).toString(16).padStart(8, "0");
}

/** Signed hex: "+0x8", "-0x8". */
function signedHex(v: number): string {
  return v < 0 ? "-0x" + (-v).toString(16) : "+0x" + v.toString(16);
}

/** The immediate masked to `size` bytes, as unsigned hex. */
function immediateText(d: DecodedInstruction, size: number): string {
  switch (size) {
    case 1:
      return "0x" + (d.imm & 0xff).toString(16);
    case 2:
      return "0x" + (d.imm & 0xffff).toString(16);
    case 4:
      return hex64(0, d.imm);
    default:
      return hex64(d.immHi, d.imm);
  }
}

/** Memory operand size in bytes as printed, or 0 for "no size keyword". */
function memorySize(d: DecodedInstruction): number {
  switch (d.op) {
    case OP_INVLPG:
    case OP_INVPCID:
    case OP_LGDT:
    case OP_LIDT:
    case OP_SGDT:
    case OP_SIDT:
      return 0;
    case OP_CMPXCHG8B:
      return 8;
    case OP_CMPXCHG16B:
      return 16;
    case OP_MOVZX:
      return d.opcode === 0x0fb6 ? 1 : 2; // the source
    default:
      return d.operandSize;
  }
}

const SIZE_KEYWORDS: Record<number, string> = {
  1: "byte ptr ",
  2: "word ptr ",
  4: "dword ptr ",
  8: "qword ptr ",
  16: "xmmword ptr ",
};

/** The r/m operand: a register, or "qword ptr fs:[base+index*scale+disp]". */
function rmText(d: DecodedInstruction): string {
  if (!d.isMemory) return registerName(d.rm, d.operandSize, d.rex !== 0);
  const names = d.addressSize === 8 ? REG64 : REG32;
  const size = memorySize(d);
  let text = size === 0 ? "" : SIZE_KEYWORDS[size];
  if (d.segment === 0x64) text += "fs:";
  if (d.segment === 0x65) text += "gs:";
  let inner = "";
  if (d.ripRelative) {
    inner = (d.addressSize === 8 ? "rip" : "eip") + signedHex(d.disp);
  } else {
    if (d.base >= 0) inner = names[d.base];
    if (d.index >= 0) {
      inner += (inner === "" ? "" : "+") + names[d.index] + (d.scale > 1 ? "*" + d.scale : "");
    }
    if (inner === "") {
      inner = d.addressSize === 8 ? hex64(d.disp >> 31, d.disp) : hex64(0, d.disp);
    } else if (d.disp !== 0) {
      inner += signedHex(d.disp);
    }
  }
  return text + "[" + inner + "]";
}

/** Suffix naming the operand size of string and flag/return instructions. */
function sizeSuffix(size: number): string {
  return size === 1 ? "b" : size === 2 ? "w" : size === 4 ? "d" : "q";
}

/**
 * Formats a decoded instruction as Intel-syntax assembly, for explanations and traces.
 * Branch targets are shown relative to the instruction's own address as `$+0x10`
 * (NASM's `$`), since the decoder does not know where the bytes live.
 *
 * @param d A record filled by {@linkcode decodeInstruction}.
 * @returns The text, e.g. "lock cmpxchg qword ptr [rdi+0x8], rsi"; "(bad)" when `d.op`
 *   is OP_INVALID.
 *
 * @example Usage
 * ```ts
 * import assert from "node:assert/strict";
 * import { DecodedInstruction, decodeInstruction, formatInstruction } from "./decode.ts";
 *
 * const d = new DecodedInstruction();
 * decodeInstruction(new Uint8Array([0x48, 0x89, 0x74, 0x24, 0x08]), 0, d);
 * assert.equal(formatInstruction(d), "mov qword ptr [rsp+0x8], rsi");
 * decodeInstruction(new Uint8Array([0x0f, 0x22, 0xd8]), 0, d);
 * assert.equal(formatInstruction(d), "mov cr3, rax");
 * ```
 */
export function formatInstruction(d: DecodedInstruction): string {
  const op = d.op;
  let mnemonic = MNEMONICS[op];
  if (mnemonic === undefined) return "(bad)";
  const size = d.operandSize;
  const hasRex = d.rex !== 0;
  switch (op) {
    case OP_STOS:
    case OP_MOVS: {
      const rep = d.rep === 0xf3 ? "rep " : d.rep === 0xf2 ? "repne " : "";
      return rep + mnemonic + sizeSuffix(size);
    }
    case OP_IRET:
      return size === 4 ? "iretd" : mnemonic + sizeSuffix(size);
    case OP_PUSHF:
    case OP_POPF:
      return mnemonic + sizeSuffix(size);
    case OP_SYSRET:
      return size === 8 ? "sysretq" : mnemonic;
    case OP_MOV_TO_CR:
      return "mov cr" + d.crRegister + ", " + REG64[d.rm];
    case OP_MOV_FROM_CR:
      return "mov " + REG64[d.rm] + ", cr" + d.crRegister;
    case OP_IN:
    case OP_OUT: {
      const accumulator = registerName(0, size, false);
      const port = d.form === FORM_IMM ? immediateText(d, 1) : "dx";
      return op === OP_IN ? "in " + accumulator + ", " + port : "out " + port + ", " + accumulator;
    }
    case OP_JMP:
    case OP_CALL:
      return mnemonic + " $" + signedHex(d.imm + d.length);
    case OP_JCC:
      return mnemonic + CONDITION_NAMES[d.condition] + " $" + signedHex(d.imm + d.length);
    case OP_PUSH:
      if (d.form === FORM_IMM) return mnemonic + " " + immediateText(d, size);
      break;
    case OP_MOVZX: {
      const source = d.isMemory ? rmText(d) : registerName(d.rm, memorySize(d), hasRex);
      return mnemonic + " " + registerName(d.reg, size, hasRex) + ", " + source;
    }
    default:
      break;
  }
  if (d.lockPrefix) mnemonic = "lock " + mnemonic;
  switch (d.form) {
    case FORM_RM_REG:
      return mnemonic + " " + rmText(d) + ", " + registerName(d.reg, size, hasRex);
    case FORM_REG_RM:
      return mnemonic + " " + registerName(d.reg, size, hasRex) + ", " + rmText(d);
    case FORM_RM_IMM:
      // BTS/BTR imm8 is a bit offset; the others extend their immediate to operand size.
      return mnemonic + " " + rmText(d) + ", " +
        immediateText(d, op === OP_BTS || op === OP_BTR ? 1 : size);
    case FORM_REG_IMM:
      return mnemonic + " " + registerName(d.reg, size, hasRex) + ", " + immediateText(d, size);
    case FORM_IMM:
      return mnemonic + " " + immediateText(d, d.immSize);
    case FORM_RM:
      return mnemonic + " " + rmText(d);
    default:
      return mnemonic;
  }
}
