/**
 * The I/O port space as the interpreter sees it: IN and OUT hand their port, size and
 * data to a {@link PortBus}. Devices (a keyboard data port, a serial port) live above the
 * hardware layer and plug in here; lib/x86 only defines the shape.
 *
 * @module
 */

/**
 * An I/O port bus: what IN and OUT reach (SDM Vol. 1 18.2). `port` is 0..0xffff, `size`
 * 1, 2 or 4 bytes; a read returns the value zero-extended (only the low `size` bytes are
 * used). With no bus attached, reads return all ones and writes are dropped, as on a PC
 * with nothing decoding the port.
 *
 * @example A bus that records writes and answers reads of port 0x60
 * ```ts
 * import type { PortBus } from "./port_bus.ts";
 * import assert from "node:assert/strict";
 * const written: number[] = [];
 * const bus: PortBus = {
 *   read: (port, _size) => (port === 0x60 ? 0x1c : 0xffff_ffff),
 *   write: (_port, _size, value) => void written.push(value),
 * };
 * bus.write(0x3f8, 1, 0x41);
 * assert.equal(bus.read(0x60, 1), 0x1c);
 * assert.deepEqual(written, [0x41]);
 * ```
 */
export interface PortBus {
  /** The value read from `port` with an access of `size` bytes (1, 2 or 4). */
  read(port: number, size: number): number;
  /** Writes the low `size` bytes (1, 2 or 4) of `value` to `port`. */
  write(port: number, size: number, value: number): void;
}
