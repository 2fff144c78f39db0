/**
 * The #PF VM exit of a shadowed guest (Xen's sh_page_fault, KVM's FNAME(page_fault)):
 * walk the guest's own tables for the faulting address; if the guest would have faulted
 * too, the fault is genuine and goes to the guest with the guest's error code; otherwise
 * the shadows were behind ("hidden" fault): build the missing shadow entries and retry.
 * A write to a guest page table that the shadows write-protect is sent to the emulator.
 *
 * @module
 */

import { ACCESS_FETCH, ACCESS_READ, ACCESS_WRITE } from "../x86/access.ts";
import { levelIndex, PAGE_SIZE } from "../x86/address.ts";
import { PFEC_FETCH, PFEC_RSVD, PFEC_USER, PFEC_WRITE } from "../x86/paging_control.ts";
import { PTE_ACCESSED, PTE_DIRTY, PTE_PRESENT, PTE_WRITABLE, pteAddress } from "../x86/pte.ts";
import { declareCounter } from "../x86/stats.ts";
import { P2M_MMIO } from "../memory/p2m.ts";
import {
  OOS_RESYNC_FAULT,
  SH_FL1,
  SH_L1,
  SHADOW_MMIO_MARK_HI,
  SHADOW_UNSHADOW_USER,
  type ShadowMmu,
  type ShadowPage,
} from "./shadow_mmu.ts";

/** Faults the hypervisor fixed alone. */
export const FAULT_HIDDEN: number = declareCounter(
  "fault.hidden",
  "page faults fixed by the hypervisor alone (shadow fill); the guest never sees them",
  "faults",
);
/** Faults the guest had to see. */
export const FAULT_GENUINE: number = declareCounter(
  "fault.genuine",
  "page faults injected into the guest (its own tables deny the access)",
  "faults",
);

/** Hidden fault: the shadows were fixed; retry the access. */
export const SHADOW_FIXED = 0;
/** Genuine: inject #PF with `mmu.guestWalker.errorCode` and the faulting address. */
export const SHADOW_GENUINE = 1;
/** A write to a shadowed guest page table: emulate the instruction. */
export const SHADOW_EMULATE = 2;
/** An access to an MMIO frame (its GPA in `mmu.mmioGpa`... see {@link ShadowFaultResult}). */
export const SHADOW_MMIO = 3;
/** The frame was unshadowed (a user-mode write to a page table); retry. */
export const SHADOW_UNSHADOWED = 4;
/** The domain must crash ({@link ShadowFaultResult.reason} says why). */
export const SHADOW_CRASH = 5;

/** Details of the last {@link handleShadowFault}. */
export class ShadowFaultResult {
  /** Guest-physical address of the access (after a successful guest walk). */
  gpa = 0;
  /** The guest frame written, for SHADOW_EMULATE. */
  gfn = 0;
  /** Why the domain must crash. */
  reason = "";
}

/**
 * Handles a #PF exit at `cr2` with hardware error code `errorCode`. Returns one of the
 * SHADOW_* outcomes; details in `result`.
 */
export function handleShadowFault(
  mmu: ShadowMmu,
  cr2: number,
  errorCode: number,
  result: ShadowFaultResult,
): number {
  const counts = mmu.stats.counts;
  if ((errorCode & PFEC_RSVD) !== 0 && mmu.current !== null) {
    // Only MMIO-marked shadow entries carry reserved bits (the fast MMIO path).
    const leaf = mmu.shadowLeafAddress(mmu.current, cr2);
    if (leaf !== null) {
      const lo = mmu.memory.read32(leaf.ma);
      const hi = mmu.memory.read32(leaf.ma + 4);
      if ((hi & SHADOW_MMIO_MARK_HI) === SHADOW_MMIO_MARK_HI && (lo & PTE_PRESENT) !== 0) {
        result.gpa = pteAddress(lo, hi & ~SHADOW_MMIO_MARK_HI) + (cr2 & 0xfff);
        return SHADOW_MMIO;
      }
    }
  }
  const kind = (errorCode & PFEC_WRITE) !== 0
    ? ACCESS_WRITE
    : (errorCode & PFEC_FETCH) !== 0
    ? ACCESS_FETCH
    : ACCESS_READ;
  mmu.guestCtl.cpl = (errorCode & PFEC_USER) !== 0 ? 3 : 0;
  const gpa = mmu.walkGuest(cr2, kind);
  if (gpa < 0) {
    counts[FAULT_GENUINE]++;
    return SHADOW_GENUINE;
  }
  result.gpa = gpa;
  const gfn = Math.floor(gpa / PAGE_SIZE);
  if (mmu.oosEnabled) {
    // The walk used an out-of-sync frame as an upper-level table: resync it first (Xen's
    // gw_remove_write_accesses). Met as the L1, only the faulting entry is fixed below,
    // and the page stays out of sync (rule 2 of Xen's oos.c).
    const trace = mmu.trace;
    for (let level = 4; level > trace.lastLevel && level >= 2; level--) {
      const table = Math.floor(trace.entryAddress[level]! / PAGE_SIZE);
      if (mmu.isOutOfSync(table)) mmu.resync(table, OOS_RESYNC_FAULT);
    }
  }
  if (mmu.p2m.gfnToMfn(gfn) === P2M_MMIO) {
    if (!fill(mmu, cr2)) return crash(mmu, result);
    return SHADOW_MMIO;
  }
  if (mmu.p2m.gfnToMfn(gfn) < 0) {
    result.reason = `the guest mapped ${cr2} to gfn ${gfn}, which has no memory`;
    return SHADOW_CRASH;
  }
  const write = kind === ACCESS_WRITE;
  if (write && (errorCode & PFEC_USER) === 0 && mmu.canUnsync(gfn)) {
    // A kernel write to a shadowed L1: let it go out of sync instead of emulating.
    mmu.unsync(gfn);
  }
  if (!fill(mmu, cr2, write)) return crash(mmu, result);
  if (write && mmu.isShadowedTable(gfn) && !mmu.isOutOfSync(gfn)) {
    if ((errorCode & PFEC_USER) !== 0) {
      // User-mode writes to page tables are not emulated: unshadow (Xen sh_page_fault).
      mmu.unshadow(gfn, SHADOW_UNSHADOW_USER);
      return SHADOW_UNSHADOWED;
    }
    result.gfn = gfn;
    return SHADOW_EMULATE;
  }
  counts[FAULT_HIDDEN]++;
  return SHADOW_FIXED;
}

function crash(mmu: ShadowMmu, result: ShadowFaultResult): number {
  result.reason = `the shadow pool (${mmu.poolPages} pages) is exhausted`;
  return SHADOW_CRASH;
}

/**
 * Builds the shadow path for `va` from the guest walk just done (`mmu.trace`):
 * shadow_get_and_create_l1e + l1e propagation. False when the pool is exhausted.
 */
export function fill(mmu: ShadowMmu, va: number, demandWrite = false): boolean {
  const trace = mmu.trace;
  const leafLevel = trace.lastLevel;
  let page: ShadowPage | null = mmu.current;
  if (page === null) return false;
  const scratch = FILL_SCRATCH;
  // Down to the L2 shadow; a 2 MiB guest leaf (leafLevel 2) links that L2 slot to the
  // fake L1 of its splinters, a 4 KiB one (leafLevel 1) to the shadow of its guest L1.
  for (let level = 4; level >= 2; level--) {
    const glo = trace.entryLowAfter[level]!;
    const ghi = trace.entryHigh[level]!;
    const slot = page.smfn * PAGE_SIZE + levelIndex(va, level) * 8;
    let child: ShadowPage | null;
    if (level === 2 && leafLevel === 2) {
      const base = Math.floor(pteAddress(glo, ghi) / PAGE_SIZE / 512) * 512;
      child = mmu.obtain(base, SH_FL1);
    } else {
      child = mmu.obtain(pteAddress(glo, ghi) / PAGE_SIZE, level - 1);
    }
    if (child === null) return false;
    mmu.setLink(slot, child, glo, ghi);
    page = child;
  }
  const glo = trace.entryLowAfter[leafLevel]!;
  const ghi = trace.entryHigh[leafLevel]!;
  if (page.type !== SH_FL1) mmu.noteSnapshotEntry(page.gfn, levelIndex(va, 1), glo, ghi);
  mmu.propagateLeaf(
    glo,
    ghi,
    leafLevel,
    leafLevel === 2 ? levelIndex(va, 1) : 0,
    scratch,
    demandWrite,
  );
  mmu.setLeaf(page.smfn * PAGE_SIZE + levelIndex(va, 1) * 8, scratch[0]!, scratch[1]!);
  if (page.type === SH_L1) prefetch(mmu, page, levelIndex(va, 1));
  return true;
}

/** Entries a fault may prefetch after its own (Xen's PREFETCH_DISTANCE). */
export const PREFETCH_DISTANCE = 32;

/**
 * sh_prefetch: fill the empty shadow entries that follow the one just filled, up to
 * {@link PREFETCH_DISTANCE} and the end of the table, from the guest's L1; stop at the
 * first shadow entry already there and at the first guest entry that would need an A/D
 * fault anyway (present but not accessed, or writable but clean).
 */
function prefetch(mmu: ShadowMmu, page: ShadowPage, index: number): void {
  const memory = mmu.memory;
  const guestBase = mmu.p2m.gfnToMfn(page.gfn) * PAGE_SIZE;
  if (guestBase < 0) return;
  const shadowBase = page.smfn * PAGE_SIZE;
  const end = Math.min(512, index + PREFETCH_DISTANCE);
  const scratch = FILL_SCRATCH;
  let fetched = 0;
  for (let i = index + 1; i < end; i++) {
    if (memory.read32(shadowBase + i * 8) !== 0 || memory.read32(shadowBase + i * 8 + 4) !== 0) {
      break;
    }
    const glo = memory.read32(guestBase + i * 8);
    const ghi = memory.read32(guestBase + i * 8 + 4);
    if (
      (glo & PTE_PRESENT) !== 0 &&
      ((glo & PTE_ACCESSED) === 0 || ((glo & PTE_WRITABLE) !== 0 && (glo & PTE_DIRTY) === 0))
    ) break;
    if ((glo & PTE_PRESENT) === 0) continue;
    mmu.noteSnapshotEntry(page.gfn, i, glo, ghi);
    mmu.propagateLeaf(glo, ghi, 1, 0, scratch);
    mmu.setLeaf(shadowBase + i * 8, scratch[0]!, scratch[1]!);
    fetched++;
  }
  mmu.stats.counts[SHADOW_PREFETCH] += fetched;
}

/** Shadow entries filled ahead of a fault. */
export const SHADOW_PREFETCH: number = declareCounter(
  "shadow.prefetch",
  "shadow entries filled ahead of a fault from the guest's L1 (sh_prefetch)",
  "entries",
);

const FILL_SCRATCH = new Uint32Array(2);
