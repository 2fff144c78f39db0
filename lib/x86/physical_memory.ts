/**
 * What the hardware layer needs of physical memory. The page walker and the vCPU read
 * and write through this interface; `lib/memory`'s MachineMemory implements it (the
 * hardware layer imports nothing above itself).
 *
 * @module
 */

/**
 * Byte-addressed physical memory, little-endian, as the processor sees it.
 *
 * Contract: addresses are non-negative integers below 2^52. Reads of addresses with no
 * memory behind them return all ones (what a read that no device claims returns on a PC)
 * and writes to them are dropped; nothing throws. Multi-byte accesses may be unaligned.
 */
export interface PhysicalMemory {
  /** Reads the byte at `pa`. */
  read8(pa: number): number;
  /** Reads the 16-bit little-endian value at `pa`. */
  read16(pa: number): number;
  /** Reads the 32-bit little-endian value at `pa`, as an unsigned number. */
  read32(pa: number): number;
  /** Writes the low 8 bits of `value` at `pa`. */
  write8(pa: number, value: number): void;
  /** Writes the low 16 bits of `value` at `pa`. */
  write16(pa: number, value: number): void;
  /** Writes the 32-bit `value` at `pa`. */
  write32(pa: number, value: number): void;
  /**
   * The 1024 little-endian words of frame `pfn` for direct access, or undefined when
   * accesses must go through the read and write methods (no memory there, a device, or a
   * frame not yet backed and `materialize` false). The array must stay the frame's storage
   * for the memory's whole life: the TLB caches it beside the translation, as KVM caches a
   * host address, so a hit reads it with no further lookup.
   */
  hostFrame(pfn: number, materialize: boolean): Uint32Array | undefined;
}
