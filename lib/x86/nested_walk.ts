/**
 * The two-dimensional page walk of nested paging (Intel EPT, AMD NPT): the guest's own
 * IA-32e tables translate a linear address to a guest-physical address (GPA), and every
 * GPA the walk touches, starting with CR3 itself, is translated to a host-physical address
 * (HPA) through the EPT the hypervisor built (SDM Vol. 3C 29.3.2: "guest-physical
 * addresses used ... including those of guest paging structures, are translated using
 * EPT").
 *
 * ```
 *            gCR3     gL4e      gL3e      gL2e      gL1e     final GPA
 *   EPT L4    1        6        11        16        21
 *   EPT L3    2        7        12        17        22
 *   EPT L2    3        8        13        18        23
 *   EPT L1    4        9        14        19        24
 *   guest        5        10        15        20
 * ```
 * With 4 KiB pages in both dimensions one TLB miss reads 24 entries: five EPT walks of four
 * references each (the four guest tables and the final GPA) and the four guest entries:
 * (n + 1)(m + 1) - 1 for an n-level guest over an m-level EPT (Bhargava et al., ASPLOS
 * 2008). A 2 MiB or 1 GiB leaf in either dimension ends that dimension's walk a level
 * or two early.
 *
 * Walk caches (switchable): paging-structure caches of the guest's non-leaf entries
 * (Intel's PML4E, PDPTE and PDE caches, SDM 4.10.3, keyed by linear-address bits and PCID)
 * let a walk start below the top, and a nested TLB caches the GPA -> HPA translations of
 * guest table frames (Bhargava's NTLB), so a guest entry costs one reference instead of
 * five. The lab's geometry is its own choice (Intel does not publish its sizes): direct-
 * mapped, indexed by address bits plus PCID, 4 PML4E, 4 PDPTE and 32 PDE entries; a
 * 32-entry NTLB indexed by GFN.
 *
 * Failures are values. A guest-level failure is a #PF exactly as the 1-D walker reports it
 * (`exitVector` 0). An EPT failure is a VM exit: `exitVector` VECTOR_EPT_VIOLATION (an
 * entry not present, or the access not allowed) or VECTOR_EPT_MISCONFIG (W without R, a
 * reserved bit, a reserved memory type), with the GPA in `exitGpa` and the qualification
 * of Table 28-7 in `exitQualification`.
 *
 * @module
 */

import { ACCESS_FETCH, type AccessKind, isWrite } from "./access.ts";
import { levelIndex, PAGE_SIZE, PAGE_SIZE_1G, PAGE_SIZE_2M } from "./address.ts";
import {
  EPT_ACCESSED,
  EPT_DIRTY,
  EPT_EXECUTE,
  EPT_PAGE_SIZE,
  EPT_QUAL_FINAL,
  EPT_QUAL_LINEAR_VALID,
  EPT_QUAL_RIGHTS_SHIFT,
  EPT_READ,
  EPT_RWX,
  EPT_WRITE,
  eptAddress,
  eptLargePageBase,
  eptpTableAddress,
  isEptMisconfigured,
  isEptpAdEnabled,
} from "./ept.ts";
import {
  type TranslationWalker,
  WALK_AD_WRITE,
  WALK_COUNT,
  WALK_FAULT,
  WALK_REFS,
  type WalkFaultCause,
  type WalkTrace,
} from "./page_walk.ts";
import {
  CR4_PGE,
  EFER_NXE,
  type PagingControl,
  permissionIndex,
  PFEC_PRESENT,
  PFEC_RSVD,
  RIGHTS_XD,
} from "./paging_control.ts";
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
import type { Tlb } from "./tlb.ts";
import { VECTOR_EPT_MISCONFIG, VECTOR_EPT_VIOLATION } from "./vcpu.ts";

/** The most references one 2-D walk can make: 4-level guest over 4-level EPT. */
export const MAX_REFS_2D = 24;

/**
 * Histogram of references per 2-D walk: slot WALK_REFS_HIST_2D + n - 1 counts the walks
 * (finished or failed) that read n entries, guest and EPT together, n = 1..24.
 */
export const WALK_REFS_HIST_2D: number = declareHistogram();
/** EPT entries read by 2-D walks (the nested share of walk.refs). */
export const WALK_NESTED_REFS: number = declareCounter(
  "walk.nestedRefs",
  "EPT entries read by 2-D walks (included in walk.refs)",
  "references",
);
/** 2-D walks that ended in an EPT violation. */
export const WALK_EPT_VIOLATION: number = declareCounter(
  "walk.eptViolation",
  "2-D walks that ended in an EPT violation (entry not present or access not allowed)",
  "walks",
);
/** 2-D walks that ended in an EPT misconfiguration. */
export const WALK_EPT_MISCONFIG: number = declareCounter(
  "walk.eptMisconfig",
  "2-D walks that ended in an EPT misconfiguration (W without R, reserved bit or type)",
  "walks",
);
/** EPT accessed/dirty flags written by walks. */
export const WALK_EPT_AD_WRITE: number = declareCounter(
  "walk.eptAdWrite",
  "EPT Accessed/Dirty flag updates written by 2-D walks (EPTP bit 6)",
  "writes",
);
/** Walks that started at the guest PTE thanks to the PDE cache. */
export const WALK_PSC_PDE: number = declareCounter(
  "walk.psc.pde",
  "2-D walks that started at the guest l1e: a PDE-cache hit skipped three guest levels",
  "walks",
);
/** Walks that started at the guest PDE thanks to the PDPTE cache. */
export const WALK_PSC_PDPTE: number = declareCounter(
  "walk.psc.pdpte",
  "2-D walks that started at the guest l2e: a PDPTE-cache hit skipped two guest levels",
  "walks",
);
/** Walks that started at the guest PDPTE thanks to the PML4E cache. */
export const WALK_PSC_PML4E: number = declareCounter(
  "walk.psc.pml4e",
  "2-D walks that started at the guest l3e: a PML4E-cache hit skipped the l4e",
  "walks",
);
/** Walks with the caches on that found nothing in the paging-structure caches. */
export const WALK_PSC_MISS: number = declareCounter(
  "walk.psc.miss",
  "2-D walks with walk caches on that missed every paging-structure cache",
  "walks",
);
/** Guest table frames whose GPA -> HPA translation came from the nested TLB. */
export const WALK_NTLB_HIT: number = declareCounter(
  "walk.ntlb.hit",
  "guest table references whose GPA -> HPA translation the nested TLB held (no EPT walk)",
  "references",
);
/** Guest table frames the nested TLB did not hold (an EPT walk followed). */
export const WALK_NTLB_MISS: number = declareCounter(
  "walk.ntlb.miss",
  "guest table references with walk caches on that missed the nested TLB",
  "references",
);

function declareHistogram(): number {
  const first = declareCounter(
    "walk.refsHist2d.1",
    "2-D walks that read 1 entry (guest and EPT)",
    "walks",
  );
  for (let n = 2; n <= MAX_REFS_2D; n++) {
    const index = declareCounter(
      `walk.refsHist2d.${n}`,
      `2-D walks that read ${n} entries (guest and EPT)`,
      "walks",
    );
    if (index !== first + n - 1) {
      throw new RangeError(`Cannot declare walk.refsHist2d.${n}: slots are not consecutive`);
    }
  }
  return first;
}

// Cache geometry (direct-mapped; sizes are powers of two).
const PML4E_CACHE = 4;
const PDPTE_CACHE = 4;
const PDE_CACHE = 32;
const NTLB_ENTRIES = 32;
const SPAN_L4 = 2 ** 39;
const SPAN_L3 = PAGE_SIZE_1G;
const SPAN_L2 = PAGE_SIZE_2M;
const PCID_SPAN = 4096;

/** Options of a {@link NestedWalker}. */
export interface NestedWalkerOptions {
  /** The EPT pointer (see `eptpOf`): PML4 address, 4-level walk, A/D enable bit. */
  eptp: number;
  /** Paging-structure caches and nested TLB on; default true. */
  walkCaches?: boolean;
  /** The host's MAXPHYADDR (reserved address bits of EPT entries); default 46. */
  maxPhyAddr?: number;
  /**
   * The TLB whose invalidations also drop the paging-structure caches (a CR3 load,
   * INVLPG, INVPCID, a #PF, a full flush all invalidate both, SDM 4.10.4.1). Without one
   * the caches hold until {@link NestedWalker.flushWalkCaches}. A `Vcpu` built with the
   * walker has its own TLB: set {@link NestedWalker.tlb} to it afterwards.
   */
  tlb?: Tlb;
}

/**
 * The 2-D walker: same fields and `walk` as `PageWalker`, over host-physical memory
 * holding both the guest's tables (at the HPAs the EPT gives) and the EPT.
 *
 * After a successful walk `pageBase` is the host-physical base of the combined page, and
 * `pageSize` the smaller of the guest page and the EPT page (a TLB entry cannot span more
 * than either). `isDirty` is true only when a write could go ahead without a walk: the
 * guest leaf's D is set, the EPT leaf allows writes, and (with EPT A/D) its D is set.
 *
 * Limitation: a TLB entry records the guest's rights only; an EPT leaf without X that a
 * read brought into the TLB does not stop a later fetch through that entry. The lab's
 * hypervisor maps RAM with R, W and X, so it never arises there.
 *
 * @example The 24-reference walk, then a second walk with the caches warm
 * ```ts
 * import { NestedWalker, PagingControl, MachineMemory, Stats, ACCESS_READ, eptpOf,
 *   eptLow, eptHigh, EPT_RWX, EPT_MEMTYPE_WB, EPT_MEMTYPE_SHIFT, pteLow, pteHigh,
 *   PTE_PRESENT, PTE_WRITABLE } from "../../mod.ts";
 * import assert from "node:assert/strict";
 * const memory = new MachineMemory({ frames: 64 });
 * // EPT at 0x1000 (PML4) -> 0x2000 -> 0x3000 -> 0x4000 (PT): gfn n -> mfn n + 32.
 * const link = (entry: number, to: number, flags: number) => {
 *   memory.write32(entry, eptLow(to, flags));
 *   memory.write32(entry + 4, eptHigh(to));
 * };
 * link(0x1000, 0x2000, EPT_RWX);
 * link(0x2000, 0x3000, EPT_RWX);
 * link(0x3000, 0x4000, EPT_RWX);
 * for (let gfn = 0; gfn < 16; gfn++) {
 *   link(0x4000 + gfn * 8, (gfn + 32) * 4096, EPT_RWX | (EPT_MEMTYPE_WB << EPT_MEMTYPE_SHIFT));
 * }
 * // Guest tables at GPA 0x1000 -> 0x2000 -> 0x3000 -> 0x4000; va 0 -> GPA 0x5000.
 * const gpt = (gpa: number, to: number) => {
 *   memory.write32(gpa + 32 * 4096, pteLow(to, PTE_PRESENT | PTE_WRITABLE));
 *   memory.write32(gpa + 32 * 4096 + 4, pteHigh(to));
 * };
 * gpt(0x1000, 0x2000); gpt(0x2000, 0x3000); gpt(0x3000, 0x4000); gpt(0x4000, 0x5000);
 * const stats = new Stats();
 * const walker = new NestedWalker(memory, stats, { eptp: eptpOf(0x1000, false) });
 * const ctl = new PagingControl({ cr3: 0x1000 });
 * assert.equal(walker.walk(ctl, 0x123, ACCESS_READ, null), (5 + 32) * 4096 + 0x123);
 * assert.equal(walker.refs, 24);
 * assert.equal(walker.walk(ctl, 0x456, ACCESS_READ, null), (5 + 32) * 4096 + 0x456);
 * assert.equal(walker.refs, 5); // PDE cache + nested TLB: the l1e (1) and the final GPA (4)
 * assert.equal(stats.get("walk.refsHist2d.24"), 1);
 * ```
 */
export class NestedWalker implements TranslationWalker {
  /** Host-physical base of the combined page after a successful walk. */
  pageBase = 0;
  /** Combined page size: min(guest page, EPT page). */
  pageSize: number = PAGE_SIZE;
  /** Combined guest rights (RIGHTS_WRITABLE | RIGHTS_USER | RIGHTS_XD). */
  rights = 0;
  /** Protection key of the guest leaf. */
  pkey = 0;
  /** Whether the guest leaf is global (G=1 and CR4.PGE=1). */
  isGlobal = false;
  /** Whether a write may use the translation without another walk. */
  isDirty = false;
  /** #PF error code after a walk that failed in the guest dimension. */
  errorCode = 0;
  /** Guest level at which a #PF walk stopped (1..4). */
  faultLevel = 0;
  /** Entries read by the last walk: guest and EPT. */
  refs = 0;
  /** EPT entries read by the last walk. */
  nestedRefs = 0;
  /** 0 (#PF or success), VECTOR_EPT_VIOLATION or VECTOR_EPT_MISCONFIG. */
  exitVector = 0;
  /** Guest-physical address of the access that caused the last exit. */
  exitGpa = 0;
  /** Exit qualification of the last EPT violation (0 for a misconfiguration). */
  exitQualification = 0;
  /** See {@link NestedWalkerOptions.tlb}. */
  tlb: Tlb | null;

  readonly #memory: PhysicalMemory;
  readonly #counts: Float64Array;
  readonly #rsvdHighEpt: number;
  #eptp = 0;
  #eptRoot = 0;
  #eptAd = false;
  // EPT rights the guest's table references need: R, or R|W with EPT A/D (29.3.3.2).
  #tableAccess: number = EPT_READ;
  #walkCaches: boolean;
  // Result of the last #translateGpa: AND of R/W/X, leaf size and low word after A/D.
  #eptRights = 0;
  #eptLeafSize = 0;
  #eptLeafLow = 0;
  // Guest entries of the walk in progress, by level: GPA, HPA, low word, EPT rights of
  // the table frame, and for non-leaf levels the next table and rights after the level.
  readonly #entryGpa = new Float64Array(5);
  readonly #entryHpa = new Float64Array(5);
  readonly #entryLow = new Uint32Array(5);
  readonly #tableRights = new Int32Array(5);
  readonly #nextTable = new Float64Array(5);
  readonly #rwusAfter = new Int32Array(5);
  readonly #xdAfter = new Int32Array(5);
  // EPT entries of the nested walk in progress (for the A/D pass).
  readonly #eptEntry = new Float64Array(5);
  readonly #eptLow = new Uint32Array(5);
  // Paging-structure caches, index 4 (PML4E), 3 (PDPTE), 2 (PDE): tag = VA prefix * 4096
  // + PCID, or -1; the next table's GPA; rights (R/W and U/S bits as in a PTE) and XD.
  readonly #pscTag: Float64Array[] = [];
  readonly #pscNext: Float64Array[] = [];
  readonly #pscRwus: Int32Array[] = [];
  readonly #pscXd: Int32Array[] = [];
  #pscGeneration = -1;
  // Nested TLB: gfn tag (or -1), host frame base, EPT rights.
  readonly #ntlbTag = new Float64Array(NTLB_ENTRIES).fill(-1);
  readonly #ntlbBase = new Float64Array(NTLB_ENTRIES);
  readonly #ntlbRights = new Int32Array(NTLB_ENTRIES);

  /**
   * A walker over host-physical `memory`, counting into `stats`. Throws a RangeError for
   * a bad MAXPHYADDR.
   */
  constructor(memory: PhysicalMemory, stats: Stats, options: NestedWalkerOptions) {
    this.#memory = memory;
    this.#counts = stats.counts;
    const maxPhyAddr = options.maxPhyAddr ?? 46;
    if (!Number.isInteger(maxPhyAddr) || maxPhyAddr < 36 || maxPhyAddr > 52) {
      throw new RangeError(`Cannot walk EPT with MAXPHYADDR ${maxPhyAddr}: must be 36..52`);
    }
    this.#rsvdHighEpt = reservedHighMask(maxPhyAddr);
    this.#walkCaches = options.walkCaches ?? true;
    this.tlb = options.tlb ?? null;
    for (const entries of [0, 0, PDE_CACHE, PDPTE_CACHE, PML4E_CACHE]) {
      this.#pscTag.push(new Float64Array(entries).fill(-1));
      this.#pscNext.push(new Float64Array(entries));
      this.#pscRwus.push(new Int32Array(entries));
      this.#pscXd.push(new Int32Array(entries));
    }
    this.eptp = options.eptp;
  }

  /** The EPT pointer. Setting it is a VMCS write followed by INVEPT: the caches go. */
  get eptp(): number {
    return this.#eptp;
  }

  set eptp(value: number) {
    this.#eptp = value;
    this.#eptRoot = eptpTableAddress(value);
    this.#eptAd = isEptpAdEnabled(value);
    this.#tableAccess = this.#eptAd ? EPT_READ | EPT_WRITE : EPT_READ;
    this.invept();
  }

  /** Whether the walk caches are used. Switching drops what they hold. */
  get walkCaches(): boolean {
    return this.#walkCaches;
  }

  set walkCaches(on: boolean) {
    this.#walkCaches = on;
    this.invept();
  }

  /**
   * INVEPT (single context): drops the nested TLB and the paging-structure caches, as the
   * hypervisor must after it removes or narrows an EPT entry.
   */
  invept(): void {
    this.#ntlbTag.fill(-1);
    this.flushWalkCaches();
  }

  /** Drops the paging-structure caches of guest entries (what a TLB flush drops with them). */
  flushWalkCaches(): void {
    for (let level = 2; level <= 4; level++) this.#pscTag[level]!.fill(-1);
    this.#pscGeneration = this.tlb === null ? -1 : this.tlb.generation;
  }

  /**
   * Translates linear address `va` (48-bit) for an access of `kind` under the guest's
   * `ctl`: the guest walk of `PageWalker.walk`, each table reference and the final GPA
   * translated through the EPT. Returns the host-physical address, or -1 with either a
   * #PF (`exitVector` 0, `errorCode`, `faultLevel`) or an EPT exit (`exitVector`,
   * `exitGpa`, `exitQualification`).
   *
   * Guest A and D flags are set as the 1-D walker sets them (on success only); the write
   * is to guest memory, so it needs EPT write permission on the table frame: without EPT
   * A/D a read-only table frame makes the update an EPT violation (write, paging-structure
   * access); with EPT A/D every guest table reference already counts as a write (29.3.3.2,
   * qualification read + write). With EPT A/D the walk sets A in every EPT entry it uses
   * and D in the EPT leaf of every write, guest table frames included (29.3.5).
   *
   * With paging off the linear address is the GPA: only the EPT is walked.
   */
  walk(ctl: PagingControl, va: number, kind: AccessKind, trace: WalkTrace | null): number {
    const counts = this.#counts;
    counts[WALK_COUNT]++;
    this.exitVector = 0;
    this.refs = 0;
    this.nestedRefs = 0;
    const finalAccess = isWrite(kind) ? EPT_WRITE : kind === ACCESS_FETCH ? EPT_EXECUTE : EPT_READ;
    if (!ctl.isPaging) {
      const hpa = this.#translateGpa(va, finalAccess, true);
      if (hpa < 0) return this.#exited();
      const size = this.#eptLeafSize;
      this.pageSize = size;
      this.pageBase = hpa - (hpa % size);
      this.rights = 3;
      this.pkey = 0;
      this.isGlobal = false;
      this.isDirty = (this.#eptRights & EPT_WRITE) !== 0;
      this.#finished();
      return hpa;
    }
    if (trace !== null) trace.cause = "none";
    const memory = this.#memory;
    const nxe = (ctl.efer & EFER_NXE) !== 0;
    const rsvdHigh = reservedHighMask(ctl.maxPhyAddr) | (nxe ? 0 : PTE_HI_XD);
    const pcid = ctl.pcid;
    const caches = this.#walkCaches;
    let table = ctl.cr3TableAddress;
    let level = 4;
    let rwus = 6; // R/W and U/S, ANDed over levels (PTE bits 1 and 2)
    let xd = 0;
    if (caches) {
      const tlb = this.tlb;
      if (tlb !== null && tlb.generation !== this.#pscGeneration) this.flushWalkCaches();
      // The longest prefix first (SDM 4.10.3.2): PDE cache, PDPTE cache, PML4E cache.
      for (let cached = 2; cached <= 4; cached++) {
        const prefix = Math.floor(va / (cached === 2 ? SPAN_L2 : cached === 3 ? SPAN_L3 : SPAN_L4));
        const slot = (prefix + pcid) & (this.#pscTag[cached]!.length - 1);
        if (this.#pscTag[cached]![slot] === prefix * PCID_SPAN + pcid) {
          table = this.#pscNext[cached]![slot]!;
          rwus = this.#pscRwus[cached]![slot]!;
          xd = this.#pscXd[cached]![slot]!;
          level = cached - 1;
          counts[cached === 2 ? WALK_PSC_PDE : cached === 3 ? WALK_PSC_PDPTE : WALK_PSC_PML4E]++;
          break;
        }
      }
      if (level === 4) counts[WALK_PSC_MISS]++;
    }
    const top = level;
    let lo = 0;
    let hi = 0;
    for (;;) {
      const entryGpa = table + levelIndex(va, level) * 8;
      const entryHpa = this.#translateTable(entryGpa);
      if (entryHpa < 0) return this.#exited();
      lo = memory.read32(entryHpa);
      hi = memory.read32(entryHpa + 4);
      this.refs++;
      this.#entryGpa[level] = entryGpa;
      this.#entryHpa[level] = entryHpa;
      this.#entryLow[level] = lo;
      this.#tableRights[level] = this.#eptRights;
      if (trace !== null) {
        trace.lastLevel = level;
        trace.entryAddress[level] = entryGpa;
        trace.entryLow[level] = lo;
        trace.entryHigh[level] = hi;
        trace.entryLowAfter[level] = lo;
      }
      if ((lo & PTE_PRESENT) === 0) {
        return this.#pageFault(ctl, kind, level, 0, trace, "not-present");
      }
      const isLeafCandidate = (lo & PTE_PAGE_SIZE) !== 0;
      if (
        (hi & rsvdHigh) !== 0 ||
        (isLeafCandidate &&
          (level === 4 ||
            (level === 3 && (!ctl.has1GbPages || (lo & PTE_LO_RESERVED_1G) !== 0)) ||
            (level === 2 && (lo & PTE_LO_RESERVED_2M) !== 0)))
      ) {
        return this.#pageFault(ctl, kind, level, PFEC_PRESENT | PFEC_RSVD, trace, "reserved-bit");
      }
      rwus &= lo;
      if (nxe && (hi & PTE_HI_XD) !== 0) xd = RIGHTS_XD;
      if (trace !== null) trace.rightsAfter[level] = (rwus >> 1) | xd;
      if (level === 1 || isLeafCandidate) break;
      table = pteAddress(lo, hi);
      this.#nextTable[level] = table;
      this.#rwusAfter[level] = rwus;
      this.#xdAfter[level] = xd;
      level--;
    }
    const rights = (rwus >> 1) | xd;
    const pkey = ptePkey(hi);
    const denied = ctl.permissions[permissionIndex(kind, pkey, rights)]!;
    if (denied !== 0) return this.#pageFault(ctl, kind, level, denied, trace, "protection");

    // The final GPA through the EPT.
    const size = level === 1 ? PAGE_SIZE : level === 2 ? PAGE_SIZE_2M : PAGE_SIZE_1G;
    const gpa = (level === 1 ? pteAddress(lo, hi) : pteLargePageBase(lo, hi, size)) + (va % size);
    const hpa = this.#translateGpa(gpa, finalAccess, true);
    if (hpa < 0) return this.#exited();

    // Guest A on every entry used, D on the leaf of a write (SDM 4.8), each a write to a
    // guest table frame that EPT must allow.
    const write = finalAccess === EPT_WRITE;
    if (!this.#eptAd) {
      for (let l = top; l >= level; l--) {
        const old = this.#entryLow[l]!;
        const wanted = l === level && write ? old | PTE_ACCESSED | PTE_DIRTY : old | PTE_ACCESSED;
        if ((wanted >>> 0) !== old && (this.#tableRights[l]! & EPT_WRITE) === 0) {
          const rightsBits = this.#tableRights[l]! << EPT_QUAL_RIGHTS_SHIFT;
          this.#violation(this.#entryGpa[l]!, EPT_WRITE | rightsBits, false);
          return this.#exited();
        }
      }
    }
    for (let l = top; l >= level; l--) {
      const old = this.#entryLow[l]!;
      const wanted =
        (l === level && write ? old | PTE_ACCESSED | PTE_DIRTY : old | PTE_ACCESSED) >>> 0;
      if (wanted !== old) {
        memory.write32(this.#entryHpa[l]!, wanted);
        counts[WALK_AD_WRITE]++;
        if (l === level) lo = wanted;
        if (trace !== null) trace.entryLowAfter[l] = wanted;
      }
    }
    if (caches) this.#fillCaches(va, pcid, top, level);
    this.#finished();
    const eptSize = this.#eptLeafSize;
    const pageSize = size < eptSize ? size : eptSize;
    this.pageSize = pageSize;
    this.pageBase = hpa - (hpa % pageSize);
    this.rights = rights;
    this.pkey = pkey;
    this.isGlobal = (lo & PTE_GLOBAL) !== 0 && (ctl.cr4 & CR4_PGE) !== 0;
    this.isDirty = (lo & PTE_DIRTY) !== 0 && (this.#eptRights & EPT_WRITE) !== 0 &&
      (!this.#eptAd || (this.#eptLeafLow & EPT_DIRTY) !== 0);
    return hpa;
  }

  /**
   * Translates guest-physical `gpa` through the EPT alone, for an access needing EPT
   * rights `access` (EPT_READ, EPT_WRITE, EPT_EXECUTE), as the hypervisor or a test
   * probes it: the host-physical address, or -1 with the exit in `exitVector` /
   * `exitGpa` / `exitQualification` (bit 7 clear: no linear address). Sets EPT A/D as a
   * real access would; adds its references to walk.nestedRefs (not walk.refs: no walk).
   */
  translateGpa(gpa: number, access: number): number {
    this.exitVector = 0;
    this.refs = 0;
    this.nestedRefs = 0;
    const hpa = this.#translateGpa(gpa, access & EPT_RWX, true);
    this.#counts[WALK_NESTED_REFS] += this.nestedRefs;
    if (hpa < 0) this.exitQualification &= ~(EPT_QUAL_LINEAR_VALID | EPT_QUAL_FINAL);
    return hpa;
  }

  // A guest table entry at `gpa`: through the nested TLB, else an EPT walk that fills it.
  #translateTable(gpa: number): number {
    const gfn = Math.floor(gpa / PAGE_SIZE);
    if (this.#walkCaches) {
      const slot = gfn & (NTLB_ENTRIES - 1);
      if (this.#ntlbTag[slot] === gfn) {
        this.#counts[WALK_NTLB_HIT]++;
        this.#eptRights = this.#ntlbRights[slot]!;
        return this.#ntlbBase[slot]! + (gpa % PAGE_SIZE);
      }
      this.#counts[WALK_NTLB_MISS]++;
      const hpa = this.#translateGpa(gpa, this.#tableAccess, false);
      if (hpa >= 0) {
        this.#ntlbTag[slot] = gfn;
        this.#ntlbBase[slot] = hpa - (gpa % PAGE_SIZE);
        this.#ntlbRights[slot] = this.#eptRights;
      }
      return hpa;
    }
    return this.#translateGpa(gpa, this.#tableAccess, false);
  }

  // One EPT walk. `access` is the EPT rights needed (also qualification bits 2..0),
  // `isFinal` whether the GPA is the translation of the linear address (bit 8) rather
  // than a guest paging-structure entry. Returns the HPA, or -1 with the exit recorded.
  #translateGpa(gpa: number, access: number, isFinal: boolean): number {
    const memory = this.#memory;
    let table = this.#eptRoot;
    let level = 4;
    let rwx = EPT_RWX;
    let lo = 0;
    let hi = 0;
    for (;;) {
      const entry = table + levelIndex(gpa, level) * 8;
      lo = memory.read32(entry);
      hi = memory.read32(entry + 4);
      this.refs++;
      this.nestedRefs++;
      this.#eptEntry[level] = entry;
      this.#eptLow[level] = lo;
      if ((lo & EPT_RWX) === 0) return this.#violation(gpa, access, isFinal);
      if (isEptMisconfigured(lo, hi, level, this.#rsvdHighEpt)) {
        this.#counts[WALK_EPT_MISCONFIG]++;
        this.exitVector = VECTOR_EPT_MISCONFIG;
        this.exitGpa = gpa;
        this.exitQualification = 0;
        return -1;
      }
      rwx &= lo;
      if (level === 1 || (lo & EPT_PAGE_SIZE) !== 0) break;
      table = eptAddress(lo, hi);
      level--;
    }
    if ((rwx & access) !== access) {
      return this.#violation(gpa, access | (rwx << EPT_QUAL_RIGHTS_SHIFT), isFinal);
    }
    if (this.#eptAd) {
      for (let l = 4; l >= level; l--) {
        const old = this.#eptLow[l]!;
        const wanted = (l === level && (access & EPT_WRITE) !== 0
          ? old | EPT_ACCESSED | EPT_DIRTY
          : old | EPT_ACCESSED) >>> 0;
        if (wanted !== old) {
          memory.write32(this.#eptEntry[l]!, wanted);
          this.#counts[WALK_EPT_AD_WRITE]++;
          if (l === level) {
            lo = wanted;
          }
        }
      }
    }
    const size = level === 1 ? PAGE_SIZE : level === 2 ? PAGE_SIZE_2M : PAGE_SIZE_1G;
    this.#eptRights = rwx;
    this.#eptLeafSize = size;
    this.#eptLeafLow = lo;
    return (level === 1 ? eptAddress(lo, hi) : eptLargePageBase(lo, hi, size)) + (gpa % size);
  }

  #violation(gpa: number, qualification: number, isFinal: boolean): -1 {
    this.#counts[WALK_EPT_VIOLATION]++;
    this.exitVector = VECTOR_EPT_VIOLATION;
    this.exitGpa = gpa;
    this.exitQualification = qualification | EPT_QUAL_LINEAR_VALID |
      (isFinal ? EPT_QUAL_FINAL : 0);
    return -1;
  }

  // After a successful walk, the non-leaf guest entries it read go into the caches.
  #fillCaches(va: number, pcid: number, top: number, leafLevel: number): void {
    for (let l = top; l > leafLevel; l--) {
      const prefix = Math.floor(va / (l === 2 ? SPAN_L2 : l === 3 ? SPAN_L3 : SPAN_L4));
      const slot = (prefix + pcid) & (this.#pscTag[l]!.length - 1);
      this.#pscTag[l]![slot] = prefix * PCID_SPAN + pcid;
      this.#pscNext[l]![slot] = this.#nextTable[l]!;
      this.#pscRwus[l]![slot] = this.#rwusAfter[l]!;
      this.#pscXd[l]![slot] = this.#xdAfter[l]!;
    }
  }

  #finished(): void {
    const counts = this.#counts;
    const refs = this.refs;
    counts[WALK_REFS] += refs;
    counts[WALK_NESTED_REFS] += this.nestedRefs;
    counts[WALK_REFS_HIST_2D + (refs > MAX_REFS_2D ? MAX_REFS_2D : refs) - 1]++;
  }

  #exited(): number {
    this.#finished();
    return -1;
  }

  #pageFault(
    ctl: PagingControl,
    kind: AccessKind,
    level: number,
    bits: number,
    trace: WalkTrace | null,
    cause: WalkFaultCause,
  ): number {
    this.#counts[WALK_FAULT]++;
    this.#finished();
    this.faultLevel = level;
    this.errorCode = bits | ctl.accessErrorBits(kind);
    if (trace !== null) trace.cause = cause;
    return -1;
  }
}
