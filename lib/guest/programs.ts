/**
 * User programs for the instruction-level guest ({@link GuestOs.spawnProgram}), built by a
 * tiny assembler so that each reads as its assembly. They use only encodings the lab's
 * decoder knows (lib/x86/decode.ts: MOV, XOR, ADD/SUB/CMP, INC/DEC, MOVZX, Jcc/JMP rel8,
 * INT n; no DIV, no LEA), except where a program exists to raise #UD or #GP.
 *
 * A program is loaded at {@link PROGRAM_TEXT} (0x400000, read-only and executable) with
 * its data page at {@link PROGRAM_DATA} (0x600000, zero-filled on demand) and its stack
 * below STACK_TOP. Constant data (a message) lives in the text after the code, addressed
 * with `mov esi, imm32`: text pages are readable. System calls are `int 0x80` with the
 * Linux x86-64 numbers in EAX and arguments in EDI, ESI, EDX; the kernel saves and
 * restores every other register.
 *
 * The set:
 *
 * | program                    | what it does                                         | ends with                       |
 * | -------------------------- | ---------------------------------------------------- | ------------------------------- |
 * | {@link getpidLoopProgram}  | `n` getpid calls                                     | exit(pid)                       |
 * | {@link writerProgram}      | write(1, message, length), `times` times             | exit(bytes of the last write)   |
 * | {@link echoProgram}        | read one byte, write it back, until a newline        | exit(0)                         |
 * | {@link readOneProgram}     | read one byte into 0x600000, echo it, then spin      | never (a step bound)            |
 * | {@link spinnerProgram}     | counts ECX down from `count`                         | exit(0)                         |
 * | {@link spinForeverProgram} | `jmp $`                                              | never                           |
 * | {@link triangleProgram}    | 1 + 2 + ... + n by ADD (no division anywhere)        | exit(n(n+1)/2 mod 2^32)         |
 * | {@link yielderProgram}     | `n` sched_yield calls                                | exit(0)                         |
 * | {@link storeToTextProgram} | `mov dword [0x400000], 1`: a store to its own text   | SIGSEGV (#PF, SEGV_ACCERR)      |
 * | {@link privilegedProgram}  | cli / hlt / in al, 0x60 / mov cr3, rax at CPL 3      | SIGSEGV (#GP: vector 13)        |
 * | {@link undefinedProgram}   | ud2, or an x87 opcode the decoder does not know      | SIGSEGV (#UD: vector 6)         |
 *
 * @module
 */

import {
  PROGRAM_DATA,
  PROGRAM_TEXT,
  SYS_EXIT,
  SYS_GETPID,
  SYS_SCHED_YIELD,
  SYS_WRITE,
} from "./guest_os.ts";

/** A 32-bit general register, by its name (x86 numbering: eax 0 ... edi 7). */
export type Register32 = "eax" | "ecx" | "edx" | "ebx" | "esp" | "ebp" | "esi" | "edi";

const REGISTER_NUMBER: Readonly<Record<Register32, number>> = {
  eax: 0,
  ecx: 1,
  edx: 2,
  ebx: 3,
  esp: 4,
  ebp: 5,
  esi: 6,
  edi: 7,
};

/** One assembled instruction (or data run) of a program, for listings and tests. */
export interface ProgramLine {
  /** Offset from the program's start (its address is PROGRAM_TEXT + offset). */
  offset: number;
  /** Bytes it occupies. */
  length: number;
  /** The assembly, Intel syntax (`db "..."` for data). */
  text: string;
  /** Whether it is data rather than an instruction. */
  isData: boolean;
}

/** A program ready for {@link GuestOs.spawnProgram}. */
export interface GuestProgram {
  /** Short name (for reports). */
  name: string;
  /** The bytes loaded at PROGRAM_TEXT. */
  bytes: Uint8Array;
  /** Its listing, one line per instruction or data run. */
  lines: readonly ProgramLine[];
}

/**
 * A tiny assembler for user programs: one method per instruction form the programs use,
 * labels, and short (rel8) jumps and absolute (imm32) addresses resolved at the end.
 * Registers are 32-bit (`mov ecx, 5` zero-extends into RCX, SDM Vol. 1 3.4.1.1); memory
 * operands are `[reg + disp8]` in 64-bit addressing. Throws a RangeError for an operand
 * out of range, an unknown label or a jump too far for rel8.
 *
 * @example `mov eax, 39; int 0x80; mov edi, eax; mov eax, 60; int 0x80`
 * ```ts
 * import { ProgramAssembler } from "./programs.ts";
 * import assert from "node:assert/strict";
 * const a = new ProgramAssembler();
 * a.movImm("eax", 39).int(0x80).movReg("edi", "eax").movImm("eax", 60).int(0x80);
 * const program = a.assemble("getpid-exit");
 * assert.deepEqual([...program.bytes], [0xb8, 39, 0, 0, 0, 0xcd, 0x80, 0x89, 0xc7, 0xb8, 60, 0, 0, 0, 0xcd, 0x80]);
 * assert.equal(program.lines[2]!.text, "mov edi, eax");
 * ```
 */
export class ProgramAssembler {
  readonly #bytes: number[] = [];
  readonly #lines: ProgramLine[] = [];
  readonly #labels = new Map<string, number>();
  readonly #fixups: { at: number; label: string; kind: "rel8" | "abs32" }[] = [];

  /** Bytes emitted so far (the offset of the next instruction). */
  get offset(): number {
    return this.#bytes.length;
  }

  /** Names the current offset. */
  label(name: string): this {
    if (this.#labels.has(name)) throw new RangeError(`Label "${name}" is defined twice`);
    this.#labels.set(name, this.offset);
    return this;
  }

  /** Emits raw instruction bytes with their assembly text (for the odd instruction). */
  emit(text: string, ...bytes: number[]): this {
    this.#lines.push({ offset: this.offset, length: bytes.length, text, isData: false });
    for (const b of bytes) this.#bytes.push(b & 0xff);
    return this;
  }

  /** `mov r32, imm32` (B8+r id); a string is a label, its address PROGRAM_TEXT + offset. */
  movImm(reg: Register32, value: number | string): this {
    const r = registerNumber(reg);
    if (typeof value === "string") {
      this.emit(`mov ${reg}, ${value}`, 0xb8 + r);
      this.#fixups.push({ at: this.offset, label: value, kind: "abs32" });
      this.#bytes.push(0, 0, 0, 0);
      this.#lines.at(-1)!.length = 5;
      return this;
    }
    return this.emit(`mov ${reg}, ${hex(value)}`, 0xb8 + r, ...le32(checkU32(value)));
  }

  /** `mov dst, src` (89 /r). */
  movReg(dst: Register32, src: Register32): this {
    return this.emit(`mov ${dst}, ${src}`, 0x89, modrmRegs(src, dst));
  }

  /** `xor dst, src` (31 /r); `xor r, r` is the idiom for zero. */
  xor(dst: Register32, src: Register32): this {
    return this.emit(`xor ${dst}, ${src}`, 0x31, modrmRegs(src, dst));
  }

  /** `add dst, src` (01 /r). */
  add(dst: Register32, src: Register32): this {
    return this.emit(`add ${dst}, ${src}`, 0x01, modrmRegs(src, dst));
  }

  /** `add r32, imm8` (83 /0 ib, sign-extended). */
  addImm(reg: Register32, imm8: number): this {
    return this.#group1(0, "add", reg, imm8);
  }

  /** `sub r32, imm8` (83 /5 ib, sign-extended). */
  subImm(reg: Register32, imm8: number): this {
    return this.#group1(5, "sub", reg, imm8);
  }

  /** `cmp r32, imm8` (83 /7 ib, sign-extended). */
  cmpImm(reg: Register32, imm8: number): this {
    return this.#group1(7, "cmp", reg, imm8);
  }

  /** `inc r32` (FF /0). */
  inc(reg: Register32): this {
    return this.emit(`inc ${reg}`, 0xff, 0xc0 | registerNumber(reg));
  }

  /** `dec r32` (FF /1). */
  dec(reg: Register32): this {
    return this.emit(`dec ${reg}`, 0xff, 0xc8 | registerNumber(reg));
  }

  /** `cmp byte [base + disp8], imm8` (80 /7 with mod 01). */
  cmpByte(base: Register32, disp8: number, imm8: number): this {
    return this.emit(
      `cmp byte [r${base.slice(1)}${dispText(disp8)}], ${hex(imm8)}`,
      0x80,
      modrmMemory(7, base),
      checkI8(disp8),
      checkI8(imm8),
    );
  }

  /** `mov byte [base + disp8], imm8` (C6 /0 with mod 01). */
  movByte(base: Register32, disp8: number, imm8: number): this {
    return this.emit(
      `mov byte [r${base.slice(1)}${dispText(disp8)}], ${hex(imm8)}`,
      0xc6,
      modrmMemory(0, base),
      checkI8(disp8),
      imm8 & 0xff,
    );
  }

  /** `movzx dst, byte [base + disp8]` (0F B6 /r with mod 01). */
  movzxByte(dst: Register32, base: Register32, disp8: number): this {
    return this.emit(
      `movzx ${dst}, byte [r${base.slice(1)}${dispText(disp8)}]`,
      0x0f,
      0xb6,
      modrmMemory(registerNumber(dst), base),
      checkI8(disp8),
    );
  }

  /** `mov dword [abs32], imm32` (C7 /0 with a SIB of no base and no index: 04 25). */
  storeAbsolute(address: number, imm32: number): this {
    return this.emit(
      `mov dword [${hex(address)}], ${hex(imm32)}`,
      0xc7,
      0x04,
      0x25,
      ...le32(checkU32(address)),
      ...le32(checkU32(imm32)),
    );
  }

  /** `int n` (CD ib). */
  int(vector: number): this {
    return this.emit(`int ${hex(vector)}`, 0xcd, checkU8(vector));
  }

  /** A system call: `mov eax, number; int 0x80` (arguments already in EDI, ESI, EDX). */
  syscall(number: number): this {
    return this.movImm("eax", number).int(0x80);
  }

  /** `jmp label` (EB rel8). */
  jmp(label: string): this {
    return this.#short(0xeb, "jmp", label);
  }

  /** `jnz label` (75 rel8). */
  jnz(label: string): this {
    return this.#short(0x75, "jnz", label);
  }

  /** `jz label` (74 rel8). */
  jz(label: string): this {
    return this.#short(0x74, "jz", label);
  }

  /** Data bytes (Latin-1 text or numbers) at the current offset. */
  data(bytes: string | readonly number[]): this {
    const values = typeof bytes === "string"
      ? [...bytes].map((c) => checkU8(c.charCodeAt(0)))
      : bytes.map(checkU8);
    const text = typeof bytes === "string"
      ? `db ${JSON.stringify(bytes)}`
      : `db ${values.map(hex).join(", ")}`;
    this.#lines.push({ offset: this.offset, length: values.length, text, isData: true });
    this.#bytes.push(...values);
    return this;
  }

  /** Resolves labels and returns the program. */
  assemble(name: string): GuestProgram {
    const bytes = Uint8Array.from(this.#bytes);
    for (const { at, label, kind } of this.#fixups) {
      const target = this.#labels.get(label);
      if (target === undefined) throw new RangeError(`Program ${name}: no label "${label}"`);
      if (kind === "abs32") {
        bytes.set(le32(PROGRAM_TEXT + target), at);
      } else {
        const rel = target - (at + 1);
        if (rel < -128 || rel > 127) {
          throw new RangeError(`Program ${name}: "${label}" is ${rel} bytes away, beyond rel8`);
        }
        bytes[at] = rel & 0xff;
      }
    }
    return { name, bytes, lines: this.#lines.map((line) => ({ ...line })) };
  }

  #group1(ext: number, mnemonic: string, reg: Register32, imm8: number): this {
    return this.emit(
      `${mnemonic} ${reg}, ${imm8}`,
      0x83,
      0xc0 | (ext << 3) | registerNumber(reg),
      checkI8(imm8),
    );
  }

  #short(opcode: number, mnemonic: string, label: string): this {
    this.emit(`${mnemonic} ${label}`, opcode, 0);
    this.#fixups.push({ at: this.offset - 1, label, kind: "rel8" });
    return this;
  }
}

// --- The programs -------------------------------------------------------------------------

/**
 * `n` getpid calls, then exit with the last result, so the exit code is the pid the
 * kernel returned in RAX after IRETQ:
 *
 * ```
 *         mov ebx, n
 * again:  mov eax, 39        ; getpid
 *         int 0x80
 *         sub ebx, 1
 *         jnz again
 *         mov edi, eax       ; exit(pid)
 *         mov eax, 60
 *         int 0x80
 * ```
 *
 * Throws a RangeError unless 1 <= n <= 2^31.
 */
export function getpidLoopProgram(n: number): GuestProgram {
  checkCount("getpid calls", n);
  const a = new ProgramAssembler();
  a.movImm("ebx", n).label("again").syscall(SYS_GETPID).subImm("ebx", 1).jnz("again");
  a.movReg("edi", "eax").syscall(SYS_EXIT);
  return a.assemble(`getpid x${n}`);
}

/**
 * write(1, message, length) `times` times, then exit with the last write's result (the
 * bytes written). The message is in the text after the code:
 *
 * ```
 *         mov ebx, times
 * again:  mov edi, 1         ; fd 1: the serial console
 *         mov esi, message   ; 0x400000 + its offset
 *         mov edx, length
 *         mov eax, 1         ; write
 *         int 0x80
 *         sub ebx, 1
 *         jnz again
 *         mov edi, eax       ; exit(bytes written)
 *         mov eax, 60
 *         int 0x80
 * message: db "..."
 * ```
 *
 * Throws a RangeError for an empty or non-Latin-1 message, or `times` outside 1..2^31.
 */
export function writerProgram(message: string, times = 1): GuestProgram {
  if (message.length === 0 || message.length > 2048) {
    throw new RangeError(`Cannot write a message of ${message.length} bytes: 1..2048`);
  }
  checkCount("writes", times);
  const a = new ProgramAssembler();
  a.movImm("ebx", times).label("again");
  a.movImm("edi", 1).movImm("esi", "message").movImm("edx", message.length).syscall(SYS_WRITE);
  a.subImm("ebx", 1).jnz("again");
  a.movReg("edi", "eax").syscall(SYS_EXIT);
  a.label("message").data(message);
  return a.assemble(`write ${JSON.stringify(message)} x${times}`);
}

/**
 * Reads the keyboard one byte at a time and writes each byte back, until a newline:
 *
 * ```
 *         mov esi, 0x600000  ; the buffer, in the data page
 * again:  xor eax, eax       ; read
 *         xor edi, edi       ; fd 0: the keyboard
 *         mov edx, 1
 *         int 0x80           ; blocks until a key arrives
 *         mov eax, 1         ; write (ESI, EDX kept by the kernel)
 *         mov edi, 1
 *         int 0x80
 *         cmp byte [rsi+0], 0x0a
 *         jnz again
 *         xor edi, edi       ; exit(0)
 *         mov eax, 60
 *         int 0x80
 * ```
 */
export function echoProgram(): GuestProgram {
  const a = new ProgramAssembler();
  a.movImm("esi", PROGRAM_DATA).label("again");
  a.xor("eax", "eax").xor("edi", "edi").movImm("edx", 1).int(0x80);
  a.movImm("edi", 1).syscall(SYS_WRITE);
  a.cmpByte("esi", 0, 0x0a).jnz("again");
  a.xor("edi", "edi").syscall(SYS_EXIT);
  return a.assemble("echo");
}

/**
 * Reads one byte into 0x600000, keeps read()'s result in EBX, writes the byte to the
 * console, then spins, so a test can look at its registers and memory afterwards:
 *
 * ```
 *         mov esi, 0x600000
 *         xor eax, eax       ; read(0, buf, 1)
 *         xor edi, edi
 *         mov edx, 1
 *         int 0x80
 *         mov ebx, eax       ; read's result
 *         mov edi, 1         ; write(1, buf, 1)
 *         mov eax, 1
 *         int 0x80
 * spin:   jmp spin
 * ```
 */
export function readOneProgram(): GuestProgram {
  const a = new ProgramAssembler();
  a.movImm("esi", PROGRAM_DATA);
  a.xor("eax", "eax").xor("edi", "edi").movImm("edx", 1).int(0x80).movReg("ebx", "eax");
  a.movImm("edi", 1).syscall(SYS_WRITE);
  a.label("spin").jmp("spin");
  return a.assemble("read one");
}

/**
 * Counts ECX down from `count` (2 instructions per round), then exits:
 *
 * ```
 *         mov ecx, count
 * again:  sub ecx, 1
 *         jnz again
 *         xor edi, edi       ; exit(0)
 *         mov eax, 60
 *         int 0x80
 * ```
 *
 * It retires 2 * count + 4 instructions. Throws a RangeError unless 1 <= count <= 2^31.
 */
export function spinnerProgram(count: number): GuestProgram {
  checkCount("spinner rounds", count);
  const a = new ProgramAssembler();
  a.movImm("ecx", count).label("again").subImm("ecx", 1).jnz("again");
  a.xor("edi", "edi").syscall(SYS_EXIT);
  return a.assemble(`spin ${count}`);
}

/** Spins forever: `spin: jmp spin` (EB FE). */
export function spinForeverProgram(): GuestProgram {
  const a = new ProgramAssembler();
  a.label("spin").jmp("spin");
  return a.assemble("spin forever");
}

/**
 * Sums 1 + 2 + ... + n with ADD and exits with the sum (mod 2^32): a check of the ALU
 * and the flags without a division:
 *
 * ```
 *         mov ecx, n
 *         xor edi, edi
 * again:  add edi, ecx
 *         dec ecx
 *         jnz again
 *         mov eax, 60        ; exit(sum)
 *         int 0x80
 * ```
 *
 * Throws a RangeError unless 1 <= n <= 2^31.
 */
export function triangleProgram(n: number): GuestProgram {
  checkCount("terms", n);
  const a = new ProgramAssembler();
  a.movImm("ecx", n).xor("edi", "edi").label("again").add("edi", "ecx").dec("ecx").jnz("again");
  a.syscall(SYS_EXIT);
  return a.assemble(`triangle ${n}`);
}

/** The exit code {@link triangleProgram} ends with: n(n+1)/2 mod 2^32, as a signed int. */
export function triangleExitCode(n: number): number {
  let sum = 0;
  for (let k = 1; k <= n; k++) sum = (sum + k) | 0;
  return sum;
}

/**
 * `n` sched_yield calls, then exit(0):
 *
 * ```
 *         mov ebx, n
 * again:  mov eax, 24        ; sched_yield
 *         int 0x80
 *         sub ebx, 1
 *         jnz again
 *         xor edi, edi
 *         mov eax, 60
 *         int 0x80
 * ```
 *
 * Throws a RangeError unless 1 <= n <= 2^31.
 */
export function yielderProgram(n: number): GuestProgram {
  checkCount("yields", n);
  const a = new ProgramAssembler();
  a.movImm("ebx", n).label("again").syscall(SYS_SCHED_YIELD).subImm("ebx", 1).jnz("again");
  a.xor("edi", "edi").syscall(SYS_EXIT);
  return a.assemble(`yield x${n}`);
}

/**
 * Stores to its own first text page (`mov dword [0x400000], 1`): the text is mapped
 * read-only, so the store is a #PF with error code 0x7 (present, write, user) and the
 * kernel kills it with SIGSEGV, "SEGV_ACCERR at 0x0000000000400000". The exit after it
 * never runs.
 */
export function storeToTextProgram(): GuestProgram {
  const a = new ProgramAssembler();
  a.storeAbsolute(PROGRAM_TEXT, 1);
  a.xor("edi", "edi").syscall(SYS_EXIT);
  return a.assemble("store to text");
}

/** The privileged instructions {@link privilegedProgram} can try. */
export const PRIVILEGED_KINDS = ["cli", "hlt", "in", "mov-cr3", "lidt", "out"] as const;
/** One of {@link PRIVILEGED_KINDS}. */
export type PrivilegedKind = typeof PRIVILEGED_KINDS[number];

/**
 * One privileged instruction at CPL 3, then exit(0), which never runs: CLI and IN/OUT
 * need CPL <= IOPL (user RFLAGS has IOPL 0), HLT, MOV CR3 and LIDT need CPL 0, so each
 * raises #GP(0) (SDM Vol. 2 CLI, HLT, IN, OUT, MOV CRn, LIDT) and the kernel kills the
 * program with SIGSEGV ("vector 13 in user mode"):
 *
 * ```
 *         cli | hlt | in al, 0x60 | mov cr3, rax | lidt [rsi+0] | out 0x80, al
 *         xor edi, edi
 *         mov eax, 60
 *         int 0x80
 * ```
 */
export function privilegedProgram(kind: PrivilegedKind): GuestProgram {
  const a = new ProgramAssembler();
  switch (kind) {
    case "cli":
      a.emit("cli", 0xfa);
      break;
    case "hlt":
      a.emit("hlt", 0xf4);
      break;
    case "in":
      a.emit("in al, 0x60", 0xe4, 0x60);
      break;
    case "mov-cr3":
      a.emit("mov cr3, rax", 0x0f, 0x22, 0xd8);
      break;
    case "lidt":
      a.emit("lidt [rsi+0]", 0x0f, 0x01, 0x5e, 0x00);
      break;
    case "out":
      a.emit("out 0x80, al", 0xe6, 0x80);
      break;
    default:
      throw new RangeError(
        `Unknown privileged instruction "${kind}": ${PRIVILEGED_KINDS.join(", ")}`,
      );
  }
  a.xor("edi", "edi").syscall(SYS_EXIT);
  return a.assemble(kind);
}

/**
 * An instruction the processor refuses with #UD, then exit(0), which never runs:
 * `ud2` (0F 0B, undefined on every x86), or `fld1` (D9 E8), a valid x87 instruction
 * the lab's decoder does not know: the interpreter raises #UD for it, as an emulator
 * does for an instruction it cannot handle. The kernel kills the program with SIGSEGV
 * ("vector 6 in user mode"; Linux would send SIGILL).
 */
export function undefinedProgram(kind: "ud2" | "x87" = "ud2"): GuestProgram {
  const a = new ProgramAssembler();
  if (kind === "ud2") a.emit("ud2", 0x0f, 0x0b);
  else a.emit("fld1", 0xd9, 0xe8);
  a.xor("edi", "edi").syscall(SYS_EXIT);
  return a.assemble(kind);
}

// --- Encoding helpers ---------------------------------------------------------------------

function registerNumber(reg: Register32): number {
  const r = REGISTER_NUMBER[reg];
  if (r === undefined) throw new RangeError(`Unknown register "${reg}"`);
  return r;
}

// ModRM with mod 11: `reg` field = src, `rm` field = dst (the 89/31/01 r/m, r forms).
function modrmRegs(src: Register32, dst: Register32): number {
  return 0xc0 | (registerNumber(src) << 3) | registerNumber(dst);
}

// ModRM with mod 01 (disp8) and base `base`; RSP would need a SIB byte.
function modrmMemory(regField: number, base: Register32): number {
  const b = registerNumber(base);
  if (b === 4) throw new RangeError("Cannot address [rsp + disp8] without a SIB byte");
  return 0x40 | (regField << 3) | b;
}

function le32(value: number): number[] {
  return [value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, (value >>> 24) & 0xff];
}

function checkU32(value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new RangeError(`Cannot encode ${value} in 32 bits: 0..0xffffffff`);
  }
  return value;
}

function checkU8(value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xff) {
    throw new RangeError(`Cannot encode ${value} in a byte: 0..255`);
  }
  return value;
}

function checkI8(value: number): number {
  if (!Number.isInteger(value) || value < -128 || value > 255) {
    throw new RangeError(`Cannot encode ${value} in 8 bits: -128..255`);
  }
  return value & 0xff;
}

function checkCount(what: string, n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > 2 ** 31) {
    throw new RangeError(`Cannot run ${n} ${what}: must be an integer 1..2^31`);
  }
}

function hex(value: number): string {
  return value < 10 ? String(value) : "0x" + value.toString(16);
}

function dispText(disp8: number): string {
  return disp8 < 0 ? `-${-disp8}` : `+${disp8}`;
}
