/**
 * The physical-to-machine map of an HVM domain (Xen's p2m, KVM's memslots): for each
 * guest frame its machine frame, or a marker for MMIO and holes; and the machine-to-
 * physical map (M2P) back. Frames come from the frame table, which can scatter them, so
 * GFN != MFN almost everywhere and a bug that confuses the two shows at once.
 *
 * @module
 */

import type { DomainId, Mfn } from "./types.ts";
import type { FrameTable } from "./frame_table.ts";

/** P2M entry of a GFN with nothing behind it (Xen's p2m_invalid). */
export const P2M_INVALID: number = -1;
/** P2M entry of a GFN that belongs to an emulated device (Xen's p2m_mmio_dm). */
export const P2M_MMIO: number = -2;

/** One MMIO range of guest frames. */
export interface MmioRange {
  /** First guest frame. */
  firstGfn: number;
  /** Frames in the range. */
  frames: number;
}

/**
 * GFN -> MFN and MFN -> GFN for one domain.
 *
 * @example
 * ```ts
 * import { FrameTable, P2m, P2M_MMIO, Stats, asDomainId } from "../../mod.ts";
 * import assert from "node:assert/strict";
 * const table = new FrameTable({ frames: 64, stats: new Stats(), scatterSeed: 1 });
 * const p2m = P2m.populate(table, asDomainId(1), 16, [{ firstGfn: 12, frames: 2 }]);
 * const mfn = p2m.gfnToMfn(3);
 * assert.ok(mfn >= 0);
 * assert.equal(p2m.mfnToGfn(mfn), 3);
 * assert.equal(p2m.gfnToMfn(12), P2M_MMIO);
 * ```
 */
export class P2m {
  /** Guest frames (RAM and MMIO). */
  readonly guestFrames: number;
  readonly #gfnToMfn: Int32Array;
  readonly #mfnToGfn: Int32Array;

  /** An empty map of `guestFrames` GFNs over a machine of `machineFrames` MFNs. */
  constructor(guestFrames: number, machineFrames: number) {
    this.guestFrames = guestFrames;
    this.#gfnToMfn = new Int32Array(guestFrames).fill(P2M_INVALID);
    this.#mfnToGfn = new Int32Array(machineFrames).fill(P2M_INVALID);
  }

  /**
   * A map for `domain` with RAM on every GFN below `guestFrames` outside `mmio`, each
   * backed by a machine frame allocated from `table` (scattered if the table is).
   * Throws a RangeError when the machine has too few free frames.
   */
  static populate(
    table: FrameTable,
    domain: DomainId,
    guestFrames: number,
    mmio: readonly MmioRange[] = [],
  ): P2m {
    const p2m = new P2m(guestFrames, table.frameCount);
    for (const range of mmio) {
      for (let gfn = range.firstGfn; gfn < range.firstGfn + range.frames; gfn++) {
        if (gfn < 0 || gfn >= guestFrames) {
          throw new RangeError(`Cannot place MMIO at gfn ${gfn}: the domain has ${guestFrames}`);
        }
        p2m.#gfnToMfn[gfn] = P2M_MMIO;
      }
    }
    for (let gfn = 0; gfn < guestFrames; gfn++) {
      if (p2m.#gfnToMfn[gfn] === P2M_MMIO) continue;
      const mfn = table.allocate(domain);
      if (mfn < 0) {
        throw new RangeError(
          `Cannot back ${guestFrames} guest frames: the machine ran out at gfn ${gfn}`,
        );
      }
      p2m.set(gfn, mfn);
    }
    return p2m;
  }

  /** Maps `gfn` to `mfn` (both directions). */
  set(gfn: number, mfn: Mfn): void {
    this.#gfnToMfn[gfn] = mfn;
    this.#mfnToGfn[mfn] = gfn;
  }

  /** The MFN behind `gfn`, or P2M_INVALID / P2M_MMIO. Any number is accepted. */
  gfnToMfn(gfn: number): number {
    return gfn >= 0 && gfn < this.guestFrames && Number.isInteger(gfn)
      ? this.#gfnToMfn[gfn]!
      : P2M_INVALID;
  }

  /** The GFN that `mfn` backs, or P2M_INVALID. */
  mfnToGfn(mfn: number): number {
    return mfn >= 0 && mfn < this.#mfnToGfn.length && Number.isInteger(mfn)
      ? this.#mfnToGfn[mfn]!
      : P2M_INVALID;
  }

  /** Whether `gfn` is RAM. */
  isRam(gfn: number): boolean {
    return this.gfnToMfn(gfn) >= 0;
  }

  /** Whether `gfn` is MMIO. */
  isMmio(gfn: number): boolean {
    return this.gfnToMfn(gfn) === P2M_MMIO;
  }
}
