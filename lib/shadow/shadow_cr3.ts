/**
 * A guest MOV to CR3 under shadow paging (Xen's sh_update_cr3, KVM's kvm_mmu_new_pgd):
 * the guest's CR3 is virtual; the hypervisor finds the cached top-level shadow of the new
 * guest top level (or makes it), pins it at the head of the LRU, and loads the shadow's
 * address into the hardware CR3, flushing the TLB as the guest's write asked.
 *
 * @module
 */

import { PAGE_SIZE } from "../x86/address.ts";
import { CR4_PCIDE } from "../x86/paging_control.ts";
import { OOS_RESYNC_CR3, type ShadowMmu } from "./shadow_mmu.ts";

/** The guest's CR3 write was applied. */
export const CR3_DONE = 0;
/** The write is invalid (#GP for the guest). */
export const CR3_GP = 1;
/** The pool cannot hold the new top level (the domain must crash). */
export const CR3_NO_MEMORY = 2;

/**
 * Loads guest CR3 `value` (bits 51..0; `noFlush` is bit 63). Returns CR3_DONE, CR3_GP or
 * CR3_NO_MEMORY.
 */
export function writeGuestCr3(mmu: ShadowMmu, value: number, noFlush: boolean): number {
  const ctl = mmu.guestCtl;
  const pcide = (ctl.cr4 & CR4_PCIDE) !== 0;
  if (
    !Number.isInteger(value) || value < 0 || value >= 2 ** ctl.maxPhyAddr || (noFlush && !pcide)
  ) {
    return CR3_GP;
  }
  mmu.resyncAll(OOS_RESYNC_CR3); // sh_update_cr3 step 1: the guest expects a flushed view
  const gfn = Math.floor(value / PAGE_SIZE);
  const top = mmu.topLevel(gfn);
  if (top === null) return CR3_NO_MEMORY;
  ctl.cr3 = value;
  mmu.current = top;
  const tag = pcide ? value & 0xfff : value & 0x18; // PCID, or PWT/PCD
  if (!mmu.cpu.writeCr3(top.smfn * PAGE_SIZE + tag, noFlush)) return CR3_GP;
  return CR3_DONE;
}
