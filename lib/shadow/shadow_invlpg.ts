/**
 * A guest INVLPG under shadow paging (Xen's sh_invlpg). In-sync shadows already match
 * the guest's tables (every write to them was emulated), so only the hardware TLB entry
 * must go, except that the entry of an out-of-sync table is refreshed; a splintered 2 MiB guest page may sit in many TLB entries, so that case flushes
 * the whole TLB, as Xen does.
 *
 * @module
 */

import { levelIndex } from "../x86/address.ts";
import { OOS_INVLPG_FIX, SH_FL1, type ShadowMmu } from "./shadow_mmu.ts";

/** Invalidates `va` (48-bit) for the guest. */
export function invlpgGuest(mmu: ShadowMmu, va: number): void {
  const top = mmu.current;
  const leaf = top === null ? null : mmu.shadowLeafAddress(top, va);
  // The guest invalidates a page its out-of-sync table maps: that entry is brought in
  // sync (the rest of the page stays out of sync, as in Xen's sh_invlpg).
  if (leaf !== null && leaf.type !== SH_FL1 && mmu.isOutOfSync(leaf.gfn)) {
    mmu.stats.counts[OOS_INVLPG_FIX]++;
    mmu.validateEntry(leaf.gfn, levelIndex(va, 1));
  }
  if (leaf !== null && leaf.type === SH_FL1) mmu.flushTlb();
  else mmu.cpu.invlpg(va);
}
