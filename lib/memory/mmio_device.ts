/**
 * Memory-mapped devices: an MMIO handler interface, and the lab's one device, a counter
 * with a UART transmit register. Natively the processor's accesses to the device's frame
 * reach it directly; under a hypervisor every access traps and is emulated, which is the
 * seeds' trap-and-emulate of memory-mapped I/O.
 *
 * @module
 */

import { declareCounter, type Stats } from "../x86/stats.ts";

/** Reads of device registers. */
export const MMIO_READ: number = declareCounter(
  "mmio.read",
  "reads of device registers (by the processor natively, by the device model virtualized)",
  "accesses",
);
/** Writes of device registers. */
export const MMIO_WRITE: number = declareCounter(
  "mmio.write",
  "writes of device registers",
  "accesses",
);

/** What a memory-mapped device answers. Addresses are physical; size 1, 2 or 4. */
export interface MmioHandler {
  /** Reads `size` bytes at `address`. */
  read(address: number, size: number): number;
  /** Writes the low `size` bytes of `value` at `address`. */
  write(address: number, size: number, value: number): void;
}

/** Register offsets of {@link CounterDevice}. */
export const DEVICE_COUNTER = 0x0;
/** Scratch register (reads what was written). */
export const DEVICE_SCRATCH = 0x4;
/** UART transmit holding register: a write sends one byte. */
export const DEVICE_UART_TX = 0x8;
/** UART line status: 0x60 (transmitter empty, ready). */
export const DEVICE_UART_STATUS = 0xc;

/**
 * A counter that increments on every read of register 0, a scratch register, and a UART
 * whose transmitted bytes collect in {@link output}.
 *
 * @example
 * ```ts
 * import { CounterDevice, DEVICE_COUNTER, DEVICE_UART_TX } from "./mmio_device.ts";
 * import { Stats } from "../x86/stats.ts";
 * import assert from "node:assert/strict";
 * const device = new CounterDevice(new Stats());
 * assert.equal(device.read(DEVICE_COUNTER, 4), 0);
 * assert.equal(device.read(DEVICE_COUNTER, 4), 1);
 * device.write(DEVICE_UART_TX, 1, 0x41);
 * assert.equal(device.output, "A");
 * ```
 */
export class CounterDevice implements MmioHandler {
  /** The counter's next value. */
  counter = 0;
  /** The scratch register. */
  scratch = 0;
  /** Bytes sent through the UART. */
  output = "";
  readonly #counts: Float64Array;

  /** A device counting its accesses into `stats`. */
  constructor(stats: Stats) {
    this.#counts = stats.counts;
  }

  /** Register read (the offset within the page selects the register). */
  read(address: number, _size: number): number {
    this.#counts[MMIO_READ]++;
    switch (address & 0xfff) {
      case DEVICE_COUNTER:
        return this.counter++ >>> 0;
      case DEVICE_SCRATCH:
        return this.scratch;
      case DEVICE_UART_STATUS:
        return 0x60;
      default:
        return 0;
    }
  }

  /** Register write. */
  write(address: number, size: number, value: number): void {
    this.#counts[MMIO_WRITE]++;
    const offset = address & 0xfff;
    if (offset === DEVICE_SCRATCH) {
      this.scratch = size === 4 ? value >>> 0 : value & (size === 2 ? 0xffff : 0xff);
    } else if (offset === DEVICE_UART_TX) {
      this.output += String.fromCharCode(value & 0xff);
    }
  }
}
