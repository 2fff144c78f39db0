/**
 * The paging-ops interface: every page-table read-modify-write and MMU operation of the
 * guest kernel goes through it, the idea of Linux's pv_ops (`struct pv_mmu_ops`). The
 * native backend executes x86 instructions that store to the tables (and a hypervisor
 * traps them where it must); a paravirtual backend turns the same calls into hypercalls.
 *
 * Entries are given in the guest's view: addresses are guest-physical (a PV backend
 * converts GFN <-> MFN), as two u32 halves. `entryGpa` is the guest-physical address of
 * the 8-byte entry; `level` is 1 (l1e, the 4 KiB leaf) to 4 (l4e).
 *
 * Every call returns a `RUN_*` outcome of the platform (RUN_DONE = 0 on success); after a
 * crash every call does nothing and returns RUN_CRASHED.
 *
 * @module
 */

/** A page-table entry as two u32 halves; reused by callers to avoid allocation. */
export class EntryValue {
  /** Bits 31..0. */
  lo = 0;
  /** Bits 63..32. */
  hi = 0;
}

/** The guest kernel's page-table and MMU operations. */
export interface PagingOps {
  /** The backend's name, for reports. */
  readonly name: string;
  /** Reads the entry at `entryGpa` into `out` (through the processor, via the direct map). */
  readEntry(level: number, entryGpa: number, out: EntryValue): number;
  /** Writes an entry (set_pte, set_pmd, set_pud, set_pgd). */
  setEntry(level: number, entryGpa: number, lo: number, hi: number): number;
  /** Atomically clears an entry and returns the old value in `out` (ptep_get_and_clear). */
  clearEntry(level: number, entryGpa: number, out: EntryValue): number;
  /** Atomically sets flag bits (e.g. A, D, RW, XD) in an entry. */
  setFlags(level: number, entryGpa: number, loBits: number, hiBits: number): number;
  /** Atomically clears flag bits (ptep_set_wrprotect, ptep_test_and_clear_young). */
  clearFlags(level: number, entryGpa: number, loBits: number, hiBits: number): number;
  /**
   * Starts a protection change of a leaf (ptep_modify_prot_start): `out` gets the entry;
   * the native backend also clears it, so the processor cannot set A/D meanwhile.
   */
  startProtectionChange(entryGpa: number, out: EntryValue): number;
  /** Completes a protection change with the new entry (ptep_modify_prot_commit). */
  commitProtectionChange(entryGpa: number, lo: number, hi: number): number;
  /**
   * A frame is about to become a table of `level` (paravirt_alloc_pte/pmd/pud, and
   * pgd_alloc for level 4 once the kernel half is copied in). It is zeroed already.
   */
  newTable(level: number, gfn: number): number;
  /** Frame `gfn` stops being a table of `level`; it is unlinked and will be freed. */
  releaseTable(level: number, gfn: number): number;
  /** Loads CR3 with the top level at `l4Gfn` and `pcid`; `noFlush` sets CR3 bit 63. */
  switchCr3(l4Gfn: number, pcid: number, noFlush: boolean): number;
  /** Invalidates one page of the current address space (INVLPG). */
  flushOne(gva: number): number;
  /** Invalidates the current address space's non-global translations (CR3 reload). */
  flushAll(): number;
  /** Starts a batch of updates that may be deferred until {@link leaveLazy} (lazy MMU mode). */
  enterLazy(): number;
  /** Ends the batch: every deferred update is applied before this returns. */
  leaveLazy(): number;
}
