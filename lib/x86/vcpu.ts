/**
 * A vCPU shell: the paging state, a TLB, a page walker, and memory accesses that go
 * TLB -> walk -> fault, as the processor does them. Privileged-register writes
 * (CR0, CR3, CR4), INVLPG and INVPCID apply the checks and TLB effects of the SDM.
 *
 * Exceptions are values: an access returns false and leaves the exception in
 * {@link Vcpu.exception}; nothing is thrown for anything a guest can do.
 *
 * @module
 */

import {
  ACCESS_FETCH,
  ACCESS_IMPLICIT_WRITE,
  ACCESS_READ,
  ACCESS_WRITE,
  type AccessKind,
} from "./access.ts";
import { LINEAR_LIMIT, PAGE_SIZE, UPPER_HALF_START } from "./address.ts";
import { PageWalker, type TranslationWalker, type WalkTrace } from "./page_walk.ts";
import {
  CR0_PE,
  CR0_PG,
  CR4_PAE,
  CR4_PCIDE,
  CR4_PGE,
  CR4_SMEP,
  EFER_LMA,
  type PagingControl,
} from "./paging_control.ts";
import type { PhysicalMemory } from "./physical_memory.ts";
import { declareCounter, type Stats } from "./stats.ts";
import {
  DEFAULT_TLB_CONFIG,
  Tlb,
  TLB_DIRTY,
  TLB_PERMISSION_BITS,
  TLB_PKEY_SHIFT,
  type TlbConfig,
} from "./tlb.ts";

/** #GP: general protection (vector 13). */
export const VECTOR_GP = 13;
/** #PF: page fault (vector 14). */
export const VECTOR_PF = 14;
/** #UD: invalid opcode (vector 6). */
export const VECTOR_UD = 6;
/**
 * Not an IDT vector: a VM exit for an EPT violation (exit reason 48), raised by a walker
 * that translates guest-physical addresses through EPT. It goes to the hypervisor, never
 * to a guest handler; {@link PendingException} holds the GPA and the qualification.
 */
export const VECTOR_EPT_VIOLATION = 0x100;
/** Not an IDT vector: a VM exit for an EPT misconfiguration (exit reason 49). */
export const VECTOR_EPT_MISCONFIG = 0x101;

/** Page faults raised by the vCPU. */
export const CPU_PF: number = declareCounter("cpu.pf", "page faults raised by the vCPU", "faults");
/** General-protection faults raised by the vCPU. */
export const CPU_GP: number = declareCounter("cpu.gp", "#GP raised by the vCPU", "faults");
/** Data reads. */
export const CPU_READ: number = declareCounter("cpu.read", "data reads by the vCPU", "accesses");
/** Data writes. */
export const CPU_WRITE: number = declareCounter("cpu.write", "data writes by the vCPU", "accesses");
/** Instruction fetches. */
export const CPU_FETCH: number = declareCounter(
  "cpu.fetch",
  "instruction fetches by the vCPU",
  "accesses",
);
/** Accesses that crossed a page boundary. */
export const CPU_SPLIT: number = declareCounter(
  "cpu.splitAccess",
  "accesses split across two pages",
  "accesses",
);
/** MOV to CR3. */
export const CPU_CR3_WRITE: number = declareCounter(
  "cpu.cr3Write",
  "MOV to CR3 executed",
  "writes",
);

/**
 * The exception an access or instruction raised: vector, error code and CR2; or the VM
 * exit a nested walk raised (an EPT violation or misconfiguration), with the fields a VMCS
 * reports for it. An exit leaves CR2 as it was: the guest sees no fault.
 */
export class PendingException {
  /** Exception vector (14 #PF, 13 #GP, 6 #UD), or VECTOR_EPT_VIOLATION / _MISCONFIG. */
  vector = 0;
  /** Error code (#PF: P, W/R, U/S, RSVD, I/D, PK bits; #GP: 0; EPT exits: 0). */
  errorCode = 0;
  /** Faulting linear address (48-bit value) for #PF; unchanged otherwise. */
  cr2 = 0;
  /** EPT exits: the guest-physical address of the access (VMCS guest-physical address). */
  gpa = 0;
  /** EPT violations: the exit qualification (SDM Table 28-7); 0 for a misconfiguration. */
  qualification = 0;
  /** EPT exits: the guest-linear address being translated (48-bit value). */
  guestLinear = 0;
}

/** Construction options of a {@link Vcpu}. */
export interface VcpuOptions {
  /** TLB geometry; default {@link DEFAULT_TLB_CONFIG}. */
  tlb?: TlbConfig;
  /** Whether accesses consult the TLB at all (off: every access walks); default true. */
  tlbEnabled?: boolean;
  /**
   * The walker a TLB miss runs; default a {@link PageWalker} over the vCPU's memory. A
   * nested-paging platform passes a 2-D walker whose failures may be VM exits; such a
   * walker also translates accesses made with paging off (guest-physical = linear).
   */
  walker?: TranslationWalker;
}

/**
 * One logical processor's paging side.
 *
 * @example Read through the TLB, fault on an unmapped address
 * ```ts
 * import { Vcpu, PagingControl, MachineMemory, Stats, pteLow, pteHigh, PTE_PRESENT,
 *   PTE_WRITABLE, VECTOR_PF } from "../../mod.ts";
 * import assert from "node:assert/strict";
 * const memory = new MachineMemory({ frames: 16 });
 * const link = (entry: number, to: number) => {
 *   memory.write32(entry, pteLow(to, PTE_PRESENT | PTE_WRITABLE));
 *   memory.write32(entry + 4, pteHigh(to));
 * };
 * link(0x1000, 0x2000); link(0x2000, 0x3000); link(0x3000, 0x4000); link(0x4000, 0x5000);
 * const stats = new Stats();
 * const cpu = new Vcpu(memory, new PagingControl({ cr3: 0x1000 }), stats);
 * assert.ok(cpu.write(0x10, 4, 0xcafe));
 * assert.ok(cpu.read(0x10, 4));
 * assert.equal(cpu.data, 0xcafe);
 * assert.equal(stats.get("tlb.hit"), 1);
 * assert.equal(cpu.read(0x1000, 4), false); // l1e[1] is not present
 * assert.equal(cpu.exception.vector, VECTOR_PF);
 * assert.equal(cpu.exception.errorCode, 0);
 * ```
 */
export class Vcpu {
  /** Paging control registers. */
  readonly ctl: PagingControl;
  /** The TLB. */
  readonly tlb: Tlb;
  /** The page walker. */
  readonly walker: TranslationWalker;
  /** Physical memory. */
  readonly memory: PhysicalMemory;
  /** The run's counters. */
  readonly stats: Stats;
  /** The last exception raised. */
  readonly exception: PendingException = new PendingException();
  /** Low 32 bits of the last value read. */
  data = 0;
  /** High 32 bits of the last 8-byte value read. */
  dataHi = 0;
  /** Whether accesses consult the TLB. */
  tlbEnabled: boolean;
  readonly #counts: Float64Array;
  readonly #pa2 = new Float64Array(2);
  // Host storage of the frame the last translate() resolved to, when the TLB had it.
  #host: Uint32Array | undefined = undefined;
  // The TLB entry the last walk filled and its frame, when memory had no storage to lend
  // yet: after the first write backs the frame, the entry adopts it.
  #fillIndex = -1;
  #fillPfn = -1;
  // A walker was given: accesses with paging off go through it too (nested paging).
  readonly #walksUnpaged: boolean;

  /** A vCPU over `memory` with control state `ctl`, counting into `stats`. */
  constructor(memory: PhysicalMemory, ctl: PagingControl, stats: Stats, options: VcpuOptions = {}) {
    this.memory = memory;
    this.ctl = ctl;
    this.stats = stats;
    this.tlb = new Tlb(stats, options.tlb ?? DEFAULT_TLB_CONFIG);
    this.walker = options.walker ?? new PageWalker(memory, stats);
    this.#walksUnpaged = options.walker !== undefined;
    this.tlbEnabled = options.tlbEnabled ?? true;
    this.#counts = stats.counts;
  }

  /**
   * Translates `va` for an access of `kind`: TLB, then a walk that fills the TLB.
   * Returns the physical address, or -1 with a #PF in {@link exception}.
   *
   * A TLB entry whose cached rights deny the access faults without a walk, and the
   * delivery of the #PF drops the entries for that address (SDM 4.10.4.1), so the retry
   * walks. A write through an entry whose dirty flag is clear walks again, as hardware
   * does to set D.
   */
  translate(va: number, kind: AccessKind): number {
    const ctl = this.ctl;
    if (this.tlbEnabled && ctl.isPaging) {
      const tlb = this.tlb;
      const i = tlb.lookup(va, ctl.pcid);
      if (i >= 0) {
        const flags = tlb.flags[i]!;
        const denied = ctl.permissions[(kind << 7) | (flags & TLB_PERMISSION_BITS)]!;
        if (
          denied === 0 &&
          ((flags & TLB_DIRTY) !== 0 || (kind !== ACCESS_WRITE && kind !== ACCESS_IMPLICIT_WRITE))
        ) {
          this.#host = tlb.host[i];
          this.#fillPfn = -1;
          return tlb.frame[i]! + (va & tlb.offsetMask[i]!);
        }
        if (denied !== 0) return this.#pageFault(va, denied);
      }
    }
    return this.#translateSlow(va, kind);
  }

  // The miss path, kept apart so that translate() stays small enough to inline: paging
  // off, TLB off, a miss, or a write through a clean entry (a walk sets D).
  #translateSlow(va: number, kind: AccessKind): number {
    const ctl = this.ctl;
    this.#host = undefined;
    this.#fillPfn = -1;
    const walker = this.walker;
    if (!ctl.isPaging) {
      if (!this.#walksUnpaged) return va;
      const pa = walker.walk(ctl, va, kind, null); // EPT only; nothing to cache in the TLB
      return pa >= 0 ? pa : this.#walkFailed(va);
    }
    const pa = walker.walk(ctl, va, kind, null);
    if (pa < 0) return this.#walkFailed(va);
    if (this.tlbEnabled) {
      // Lend the frame's storage only if it exists: a write that then faults on its
      // second page must not have backed the first (memory is backed on first write).
      const pfn = walker.pageSize === PAGE_SIZE ? Math.floor(walker.pageBase / PAGE_SIZE) : -1;
      const host = pfn >= 0 ? this.memory.hostFrame(pfn, false) : undefined;
      this.#fillPfn = host === undefined ? pfn : -1;
      this.#fillIndex = this.tlb.fill(
        va,
        ctl.pcid,
        walker.pageBase,
        walker.pageSize,
        walker.rights | (walker.pkey << TLB_PKEY_SHIFT) | (walker.isDirty ? TLB_DIRTY : 0),
        walker.isGlobal,
        host,
      );
      this.#host = host;
    }
    return pa;
  }

  /**
   * Walks the tables for `va` without the TLB and without filling it, recording each
   * level in `trace` (for explanations). Same return and faults as {@link translate},
   * but raises nothing: the walker's `errorCode` holds the fault.
   */
  walkOnly(va: number, kind: AccessKind, trace: WalkTrace | null): number {
    return this.walker.walk(this.ctl, va, kind, trace);
  }

  /**
   * Reads 4 bytes at `va` into {@link data}; false on a fault. The fast path: the TLB hit
   * is handled here without a call, the rest goes through the same slow path as
   * {@link translate}.
   */
  read32(va: number): boolean {
    this.#counts[CPU_READ]++;
    const offset = va & 0xfff;
    if (offset > 0xffc) return this.#splitRead(va, 4, ACCESS_READ);
    const ctl = this.ctl;
    if (this.tlbEnabled && ctl.isPaging) {
      const tlb = this.tlb;
      const i = tlb.lookup(va, ctl.pcid);
      if (i >= 0) {
        const denied = ctl.permissions[tlb.flags[i]! & TLB_PERMISSION_BITS]!; // ACCESS_READ
        if (denied !== 0) {
          this.#pageFault(va, denied);
          return false;
        }
        const host = tlb.host[i];
        this.data = host !== undefined && (offset & 3) === 0
          ? host[offset >> 2]!
          : this.memory.read32(tlb.frame[i]! + (va & tlb.offsetMask[i]!));
        return true;
      }
    }
    const pa = this.#translateSlow(va, ACCESS_READ);
    if (pa < 0) return false;
    const host = this.#host;
    this.data = host !== undefined && (offset & 3) === 0
      ? host[offset >> 2]!
      : this.memory.read32(pa);
    return true;
  }

  /** Writes the 4-byte `value` at `va`; false on a fault. The fast path, as {@link read32}. */
  write32(va: number, value: number): boolean {
    this.#counts[CPU_WRITE]++;
    const offset = va & 0xfff;
    if (offset > 0xffc) return this.#splitWrite(va, 4, value, 0, ACCESS_WRITE);
    const ctl = this.ctl;
    if (this.tlbEnabled && ctl.isPaging) {
      const tlb = this.tlb;
      const i = tlb.lookup(va, ctl.pcid);
      if (i >= 0) {
        const flags = tlb.flags[i]!;
        const denied = ctl.permissions[(ACCESS_WRITE << 7) | (flags & TLB_PERMISSION_BITS)]!;
        if (denied !== 0) {
          this.#pageFault(va, denied);
          return false;
        }
        if ((flags & TLB_DIRTY) !== 0) {
          const host = tlb.host[i];
          if (host !== undefined && (offset & 3) === 0) host[offset >> 2] = value;
          else this.memory.write32(tlb.frame[i]! + (va & tlb.offsetMask[i]!), value);
          return true;
        }
      }
    }
    const pa = this.#translateSlow(va, ACCESS_WRITE);
    if (pa < 0) return false;
    const host = this.#host;
    if (host !== undefined && (offset & 3) === 0) host[offset >> 2] = value;
    else {
      this.memory.write32(pa, value);
      this.#adoptHostFrame();
    }
    return true;
  }

  #adoptHostFrame(): void {
    if (this.#fillPfn >= 0) {
      this.tlb.host[this.#fillIndex] = this.memory.hostFrame(this.#fillPfn, false);
      this.#fillPfn = -1;
    }
  }

  /**
   * Reads `size` (1, 2, 4 or 8) bytes at `va` into {@link data} (and {@link dataHi} for
   * 8). `kind` may be an implicit read. False on a fault, with nothing read.
   */
  read(va: number, size: 1 | 2 | 4 | 8, kind: AccessKind = ACCESS_READ): boolean {
    this.#counts[kind === ACCESS_FETCH ? CPU_FETCH : CPU_READ]++;
    if ((va & 0xfff) + size > PAGE_SIZE) return this.#splitRead(va, size, kind);
    const pa = this.translate(va, kind);
    if (pa < 0) return false;
    this.#load(pa, size);
    return true;
  }

  /** Fetches `size` bytes of instruction at `va` into {@link data}; false on a fault. */
  fetch(va: number, size: 1 | 2 | 4 | 8): boolean {
    return this.read(va, size, ACCESS_FETCH);
  }

  /**
   * Writes the low `size` bytes of (`hi`:`lo`) at `va`. Both pages of a split write are
   * translated before any byte is stored, so a fault leaves memory unchanged.
   */
  write(
    va: number,
    size: 1 | 2 | 4 | 8,
    lo: number,
    hi = 0,
    kind: AccessKind = ACCESS_WRITE,
  ): boolean {
    this.#counts[CPU_WRITE]++;
    if ((va & 0xfff) + size > PAGE_SIZE) return this.#splitWrite(va, size, lo, hi, kind);
    const pa = this.translate(va, kind);
    if (pa < 0) return false;
    const memory = this.memory;
    if (size === 4) memory.write32(pa, lo);
    else if (size === 8) {
      memory.write32(pa, lo);
      memory.write32(pa + 4, hi);
    } else if (size === 1) memory.write8(pa, lo);
    else memory.write16(pa, lo);
    this.#adoptHostFrame();
    return true;
  }

  /**
   * MOV to CR3 (SDM Vol. 2 MOV; Vol. 3A 4.10.4.1). `value` is bits 51..0; `noFlush` is bit
   * 63. #GP (returns false) if a bit at or above MAXPHYADDR is set, or bit 63 with
   * PCIDE=0. Otherwise loads CR3 and, unless `noFlush` with PCIDE=1, drops the
   * non-global TLB entries of the new PCID.
   */
  writeCr3(value: number, noFlush = false): boolean {
    const ctl = this.ctl;
    const pcide = (ctl.cr4 & CR4_PCIDE) !== 0;
    if (
      !Number.isInteger(value) || value < 0 || value >= 2 ** ctl.maxPhyAddr ||
      (noFlush && !pcide)
    ) {
      return this.#generalProtection();
    }
    this.#counts[CPU_CR3_WRITE]++;
    ctl.cr3 = value;
    if (!noFlush) this.tlb.flushForCr3(ctl.pcid);
    return true;
  }

  /**
   * MOV to CR4. #GP when clearing PAE in long mode, setting PCIDE outside long mode or
   * with CR3[11:0] != 0. Flushes as 4.10.4.1 says: everything when PGE changes or PCIDE
   * goes 1 -> 0; the current PCID's entries when SMEP goes 0 -> 1.
   */
  writeCr4(value: number): boolean {
    const ctl = this.ctl;
    const old = ctl.cr4;
    value = value >>> 0;
    const lma = (ctl.efer & EFER_LMA) !== 0;
    if (
      (lma && (value & CR4_PAE) === 0) ||
      ((value & CR4_PCIDE) !== 0 && (old & CR4_PCIDE) === 0 && (!lma || (ctl.cr3 & 0xfff) !== 0))
    ) {
      return this.#generalProtection();
    }
    const pcid = ctl.pcid;
    ctl.cr4 = value;
    const changed = old ^ value;
    if ((changed & CR4_PGE) !== 0 || ((old & CR4_PCIDE) !== 0 && (value & CR4_PCIDE) === 0)) {
      this.tlb.flushAll();
    } else if ((changed & CR4_SMEP) !== 0 && (value & CR4_SMEP) !== 0) {
      this.tlb.flushNonGlobal(pcid);
    }
    return true;
  }

  /**
   * MOV to CR0. #GP when setting PG without PE, or clearing PG in long mode (the lab
   * models 64-bit mode only). A change of WP needs no flush: rights are checked at use.
   */
  writeCr0(value: number): boolean {
    const ctl = this.ctl;
    value = value >>> 0;
    if (
      ((value & CR0_PG) !== 0 && (value & CR0_PE) === 0) ||
      ((ctl.efer & EFER_LMA) !== 0 && (value & CR0_PG) === 0)
    ) {
      return this.#generalProtection();
    }
    ctl.cr0 = value;
    return true;
  }

  /** INVLPG `va`: drops every translation of its page for the current PCID and global ones. */
  invlpg(va: number): void {
    this.tlb.invlpg(va, this.ctl.pcid);
  }

  /**
   * INVPCID (SDM Vol. 2). #GP for a type above 3, a PCID above 0xfff, a type-0 address
   * that is not canonical (pass -1), or PCIDE=0 with type 0/1 and a PCID other than 0.
   */
  invpcid(type: number, pcid: number, va: number): boolean {
    const pcide = (this.ctl.cr4 & CR4_PCIDE) !== 0;
    if (
      !Number.isInteger(type) || type < 0 || type > 3 || !Number.isInteger(pcid) || pcid < 0 ||
      pcid > 0xfff || (type === 0 && (va < 0 || va >= LINEAR_LIMIT)) ||
      (!pcide && type <= 1 && pcid !== 0)
    ) {
      return this.#generalProtection();
    }
    this.tlb.invpcid(type as 0 | 1 | 2 | 3, pcid, va);
    return true;
  }

  /** Raises #GP(0) as a value; always returns false so callers can `return raise...`. */
  raiseGeneralProtection(): false {
    return this.#generalProtection();
  }

  #generalProtection(): false {
    this.#counts[CPU_GP]++;
    this.exception.vector = VECTOR_GP;
    this.exception.errorCode = 0;
    return false;
  }

  // A walk failed: a #PF, or a VM exit the walker raised (EPT violation / misconfiguration).
  #walkFailed(va: number): -1 {
    const walker = this.walker;
    if (walker.exitVector === 0) return this.#pageFault(va, walker.errorCode);
    const e = this.exception;
    e.vector = walker.exitVector;
    e.errorCode = 0;
    e.gpa = walker.exitGpa;
    e.qualification = walker.exitQualification;
    e.guestLinear = va;
    return -1;
  }

  #pageFault(va: number, errorCode: number): -1 {
    this.#counts[CPU_PF]++;
    const e = this.exception;
    e.vector = VECTOR_PF;
    e.errorCode = errorCode;
    e.cr2 = va;
    // Delivering a #PF invalidates the TLB entries for the faulting address (4.10.4.1).
    if (this.tlbEnabled) this.tlb.invalidateForFault(va, this.ctl.pcid);
    return -1;
  }

  #load(pa: number, size: number): void {
    const memory = this.memory;
    if (size === 4) this.data = memory.read32(pa);
    else if (size === 8) {
      this.data = memory.read32(pa);
      this.dataHi = memory.read32(pa + 4);
    } else if (size === 1) this.data = memory.read8(pa);
    else this.data = memory.read16(pa);
  }

  // Translates both pages of an access that crosses a page boundary; false on a fault
  // (the first page's fault wins), #GP if the access runs from the lower canonical half
  // into the non-canonical hole.
  #translateSplit(va: number, kind: AccessKind): boolean {
    this.#counts[CPU_SPLIT]++;
    let second = va - (va & 0xfff) + PAGE_SIZE;
    if (va < UPPER_HALF_START && second >= UPPER_HALF_START) return this.#generalProtection();
    if (second === LINEAR_LIMIT) second = 0; // 0xffff_ffff_ffff_ffff + 1 wraps to 0
    const pa1 = this.translate(va, kind);
    if (pa1 < 0) return false;
    const pa2 = this.translate(second, kind);
    if (pa2 < 0) return false;
    this.#pa2[0] = pa1;
    this.#pa2[1] = pa2;
    return true;
  }

  #splitRead(va: number, size: number, kind: AccessKind): boolean {
    if (!this.#translateSplit(va, kind)) return false;
    const first = PAGE_SIZE - (va & 0xfff);
    let lo = 0;
    let hi = 0;
    for (let k = 0; k < size; k++) {
      const pa = k < first ? this.#pa2[0]! + k : this.#pa2[1]! + (k - first);
      const b = this.memory.read8(pa);
      if (k < 4) lo |= b << (8 * k);
      else hi |= b << (8 * (k - 4));
    }
    this.data = lo >>> 0;
    this.dataHi = hi >>> 0;
    return true;
  }

  #splitWrite(va: number, size: number, lo: number, hi: number, kind: AccessKind): boolean {
    if (!this.#translateSplit(va, kind)) return false;
    const first = PAGE_SIZE - (va & 0xfff);
    for (let k = 0; k < size; k++) {
      const pa = k < first ? this.#pa2[0]! + k : this.#pa2[1]! + (k - first);
      const b = k < 4 ? (lo >>> (8 * k)) & 0xff : (hi >>> (8 * (k - 4))) & 0xff;
      this.memory.write8(pa, b);
    }
    return true;
  }
}
