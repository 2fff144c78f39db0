/**
 * The consistency checker of DESIGN.md's invariants 2 and 3, for tests and `--check`:
 *
 * 2. Shadow soundness: every present shadow leaf maps a GVA to P2M(guest walk(GVA)), with
 *    rights no wider than the guest's (RW only if the guest allows writes and its D is
 *    set; U/S only if the guest allows user access; executable only if the guest does).
 * 3. Write protection: no shadow leaf and no TLB entry maps a shadowed guest page table
 *    writable.
 *
 * An out-of-sync L1 may differ from the guest's table until its resync (that is the
 * point of it), so its entries and the writable mappings of it are not checked.
 *
 * The guest walk here has no side effects (no A/D updates), unlike the fault path's.
 *
 * @module
 */

import { formatHex, formatLinear, levelIndex, levelSpan, PAGE_SIZE } from "../x86/address.ts";
import { EFER_NXE } from "../x86/paging_control.ts";
import {
  PTE_ACCESSED,
  PTE_DIRTY,
  PTE_HI_XD,
  PTE_PAGE_SIZE,
  PTE_PRESENT,
  PTE_USER,
  PTE_WRITABLE,
  pteAddress,
} from "../x86/pte.ts";
import { RIGHTS_WRITABLE } from "../x86/paging_control.ts";
import {
  SH_FL1,
  SH_L1,
  SHADOW_MMIO_MARK_HI,
  type ShadowMmu,
  type ShadowPage,
} from "./shadow_mmu.ts";

/**
 * Checks every cached top-level shadow and the hardware TLB. Returns the violations found
 * (empty when the shadows are sound), each naming the address and what was wrong.
 */
export function checkShadows(mmu: ShadowMmu): string[] {
  const problems: string[] = [];
  for (const page of mmu.pages.values()) {
    if (page.type === 4) checkTree(mmu, page, page, 4, 0, problems);
  }
  checkTlb(mmu, problems);
  return problems;
}

function checkTree(
  mmu: ShadowMmu,
  top: ShadowPage,
  page: ShadowPage,
  level: number,
  base: number,
  problems: string[],
): void {
  const memory = mmu.memory;
  for (let i = 0; i < 512; i++) {
    const slot = page.smfn * PAGE_SIZE + i * 8;
    const lo = memory.read32(slot);
    if ((lo & PTE_PRESENT) === 0) continue;
    const hi = memory.read32(slot + 4);
    const va = base + i * levelSpan(level);
    if (page.type === SH_L1 || page.type === SH_FL1) {
      if (page.type === SH_L1 && mmu.isOutOfSync(page.gfn)) continue;
      checkLeaf(mmu, top, va, lo, hi, problems);
      continue;
    }
    const child = mmu.pages.get(pteAddress(lo, hi) / PAGE_SIZE);
    if (child === undefined) {
      problems.push(`shadow entry for ${formatLinear(va)} at level ${level} points at no shadow`);
      continue;
    }
    checkTree(mmu, top, child, level - 1, va, problems);
  }
}

function checkLeaf(
  mmu: ShadowMmu,
  top: ShadowPage,
  va: number,
  lo: number,
  hi: number,
  problems: string[],
): void {
  const where = `${formatLinear(va)} (guest top level gfn ${formatHex(top.gfn)})`;
  const guest = guestTranslate(mmu, top.gfn, va);
  if (guest === null) {
    problems.push(`shadow maps ${where} but the guest's tables do not`);
    return;
  }
  const gfn = Math.floor(guest.gpa / PAGE_SIZE);
  if ((hi & SHADOW_MMIO_MARK_HI) === SHADOW_MMIO_MARK_HI) {
    if (!mmu.p2m.isMmio(gfn)) problems.push(`MMIO-marked shadow entry for RAM at ${where}`);
    return;
  }
  const mfn = pteAddress(lo, hi) / PAGE_SIZE;
  if (mfn !== mmu.p2m.gfnToMfn(gfn)) {
    problems.push(
      `shadow maps ${where} to mfn ${formatHex(mfn)}, the guest to gfn ${formatHex(gfn)} = mfn ${
        formatHex(mmu.p2m.gfnToMfn(gfn))
      }`,
    );
  }
  if ((lo & PTE_WRITABLE) !== 0) {
    if (!guest.writable || !guest.dirty) {
      problems.push(
        `shadow grants write at ${where}; the guest ${
          guest.writable ? "entry is clean" : "denies it"
        }`,
      );
    }
    if (mmu.isShadowedTable(gfn) && !mmu.isOutOfSync(gfn)) {
      problems.push(`shadow maps guest page table gfn ${formatHex(gfn)} writable at ${where}`);
    }
  }
  if ((lo & PTE_USER) !== 0 && !guest.user) problems.push(`shadow grants user access at ${where}`);
  const nxe = (mmu.guestCtl.efer & EFER_NXE) !== 0;
  if (nxe && (hi & PTE_HI_XD) === 0 && guest.xd) problems.push(`shadow grants execute at ${where}`);
}

interface GuestTranslation {
  gpa: number;
  writable: boolean;
  user: boolean;
  xd: boolean;
  dirty: boolean;
}

// A side-effect-free 4-level walk of the guest's tables from top level `l4Gfn`.
function guestTranslate(mmu: ShadowMmu, l4Gfn: number, va: number): GuestTranslation | null {
  let table = l4Gfn;
  let writable = true;
  let user = true;
  let xd = false;
  for (let level = 4; level >= 1; level--) {
    const [lo, hi] = mmu.readGuestEntry(table * PAGE_SIZE + levelIndex(va, level) * 8);
    if ((lo & PTE_PRESENT) === 0 || (lo & PTE_ACCESSED) === 0) return null;
    writable &&= (lo & PTE_WRITABLE) !== 0;
    user &&= (lo & PTE_USER) !== 0;
    xd ||= (hi & PTE_HI_XD) !== 0;
    if (level === 1 || (level === 2 && (lo & PTE_PAGE_SIZE) !== 0)) {
      const span = levelSpan(level);
      const base = pteAddress(lo, hi) - (pteAddress(lo, hi) % span);
      return { gpa: base + (va % span), writable, user, xd, dirty: (lo & PTE_DIRTY) !== 0 };
    }
    table = pteAddress(lo, hi) / PAGE_SIZE;
  }
  return null;
}

function checkTlb(mmu: ShadowMmu, problems: string[]): void {
  const tlb = mmu.cpu.tlb;
  for (let i = 0; i < tlb.tag.length; i++) {
    if (tlb.tag[i] === -1 || (tlb.flags[i]! & RIGHTS_WRITABLE) === 0) continue;
    const gfn = mmu.p2m.mfnToGfn(Math.floor(tlb.frame[i]! / PAGE_SIZE));
    if (gfn >= 0 && mmu.isShadowedTable(gfn) && !mmu.isOutOfSync(gfn)) {
      problems.push(`TLB entry ${i} maps guest page table gfn ${formatHex(gfn)} writable`);
    }
  }
}
