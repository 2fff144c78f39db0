/**
 * An address space (Linux's mm_struct): the top-level table, the areas, the heap break,
 * and the TLB generation that tells a context switch whether this space's PCID still
 * holds valid translations.
 *
 * @module
 */

import { VmaList } from "./vma.ts";

/**
 * One process's address space. The kernel half of its top level is a copy of the
 * kernel's; the user half is its own.
 *
 * @example
 * ```ts
 * import { AddressSpace } from "./address_space.ts";
 * const mm = new AddressSpace(1, 42);
 * console.assert(mm.vmas.areas.length === 0 && mm.l4Gfn === 42);
 * ```
 */
export class AddressSpace {
  /** Identity, for PCID assignment. */
  readonly id: number;
  /** Guest frame of the top-level (L4) table. */
  readonly l4Gfn: number;
  /** The areas. */
  readonly vmas: VmaList = new VmaList();
  /** Start of the heap. */
  brkStart = 0;
  /** Current break (the heap's end, not rounded). */
  brkEnd = 0;
  /**
   * Bumped whenever a translation of this space was removed or reduced while it was not
   * loaded: a PCID that cached it must be flushed before reuse (Linux's tlb_gen).
   */
  tlbGen = 0;
  /** Where the reclaim scan of this space resumes. */
  scanVa = 0;

  /** A space with id `id` and top level `l4Gfn`. */
  constructor(id: number, l4Gfn: number) {
    this.id = id;
    this.l4Gfn = l4Gfn;
  }
}
