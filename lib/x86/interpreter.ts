/**
 * An x86-64 interpreter for the decoder's instruction subset: the guest kernel's
 * page-table writes (MOV, XCHG, LOCK CMPXCHG/OR/AND/BTS/BTR, REP STOSQ/MOVSQ), its
 * privileged instructions (MOV CRn, INVLPG, INVPCID, CLI/STI, HLT) and the ordinary
 * integer instructions of its stubs and user programs (PUSH/POP, CMP/TEST/XOR/INC/DEC,
 * Jcc, MOVZX, CALL/RET/JMP), executed from real instruction bytes through a {@link Vcpu}.
 *
 * Every byte of code is fetched through the vCPU as an instruction fetch (ACCESS_FETCH),
 * and every operand goes through `cpu.read` / `cpu.write`, so the TLB, the page walk, the
 * #PF error codes and the counters see exactly what hardware would do. A hypervisor that
 * traps one of these writes can fetch and decode the same bytes.
 *
 * Architectural events are values: step() returns a `STEP_*` code and leaves an exception
 * in `cpu.exception`. An instruction that faults changes nothing (RIP still points at it),
 * except the progress of a REP string instruction, which the SDM keeps in RCX/RDI/RSI so
 * re-executing it resumes (Vol. 2, REP/REPE/REPZ/REPNE/REPNZ).
 *
 * Registers are kept as 32-bit halves in a Uint32Array and addresses are computed with
 * 64-bit wraparound on those halves; no BigInt and nothing allocated per instruction.
 * Only 64-bit mode is modelled (Intel SDM Vol. 1 3.3.7, Vol. 2).
 *
 * With {@link Interpreter.systemInstructions} set, the interpreter is also the processor's
 * system side for CPU virtualization (issue 9): event delivery through a 64-bit IDT with
 * the double-fault rules ({@link Interpreter.deliverEvent}, SDM Vol. 3A 6.12, 6.14, 6.15),
 * external interrupts gated by RFLAGS.IF, and INT n / INT3 / IRETQ / SYSCALL / SYSRETQ /
 * PUSHF / POPF / IN / OUT / LGDT / LIDT / SGDT / SIDT with their privilege rules, including
 * the ones that do not trap at CPL 3 (POPF silently keeping IF, SIDT revealing the real
 * IDTR): the reasons classic x86 was not trap-and-emulate virtualizable.
 *
 * Two ways to run code. Routine mode ({@link Interpreter.run}): the host calls one kernel
 * routine and the first RET without a matching CALL returns STEP_RETURN to TypeScript.
 * Guest mode ({@link Interpreter.runGuest}): a whole guest OS runs, RET always pops, and
 * the host steps in only at events and at the host-service range, where the guest
 * kernel's stubs `call` its "compiled C code" ({@link STEP_SERVICE},
 * {@link Interpreter.returnFromService}); {@link InterpreterContext} saves and restores
 * the guest's state around what the host runs meanwhile.
 *
 * @module
 */

import { ACCESS_FETCH, ACCESS_IMPLICIT_READ, ACCESS_READ, ACCESS_WRITE } from "./access.ts";
import {
  canonicalToLinear,
  LINEAR_LIMIT,
  linearHigh32,
  PAGE_SIZE,
  UPPER_HALF_START,
} from "./address.ts";
import {
  DecodedInstruction,
  decodeInstruction,
  FORM_IMM,
  FORM_REG_IMM,
  FORM_REG_RM,
  FORM_RM_IMM,
  FORM_RM_REG,
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
} from "./decode.ts";
import { WALK_COUNT } from "./page_walk.ts";
import type { PortBus } from "./port_bus.ts";
import { declareCounter } from "./stats.ts";
import { TLB_HIT } from "./tlb.ts";
import {
  CPU_FETCH,
  CPU_GP,
  CPU_READ,
  CPU_WRITE,
  type Vcpu,
  VECTOR_EPT_VIOLATION,
  VECTOR_GP,
  VECTOR_PF,
  VECTOR_UD,
} from "./vcpu.ts";

/**
 * step(): the instruction retired and RIP advanced; or a REP string instruction paused
 * after 2^16 iterations, RIP still at it and RCX counting the rest (see
 * {@link Interpreter.step}).
 */
export const STEP_OK = 0;
/**
 * step(): an exception is in `cpu.exception` (vector, error code, CR2); RIP still points
 * at the faulting instruction and registers are unchanged, except the progress of a REP
 * string instruction (RCX/RDI/RSI count the iterations completed, so re-executing resumes).
 */
export const STEP_FAULT = 1;
/** step(): RET with no interpreter-made CALL frame: the routine returned; RIP is at the RET. */
export const STEP_RETURN = 2;
/** step(): HLT executed (RIP advanced past it). A pending interrupt wakes it at the next step(). */
export const STEP_HALT = 3;
/**
 * step(): `intercepts[op]` was set; nothing executed, `decoded` holds the instruction and
 * RIP is unchanged. The caller emulates it and calls {@link Interpreter.skip}.
 */
export const STEP_INTERCEPT = 4;
/**
 * step(): decoded fine but not executed by this interpreter (with
 * {@link Interpreter.systemInstructions} off: IN/OUT, SYSCALL, IRET, LGDT, PUSHF, ...; with
 * it on: WBINVD, IRET with a 16-bit operand, SYSRET to compatibility mode; either way
 * PUSH/POP with a 16-bit operand); nothing executed, RIP unchanged, `decoded` holds it.
 */
export const STEP_UNSUPPORTED = 5;
/** run() / resume(): stopped after `maxSteps` steps without finishing. */
export const STEP_LIMIT = 6;
/**
 * step() / deliverEvent(): a fault while delivering a double fault; the processor shuts
 * down (SDM Vol. 3A 6.15, interrupt 8). Registers, RIP and CPL are as before the failed
 * #DF delivery; `cpu.exception` holds the last fault.
 */
export const STEP_TRIPLE_FAULT = 7;
/**
 * step(): RIP lies in the host-service page ({@link Interpreter.serviceBase},
 * {@link Interpreter.serviceLimit}); nothing executed, {@link Interpreter.serviceNumber}
 * says which 16-byte slot. The host runs the service, then calls
 * {@link Interpreter.returnFromService}.
 */
export const STEP_SERVICE = 8;

/** #BP: breakpoint (vector 3), raised by INT3. */
export const VECTOR_BP = 3;
/** #DF: double fault (vector 8, error code 0). */
export const VECTOR_DF = 8;
/** #NP: segment (here: IDT gate) not present (vector 11). */
export const VECTOR_NP = 11;

/** #SS: stack fault (vector 12), raised for a non-canonical stack address (SDM 3.3.7.1). */
export const VECTOR_SS = 12;

/** Kernel code selector (GDT entry 1, RPL 0), as Linux's __KERNEL_CS. */
export const KERNEL_CS = 0x08;
/** Kernel stack selector (GDT entry 2, RPL 0), as Linux's __KERNEL_DS. */
export const KERNEL_SS = 0x10;
/** User 64-bit code selector (GDT entry 6, RPL 3), as Linux's __USER_CS. */
export const USER_CS = 0x33;
/** User stack selector (GDT entry 5, RPL 3), as Linux's __USER_DS. */
export const USER_SS = 0x2b;

/** RFLAGS.IF (bit 9): maskable external interrupts enabled. */
export const RFLAGS_IF = 0x200;
/** RFLAGS.IOPL (bits 13:12): the least privileged CPL allowed CLI/STI/IN/OUT. */
export const RFLAGS_IOPL = 0x3000;
/** CR4.UMIP (bit 11): SGDT/SIDT (and SLDT, SMSW, STR) #GP at CPL > 0. */
export const CR4_UMIP = 0x800;

/** Instructions retired. */
export const CPU_INSTRUCTIONS: number = declareCounter(
  "cpu.instructions",
  "instructions retired by the interpreter",
  "instructions",
);
/** #UD raised. */
export const CPU_UD: number = declareCounter("cpu.ud", "#UD raised", "faults");
/** #SS raised. */
export const CPU_SS: number = declareCounter(
  "cpu.ss",
  "#SS raised by the interpreter (non-canonical stack address)",
  "faults",
);
/** External interrupts delivered through the IDT (raiseInterrupt, then IF = 1). */
export const CPU_INTERRUPTS: number = declareCounter(
  "cpu.interrupts",
  "external interrupts delivered through the IDT",
  "events",
);
/**
 * Exceptions delivered through the IDT: deliverEvent() calls, and the faults (#GP, #NP,
 * #SS, #PF, #DF) that replaced an event whose delivery faulted.
 */
export const CPU_EXCEPTIONS_DELIVERED: number = declareCounter(
  "cpu.exceptionsDelivered",
  "exceptions delivered through the IDT (including faults that replaced a failed delivery)",
  "events",
);
/** INT n and INT3 that entered their handler. */
export const CPU_SOFTWARE_INTERRUPTS: number = declareCounter(
  "cpu.softwareInterrupts",
  "INT n / INT3 delivered through the IDT",
  "events",
);
/** Double faults raised (a contributory or page fault while delivering another). */
export const CPU_DOUBLE_FAULTS: number = declareCounter(
  "cpu.doubleFaults",
  "#DF raised: a fault while delivering a contributory exception or a page fault",
  "faults",
);
/** Triple faults (shutdown): a fault while delivering #DF. */
export const CPU_TRIPLE_FAULTS: number = declareCounter(
  "cpu.tripleFaults",
  "triple faults: a fault while delivering #DF",
  "faults",
);
/** SYSCALL executed. */
export const CPU_SYSCALLS: number = declareCounter(
  "cpu.syscalls",
  "SYSCALL executed",
  "instructions",
);
/** IN and OUT executed. */
export const CPU_PORT_IO: number = declareCounter(
  "cpu.portIo",
  "IN / OUT executed",
  "instructions",
);

/**
 * Iterations of a REP string instruction done by one step() at most. Hardware may pause a
 * REP between iterations (to take an interrupt) with RCX/RDI/RSI saved and RIP still at
 * the instruction; the interpreter does the same so that no guest count can keep one
 * step() busy for long. 2^16 qwords is 512 KiB.
 */
const REP_ITERATIONS_PER_STEP = 0x10000;
/** The architectural limit on instruction length (SDM Vol. 2 2.3.11). */
const MAX_LENGTH = 15;
const TWO_32 = 2 ** 32;

// RFLAGS bits (SDM Vol. 1 3.4.3).
const RFLAGS_CF = 0x1;
const RFLAGS_PF = 0x4;
const RFLAGS_AF = 0x10;
const RFLAGS_ZF = 0x40;
const RFLAGS_SF = 0x80;
const RFLAGS_TF = 0x100;
const RFLAGS_DF = 0x400;
const RFLAGS_OF = 0x800;
const RFLAGS_NT = 0x4000;
const RFLAGS_RF = 0x10000;
const RFLAGS_VM = 0x20000;
const RFLAGS_AC = 0x40000;
const RFLAGS_VIF = 0x80000;
const RFLAGS_VIP = 0x100000;
const RFLAGS_ID = 0x200000;
/** The status flags ADD/SUB/AND/OR/XOR/CMP/TEST/CMPXCHG write (INC/DEC all but CF). */
const RFLAGS_ARITH = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF;
/**
 * The flags POPF and IRET load at any CPL (SDM Vol. 2 POPF and IRET, "Operation"). IF
 * needs CPL <= IOPL; IOPL (and for IRET VIF/VIP) needs CPL 0; VM and the reserved bits
 * are never loaded (bit 1 stays 1).
 */
const RFLAGS_ALWAYS_LOADED = RFLAGS_ARITH | RFLAGS_TF | RFLAGS_DF | RFLAGS_NT | RFLAGS_AC |
  RFLAGS_ID;
/** SYSRET: RFLAGS <- (R11 & 0x3C7FD7) | 2 (clears RF, VM and the reserved bits). */
const SYSRET_RFLAGS_MASK = 0x3c7fd7;
/** PUSHF pushes RFLAGS with VM and RF cleared (SDM Vol. 2 PUSHF: AND 0x00FCFFFF). */
const PUSHF_MASK = 0x00fcffff;

/** PRIVILEGED rule: #GP(0) at CPL > 0. */
const RULE_CPL0 = 1;
/** PRIVILEGED rule: #GP(0) at CPL > IOPL (CLI, STI, IN, OUT; no TSS I/O bitmap). */
const RULE_IOPL = 2;
/** PRIVILEGED rule: #GP(0) at CPL > 0 when CR4.UMIP is set (SGDT, SIDT). */
const RULE_UMIP = 3;

/**
 * Instructions that #GP(0) at CPL > 0 (SDM Vol. 2, each instruction's "Protected Mode
 * Exceptions"). The check precedes intercepts: privilege faults have priority over VM
 * exits (SDM Vol. 3C 26.1.1). Without systemInstructions, CLI/STI are checked against
 * CPL 0 (as if IOPL were 0).
 */
const PRIVILEGED = new Uint8Array(64);
for (
  const op of [
    OP_MOV_TO_CR,
    OP_MOV_FROM_CR,
    OP_INVLPG,
    OP_INVPCID,
    OP_WBINVD,
    OP_CLI,
    OP_STI,
    OP_HLT,
    OP_LGDT,
    OP_LIDT,
  ]
) PRIVILEGED[op] = RULE_CPL0;

/** The rules with systemInstructions on: IOPL-sensitive CLI/STI/IN/OUT, SYSRET, UMIP. */
const SYSTEM_PRIVILEGED = PRIVILEGED.slice();
for (const op of [OP_CLI, OP_STI, OP_IN, OP_OUT]) SYSTEM_PRIVILEGED[op] = RULE_IOPL;
SYSTEM_PRIVILEGED[OP_SYSRET] = RULE_CPL0;
SYSTEM_PRIVILEGED[OP_SGDT] = RULE_UMIP;
SYSTEM_PRIVILEGED[OP_SIDT] = RULE_UMIP;

// Exception classes for the double-fault rules (SDM Vol. 3A Table 6-5): 1 contributory
// (#DE, #TS, #NP, #SS, #GP), 2 page fault; the rest benign.
const FAULT_CLASS = new Uint8Array(256);
for (const vector of [0, 10, VECTOR_NP, VECTOR_SS, VECTOR_GP]) FAULT_CLASS[vector] = 1;
FAULT_CLASS[VECTOR_PF] = 2;

// How deliverEvent() counts a delivery.
const EVENT_EXCEPTION = 0;
const EVENT_EXTERNAL = 1;
const EVENT_SOFTWARE = 2;

type OperandSize = 1 | 2 | 4 | 8;

/** Value mask of an operand of 1, 2 or 4 bytes (index = size). */
const SIZE_MASK = [0, 0xff, 0xffff, 0, 0xffffffff];
/** Sign bit of an operand of 1, 2 or 4 bytes (index = size). */
const SIZE_SIGN = [0, 0x80, 0x8000, 0, 0x80000000];

/** PF: set when the low byte of a result has an even number of 1 bits. */
function parityFlag(value: number): number {
  let p = value & 0xff;
  p ^= p >>> 4;
  p ^= p >>> 2;
  p ^= p >>> 1;
  return (p & 1) === 0 ? RFLAGS_PF : 0;
}

/**
 * Whether Jcc condition `cc` (0..15, SDM Vol. 1 Table B-1) holds for `rflags`. Each pair
 * is a test and its negation: O (OF), B (CF), E (ZF), BE (CF or ZF), S (SF), P (PF),
 * L (SF != OF), LE (ZF or SF != OF); the odd conditions are the "not" ones.
 */
function conditionHolds(cc: number, rflags: number): boolean {
  let holds: number;
  switch (cc >>> 1) {
    case 0:
      holds = rflags & RFLAGS_OF;
      break;
    case 1:
      holds = rflags & RFLAGS_CF;
      break;
    case 2:
      holds = rflags & RFLAGS_ZF;
      break;
    case 3:
      holds = rflags & (RFLAGS_CF | RFLAGS_ZF);
      break;
    case 4:
      holds = rflags & RFLAGS_SF;
      break;
    case 5:
      holds = rflags & RFLAGS_PF;
      break;
    case 6:
      holds = ((rflags >>> 7) ^ (rflags >>> 11)) & 1; // SF (bit 7) != OF (bit 11)
      break;
    default:
      holds = (rflags & RFLAGS_ZF) | (((rflags >>> 7) ^ (rflags >>> 11)) & 1);
      break;
  }
  return (holds !== 0) !== ((cc & 1) !== 0);
}

/**
 * Number of `size`-byte elements, starting with the one at linear `va` and moving by `step`
 * bytes, that lie wholly in the 4 KiB page of `va` (0 when the first one crosses it).
 */
function elementsInPage(va: number, step: number, size: number): number {
  const offset = va & 0xfff;
  if (offset + size > PAGE_SIZE) return 0;
  return step > 0 ? Math.floor((PAGE_SIZE - offset) / size) : Math.floor(offset / size) + 1;
}

/**
 * The interpreter's per-run state, for {@link Interpreter.saveContext} and
 * {@link Interpreter.restoreContext}: a caller allocates one per context it keeps (a
 * guest's user thread, a kernel entry) and reuses it, so saving and restoring allocate
 * nothing. Fields are public so that the host can edit a saved context (a result in RAX,
 * another thread's RSP) before restoring it.
 *
 * @example Save, clobber, edit and restore
 * ```ts
 * import { Interpreter, InterpreterContext, MachineMemory, PagingControl, Stats, Vcpu }
 *   from "../../mod.ts";
 * import assert from "node:assert/strict";
 * const cpu = new Vcpu(new MachineMemory({ frames: 4 }), new PagingControl({ cpl: 3 }), new Stats());
 * const it = new Interpreter(cpu);
 * const saved = new InterpreterContext();
 * it.setReg(4, 0x7ff0); // rsp
 * it.rip = 0x1234;
 * it.saveContext(saved);
 * cpu.ctl.cpl = 0; // the host runs a kernel routine, clobbering registers
 * it.setReg(4, 0x9000);
 * saved.regs[0] = 42; // the service's result in RAX
 * it.restoreContext(saved);
 * assert.deepEqual([it.rip, it.regLo(4), it.regLo(0), cpu.ctl.cpl], [0x1234, 0x7ff0, 42, 3]);
 * ```
 */
export class InterpreterContext {
  /** General registers as u32 halves, laid out as {@link Interpreter.regs}. */
  readonly regs: Uint32Array = new Uint32Array(32);
  /** RIP (48-bit linear value). */
  rip = 0;
  /** RFLAGS, low 32 bits. */
  rflags = 0x2;
  /** FS base (48-bit linear value). */
  fsBase = 0;
  /** GS base (48-bit linear value). */
  gsBase = 0;
  /** CPL (0..3), the vCPU's `ctl.cpl`. */
  cpl = 0;
  /** CALL frames the routine made and has not returned from (routine mode). */
  callDepth = 0;
  /** Whether RET always pops (guest mode, {@link Interpreter.runGuest}). */
  guestMode = false;
  /** Whether interrupts are blocked for one more instruction (after an STI that set IF). */
  interruptShadow = false;
}

/**
 * Executes x86-64 instructions from guest memory on a {@link Vcpu}.
 *
 * Register r (0=rax, 1=rcx, 2=rdx, 3=rbx, 4=rsp, 5=rbp, 6=rsi, 7=rdi, 8..15=r8..r15) is
 * `regs[2r]` (low half) and `regs[2r + 1]` (high half). RIP, FS base and GS base are
 * 48-bit linear values, as every address in lib/x86.
 *
 * @example Run a kernel routine that writes a page-table entry
 * ```ts
 * import { Interpreter, MachineMemory, PagingControl, Stats, Vcpu, pteLow, pteHigh,
 *   PTE_PRESENT, PTE_WRITABLE, STEP_RETURN } from "../../mod.ts";
 * import assert from "node:assert/strict";
 * const memory = new MachineMemory({ frames: 16 });
 * const link = (entry: number, to: number) => {
 *   memory.write32(entry, pteLow(to, PTE_PRESENT | PTE_WRITABLE));
 *   memory.write32(entry + 4, pteHigh(to));
 * };
 * link(0x1000, 0x2000); link(0x2000, 0x3000); link(0x3000, 0x4000);
 * link(0x4000, 0x5000); // va 0x0000 -> pa 0x5000: code
 * link(0x4008, 0x6000); // va 0x1000 -> pa 0x6000: data
 * [0x48, 0x89, 0x37, 0xc3].forEach((b, i) => memory.write8(0x5000 + i, b)); // mov [rdi], rsi; ret
 * const stats = new Stats();
 * const interpreter = new Interpreter(new Vcpu(memory, new PagingControl({ cr3: 0x1000 }), stats));
 * interpreter.setReg(7, 0x1010); // rdi
 * interpreter.setReg(6, 0x6007, 0x8000_0000); // rsi = 0x80000000_00006007 (an l1e with XD)
 * assert.equal(interpreter.run(0x0), STEP_RETURN);
 * assert.deepEqual([memory.read32(0x6010), memory.read32(0x6014)], [0x6007, 0x8000_0000]);
 * assert.equal(stats.get("cpu.instructions"), 1); // the RET returned to TypeScript
 * ```
 */
export class Interpreter {
  /** The vCPU whose paging state, TLB and exception the instructions use. */
  readonly cpu: Vcpu;
  /**
   * General registers as u32 halves: register r (0=rax, 1=rcx, 2=rdx, 3=rbx, 4=rsp,
   * 5=rbp, 6=rsi, 7=rdi, 8..15) has its low half at `regs[2r]`, high at `regs[2r + 1]`.
   */
  readonly regs: Uint32Array = new Uint32Array(32);
  /** RIP as a 48-bit linear value (as everywhere in lib/x86). */
  rip = 0;
  /**
   * RFLAGS, low 32 bits; reset value 0x2. ADD/SUB/AND/OR/XOR/CMP/TEST/CMPXCHG set CF, PF,
   * AF, ZF, SF and OF; INC/DEC all of them but CF; BTS/BTR set CF; CLI/STI clear/set IF
   * (bit 9); DF (bit 10) makes string instructions go down; Jcc reads them.
   */
  rflags = 0x2;
  /** FS base (48-bit linear value), added to addresses with a 64 segment override. */
  fsBase = 0;
  /** GS base (48-bit linear value), added to addresses with a 65 segment override. */
  gsBase = 0;
  /** CR8 (task priority), 0..15: MOV to CR8 stores it here and it has no other effect. */
  cr8 = 0;
  /** The last instruction decoded (valid after step() unless the fetch faulted). */
  readonly decoded: DecodedInstruction = new DecodedInstruction();
  /** Per-op intercept flags indexed by `OP_*`: non-zero makes step() return STEP_INTERCEPT. */
  readonly intercepts: Uint8Array = new Uint8Array(64);
  /**
   * Whether REP STOS/MOVS translate each page once and loop inside it. Memory,
   * registers, exceptions and every counter are the same either way (one `cpu.write` /
   * `cpu.read` and one TLB hit counted per element); false forces the element-by-element
   * path, for tests that compare the two.
   */
  fastStrings = true;

  /**
   * Whether step() executes the system instructions (INT n, INT3, IRETQ, SYSCALL, SYSRETQ,
   * PUSHF, POPF, IN, OUT, LGDT, LIDT, SGDT, SIDT), applies IOPL to CLI/STI/IN/OUT and
   * UMIP to SGDT/SIDT, delivers pending external interrupts when IF = 1, and stops at the
   * host-service range ({@link serviceBase}). Off (the default), those instructions are
   * STEP_UNSUPPORTED and CLI/STI need CPL 0, exactly as before issue 9. The ordinary
   * instructions (PUSH/POP, CMP/TEST/XOR/INC/DEC, Jcc, MOVZX, ...) run either way.
   */
  systemInstructions = false;
  /** IDTR base (48-bit linear value). LIDT loads it; event delivery reads gates there. */
  idtrBase = 0;
  /** IDTR limit (0..0xffff; reset value 0xffff): gate `v` needs `16v + 15 <= limit`. */
  idtrLimit = 0xffff;
  /** GDTR base (48-bit linear value); only LGDT/SGDT use it (no descriptor is read). */
  gdtrBase = 0;
  /** GDTR limit (0..0xffff; reset value 0xffff). */
  gdtrLimit = 0xffff;
  /**
   * TSS.RSP0 (48-bit linear value): the stack event delivery switches to on a CPL 3 -> 0
   * change (SDM Vol. 3A 6.14.2). The TSS itself is not modelled, nor the IST.
   */
  rsp0 = 0;
  /** IA32_LSTAR (48-bit linear value): SYSCALL's target RIP. */
  lstar = 0;
  /** IA32_FMASK (low 32 bits): the RFLAGS bits SYSCALL clears. */
  fmask = 0;
  /** What IN and OUT reach; null reads all ones and drops writes. */
  ports: PortBus | null = null;
  /** Deliveries through the IDT per vector (0..255), whatever the kind of event. */
  readonly deliveries: Float64Array = new Float64Array(256);
  /**
   * Linear start (48-bit value) of the host-service range, or -1 for none. With
   * {@link systemInstructions} set, step() at a RIP in
   * [serviceBase, serviceBase + serviceLimit) returns {@link STEP_SERVICE} without
   * fetching: the guest kernel's stubs `call` into it where a real kernel would call its
   * compiled C code, and the host runs a TypeScript body instead.
   */
  serviceBase: number = -1;
  /** Bytes in the host-service range (0: none). Each service is a 16-byte slot. */
  serviceLimit = 0;
  /** The slot STEP_SERVICE stopped at: floor((RIP - serviceBase) / 16). */
  serviceNumber = 0;

  readonly #counts: Float64Array;
  // Pending external interrupts, one bit per vector (an IRR), and how many bits are set.
  readonly #irr = new Uint32Array(8);
  #pendingCount = 0;
  // STI with IF = 0 blocks interrupts until the next instruction completes (SDM Vol. 2 STI).
  #interruptShadow = false;
  readonly #buffer = new Uint8Array(16);
  readonly #views: Uint8Array[] = [];
  #callDepth = 0;
  // Guest mode: RET always pops (runGuest); routine mode: an unmatched RET returns (run).
  #guestMode = false;
  // The address of the instruction after `decoded` (48-bit linear value).
  #next = 0;
  // High half of the value the last #reg()/#loadRm() returned.
  #hi = 0;
  // Linear address of the memory operand, set by #memoryOperand().
  #ea = 0;
  // Result of #alu(): value halves and the status flags.
  #resultLo = 0;
  #resultHi = 0;
  #resultFlags = 0;
  // IRET's five popped values as u32 halves.
  readonly #popped = new Uint32Array(10);

  /** An interpreter on `cpu`, with every register 0 and RFLAGS 0x2. */
  constructor(cpu: Vcpu) {
    this.cpu = cpu;
    this.#counts = cpu.stats.counts;
    for (let n = 0; n <= MAX_LENGTH; n++) this.#views.push(this.#buffer.subarray(0, n));
  }

  /**
   * Sets 64-bit register `r` (0..15) to `hi`:`lo` (both taken as unsigned 32-bit).
   * Throws a RangeError for a register number out of range.
   */
  setReg(r: number, lo: number, hi = 0): void {
    checkRegister(r);
    this.regs[2 * r] = lo;
    this.regs[2 * r + 1] = hi;
  }

  /** Low 32 bits of register `r` (0..15), unsigned. */
  regLo(r: number): number {
    checkRegister(r);
    return this.regs[2 * r]!;
  }

  /** High 32 bits of register `r` (0..15), unsigned. */
  regHi(r: number): number {
    checkRegister(r);
    return this.regs[2 * r + 1]!;
  }

  /**
   * Sets RIP to `rip` (a 48-bit linear value) and steps until a result other than
   * STEP_OK, or STEP_LIMIT after `maxSteps` steps. Starts a new routine: the CALL depth is
   * reset, so the first unmatched RET returns STEP_RETURN. Throws a RangeError for a `rip`
   * that is not a 48-bit linear value (a caller bug, not a guest action).
   *
   * @example Clear a page with `mov ecx, 512; mov eax, 0; rep stosq; ret`
   * ```ts
   * import { Interpreter, MachineMemory, PagingControl, Stats, Vcpu, pteLow, pteHigh,
   *   PTE_PRESENT, PTE_WRITABLE, STEP_RETURN } from "../../mod.ts";
   * import assert from "node:assert/strict";
   * const memory = new MachineMemory({ frames: 16 });
   * const link = (entry: number, to: number) => {
   *   memory.write32(entry, pteLow(to, PTE_PRESENT | PTE_WRITABLE));
   *   memory.write32(entry + 4, pteHigh(to));
   * };
   * link(0x1000, 0x2000); link(0x2000, 0x3000); link(0x3000, 0x4000);
   * link(0x4000, 0x5000); link(0x4008, 0x6000);
   * const code = [0xb9, 0, 2, 0, 0, 0xb8, 0, 0, 0, 0, 0xf3, 0x48, 0xab, 0xc3];
   * code.forEach((b, i) => memory.write8(0x5000 + i, b));
   * memory.write32(0x6ff8, 0xffff_ffff);
   * const stats = new Stats();
   * const interpreter = new Interpreter(new Vcpu(memory, new PagingControl({ cr3: 0x1000 }), stats));
   * interpreter.setReg(7, 0x1000); // rdi: the page to clear
   * assert.equal(interpreter.run(0x0), STEP_RETURN);
   * assert.equal(memory.read32(0x6ff8), 0);
   * assert.equal(interpreter.regLo(7), 0x2000); // rdi advanced by 4096
   * assert.equal(stats.get("cpu.write"), 512);
   * ```
   */
  run(rip: number, maxSteps = 100000): number {
    checkRip(rip, "run at");
    this.rip = rip;
    this.#callDepth = 0;
    this.#guestMode = false;
    return this.resume(maxSteps);
  }

  /**
   * Continues at the current RIP in guest mode until a result other than STEP_OK, or
   * STEP_LIMIT after `maxSteps` steps: as resume(), except that RET always pops its
   * return address (never STEP_RETURN, whatever the CALL depth), as it does on hardware.
   * For running a whole guest (kernel stubs, user programs) rather than one kernel
   * routine; run() switches back to routine mode.
   *
   * @example A loop, then a RET with no CALL: `mov ecx, 5; l: add eax, 2; dec ecx; jnz l; ret`
   * ```ts
   * import { Interpreter, MachineMemory, PagingControl, Stats, Vcpu, STEP_HALT }
   *   from "../../mod.ts";
   * import assert from "node:assert/strict";
   * const memory = new MachineMemory({ frames: 4 });
   * const code = [0xb9, 5, 0, 0, 0, 0x83, 0xc0, 0x02, 0xff, 0xc9, 0x75, 0xf9, 0xc3];
   * code.forEach((b, i) => memory.write8(0x1000 + i, b));
   * memory.write8(0x1800, 0xf4); // hlt
   * memory.write32(0x2ff8, 0x1800); // the return address RET pops
   * const stats = new Stats();
   * const paging = new PagingControl({ cr0: 0x11, cr4: 0, efer: 0 }); // off: linear = physical
   * const it = new Interpreter(new Vcpu(memory, paging, stats));
   * it.rip = 0x1000;
   * it.setReg(4, 0x2ff8); // rsp
   * assert.equal(it.runGuest(), STEP_HALT);
   * assert.deepEqual([it.regLo(0), it.regLo(1), it.rip, it.regLo(4)], [10, 0, 0x1801, 0x3000]);
   * assert.equal(stats.get("cpu.instructions"), 1 + 3 * 5 + 1 + 1);
   * ```
   */
  runGuest(maxSteps = 100000): number {
    this.#guestMode = true;
    return this.resume(maxSteps);
  }

  /** Whether the interpreter is in guest mode (runGuest) rather than routine mode (run). */
  get guestMode(): boolean {
    return this.#guestMode;
  }

  /**
   * Continues at the current RIP (after a fault was resolved, or an intercepted
   * instruction was emulated and skipped) until a result other than STEP_OK, or
   * STEP_LIMIT after `maxSteps` steps. Keeps the CALL depth and the mode (guest or
   * routine).
   */
  resume(maxSteps = 100000): number {
    for (let i = 0; i < maxSteps; i++) {
      const result = this.step();
      if (result !== STEP_OK) return result;
    }
    return STEP_LIMIT;
  }

  /**
   * Advances RIP past `decoded`, after the caller emulated an intercepted instruction.
   * Does nothing when the last decode failed.
   */
  skip(): void {
    const next = this.rip + this.decoded.length;
    this.rip = next >= LINEAR_LIMIT ? next - LINEAR_LIMIT : next;
  }

  /**
   * Returns from a host service as the guest's RET would have (SDM Vol. 2 RET, near): reads
   * the return address at RSP (8 bytes, through the vCPU), checks that it is canonical,
   * then RSP += 8 and RIP = the address, and counts one instruction. Call it after
   * step() returned {@link STEP_SERVICE} and the host ran the service (typically after
   * {@link restoreContext}). In routine mode it also closes the CALL frame the stub's
   * `call` opened.
   *
   * @returns STEP_OK; or STEP_FAULT with nothing changed and the fault in `cpu.exception`:
   *   #SS(0) for a non-canonical RSP, the read's #PF (or EPT exit), #GP(0) for a
   *   non-canonical return address.
   */
  returnFromService(): number {
    return this.#popReturnAddress();
  }

  /**
   * Copies the per-run state into `into` (allocating nothing): the registers, RIP, RFLAGS,
   * FS/GS base, the vCPU's CPL, the CALL depth, the mode (guest or routine) and the STI
   * interrupt shadow. Not saved: the machine state every context shares (control
   * registers, IDTR/GDTR, RSP0, LSTAR/FMASK, CR8, pending interrupts, intercepts).
   */
  saveContext(into: InterpreterContext): void {
    into.regs.set(this.regs);
    into.rip = this.rip;
    into.rflags = this.rflags;
    into.fsBase = this.fsBase;
    into.gsBase = this.gsBase;
    into.cpl = this.cpu.ctl.cpl;
    into.callDepth = this.#callDepth;
    into.guestMode = this.#guestMode;
    into.interruptShadow = this.#interruptShadow;
  }

  /**
   * Loads the per-run state saved by {@link saveContext} (and perhaps edited since),
   * setting `cpu.ctl.cpl` and the AC flag the paging control keeps for SMAP. Allocates
   * nothing. Throws a RangeError for a RIP that is not a 48-bit linear value or a CPL
   * outside 0..3, leaving the state unchanged.
   */
  restoreContext(from: InterpreterContext): void {
    checkRip(from.rip, "restore");
    const ctl = this.cpu.ctl;
    ctl.cpl = from.cpl; // throws before anything changed
    this.regs.set(from.regs);
    this.rip = from.rip;
    const flags = from.rflags >>> 0;
    this.rflags = flags;
    if (((ctl.rflags ^ flags) & RFLAGS_AC) !== 0) ctl.rflags = (ctl.rflags ^ RFLAGS_AC) >>> 0;
    this.fsBase = from.fsBase;
    this.gsBase = from.gsBase;
    this.#callDepth = from.callDepth;
    this.#guestMode = from.guestMode;
    this.#interruptShadow = from.interruptShadow;
  }

  /**
   * The linear address (48-bit) of the last decoded instruction's memory operand, or -1
   * when it has none or the address is not canonical. A hypervisor emulating an
   * intercepted instruction reads it here, as VMX reports the guest-linear address of an
   * INVLPG exit in the exit qualification. Valid after step() returned for that
   * instruction (RIP not yet advanced).
   */
  operandAddress(): number {
    return this.decoded.isMemory ? this.#address(0, 0) : -1;
  }

  /**
   * Delivers event `vector` (0..255) through the IDT as the processor does in IA-32e mode
   * (SDM Vol. 3A 6.12, 6.14), pushing `errorCode` after the frame unless it is -1, and
   * returns a `STEP_*` code. Works whether or not {@link systemInstructions} is set.
   *
   * The gate is the 16-byte descriptor at IDTR.base + 16 * vector, read with implicit
   * supervisor reads; `16 * vector + 15` must not exceed IDTR.limit (#GP(vector*8+2+EXT)),
   * the type must be an interrupt gate (0xE, clears IF) or a trap gate (0xF, keeps IF)
   * (#GP, same code), a `software` event (INT n, INT3) needs gate DPL >= CPL (#GP(vector*8+2)),
   * the gate must be present (#NP(vector*8+2+EXT)), its selector not null (#GP(EXT)) and its
   * offset canonical (#GP(EXT)); EXT (bit 0) is 1 unless `software`. The handler runs at
   * CPL 0: from CPL > 0 RSP switches to {@link rsp0}. RSP is aligned down to 16 bytes, then
   * SS, RSP, RFLAGS, CS, RIP and the error code are pushed as 8-byte supervisor writes
   * through the vCPU; RIP becomes the gate's offset and TF, NT, RF, VM are cleared.
   *
   * The pushed RIP is the current RIP: a fault's RIP as step() left it, or (for a
   * `software` event) the instruction after the INT, which the caller sets. The pushed CS
   * and SS are this lab's flat selectors for the old CPL: KERNEL_CS/KERNEL_SS with RPL =
   * the old CPL at CPL 0, 1 and 2 (0x08/0x10, 0x09/0x11, 0x0a/0x12), USER_CS/USER_SS at
   * 3, so that IRETQ (new CPL = CS.RPL) returns to the ring the event came from. No
   * segment registers are modelled.
   *
   * On failure:
   * - `software`: STEP_FAULT with the fault in `cpu.exception` and nothing changed but
   *   memory the partial frame wrote (the INT faults; the caller delivers that fault).
   * - otherwise a fault while delivering is handled as SDM Table 6-5 says: after a benign
   *   event the fault is delivered instead; a contributory fault (#DE, #TS, #NP, #SS, #GP)
   *   after a contributory one, or a contributory fault or #PF after a #PF, becomes #DF
   *   (vector 8, error code 0); a fault while delivering #DF is STEP_TRIPLE_FAULT.
   * - an EPT violation or misconfiguration while delivering: STEP_FAULT with the exit in
   *   `cpu.exception`; registers, RIP and CPL unchanged, so the hypervisor can fix the
   *   mapping and deliver the event again.
   *
   * Throws a RangeError for a vector outside 0..255 or an error code that is neither -1
   * nor a 32-bit unsigned value.
   *
   * @example Reflect a #GP(0) raised at CPL 3 into the kernel's handler
   * ```ts
   * import { Interpreter, MachineMemory, PagingControl, Stats, Vcpu, STEP_OK, KERNEL_CS,
   *   USER_CS, USER_SS } from "../../mod.ts";
   * import assert from "node:assert/strict";
   * const memory = new MachineMemory({ frames: 16 });
   * const cpu = new Vcpu(memory, new PagingControl({ cr0: 0x11, cr4: 0, efer: 0, cpl: 3 }), new Stats());
   * const it = new Interpreter(cpu); // paging off: linear = physical
   * it.idtrBase = 0x1000;
   * // Gate 13: interrupt gate, present, DPL 0, selector KERNEL_CS, offset 0x5000.
   * memory.write32(0x1000 + 13 * 16, (KERNEL_CS << 16) | 0x5000);
   * memory.write32(0x1000 + 13 * 16 + 4, 0x8e00);
   * it.rsp0 = 0x3000;
   * it.rip = 0x8123;
   * it.setReg(4, 0x7ff8); // user RSP
   * assert.equal(it.deliverEvent(13, 0, false), STEP_OK);
   * assert.deepEqual([it.rip, cpu.ctl.cpl, it.regLo(4)], [0x5000, 0, 0x3000 - 48]);
   * const frame = [0, 1, 2, 3, 4, 5].map((k) => memory.read32(0x3000 - 48 + 8 * k));
   * assert.deepEqual(frame, [0, 0x8123, USER_CS, 0x2, 0x7ff8, USER_SS]); // error code, RIP, ...
   * assert.equal(it.regLo(4) % 16, 0);
   * ```
   */
  deliverEvent(vector: number, errorCode: number, software: boolean): number {
    if (!Number.isInteger(vector) || vector < 0 || vector > 255) {
      throw new RangeError(`Cannot deliver vector ${vector}: must be 0..255`);
    }
    if (
      !Number.isInteger(errorCode) || errorCode < -1 || errorCode > 0xffff_ffff
    ) {
      throw new RangeError(
        `Cannot deliver error code ${errorCode}: must be -1 (none) or 0..0xffffffff`,
      );
    }
    return this.#deliver(vector, errorCode, software ? EVENT_SOFTWARE : EVENT_EXCEPTION, this.rip);
  }

  /**
   * Marks external interrupt `vector` (0..255) pending, as an interrupt controller's
   * request register does. With {@link systemInstructions} set, step() delivers the
   * highest pending vector at the next instruction boundary where RFLAGS.IF = 1 (and not
   * right after an STI that set IF), before fetching; that step executes no instruction.
   * With IF = 0 it stays pending. Raising a pending vector again changes nothing.
   * Throws a RangeError for a vector outside 0..255.
   */
  raiseInterrupt(vector: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector > 255) {
      throw new RangeError(`Cannot raise interrupt ${vector}: must be 0..255`);
    }
    const bit = 1 << (vector & 31);
    const irr = this.#irr;
    if ((irr[vector >>> 5]! & bit) !== 0) return;
    irr[vector >>> 5] = irr[vector >>> 5]! | bit;
    this.#pendingCount++;
  }

  /** The highest pending external interrupt vector, or -1 when none is pending. */
  get pendingInterrupt(): number {
    if (this.#pendingCount === 0) return -1;
    const irr = this.#irr;
    for (let w = 7; w >= 0; w--) {
      const word = irr[w]!;
      if (word !== 0) return 32 * w + 31 - Math.clz32(word);
    }
    return -1;
  }

  /**
   * Executes one instruction at RIP: fetch (through the vCPU, one `cpu.fetch` per page
   * translated), decode, privilege check, intercept check, execute. Returns one of the
   * `STEP_*` codes; never throws for anything the guest's bytes or state can do.
   *
   * With {@link systemInstructions} set, a pending interrupt is delivered first (that step
   * executes nothing), then a RIP in the host-service range returns {@link STEP_SERVICE}
   * before anything is fetched.
   *
   * A REP string instruction does at most 2^16 iterations per step: if RCX is not zero
   * after that, step() returns STEP_OK with RIP still at the instruction (as a REP paused
   * for an interrupt), and the next step() continues it.
   */
  step(): number {
    if (this.systemInstructions) {
      const shadow = this.#interruptShadow;
      this.#interruptShadow = false;
      if (this.#pendingCount !== 0 && !shadow && (this.rflags & RFLAGS_IF) !== 0) {
        return this.#deliverPendingInterrupt();
      }
      const offset = this.rip - this.serviceBase;
      if (offset >= 0 && offset < this.serviceLimit && this.serviceBase >= 0) {
        this.serviceNumber = Math.floor(offset / 16);
        return STEP_SERVICE;
      }
    }
    const cpu = this.cpu;
    const counts = this.#counts;
    const d = this.decoded;
    const rip = this.rip;

    // Fetch: the bytes up to the end of the page, then the next page only if the decoder
    // needs more (SDM Vol. 3A 6.9: a fetch #PF precedes a decode #UD).
    counts[CPU_FETCH]++;
    const pa = cpu.translate(rip, ACCESS_FETCH);
    if (pa < 0) return STEP_FAULT;
    const memory = cpu.memory;
    const buffer = this.#buffer;
    const offset = rip & 0xfff;
    const available = PAGE_SIZE - offset < MAX_LENGTH ? PAGE_SIZE - offset : MAX_LENGTH;
    // RAM: the frame's words directly (no per-byte call); a device or an unbacked frame
    // goes through read8. Neither counts as data reads (mem.read counts the data side).
    const words = memory.hostFrame(Math.floor(pa / PAGE_SIZE), false);
    if (words !== undefined) {
      for (let k = 0; k < available; k++) {
        const at = offset + k;
        buffer[k] = words[at >>> 2]! >>> ((at & 3) << 3);
      }
    } else {
      for (let k = 0; k < available; k++) buffer[k] = memory.read8(pa + k);
    }
    let length = decodeInstruction(this.#views[available]!, 0, d);
    if (length < 0 && available < MAX_LENGTH) {
      let second = rip - offset + PAGE_SIZE;
      // Running from the lower half into the non-canonical hole is #GP(0) (as a split access).
      if (rip < UPPER_HALF_START && second >= UPPER_HALF_START) return this.#gp();
      if (second === LINEAR_LIMIT) second = 0; // 0xffff_ffff_ffff_ffff + 1 wraps to 0
      counts[CPU_FETCH]++;
      const pa2 = cpu.translate(second, ACCESS_FETCH);
      if (pa2 < 0) return STEP_FAULT;
      for (let k = available; k < MAX_LENGTH; k++) buffer[k] = memory.read8(pa2 + k - available);
      length = decodeInstruction(this.#views[MAX_LENGTH]!, 0, d);
    }
    if (length <= 0) return d.tooLong ? this.#gp() : this.#ud();

    // An instruction that ends exactly at the top of the lower half would leave RIP
    // non-canonical, which a 48-bit value cannot hold: #GP(0) at the instruction.
    const end = rip + length;
    if (rip < UPPER_HALF_START && end >= UPPER_HALF_START) return this.#gp();
    this.#next = end >= LINEAR_LIMIT ? end - LINEAR_LIMIT : end;

    const op = d.op;
    const rule = (this.systemInstructions ? SYSTEM_PRIVILEGED : PRIVILEGED)[op]!;
    if (rule !== 0 && cpu.ctl.cpl !== 0 && this.#isDenied(rule)) return this.#gp();
    if (this.intercepts[op] !== 0) return STEP_INTERCEPT;
    return this.#execute(op);
  }

  // Whether a PRIVILEGED rule denies the instruction at the current CPL (known > 0).
  #isDenied(rule: number): boolean {
    if (rule === RULE_CPL0) return true;
    if (rule === RULE_IOPL) return this.cpu.ctl.cpl > ((this.rflags & RFLAGS_IOPL) >>> 12);
    return (this.cpu.ctl.cr4 & CR4_UMIP) !== 0;
  }

  #execute(op: number): number {
    switch (op) {
      case OP_MOV:
        return this.#mov();
      case OP_XCHG:
        return this.#xchg();
      case OP_CMPXCHG:
        return this.#cmpxchg();
      case OP_CMPXCHG8B:
        return this.#cmpxchg8b();
      case OP_CMPXCHG16B:
        return this.#cmpxchg16b();
      case OP_ADD:
      case OP_OR:
      case OP_AND:
      case OP_SUB:
      case OP_XOR:
      case OP_CMP:
      case OP_TEST:
        return this.#arithmetic(op);
      case OP_INC:
      case OP_DEC:
        return this.#incDec(op === OP_INC);
      case OP_MOVZX:
        return this.#movzx();
      case OP_PUSH:
        return this.#pushInstruction();
      case OP_POP:
        return this.#popInstruction();
      case OP_BTS:
      case OP_BTR:
        return this.#bitTestAnd(op === OP_BTS);
      case OP_STOS:
        return this.#string(false);
      case OP_MOVS:
        return this.#string(true);
      case OP_MOV_TO_CR:
        return this.#movToCr();
      case OP_MOV_FROM_CR:
        return this.#movFromCr();
      case OP_INVLPG: {
        // A non-canonical operand makes INVLPG a NOP (SDM Vol. 2, INVLPG).
        const va = this.#address(0, 0);
        if (va >= 0) this.cpu.invlpg(va);
        return this.#retire();
      }
      case OP_INVPCID:
        return this.#invpcid();
      case OP_CLI:
        this.rflags &= ~RFLAGS_IF;
        return this.#retire();
      case OP_STI:
        if ((this.rflags & RFLAGS_IF) === 0) this.#interruptShadow = true;
        this.rflags |= RFLAGS_IF;
        return this.#retire();
      case OP_NOP:
        return this.#retire();
      case OP_HLT:
        this.#retire();
        return STEP_HALT;
      case OP_JMP:
        return this.#jump();
      case OP_JCC:
        // Not taken: no check of the target (SDM Vol. 2 Jcc).
        return conditionHolds(this.decoded.condition, this.rflags) ? this.#jump() : this.#retire();
      case OP_CALL:
        return this.#call();
      case OP_RET:
        return this.#ret();
      default:
        return this.systemInstructions ? this.#executeSystem(op) : STEP_UNSUPPORTED;
    }
  }

  #executeSystem(op: number): number {
    switch (op) {
      case OP_INT:
        return this.#softwareInterrupt(this.decoded.imm & 0xff);
      case OP_INT3:
        return this.#softwareInterrupt(VECTOR_BP);
      case OP_IRET:
        return this.#iret();
      case OP_SYSCALL:
        return this.#syscall();
      case OP_SYSRET:
        return this.#sysret();
      case OP_PUSHF:
        return this.#pushf();
      case OP_POPF:
        return this.#popf();
      case OP_IN:
      case OP_OUT:
        return this.#portIo(op === OP_IN);
      case OP_LGDT:
      case OP_LIDT:
        return this.#loadDescriptorTable(op === OP_LIDT);
      case OP_SGDT:
      case OP_SIDT:
        return this.#storeDescriptorTable(op === OP_SIDT);
      default:
        return STEP_UNSUPPORTED; // WBINVD
    }
  }

  // --- Instructions ----------------------------------------------------------------------

  #mov(): number {
    const d = this.decoded;
    const size = d.operandSize;
    switch (d.form) {
      case FORM_RM_REG: {
        const lo = this.#reg(d.reg, size);
        return this.#storeRm(size, lo, this.#hi) ? this.#retire() : STEP_FAULT;
      }
      case FORM_REG_RM:
        if (!this.#loadRm(size)) return STEP_FAULT;
        this.#setReg(d.reg, size, this.#resultLo, this.#hi);
        return this.#retire();
      case FORM_RM_IMM:
        return this.#storeRm(size, d.imm, d.immHi) ? this.#retire() : STEP_FAULT;
      case FORM_REG_IMM:
        this.#setReg(d.reg, size, d.imm, d.immHi);
        return this.#retire();
      default:
        return STEP_UNSUPPORTED;
    }
  }

  // XCHG r/m, r: with memory, read then write; a faulting write changes no register.
  #xchg(): number {
    const d = this.decoded;
    const size = d.operandSize;
    const regLo = this.#reg(d.reg, size);
    const regHi = this.#hi;
    if (!this.#loadRm(size)) return STEP_FAULT;
    const oldLo = this.#resultLo;
    const oldHi = this.#hi;
    if (!this.#storeRm(size, regLo, regHi)) return STEP_FAULT;
    this.#setReg(d.reg, size, oldLo, oldHi);
    return this.#retire();
  }

  /*
   * CMPXCHG r/m, r (SDM Vol. 2): TEMP <- DEST; IF accumulator = TEMP THEN ZF <- 1,
   * DEST <- SRC ELSE ZF <- 0, accumulator <- TEMP, DEST <- TEMP; flags as CMP acc, DEST.
   * A memory destination always gets a write cycle (the old value back on a mismatch), so a
   * read-only page faults with W=1 either way. A register destination is left alone on a
   * mismatch (not zero-extended), and the accumulator on a match, as processors do.
   */
  #cmpxchg(): number {
    const d = this.decoded;
    const size = d.operandSize;
    const srcLo = this.#reg(d.reg, size);
    const srcHi = this.#hi;
    const accLo = this.#reg(0, size);
    const accHi = this.#hi;
    if (!this.#loadRm(size)) return STEP_FAULT;
    const oldLo = this.#resultLo;
    const oldHi = this.#hi;
    const isEqual = accLo === oldLo && accHi === oldHi;
    this.#alu(OP_SUB, size, accLo, accHi, oldLo, oldHi);
    if (d.isMemory) {
      const ok = isEqual
        ? this.cpu.write(this.#ea, size as OperandSize, srcLo, srcHi)
        : this.cpu.write(this.#ea, size as OperandSize, oldLo, oldHi);
      if (!ok) return STEP_FAULT;
    } else if (isEqual) {
      this.#setReg(d.rm, size, srcLo, srcHi);
    }
    if (!isEqual) this.#setReg(0, size, oldLo, oldHi);
    this.#commitFlags(RFLAGS_ARITH, this.#resultFlags);
    return this.#retire();
  }

  // CMPXCHG8B m64: EDX:EAX against the qword; ECX:EBX stored on a match, the old value
  // written back and loaded into EDX:EAX (upper halves cleared) on a mismatch.
  #cmpxchg8b(): number {
    const va = this.#memoryOperand(0, 0);
    if (va < 0) return STEP_FAULT;
    const cpu = this.cpu;
    if (!cpu.read(va, 8)) return STEP_FAULT;
    const lo = cpu.data;
    const hi = cpu.dataHi;
    const regs = this.regs;
    const isEqual = lo === regs[0] && hi === regs[4];
    if (!(isEqual ? cpu.write(va, 8, regs[6]!, regs[2]!) : cpu.write(va, 8, lo, hi))) {
      return STEP_FAULT;
    }
    if (!isEqual) {
      this.#setReg(0, 4, lo, 0);
      this.#setReg(2, 4, hi, 0);
    }
    this.#commitFlags(RFLAGS_ZF, isEqual ? RFLAGS_ZF : 0);
    return this.#retire();
  }

  // CMPXCHG16B m128: RDX:RAX against the two qwords, RCX:RBX stored; #GP(0) unless the
  // operand is 16-byte aligned (SDM Vol. 2, CMPXCHG8B/CMPXCHG16B).
  #cmpxchg16b(): number {
    const va = this.#memoryOperand(0, 0);
    if (va < 0) return STEP_FAULT;
    if ((va & 15) !== 0) return this.#gp();
    const cpu = this.cpu;
    if (!cpu.read(va, 8)) return STEP_FAULT;
    const lo0 = cpu.data;
    const hi0 = cpu.dataHi;
    if (!cpu.read(va + 8, 8)) return STEP_FAULT; // same page: 16-byte aligned
    const lo1 = cpu.data;
    const hi1 = cpu.dataHi;
    const regs = this.regs;
    const isEqual = lo0 === regs[0] && hi0 === regs[1] && lo1 === regs[4] && hi1 === regs[5];
    if (isEqual) {
      if (!cpu.write(va, 8, regs[6]!, regs[7]!)) return STEP_FAULT;
      if (!cpu.write(va + 8, 8, regs[2]!, regs[3]!)) return STEP_FAULT;
    } else {
      if (!cpu.write(va, 8, lo0, hi0)) return STEP_FAULT;
      if (!cpu.write(va + 8, 8, lo1, hi1)) return STEP_FAULT;
      this.#setReg(0, 8, lo0, hi0);
      this.#setReg(2, 8, lo1, hi1);
    }
    this.#commitFlags(RFLAGS_ZF, isEqual ? RFLAGS_ZF : 0);
    return this.#retire();
  }

  // ADD/OR/AND/SUB/XOR/CMP/TEST in the forms r/m, r; r, r/m; r/m, imm (the accumulator
  // forms are r/m, imm with rm 0). CMP is SUB and TEST is AND without the store (SDM Vol. 2
  // CMP, TEST): a memory operand is only read, so a read-only page does not fault.
  #arithmetic(op: number): number {
    const d = this.decoded;
    const size = d.operandSize;
    let aLo: number, aHi: number, bLo: number, bHi: number;
    if (d.form === FORM_REG_RM) {
      aLo = this.#reg(d.reg, size);
      aHi = this.#hi;
      if (!this.#loadRm(size)) return STEP_FAULT;
      bLo = this.#resultLo;
      bHi = this.#hi;
    } else {
      if (!this.#loadRm(size)) return STEP_FAULT;
      aLo = this.#resultLo;
      aHi = this.#hi;
      if (d.form === FORM_RM_REG) {
        bLo = this.#reg(d.reg, size);
        bHi = this.#hi;
      } else {
        bLo = size === 8 ? d.imm >>> 0 : (d.imm & SIZE_MASK[size]!) >>> 0;
        bHi = size === 8 ? d.immHi >>> 0 : 0;
      }
    }
    this.#alu(op === OP_CMP ? OP_SUB : op === OP_TEST ? OP_AND : op, size, aLo, aHi, bLo, bHi);
    const lo = this.#resultLo;
    const hi = this.#resultHi;
    const flags = this.#resultFlags;
    if (op !== OP_CMP && op !== OP_TEST) {
      if (d.form === FORM_REG_RM) this.#setReg(d.reg, size, lo, hi);
      else if (!this.#storeRm(size, lo, hi)) return STEP_FAULT;
    }
    this.#commitFlags(RFLAGS_ARITH, flags);
    return this.#retire();
  }

  // INC / DEC r/m (SDM Vol. 2 INC, DEC): ADD / SUB of 1 that leaves CF as it was.
  #incDec(isInc: boolean): number {
    const size = this.decoded.operandSize;
    if (!this.#loadRm(size)) return STEP_FAULT;
    this.#alu(isInc ? OP_ADD : OP_SUB, size, this.#resultLo, this.#hi, 1, 0);
    if (!this.#storeRm(size, this.#resultLo, this.#resultHi)) return STEP_FAULT;
    const mask = RFLAGS_ARITH & ~RFLAGS_CF;
    this.#commitFlags(mask, this.#resultFlags & mask);
    return this.#retire();
  }

  // MOVZX r, r/m8 / r/m16 (SDM Vol. 2 MOVZX): the source zero-extended to the destination
  // (a 16-bit destination keeps bits 63:16, as every 16-bit write).
  #movzx(): number {
    const d = this.decoded;
    if (!this.#loadRm(d.opcode === 0x0fb6 ? 1 : 2)) return STEP_FAULT;
    this.#setReg(d.reg, d.operandSize, this.#resultLo, 0);
    return this.#retire();
  }

  /*
   * PUSH r64 / r/m64 / imm (SDM Vol. 2 PUSH): the value is read first, so `push rsp`
   * pushes the old RSP and `push [rsp+8]` addresses with it; then RSP - 8 is written and
   * RSP moves only when the write succeeded. The 16-bit push (66) is not modelled.
   */
  #pushInstruction(): number {
    const d = this.decoded;
    if (d.operandSize !== 8) return STEP_UNSUPPORTED;
    let lo: number, hi: number;
    if (d.form === FORM_IMM) {
      lo = d.imm >>> 0;
      hi = d.immHi >>> 0;
    } else {
      if (!this.#loadRm(8)) return STEP_FAULT;
      lo = this.#resultLo;
      hi = this.#hi;
    }
    return this.#pushQword(lo, hi) ? this.#retire() : STEP_FAULT;
  }

  /*
   * POP r64 / m64 (SDM Vol. 2 POP): reads the qword at RSP, then RSP += 8, then stores it:
   * `pop rsp` leaves the popped value in RSP, and a memory destination's address is
   * computed with the incremented RSP. A fault (the read, or the store) leaves RSP as it
   * was. The 16-bit pop (66) is not modelled.
   */
  #popInstruction(): number {
    const d = this.decoded;
    if (d.operandSize !== 8) return STEP_UNSUPPORTED;
    const regs = this.regs;
    const oldLo = regs[8]!;
    const oldHi = regs[9]!;
    const sp = canonicalToLinear(oldHi, oldLo);
    if (sp < 0) return this.#ss();
    const cpu = this.cpu;
    if (!cpu.read(sp, 8)) return STEP_FAULT;
    const lo = cpu.data;
    const hi = cpu.dataHi;
    this.#addToReg(4, 8, false);
    if (!d.isMemory) {
      this.#setReg(d.rm, 8, lo, hi);
      return this.#retire();
    }
    if (this.#memoryOperand(0, 0) < 0 || !cpu.write(this.#ea, 8, lo, hi)) {
      regs[8] = oldLo;
      regs[9] = oldHi;
      return STEP_FAULT;
    }
    return this.#retire();
  }

  /*
   * BTS/BTR (SDM Vol. 2, BT): CF <- the selected bit, then set or clear it. An imm8 bit
   * offset, or any offset with a register operand, is taken modulo the operand width. A
   * register offset with a memory operand is a signed bit string index: the operand moves
   * by operand-size units, address + size * floor(offset / bits).
   */
  #bitTestAnd(isSet: boolean): number {
    const d = this.decoded;
    const size = d.operandSize;
    const bits = size * 8;
    let bit: number;
    if (d.form === FORM_RM_IMM) {
      bit = d.imm & (bits - 1);
      if (d.isMemory && this.#memoryOperand(0, 0) < 0) return STEP_FAULT;
    } else {
      const lo = this.#reg(d.reg, size);
      const hi = this.#hi;
      bit = lo & (bits - 1);
      if (d.isMemory) {
        // Byte displacement = (signed offset >> 3) rounded down to the operand size.
        let dispLo: number, dispHi: number;
        if (size === 8) {
          dispLo = (((lo >>> 3) | (hi << 29)) & ~7) >>> 0;
          dispHi = hi >> 3;
        } else {
          const offset = size === 4 ? lo | 0 : (lo << 16) >> 16;
          const disp = (offset >> 3) & ~(size - 1);
          dispLo = disp >>> 0;
          dispHi = disp >> 31;
        }
        if (this.#memoryOperand(dispLo, dispHi) < 0) return STEP_FAULT;
      }
    }
    if (!this.#loadRm(size)) return STEP_FAULT;
    let lo = this.#resultLo;
    let hi = this.#hi;
    let isBitSet: boolean;
    if (bit < 32) {
      const mask = 1 << bit;
      isBitSet = (lo & mask) !== 0;
      lo = (isSet ? lo | mask : lo & ~mask) >>> 0;
    } else {
      const mask = 1 << (bit - 32);
      isBitSet = (hi & mask) !== 0;
      hi = (isSet ? hi | mask : hi & ~mask) >>> 0;
    }
    if (!this.#storeRm(size, lo, hi)) return STEP_FAULT;
    this.#commitFlags(RFLAGS_CF, isBitSet ? RFLAGS_CF : 0);
    return this.#retire();
  }

  /*
   * STOS / MOVS with or without REP (F3 and F2 both repeat these). Destination ES:RDI (ES
   * base is 0 in 64-bit mode), source DS:RSI with an FS/GS override applying; RCX counts,
   * or ECX/EDI/ESI with a 67 prefix. Each element is one cpu.read / cpu.write; registers
   * are updated after each, so a fault leaves them at the element that faulted and
   * re-executing resumes (SDM Vol. 2, REP).
   *
   * The fast path: once an element went through the vCPU without a page walk, every
   * further element in the same page(s) would hit the same TLB entries, so their physical
   * addresses are known. It does them with one translate() per page and adds the same
   * cpu.read / cpu.write / tlb.hit counts the element-by-element path would.
   */
  #string(isMovs: boolean): number {
    const d = this.decoded;
    const cpu = this.cpu;
    const counts = this.#counts;
    const regs = this.regs;
    const size = d.operandSize as OperandSize;
    const is32 = d.addressSize === 4;
    const isRep = d.rep !== 0;
    const step = (this.rflags & RFLAGS_DF) !== 0 ? -size : size;
    const sourceBase = d.segment === 0x64 ? this.fsBase : d.segment === 0x65 ? this.gsBase : 0;
    const valueLo = this.#reg(0, size);
    const valueHi = this.#hi;
    const canBatch = isRep && this.fastStrings && !is32;
    let budget = REP_ITERATIONS_PER_STEP;
    for (;;) {
      let count = 1;
      if (isRep) {
        count = is32 ? regs[2]! : regs[3]! * TWO_32 + regs[2]!;
        if (count === 0) break;
        if (budget === 0) return STEP_OK; // paused: RIP stays, RCX holds the rest
      }
      const dst = canonicalToLinear(is32 ? 0 : regs[15]!, regs[14]!);
      if (dst < 0) return this.#gp();
      let src = 0;
      if (isMovs) {
        src = this.#linear(regs[12]!, is32 ? 0 : regs[13]!, sourceBase);
        if (src < 0) return this.#gp();
      }
      let lo = valueLo;
      let hi = valueHi;
      const walks = counts[WALK_COUNT]!;
      if (isMovs) {
        if (!cpu.read(src, size)) return STEP_FAULT;
        lo = cpu.data;
        hi = cpu.dataHi;
      }
      if (!cpu.write(dst, size, lo, hi)) return STEP_FAULT;
      this.#advanceString(isMovs, is32, isRep, step, 1);
      budget--;
      if (!isRep) break;
      if (canBatch && counts[WALK_COUNT] === walks) {
        let n = elementsInPage(dst, step, size) - 1;
        if (isMovs) n = Math.min(n, elementsInPage(src, step, size) - 1);
        n = Math.min(n, count - 1, budget);
        if (n > 0) {
          if (!this.#stringBatch(isMovs, size, dst + step, src + step, step, n, lo, hi)) {
            return STEP_FAULT;
          }
          budget -= n;
        }
      }
    }
    return this.#retire();
  }

  // `n` further elements of a REP STOS/MOVS whose pages the previous element translated
  // without a walk; see #string(). False on a fault (not reached while the TLB entries
  // stand, which nothing in between can change).
  #stringBatch(
    isMovs: boolean,
    size: number,
    dst: number,
    src: number,
    step: number,
    n: number,
    lo: number,
    hi: number,
  ): boolean {
    const cpu = this.cpu;
    const counts = this.#counts;
    const memory = cpu.memory;
    let spa = 0;
    if (isMovs) {
      spa = cpu.translate(src, ACCESS_READ);
      if (spa < 0) {
        counts[CPU_READ]++;
        return false;
      }
    }
    let dpa = cpu.translate(dst, ACCESS_WRITE);
    if (dpa < 0) {
      counts[CPU_WRITE]++;
      if (isMovs) counts[CPU_READ]++;
      return false;
    }
    for (let k = 0; k < n; k++) {
      if (isMovs) {
        // As Vcpu.read loads: read32 pairs for qwords.
        if (size === 8) {
          lo = memory.read32(spa);
          hi = memory.read32(spa + 4);
        } else if (size === 4) lo = memory.read32(spa);
        else if (size === 1) lo = memory.read8(spa);
        else lo = memory.read16(spa);
        spa += step;
      }
      // As Vcpu.write stores.
      if (size === 8) {
        memory.write32(dpa, lo);
        memory.write32(dpa + 4, hi);
      } else if (size === 4) memory.write32(dpa, lo);
      else if (size === 1) memory.write8(dpa, lo);
      else memory.write16(dpa, lo);
      dpa += step;
    }
    counts[CPU_WRITE] += n;
    if (isMovs) {
      counts[CPU_READ] += n;
      cpu.data = lo;
      if (size === 8) cpu.dataHi = hi;
    }
    // The element-by-element path counts a TLB hit per access; translate() counted the first.
    if (cpu.tlbEnabled && cpu.ctl.isPaging) counts[TLB_HIT] += (n - 1) * (isMovs ? 2 : 1);
    this.#advanceString(isMovs, false, true, step, n);
    return true;
  }

  // RDI (and RSI) += n * step, RCX -= n; 32-bit registers (zero-extended) with a 67 prefix.
  #advanceString(isMovs: boolean, is32: boolean, isRep: boolean, step: number, n: number): void {
    const delta = n * step;
    this.#addToReg(7, delta, is32);
    if (isMovs) this.#addToReg(6, delta, is32);
    if (isRep) this.#addToReg(1, -n, is32);
  }

  /*
   * MOV to CR0/CR2/CR3/CR4/CR8 from a 64-bit register (SDM Vol. 2, MOV to/from Control
   * Registers). Bits 63:32 of CR0 and CR4, and bits 63:4 of CR8, are reserved (#GP(0)).
   * CR3: bits 51:0 are the value, bit 63 the no-flush bit with PCIDE; bits 62:52 are
   * reserved.
   */
  #movToCr(): number {
    const d = this.decoded;
    const cpu = this.cpu;
    const lo = this.regs[2 * d.rm]!;
    const hi = this.regs[2 * d.rm + 1]!;
    switch (d.crRegister) {
      case 0:
        if (hi !== 0) return this.#gp();
        if (!cpu.writeCr0(lo)) return STEP_FAULT;
        break;
      case 2:
        cpu.exception.cr2 = (hi & 0xffff) * TWO_32 + lo; // kept as a 48-bit value
        break;
      case 3: {
        if ((hi & 0x7ff00000) !== 0) return this.#gp();
        if (!cpu.writeCr3((hi & 0x000fffff) * TWO_32 + lo, hi >>> 31 === 1)) return STEP_FAULT;
        break;
      }
      case 4:
        if (hi !== 0) return this.#gp();
        if (!cpu.writeCr4(lo)) return STEP_FAULT;
        break;
      case 8:
        if (hi !== 0 || lo > 15) return this.#gp();
        this.cr8 = lo;
        break;
      default:
        return this.#ud();
    }
    return this.#retire();
  }

  // MOV r64, CRn: CR3 reads without bit 63 (the no-flush bit is not stored).
  #movFromCr(): number {
    const d = this.decoded;
    const cpu = this.cpu;
    const ctl = cpu.ctl;
    let lo: number, hi = 0;
    switch (d.crRegister) {
      case 0:
        lo = ctl.cr0;
        break;
      case 2: {
        const cr2 = cpu.exception.cr2;
        lo = cr2 >>> 0;
        hi = linearHigh32(cr2);
        break;
      }
      case 3: {
        const cr3 = ctl.cr3;
        lo = cr3 >>> 0;
        hi = Math.floor(cr3 / TWO_32);
        break;
      }
      case 4:
        lo = ctl.cr4;
        break;
      case 8:
        lo = this.cr8;
        break;
      default:
        return this.#ud();
    }
    this.#setReg(d.rm, 8, lo, hi);
    return this.#retire();
  }

  /*
   * INVPCID r64, m128 (SDM Vol. 2): type in the register, descriptor in memory (PCID in
   * bits 11:0 of the first qword, bits 63:12 reserved; linear address in the second).
   * The vCPU checks the type, the PCID and the address.
   */
  #invpcid(): number {
    const d = this.decoded;
    const cpu = this.cpu;
    const typeLo = this.regs[2 * d.reg]!;
    const typeHi = this.regs[2 * d.reg + 1]!;
    const va = this.#memoryOperand(0, 0);
    if (va < 0) return STEP_FAULT;
    if (!cpu.read(va, 8)) return STEP_FAULT;
    const pcidLo = cpu.data;
    const pcidHi = cpu.dataHi;
    let second = va + 8;
    if (va < UPPER_HALF_START && second >= UPPER_HALF_START) return this.#gp();
    if (second >= LINEAR_LIMIT) second -= LINEAR_LIMIT;
    if (!cpu.read(second, 8)) return STEP_FAULT;
    if ((pcidLo & 0xfffff000) !== 0 || pcidHi !== 0) return this.#gp();
    const type = typeHi !== 0 || typeLo > 3 ? 4 : typeLo;
    const target = canonicalToLinear(cpu.dataHi, cpu.data); // -1: non-canonical
    if (!cpu.invpcid(type, pcidLo, target)) return STEP_FAULT;
    return this.#retire();
  }

  // Writes qword hi:lo at RSP - 8 and moves RSP there. False with #SS(0) raised for a
  // non-canonical RSP - 8, or with the write's fault, RSP unchanged either way.
  #pushQword(lo: number, hi: number): boolean {
    const regs = this.regs;
    let spLo = regs[8]! - 8;
    let spHi = regs[9]!;
    if (spLo < 0) {
      spLo += TWO_32;
      spHi--;
    }
    const sp = canonicalToLinear(spHi, spLo);
    if (sp < 0) return this.#raise(VECTOR_SS, 0);
    if (!this.cpu.write(sp, 8, lo, hi)) return false;
    regs[8] = spLo;
    regs[9] = spHi;
    return true;
  }

  // JMP rel8/rel32 and a taken Jcc: #GP(0) at the instruction for a non-canonical target.
  #jump(): number {
    const target = this.#branchTarget();
    if (target < 0) return this.#gp();
    this.rip = target;
    this.#counts[CPU_INSTRUCTIONS]++;
    return STEP_OK;
  }

  // CALL rel32: #GP(0) for a non-canonical target, #SS(0) for a non-canonical stack; the
  // return address is pushed with cpu.write and RSP changes only when it succeeds.
  #call(): number {
    const target = this.#branchTarget();
    if (target < 0) return this.#gp();
    const next = this.#next;
    if (!this.#pushQword(next >>> 0, linearHigh32(next))) return STEP_FAULT;
    this.#callDepth++;
    this.rip = target;
    this.#counts[CPU_INSTRUCTIONS]++;
    return STEP_OK;
  }

  // RET: in routine mode with no interpreted CALL frame, returns to the TypeScript caller;
  // otherwise pops the return address as hardware does.
  #ret(): number {
    if (this.#callDepth === 0 && !this.#guestMode) return STEP_RETURN;
    return this.#popReturnAddress();
  }

  // RET's pop (SDM Vol. 2 RET, near): #SS(0) for a non-canonical RSP, #GP(0) for a
  // non-canonical return address; RSP and RIP change only when both are fine.
  #popReturnAddress(): number {
    const regs = this.regs;
    const sp = canonicalToLinear(regs[9]!, regs[8]!);
    if (sp < 0) return this.#ss();
    const cpu = this.cpu;
    if (!cpu.read(sp, 8)) return STEP_FAULT;
    const target = canonicalToLinear(cpu.dataHi, cpu.data);
    if (target < 0) return this.#gp();
    this.#addToReg(4, 8, false);
    if (this.#callDepth > 0) this.#callDepth--;
    this.rip = target;
    this.#counts[CPU_INSTRUCTIONS]++;
    return STEP_OK;
  }

  // --- Events and system instructions (systemInstructions) ----------------------------------

  // Delivers an event and counts it; see deliverEvent(). `returnRip` is the RIP pushed.
  #deliver(vector: number, errorCode: number, kind: number, returnRip: number): number {
    const counts = this.#counts;
    if (kind === EVENT_SOFTWARE) {
      if (!this.#enterHandler(vector, errorCode, true, returnRip)) return STEP_FAULT;
      counts[CPU_SOFTWARE_INTERRUPTS]++;
      this.deliveries[vector]++;
      return STEP_OK;
    }
    const e = this.cpu.exception;
    let current = vector;
    let code = errorCode;
    let isOriginal = true;
    // Terminates: each failure moves up benign -> contributory/#PF -> #DF -> shutdown.
    for (;;) {
      if (this.#enterHandler(current, code, false, returnRip)) {
        counts[isOriginal && kind === EVENT_EXTERNAL ? CPU_INTERRUPTS : CPU_EXCEPTIONS_DELIVERED]++;
        this.deliveries[current]++;
        return STEP_OK;
      }
      const second = e.vector;
      if (second >= VECTOR_EPT_VIOLATION) return STEP_FAULT; // a VM exit, not a guest fault
      if (current === VECTOR_DF) {
        counts[CPU_TRIPLE_FAULTS]++;
        return STEP_TRIPLE_FAULT;
      }
      const first = FAULT_CLASS[current]!;
      const next = FAULT_CLASS[second]!;
      if ((first === 1 && next === 1) || (first === 2 && next !== 0)) {
        counts[CPU_DOUBLE_FAULTS]++;
        current = VECTOR_DF;
        code = 0;
      } else {
        current = second;
        code = e.errorCode;
      }
      isOriginal = false;
    }
  }

  /*
   * One attempt to enter the handler of `vector` (SDM Vol. 3A 6.14.1 64-bit gate, 6.14.2
   * stack frame); false with the fault in cpu.exception and registers, RIP and CPL as
   * they were (memory may hold part of the frame, as on hardware).
   *
   *   bytes 15..8: reserved | offset 63:32
   *   bytes  7..0: offset 31:16 | P | DPL | 0 | type | 0 | IST | selector | offset 15:0
   *                 63     48   47  46:45  44 43:40      34:32  31:16      15:0
   */
  #enterHandler(vector: number, errorCode: number, software: boolean, returnRip: number): boolean {
    const cpu = this.cpu;
    const ctl = cpu.ctl;
    const ext = software ? 0 : 1;
    const idtError = vector * 8 + 2 + ext;
    if (vector * 16 + 15 > this.idtrLimit) return this.#raise(VECTOR_GP, idtError);
    const gate = linearAdd(this.idtrBase, vector * 16);
    const gateHigh = gate < 0 ? -1 : linearAdd(gate, 8);
    if (gateHigh < 0) return this.#raise(VECTOR_GP, idtError);
    if (!cpu.read(gate, 8, ACCESS_IMPLICIT_READ)) return false;
    const low = cpu.data;
    const attributes = cpu.dataHi;
    if (!cpu.read(gateHigh, 8, ACCESS_IMPLICIT_READ)) return false;
    const offsetHigh = cpu.data;
    const type = (attributes >>> 8) & 0xf;
    if (type !== 0xe && type !== 0xf) return this.#raise(VECTOR_GP, idtError);
    const oldCpl = ctl.cpl;
    if (software && ((attributes >>> 13) & 3) < oldCpl) return this.#raise(VECTOR_GP, idtError);
    if ((attributes & 0x8000) === 0) return this.#raise(VECTOR_NP, idtError);
    if (((low >>> 16) & 0xfffc) === 0) return this.#raise(VECTOR_GP, ext);
    const target = canonicalToLinear(
      offsetHigh,
      ((attributes & 0xffff0000) | (low & 0xffff)) >>> 0,
    );
    if (target < 0) return this.#raise(VECTOR_GP, ext);

    // The new stack: RSP0 on a privilege change, else the current RSP; aligned to 16.
    const regs = this.regs;
    const oldSpLo = regs[8]!;
    const oldSpHi = regs[9]!;
    const sp = oldCpl !== 0
      ? this.rsp0 - (this.rsp0 % 16)
      : canonicalToLinear(oldSpHi, (oldSpLo & 0xfffffff0) >>> 0);
    if (sp < 0) return this.#raise(VECTOR_SS, ext);
    const slots = errorCode < 0 ? 5 : 6;
    const bottom = linearAdd(sp, -8 * slots);
    if (bottom < 0) return this.#raise(VECTOR_SS, ext);
    // The pushes are supervisor accesses at the new CPL.
    ctl.cpl = 0;
    const ok = this.#push(sp, 1, oldCpl === 3 ? USER_SS : KERNEL_SS | oldCpl, 0) &&
      this.#push(sp, 2, oldSpLo, oldSpHi) &&
      this.#push(sp, 3, this.rflags, 0) &&
      this.#push(sp, 4, oldCpl === 3 ? USER_CS : KERNEL_CS | oldCpl, 0) &&
      this.#push(sp, 5, returnRip >>> 0, linearHigh32(returnRip)) &&
      (errorCode < 0 || this.#push(sp, 6, errorCode >>> 0, 0));
    if (!ok) {
      ctl.cpl = oldCpl;
      return false;
    }
    regs[8] = bottom >>> 0;
    regs[9] = linearHigh32(bottom);
    this.rip = target;
    let flags = this.rflags & ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM);
    if (type === 0xe) flags &= ~RFLAGS_IF;
    this.rflags = flags >>> 0;
    return true;
  }

  // Writes qword `slot` (1 = the highest) below 16-byte aligned `sp`.
  #push(sp: number, slot: number, lo: number, hi: number): boolean {
    return this.cpu.write(linearAdd(sp, -8 * slot), 8, lo, hi);
  }

  #deliverPendingInterrupt(): number {
    const vector = this.pendingInterrupt;
    const result = this.#deliver(vector, -1, EVENT_EXTERNAL, this.rip);
    // Acknowledged unless a VM exit stopped the delivery (then it is delivered again).
    if (result !== STEP_FAULT) {
      this.#irr[vector >>> 5] = this.#irr[vector >>> 5]! & ~(1 << (vector & 31));
      this.#pendingCount--;
    }
    return result;
  }

  // INT n / INT3: a software event whose pushed RIP is the next instruction; a fault in
  // the delivery is the instruction's fault (RIP stays at the INT).
  #softwareInterrupt(vector: number): number {
    const result = this.#deliver(vector, -1, EVENT_SOFTWARE, this.#next);
    if (result === STEP_OK) this.#counts[CPU_INSTRUCTIONS]++;
    return result;
  }

  /*
   * IRETQ in 64-bit mode (SDM Vol. 2 IRET, IA-32e mode): pops RIP, CS, RFLAGS, RSP, SS
   * (always, even without a privilege change). NT = 1 is #GP(0) (no task return in IA-32e
   * mode). No descriptor is read: a null CS is #GP(0), CS.RPL < CPL is #GP(CS), a null SS
   * returning to CPL 3 is #GP(0), an SS whose RPL differs from CS.RPL is #GP(SS), a
   * non-canonical RIP is #GP(0). New CPL = CS.RPL. RFLAGS loads as the SDM says for the
   * old CPL: IF only if CPL <= IOPL, IOPL/VIF/VIP only at CPL 0, never VM. IRETD (no
   * REX.W) pops 4-byte values, zero-extended.
   */
  #iret(): number {
    const size = this.decoded.operandSize;
    if (size === 2) return STEP_UNSUPPORTED;
    if ((this.rflags & RFLAGS_NT) !== 0) return this.#gp();
    const regs = this.regs;
    const sp = canonicalToLinear(regs[9]!, regs[8]!);
    if (sp < 0) return this.#ss();
    const cpu = this.cpu;
    const popped = this.#popped;
    for (let k = 0; k < 5; k++) {
      const va = linearAdd(sp, k * size);
      if (va < 0) return this.#ss();
      if (!cpu.read(va, size as OperandSize)) return STEP_FAULT;
      popped[2 * k] = cpu.data;
      popped[2 * k + 1] = size === 8 ? cpu.dataHi : 0;
    }
    const cs = popped[2]! & 0xffff;
    const ss = popped[8]! & 0xffff;
    const ctl = cpu.ctl;
    const cpl = ctl.cpl;
    const newCpl = cs & 3;
    if ((cs & 0xfffc) === 0) return this.#gp();
    if (newCpl < cpl) return this.#gpWithCode(cs & 0xfffc);
    if ((ss & 0xfffc) === 0) {
      if (newCpl === 3) return this.#gp();
    } else if ((ss & 3) !== newCpl) {
      return this.#gpWithCode(ss & 0xfffc);
    }
    const target = canonicalToLinear(popped[1]!, popped[0]!);
    if (target < 0) return this.#gp();
    let mask = RFLAGS_ALWAYS_LOADED | RFLAGS_RF;
    if (cpl <= (this.rflags & RFLAGS_IOPL) >>> 12) mask |= RFLAGS_IF;
    if (cpl === 0) mask |= RFLAGS_IOPL | RFLAGS_VIF | RFLAGS_VIP;
    this.#loadFlags(popped[4]!, mask, 0);
    regs[8] = popped[6]!;
    regs[9] = popped[7]!;
    ctl.cpl = newCpl;
    this.rip = target;
    this.#counts[CPU_INSTRUCTIONS]++;
    return STEP_OK;
  }

  /*
   * SYSCALL (SDM Vol. 2): RCX <- next RIP, R11 <- RFLAGS, RFLAGS <- RFLAGS AND NOT
   * IA32_FMASK, CPL 0, RIP <- IA32_LSTAR. RSP is not switched. EFER.SCE and STAR are not
   * modelled (SYSCALL is enabled; CS/SS are KERNEL_CS/KERNEL_SS).
   */
  #syscall(): number {
    const next = this.#next;
    this.#setReg(1, 8, next >>> 0, linearHigh32(next));
    this.#setReg(11, 8, this.rflags, 0);
    this.#loadFlags(this.rflags & ~this.fmask, -1, 0);
    this.cpu.ctl.cpl = 0;
    this.rip = this.lstar;
    this.#counts[CPU_SYSCALLS]++;
    this.#counts[CPU_INSTRUCTIONS]++;
    return STEP_OK;
  }

  /*
   * SYSRETQ (SDM Vol. 2): #GP(0) at CPL > 0 (checked before intercepts) or for a
   * non-canonical RCX (at CPL 0, as Intel does); RIP <- RCX, RFLAGS <- (R11 & 0x3C7FD7) | 2,
   * CPL 3. SYSRET without REX.W returns to compatibility mode: not modelled.
   */
  #sysret(): number {
    if (this.decoded.operandSize !== 8) return STEP_UNSUPPORTED;
    const regs = this.regs;
    const target = canonicalToLinear(regs[3]!, regs[2]!);
    if (target < 0) return this.#gp();
    this.#loadFlags(regs[22]! & SYSRET_RFLAGS_MASK, -1, 0);
    this.cpu.ctl.cpl = 3;
    this.rip = target;
    this.#counts[CPU_INSTRUCTIONS]++;
    return STEP_OK;
  }

  // PUSHF / PUSHFQ: RFLAGS with VM and RF cleared (8 bytes), or FLAGS (2 bytes with 66).
  #pushf(): number {
    const size = this.decoded.operandSize as OperandSize;
    const regs = this.regs;
    const sp = canonicalToLinear(regs[9]!, regs[8]!);
    const va = sp < 0 ? -1 : linearAdd(sp, -size);
    if (va < 0) return this.#ss();
    const value = size === 8 ? this.rflags & PUSHF_MASK : this.rflags & 0xffff;
    if (!this.cpu.write(va, size, value >>> 0, 0)) return STEP_FAULT;
    this.#addToReg(4, -size, false);
    return this.#retire();
  }

  /*
   * POPF / POPFQ (SDM Vol. 2 POPF): at CPL 0 every flag but VM, VIF, VIP, RF and the
   * reserved bits loads; at 0 < CPL <= IOPL IOPL is kept; at CPL > IOPL IF and IOPL are
   * kept, silently: no fault, which is why a deprivileged kernel's POPF cannot be trapped.
   * POPFQ clears RF; the 16-bit POPF loads bits 15:0 only.
   */
  #popf(): number {
    const size = this.decoded.operandSize as OperandSize;
    const regs = this.regs;
    const sp = canonicalToLinear(regs[9]!, regs[8]!);
    if (sp < 0) return this.#ss();
    if (!this.cpu.read(sp, size)) return STEP_FAULT;
    const cpl = this.cpu.ctl.cpl;
    let mask = RFLAGS_ALWAYS_LOADED;
    if (cpl <= (this.rflags & RFLAGS_IOPL) >>> 12) mask |= RFLAGS_IF;
    if (cpl === 0) mask |= RFLAGS_IOPL;
    if (size === 2) mask &= 0xffff;
    this.#loadFlags(this.cpu.data, mask, size === 2 ? 0 : RFLAGS_RF);
    this.#addToReg(4, size, false);
    return this.#retire();
  }

  // RFLAGS <- the `mask` bits of `value`, the rest kept except `clear`; bit 1 stays set.
  // AC goes to the paging control too (SMAP reads it there).
  #loadFlags(value: number, mask: number, clear: number): void {
    const old = this.rflags;
    const flags = (((old & ~mask & ~clear) | (value & mask)) | 0x2) >>> 0;
    this.rflags = flags;
    if (((old ^ flags) & RFLAGS_AC) !== 0) {
      const ctl = this.cpu.ctl;
      ctl.rflags = ((ctl.rflags & ~RFLAGS_AC) | (flags & RFLAGS_AC)) >>> 0;
    }
  }

  /*
   * IN AL/AX/EAX, imm8 / DX and OUT imm8 / DX, AL/AX/EAX (SDM Vol. 2): #GP(0) at
   * CPL > IOPL (checked before intercepts; there is no TSS I/O permission bitmap). The
   * data goes through `ports`; IN of 4 bytes zero-extends into RAX, 1 and 2 keep the rest.
   */
  #portIo(isIn: boolean): number {
    const d = this.decoded;
    const size = d.operandSize;
    const port = d.form === FORM_IMM ? d.imm & 0xff : this.regs[4]! & 0xffff;
    const mask = SIZE_MASK[size]!;
    const ports = this.ports;
    if (isIn) {
      const value = ports === null ? mask : (ports.read(port, size) & mask) >>> 0;
      this.#setReg(0, size, value, 0);
    } else if (ports !== null) {
      ports.write(port, size, (this.regs[0]! & mask) >>> 0);
    }
    this.#counts[CPU_PORT_IO]++;
    return this.#retire();
  }

  /*
   * LGDT / LIDT m16&64 (CPL 0, checked before intercepts): a 2-byte limit, then an 8-byte
   * base. A non-canonical base is #GP(0) here (the lab holds bases as 48-bit linear
   * values; hardware would load it and fault at use).
   */
  #loadDescriptorTable(isIdt: boolean): number {
    const cpu = this.cpu;
    const va = this.#memoryOperand(0, 0);
    if (va < 0 || !cpu.read(va, 2)) return STEP_FAULT;
    const limit = cpu.data & 0xffff;
    const vb = this.#memoryOperand(2, 0);
    if (vb < 0 || !cpu.read(vb, 8)) return STEP_FAULT;
    const base = canonicalToLinear(cpu.dataHi, cpu.data);
    if (base < 0) return this.#gp();
    if (isIdt) {
      this.idtrBase = base;
      this.idtrLimit = limit;
    } else {
      this.gdtrBase = base;
      this.gdtrLimit = limit;
    }
    return this.#retire();
  }

  // SGDT / SIDT m16&64: stores the limit and the canonical base at any CPL (unless
  // CR4.UMIP, checked before intercepts): a deprivileged kernel sees the real tables.
  #storeDescriptorTable(isIdt: boolean): number {
    const cpu = this.cpu;
    const limit = isIdt ? this.idtrLimit : this.gdtrLimit;
    const base = isIdt ? this.idtrBase : this.gdtrBase;
    const vb = this.#memoryOperand(2, 0);
    if (vb < 0) return STEP_FAULT;
    const va = this.#memoryOperand(0, 0);
    if (va < 0) return STEP_FAULT;
    if (!cpu.write(va, 2, limit)) return STEP_FAULT;
    if (!cpu.write(vb, 8, base >>> 0, linearHigh32(base))) return STEP_FAULT;
    return this.#retire();
  }

  #gpWithCode(errorCode: number): number {
    this.#raise(VECTOR_GP, errorCode);
    return STEP_FAULT;
  }

  // Raises `vector` with `errorCode` as a value; always false.
  #raise(vector: number, errorCode: number): false {
    const e = this.cpu.exception;
    e.vector = vector;
    e.errorCode = errorCode;
    if (vector === VECTOR_GP) this.#counts[CPU_GP]++;
    else if (vector === VECTOR_SS) this.#counts[CPU_SS]++;
    return false;
  }

  // --- Operands ---------------------------------------------------------------------------

  /** Register `r` at `size` bytes (AH..BH for 4..7 without REX); high half in #hi. */
  #reg(r: number, size: number): number {
    const regs = this.regs;
    if (size === 8) {
      this.#hi = regs[2 * r + 1]!;
      return regs[2 * r]!;
    }
    this.#hi = 0;
    if (size === 4) return regs[2 * r]!;
    if (size === 2) return regs[2 * r]! & 0xffff;
    if (this.decoded.rex === 0 && r >= 4 && r < 8) return (regs[2 * (r - 4)]! >>> 8) & 0xff;
    return regs[2 * r]! & 0xff;
  }

  /** Writes register `r` at `size` bytes: 4 zero-extends, 1 and 2 keep the other bits. */
  #setReg(r: number, size: number, lo: number, hi: number): void {
    const regs = this.regs;
    const i = 2 * r;
    if (size === 8) {
      regs[i] = lo;
      regs[i + 1] = hi;
    } else if (size === 4) {
      regs[i] = lo;
      regs[i + 1] = 0;
    } else if (size === 2) {
      regs[i] = (regs[i]! & 0xffff0000) | (lo & 0xffff);
    } else if (this.decoded.rex === 0 && r >= 4 && r < 8) {
      const j = 2 * (r - 4);
      regs[j] = (regs[j]! & 0xffff00ff) | ((lo & 0xff) << 8);
    } else {
      regs[i] = (regs[i]! & 0xffffff00) | (lo & 0xff);
    }
  }

  // Adds small `delta` to register r: 64-bit, or 32-bit zero-extended when `is32`.
  #addToReg(r: number, delta: number, is32: boolean): void {
    const regs = this.regs;
    const i = 2 * r;
    let lo = regs[i]! + delta;
    if (is32) {
      regs[i] = lo; // wraps modulo 2^32
      regs[i + 1] = 0;
      return;
    }
    let hi = regs[i + 1]!;
    if (lo >= TWO_32) {
      lo -= TWO_32;
      hi++;
    } else if (lo < 0) {
      lo += TWO_32;
      hi--;
    }
    regs[i] = lo;
    regs[i + 1] = hi;
  }

  /**
   * Loads the r/m operand (register, or memory at a fresh effective address) into
   * #resultLo / #hi; false on a fault. A memory operand whose address a caller already
   * computed (BTS/BTR) is read there.
   */
  #loadRm(size: number): boolean {
    const d = this.decoded;
    if (!d.isMemory) {
      this.#resultLo = this.#reg(d.rm, size);
      return true;
    }
    const op = d.op;
    if (op !== OP_BTS && op !== OP_BTR && this.#memoryOperand(0, 0) < 0) return false;
    const cpu = this.cpu;
    if (!cpu.read(this.#ea, size as OperandSize)) return false;
    this.#resultLo = cpu.data;
    this.#hi = size === 8 ? cpu.dataHi : 0;
    return true;
  }

  /**
   * Stores to the r/m operand: a register, or memory at the effective address computed by
   * the last #memoryOperand() (a store-only MOV computes it here). False on a fault.
   */
  #storeRm(size: number, lo: number, hi: number): boolean {
    const d = this.decoded;
    if (!d.isMemory) {
      this.#setReg(d.rm, size, lo, hi);
      return true;
    }
    if (d.op === OP_MOV && this.#memoryOperand(0, 0) < 0) return false;
    return this.cpu.write(this.#ea, size as OperandSize, lo, hi);
  }

  /**
   * The linear address of the memory operand plus a 64-bit extra displacement, stored in
   * #ea; -1 with #GP(0) raised when it is not canonical.
   */
  #memoryOperand(extraLo: number, extraHi: number): number {
    const va = this.#address(extraLo, extraHi);
    if (va < 0) {
      this.cpu.raiseGeneralProtection();
      return -1;
    }
    this.#ea = va;
    return va;
  }

  /*
   * Effective address (SDM Vol. 1 3.7.5, Vol. 2 2.2.1.6): base + index * scale + disp
   * (+ extra), or next RIP + disp, with 64-bit wraparound, or 32-bit with a 67 prefix
   * (then zero-extended); plus the FS/GS base for a 64/65 override. Returns the 48-bit
   * linear value, or -1 when the result is not canonical. Raises nothing.
   */
  #address(extraLo: number, extraHi: number): number {
    const d = this.decoded;
    const regs = this.regs;
    const disp = d.disp;
    // Sums of unsigned halves stay below 2^36: exact as doubles, carried at the end.
    let lo = (disp >>> 0) + (extraLo >>> 0);
    let hi = (disp >> 31) + extraHi;
    if (d.ripRelative) {
      const next = this.#next;
      lo += next >>> 0;
      hi += linearHigh32(next);
    } else if (d.base >= 0) {
      lo += regs[2 * d.base]!;
      hi += regs[2 * d.base + 1]!;
    }
    if (d.index >= 0) {
      lo += regs[2 * d.index]! * d.scale;
      hi += regs[2 * d.index + 1]! * d.scale;
    }
    if (d.addressSize === 4) {
      lo = lo % TWO_32;
      hi = 0;
    } else {
      const carry = Math.floor(lo / TWO_32);
      lo -= carry * TWO_32;
      hi += carry;
    }
    const segment = d.segment;
    const base = segment === 0x64 ? this.fsBase : segment === 0x65 ? this.gsBase : 0;
    return this.#linear(lo, hi, base);
  }

  // The canonical check of (hi:lo) + base, as a 48-bit linear value or -1.
  #linear(lo: number, hi: number, base: number): number {
    if (base !== 0) {
      lo += base % TWO_32;
      hi += linearHigh32(base);
      if (lo >= TWO_32) {
        lo -= TWO_32;
        hi++;
      }
    }
    return canonicalToLinear(hi >>> 0, lo);
  }

  // next RIP + the sign-extended rel8/rel32, or -1 when not canonical.
  #branchTarget(): number {
    const next = this.#next;
    const imm = this.decoded.imm;
    let lo = (next >>> 0) + (imm >>> 0);
    let hi = linearHigh32(next) + (imm >> 31);
    if (lo >= TWO_32) {
      lo -= TWO_32;
      hi++;
    }
    return canonicalToLinear(hi >>> 0, lo);
  }

  // --- Flags -------------------------------------------------------------------------------

  /*
   * a OP b for ADD/OR/AND/SUB/XOR at `size` bytes (operands unsigned, masked to size) into
   * #resultLo/#resultHi and the status flags into #resultFlags: CF carry/borrow, OF signed
   * overflow, ZF, SF, PF of the low byte, AF carry out of bit 3; AND/OR/XOR clear CF and
   * OF, and AF (which the SDM leaves undefined for them).
   */
  #alu(op: number, size: number, aLo: number, aHi: number, bLo: number, bHi: number): void {
    let lo: number, hi = 0;
    let flags = 0;
    if (size === 8) {
      if (op === OP_ADD) {
        lo = aLo + bLo;
        const carry = lo >= TWO_32 ? 1 : 0;
        lo -= carry * TWO_32;
        hi = aHi + bHi + carry;
        if (hi >= TWO_32) {
          hi -= TWO_32;
          flags |= RFLAGS_CF;
        }
        if (((aHi ^ hi) & (bHi ^ hi) & 0x80000000) !== 0) flags |= RFLAGS_OF;
      } else if (op === OP_SUB) {
        lo = aLo - bLo;
        const borrow = lo < 0 ? 1 : 0;
        lo += borrow * TWO_32;
        hi = aHi - bHi - borrow;
        if (hi < 0) {
          hi += TWO_32;
          flags |= RFLAGS_CF;
        }
        if (((aHi ^ bHi) & (aHi ^ hi) & 0x80000000) !== 0) flags |= RFLAGS_OF;
      } else if (op === OP_AND) {
        lo = (aLo & bLo) >>> 0;
        hi = (aHi & bHi) >>> 0;
      } else if (op === OP_OR) {
        lo = (aLo | bLo) >>> 0;
        hi = (aHi | bHi) >>> 0;
      } else {
        lo = (aLo ^ bLo) >>> 0;
        hi = (aHi ^ bHi) >>> 0;
      }
      if ((lo | hi) === 0) flags |= RFLAGS_ZF;
      if ((hi & 0x80000000) !== 0) flags |= RFLAGS_SF;
    } else {
      const mask = SIZE_MASK[size]!;
      const sign = SIZE_SIGN[size]!;
      if (op === OP_ADD) {
        lo = aLo + bLo;
        if (lo > mask) flags |= RFLAGS_CF;
        lo = (lo & mask) >>> 0;
        if (((aLo ^ lo) & (bLo ^ lo) & sign) !== 0) flags |= RFLAGS_OF;
      } else if (op === OP_SUB) {
        lo = aLo - bLo;
        if (lo < 0) flags |= RFLAGS_CF;
        lo = (lo & mask) >>> 0;
        if (((aLo ^ bLo) & (aLo ^ lo) & sign) !== 0) flags |= RFLAGS_OF;
      } else if (op === OP_AND) {
        lo = (aLo & bLo) >>> 0;
      } else if (op === OP_OR) {
        lo = (aLo | bLo) >>> 0;
      } else {
        lo = (aLo ^ bLo) >>> 0;
      }
      if (lo === 0) flags |= RFLAGS_ZF;
      if ((lo & sign) !== 0) flags |= RFLAGS_SF;
    }
    if ((op === OP_ADD || op === OP_SUB) && ((aLo ^ bLo ^ lo) & 0x10) !== 0) flags |= RFLAGS_AF;
    this.#resultLo = lo;
    this.#resultHi = hi;
    this.#resultFlags = flags | parityFlag(lo);
  }

  #commitFlags(mask: number, flags: number): void {
    this.rflags = ((this.rflags & ~mask) | flags) >>> 0;
  }

  // --- Retirement and exceptions -------------------------------------------------------------

  #retire(): number {
    this.rip = this.#next;
    this.#counts[CPU_INSTRUCTIONS]++;
    return STEP_OK;
  }

  #gp(): number {
    this.cpu.raiseGeneralProtection();
    return STEP_FAULT;
  }

  #ss(): number {
    const e = this.cpu.exception;
    e.vector = VECTOR_SS;
    e.errorCode = 0;
    this.#counts[CPU_SS]++;
    return STEP_FAULT;
  }

  #ud(): number {
    const e = this.cpu.exception;
    e.vector = VECTOR_UD;
    e.errorCode = 0;
    this.#counts[CPU_UD]++;
    return STEP_FAULT;
  }
}

/**
 * 48-bit linear value `va` plus `delta` (|delta| < 2^32) with 64-bit wraparound (the top
 * of the upper half wraps to 0 and back), or -1 when the move crosses the non-canonical
 * hole between the halves (linear 2^47 - 1 <-> 2^47).
 */
function linearAdd(va: number, delta: number): number {
  const sum = va + delta;
  if (sum < 0) return sum + LINEAR_LIMIT;
  if (sum >= LINEAR_LIMIT) return sum - LINEAR_LIMIT;
  return (va < UPPER_HALF_START) === (sum < UPPER_HALF_START) ? sum : -1;
}

function checkRip(rip: number, action: string): void {
  if (!Number.isInteger(rip) || rip < 0 || rip >= LINEAR_LIMIT) {
    throw new RangeError(`Cannot ${action} rip ${rip}: must be a 48-bit linear value`);
  }
}

function checkRegister(r: number): void {
  if (!Number.isInteger(r) || r < 0 || r > 15) {
    throw new RangeError(`Cannot access register ${r}: must be 0..15`);
  }
}
