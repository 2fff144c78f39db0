/**
 * A guest INVLPG under shadow paging (Xen's sh_invlpg). In-sync shadows already match
 * the guest's tables (every write to them was emulated), so only the hardware TLB entry
 * must go; a splintered 2 MiB guest page may sit in many TLB entries, so that case flushes
 * the whole TLB, as Xen does.
 *
 * @module
 */

import { SH_FL1, type ShadowMmu } from "./shadow_mmu.ts";

/** Invalidates `va` (48-bit) for the guest. */
export function invlpgGuest(mmu: ShadowMmu, va: number): void {
  const top = mmu.current;
  const leaf = top === null ? null : mmu.shadowLeafAddress(top, va);
  if (leaf !== null && leaf.type === SH_FL1) mmu.flushTlb();
  else mmu.cpu.invlpg(va);
}
