/**
 * The IA-32e page walker (Intel SDM Vol. 3A 4.5 to 4.8): translates a 48-bit linear
 * address through the four levels of tables that CR3 points to, checks reserved bits and
 * access rights, sets Accessed and Dirty flags in memory, and reports a #PF error code
 * when the translation fails.
 *
 * The walk reads and writes the table frames through {@link PhysicalMemory}, so a
 * hypervisor that later watches guest memory sees every A/D update as the write it is.
 *
 * @module
 */

import { type AccessKind, isWrite } from "./access.ts";
import { levelIndex, PAGE_SIZE, PAGE_SIZE_1G, PAGE_SIZE_2M } from "./address.ts";
import {
  type PagingControl,
  permissionIndex,
  PFEC_PRESENT,
  PFEC_RSVD,
  RIGHTS_XD,
} from "./paging_control.ts";
import { EFER_NXE } from "./paging_control.ts";
import type { PhysicalMemory } from "./physical_memory.ts";
import {
  PTE_ACCESSED,
  PTE_DIRTY,
  PTE_GLOBAL,
  PTE_HI_XD,
  PTE_LO_RESERVED_1G,
  PTE_LO_RESERVED_2M,
  PTE_PAGE_SIZE,
  PTE_PRESENT,
  pteAddress,
  pteLargePageBase,
  ptePkey,
  reservedHighMask,
} from "./pte.ts";
import { declareCounter, type Stats } from "./stats.ts";
import { CR4_PGE } from "./paging_control.ts";

/** Page walks started. */
export const WALK_COUNT: number = declareCounter("walk.count", "page walks started", "walks");
/** Paging-structure entries read by walks. */
export const WALK_REFS: number = declareCounter(
  "walk.refs",
  "paging-structure entries read by page walks",
  "references",
);
/** Walks that ended in a page fault. */
export const WALK_FAULT: number = declareCounter(
  "walk.fault",
  "page walks that ended in #PF",
  "walks",
);
/** Accessed/Dirty updates written to memory by walks. */
export const WALK_AD_WRITE: number = declareCounter(
  "walk.adWrite",
  "Accessed/Dirty flag updates the walker wrote to paging-structure entries",
  "writes",
);
/** Histogram of references per walk: slot WALK_REFS_HIST + n counts walks that read n entries. */
export const WALK_REFS_HIST: number = declareCounter(
  "walk.refsHist.1",
  "walks that read 1 entry",
  "walks",
);
declareCounter("walk.refsHist.2", "walks that read 2 entries", "walks");
declareCounter("walk.refsHist.3", "walks that read 3 entries", "walks");
declareCounter("walk.refsHist.4", "walks that read 4 entries", "walks");

/** Why a walk stopped at a level: a not-present entry, a reserved bit, or rights. */
export type WalkFaultCause = "not-present" | "reserved-bit" | "protection" | "none";

/**
 * A record of one walk, level by level, for explanations and tests (KVM keeps the same
 * record in `struct guest_walker`). Filled only when passed to {@link PageWalker.walk};
 * the arrays are indexed by level 1..4.
 */
export class WalkTrace {
  /** The lowest level the walk read (the leaf, or where it stopped). */
  lastLevel = 0;
  /** Physical address of the entry read at each level. */
  readonly entryAddress: number[] = [0, 0, 0, 0, 0];
  /** Low word of the entry as read. */
  readonly entryLow: number[] = [0, 0, 0, 0, 0];
  /** High word of the entry as read. */
  readonly entryHigh: number[] = [0, 0, 0, 0, 0];
  /** Low word after the walk's A/D update (equals entryLow when unchanged). */
  readonly entryLowAfter: number[] = [0, 0, 0, 0, 0];
  /** Combined rights ({@link RIGHTS_WRITABLE}...) after ANDing/ORing in this level. */
  readonly rightsAfter: number[] = [0, 0, 0, 0, 0];
  /** Why the walk faulted, or "none". */
  cause: WalkFaultCause = "none";
}

/**
 * What the vCPU needs of a page walker: a `walk` that returns the physical address or -1,
 * and the fields that describe the translation or the failure. {@link PageWalker} is the
 * one-dimensional walker of native paging; the 2-D walker of nested paging
 * (`NestedWalker`) implements the same shape, so a `Vcpu` runs on either.
 *
 * A failed walk is a #PF (`exitVector` 0, the error code in `errorCode`) or, for a walker
 * that translates guest-physical addresses through EPT, a VM exit: `exitVector` is then
 * the vCPU's pseudo-vector of the exit (`VECTOR_EPT_VIOLATION`, `VECTOR_EPT_MISCONFIG`),
 * with the guest-physical address and exit qualification beside it.
 */
export interface TranslationWalker {
  /** Physical base of the page after a successful walk. */
  readonly pageBase: number;
  /** Page size in bytes after a successful walk: 4 KiB, 2 MiB or 1 GiB. */
  readonly pageSize: number;
  /** Combined rights ({@link RIGHTS_WRITABLE} | {@link RIGHTS_USER} | {@link RIGHTS_XD}). */
  readonly rights: number;
  /** Protection key of the leaf. */
  readonly pkey: number;
  /** Whether the translation is global. */
  readonly isGlobal: boolean;
  /** Whether a write may use the translation without walking again (the leaf's D is set). */
  readonly isDirty: boolean;
  /** #PF error code after a failed walk with `exitVector` 0. */
  readonly errorCode: number;
  /** Level at which a #PF walk stopped (1..4). */
  readonly faultLevel: number;
  /** Paging-structure entries read by the last walk (both dimensions for a 2-D walk). */
  readonly refs: number;
  /** 0 when a failed walk is a #PF; otherwise the vector of the VM exit it raises. */
  readonly exitVector: number;
  /** Guest-physical address of the access that caused the exit. */
  readonly exitGpa: number;
  /** Exit qualification of the exit (EPT violations; 0 otherwise). */
  readonly exitQualification: number;
  /** Translates `va` for an access of `kind` under `ctl`; the physical address or -1. */
  walk(ctl: PagingControl, va: number, kind: AccessKind, trace: WalkTrace | null): number;
}

/**
 * Walks IA-32e page tables in a {@link PhysicalMemory}.
 *
 * After {@link walk} succeeds, the fields `pageBase`, `pageSize`, `rights`, `pkey`,
 * `isGlobal` and `isDirty` describe the translation; after it fails, `errorCode` and
 * `faultLevel` describe the fault. The fields are reused by every walk: nothing is
 * allocated per walk.
 *
 * @example Translate one address
 * ```ts
 * import { PageWalker, PagingControl, ACCESS_WRITE, pteLow, pteHigh, PTE_PRESENT,
 *   PTE_WRITABLE, PTE_DIRTY, Stats } from "../../mod.ts";
 * import { MachineMemory } from "../../mod.ts";
 * import assert from "node:assert/strict";
 *
 * const memory = new MachineMemory({ frames: 16 });
 * const put = (pa: number, to: number) => {
 *   memory.write32(pa, pteLow(to, PTE_PRESENT | PTE_WRITABLE));
 *   memory.write32(pa + 4, pteHigh(to));
 * };
 * put(0x1000, 0x2000); // l4e[0] -> PDPT at 0x2000
 * put(0x2000, 0x3000); // l3e[0] -> PD at 0x3000
 * put(0x3000, 0x4000); // l2e[0] -> PT at 0x4000
 * put(0x4000 + 5 * 8, 0x9000); // l1e[5] -> page at 0x9000
 * const walker = new PageWalker(memory, new Stats());
 * const ctl = new PagingControl({ cr3: 0x1000 });
 * assert.equal(walker.walk(ctl, 0x5123, ACCESS_WRITE, null), 0x9123);
 * assert.ok(memory.read32(0x4000 + 5 * 8) & PTE_DIRTY); // the walk set D
 * ```
 */
export class PageWalker implements TranslationWalker {
  /** Physical base of the page after a successful walk. */
  pageBase = 0;
  /** Page size in bytes after a successful walk: 4 KiB, 2 MiB or 1 GiB. */
  pageSize: number = PAGE_SIZE;
  /** Combined rights ({@link RIGHTS_WRITABLE} | {@link RIGHTS_USER} | {@link RIGHTS_XD}). */
  rights = 0;
  /** Protection key of the leaf (bits 62..59). */
  pkey = 0;
  /** Whether the leaf is global (G=1 and CR4.PGE=1). */
  isGlobal = false;
  /** Whether the leaf's D flag is set after the walk. */
  isDirty = false;
  /** #PF error code after a failed walk. */
  errorCode = 0;
  /** Level at which a failed walk stopped (1..4). */
  faultLevel = 0;
  /** Entries read by the last walk. */
  refs = 0;
  /** Always 0: a one-dimensional walk fails only with a #PF. */
  readonly exitVector = 0;
  /** Always 0 (no VM exits). */
  readonly exitGpa = 0;
  /** Always 0 (no VM exits). */
  readonly exitQualification = 0;

  readonly #memory: PhysicalMemory;
  readonly #counts: Float64Array;
  // Entry addresses and low words of the walk in progress, by level, for the A/D pass.
  readonly #entryAddress = new Float64Array(5);
  readonly #entryLow = new Uint32Array(5);

  /** A walker over `memory` that counts into `stats`. */
  constructor(memory: PhysicalMemory, stats: Stats) {
    this.#memory = memory;
    this.#counts = stats.counts;
  }

  /**
   * Translates linear address `va` (a 48-bit value) for an access of `kind` under `ctl`.
   *
   * Returns the physical address, or -1 on a page fault, with the fault in `errorCode`
   * (CR2 is `va`). With paging off the address is returned unchanged. Accessed flags are
   * set on every entry used, and Dirty on the leaf of a write, only when the translation
   * succeeds: the SDM leaves A flags of a faulting walk unspecified, and KVM
   * (`walk_addr_generic`) and Xen (`guest_walk_tables`) set none, which keeps the guest-
   * visible outcome the same on every platform.
   *
   * Reserved bits (SDM 4.5.4) fault with P=1 and RSVD=1: bits 51..MAXPHYADDR of any
   * present entry, XD when NXE=0, PS in an l4e, PS in an l3e without 1 GiB pages, and the
   * bits between PAT and the frame of a large page.
   */
  walk(ctl: PagingControl, va: number, kind: AccessKind, trace: WalkTrace | null): number {
    if (!ctl.isPaging) {
      this.pageBase = va - (va & 0xfff);
      this.pageSize = PAGE_SIZE;
      this.rights = 3;
      this.pkey = 0;
      this.isGlobal = false;
      this.isDirty = true;
      this.refs = 0;
      return va;
    }
    const counts = this.#counts;
    const memory = this.#memory;
    counts[WALK_COUNT]++;
    if (trace !== null) trace.cause = "none";
    const rsvdHigh = reservedHighMask(ctl.maxPhyAddr) |
      ((ctl.efer & EFER_NXE) === 0 ? PTE_HI_XD : 0);
    const nxe = (ctl.efer & EFER_NXE) !== 0;
    let table = ctl.cr3TableAddress;
    let rwus = 6; // R/W and U/S, ANDed over levels (PTE bits 1 and 2)
    let xd = 0;
    let level = 4;
    let lo = 0;
    let hi = 0;
    let refs = 0;
    for (;;) {
      const entry = table + levelIndex(va, level) * 8;
      lo = memory.read32(entry);
      hi = memory.read32(entry + 4);
      refs++;
      this.#entryAddress[level] = entry;
      this.#entryLow[level] = lo;
      if (trace !== null) {
        trace.lastLevel = level;
        trace.entryAddress[level] = entry;
        trace.entryLow[level] = lo;
        trace.entryHigh[level] = hi;
        trace.entryLowAfter[level] = lo;
      }
      if ((lo & PTE_PRESENT) === 0) {
        return this.#fault(ctl, kind, level, refs, 0, trace, "not-present");
      }
      const isLeafCandidate = (lo & PTE_PAGE_SIZE) !== 0;
      if (
        (hi & rsvdHigh) !== 0 ||
        (isLeafCandidate &&
          (level === 4 ||
            (level === 3 && (!ctl.has1GbPages || (lo & PTE_LO_RESERVED_1G) !== 0)) ||
            (level === 2 && (lo & PTE_LO_RESERVED_2M) !== 0)))
      ) {
        return this.#fault(ctl, kind, level, refs, PFEC_PRESENT | PFEC_RSVD, trace, "reserved-bit");
      }
      rwus &= lo;
      if (nxe && (hi & PTE_HI_XD) !== 0) xd = RIGHTS_XD;
      if (trace !== null) trace.rightsAfter[level] = (rwus >> 1) | xd;
      if (level === 1 || isLeafCandidate) break;
      table = pteAddress(lo, hi);
      level--;
    }
    const rights = (rwus >> 1) | xd;
    const pkey = ptePkey(hi);
    const denied = ctl.permissions[permissionIndex(kind, pkey, rights)]!;
    if (denied !== 0) {
      this.errorCode = denied;
      return this.#fault(ctl, kind, level, refs, denied, trace, "protection");
    }
    // Success: set A on every entry used, D on the leaf of a write (SDM 4.8).
    const write = isWrite(kind);
    for (let l = 4; l >= level; l--) {
      const old = this.#entryLow[l]!;
      const wanted =
        (l === level && write ? old | PTE_ACCESSED | PTE_DIRTY : old | PTE_ACCESSED) >>> 0;
      if (wanted !== old) {
        memory.write32(this.#entryAddress[l]!, wanted);
        counts[WALK_AD_WRITE]++;
        if (l === level) lo = wanted;
        if (trace !== null) trace.entryLowAfter[l] = wanted;
      }
    }
    counts[WALK_REFS] += refs;
    counts[WALK_REFS_HIST + refs - 1]++;
    this.refs = refs;
    const size = level === 1 ? PAGE_SIZE : level === 2 ? PAGE_SIZE_2M : PAGE_SIZE_1G;
    this.pageSize = size;
    this.pageBase = level === 1 ? pteAddress(lo, hi) : pteLargePageBase(lo, hi, size);
    this.rights = rights;
    this.pkey = pkey;
    this.isGlobal = (lo & PTE_GLOBAL) !== 0 && (ctl.cr4 & CR4_PGE) !== 0;
    this.isDirty = (lo & PTE_DIRTY) !== 0;
    return this.pageBase + (va % size);
  }

  #fault(
    ctl: PagingControl,
    kind: AccessKind,
    level: number,
    refs: number,
    bits: number,
    trace: WalkTrace | null,
    cause: WalkFaultCause,
  ): number {
    const counts = this.#counts;
    counts[WALK_FAULT]++;
    counts[WALK_REFS] += refs;
    counts[WALK_REFS_HIST + refs - 1]++;
    this.refs = refs;
    this.faultLevel = level;
    this.errorCode = bits | ctl.accessErrorBits(kind);
    if (trace !== null) trace.cause = cause;
    return -1;
  }
}
