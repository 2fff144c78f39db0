/**
 * The guest's swap device: numbered 4 KiB slots with a reference count each (a slot is
 * shared by parent and child after fork, as Linux's swap_duplicate does). Contents move
 * by DMA between guest frames and slots; the device lives outside guest memory.
 *
 * @module
 */

import { PAGE_SIZE } from "../x86/address.ts";

/**
 * A swap area of `slots` pages. Slot 0 is never used, so a swap entry is never zero.
 *
 * @example
 * ```ts
 * import { SwapDevice } from "./swap_device.ts";
 * import assert from "node:assert/strict";
 * const swap = new SwapDevice(4);
 * const slot = swap.allocate();
 * swap.page(slot)[0] = 7;
 * assert.equal(swap.used, 1);
 * swap.put(slot);
 * assert.equal(swap.used, 0);
 * ```
 */
export class SwapDevice {
  /** Number of usable slots. */
  readonly slots: number;
  readonly #refcount: Int32Array;
  readonly #pages = new Map<number, Uint32Array>();
  readonly #stack: Int32Array;
  #top = 0;

  /** A device with `slots` usable slots (numbered 1..slots). */
  constructor(slots: number) {
    if (!Number.isInteger(slots) || slots < 0) {
      throw new RangeError(`Cannot create a swap device of ${slots} slots: need an integer >= 0`);
    }
    this.slots = slots;
    this.#refcount = new Int32Array(slots + 1);
    this.#stack = new Int32Array(slots);
    for (let slot = slots; slot >= 1; slot--) this.#stack[this.#top++] = slot;
  }

  /** Slots in use. */
  get used(): number {
    return this.slots - this.#top;
  }

  /** A free slot with reference count 1, or -1 when the device is full. */
  allocate(): number {
    if (this.#top === 0) return -1;
    const slot = this.#stack[--this.#top]!;
    this.#refcount[slot] = 1;
    return slot;
  }

  /** The 1024-word storage of slot `slot`. */
  page(slot: number): Uint32Array {
    this.#check(slot);
    let words = this.#pages.get(slot);
    if (words === undefined) {
      words = new Uint32Array(PAGE_SIZE / 4);
      this.#pages.set(slot, words);
    }
    return words;
  }

  /** Whether `slot` is a slot in use (for validating entries read from guest tables). */
  isInUse(slot: number): boolean {
    return Number.isInteger(slot) && slot >= 1 && slot <= this.slots && this.#refcount[slot]! > 0;
  }

  /** References to `slot` (0 when free or out of range). */
  references(slot: number): number {
    return this.isInUse(slot) ? this.#refcount[slot]! : 0;
  }

  /** Takes one more reference to `slot`. */
  get(slot: number): void {
    this.#check(slot);
    this.#refcount[slot]++;
  }

  /** Drops a reference; the slot is freed (and its storage dropped) at zero. */
  put(slot: number): void {
    this.#check(slot);
    if (--this.#refcount[slot] > 0) return;
    this.#pages.delete(slot);
    this.#stack[this.#top++] = slot;
  }

  #check(slot: number): void {
    if (!this.isInUse(slot)) throw new RangeError(`Cannot use swap slot ${slot}: it is not in use`);
  }
}
