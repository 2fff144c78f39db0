/**
 * The guest's port-I/O devices, as on a PC: an 8259A interrupt controller that takes an
 * end-of-interrupt on port 0x20, a PIT-like periodic timer on IRQ 0, an 8042 keyboard
 * controller (data port 0x60, status 0x64) on IRQ 1, and a 16550 serial port at 0x3f8.
 * The interrupt controller is remapped as Linux does, so IRQ n is vector 0x20 + n.
 *
 * Time is virtual: {@link PcBoard.now} counts instruction times (one per retired guest
 * instruction, plus the time a halted processor sleeps), so every run is deterministic.
 * The platform's guest loop runs the processor until {@link PcBoard.nextEventAt}, then
 * calls {@link PcBoard.fireDue}, which raises the due interrupts through the platform's
 * own path (natively the processor's interrupt pin; under a hypervisor an exit, then an
 * injection or an event channel).
 *
 * Simplifications: the PIC has no in-service register (an EOI is counted and acknowledges
 * nothing), there is no interrupt masking at the PIC, the timer's period is set by the lab
 * rather than by programming the PIT, and the serial port transmits instantly.
 *
 * @module
 */

import type { PortBus } from "../x86/port_bus.ts";
import { declareCounter, type Stats } from "../x86/stats.ts";

/** 8259A master command port: a write of 0x20 is a non-specific EOI. */
export const PORT_PIC_COMMAND = 0x20;
/** 8042 data port: reading takes the byte the keyboard sent. */
export const PORT_KEYBOARD_DATA = 0x60;
/** 8042 status port: bit 0 set when a byte waits in the data port. */
export const PORT_KEYBOARD_STATUS = 0x64;
/** 16550 transmit holding register (write) / receive buffer (read). */
export const PORT_SERIAL_DATA = 0x3f8;
/** 16550 line status register: 0x60 (transmitter empty and idle). */
export const PORT_SERIAL_STATUS = 0x3fd;
/** The vector of IRQ 0 (the timer): the PIC remapped to 0x20, as Linux does. */
export const VECTOR_TIMER = 0x20;
/** The vector of IRQ 1 (the keyboard). */
export const VECTOR_KEYBOARD = 0x21;

/** Timer interrupts raised. */
export const DEV_TIMER_TICKS: number = declareCounter(
  "dev.timerTicks",
  "timer interrupts raised by the board",
  "interrupts",
);
/** Keyboard bytes read by the guest from port 0x60. */
export const DEV_KEYBOARD_BYTES: number = declareCounter(
  "dev.keyboardBytes",
  "keyboard bytes read from port 0x60",
  "bytes",
);
/** Bytes the guest sent through the serial port. */
export const DEV_SERIAL_BYTES: number = declareCounter(
  "dev.serialBytes",
  "bytes written to the serial port",
  "bytes",
);
/** End-of-interrupt commands written to the PIC. */
export const DEV_EOI: number = declareCounter(
  "dev.eoi",
  "end-of-interrupt commands written to the PIC",
  "writes",
);
/** Instruction times the processor spent halted, waiting for an interrupt. */
export const CPU_IDLE: number = declareCounter(
  "cpu.idle",
  "instruction times spent halted (HLT, or a PV block) waiting for an interrupt",
  "instructions",
);

/** Options of {@link PcBoard}. */
export interface PcBoardOptions {
  /** Instruction times between timer interrupts; 0 (default) leaves the timer off. */
  timerPeriod?: number;
}

/**
 * The devices of one guest and its virtual clock.
 *
 * @example Type a key and read it back through the ports
 * ```ts
 * import { PcBoard, PORT_KEYBOARD_DATA, PORT_KEYBOARD_STATUS, VECTOR_KEYBOARD } from "./pc_board.ts";
 * import { Stats } from "../x86/stats.ts";
 * import assert from "node:assert/strict";
 * const board = new PcBoard(new Stats());
 * board.type("a", 100, 0);
 * const raised: number[] = [];
 * board.now = 100;
 * board.fireDue((vector) => raised.push(vector));
 * assert.deepEqual(raised, [VECTOR_KEYBOARD]);
 * assert.equal(board.read(PORT_KEYBOARD_STATUS, 1) & 1, 1);
 * assert.equal(board.read(PORT_KEYBOARD_DATA, 1), 0x61);
 * ```
 */
export class PcBoard implements PortBus {
  /** Virtual time, in instruction times. */
  now = 0;
  /** Bytes sent through the serial port, as text. */
  serialOutput = "";
  readonly #counts: Float64Array;
  #period: number;
  #nextTick: number;
  // Keys typed but not yet delivered, in arrival order: times and bytes.
  readonly #keyTimes: number[] = [];
  readonly #keyBytes: number[] = [];
  #keyHead = 0;
  // The 8042's output buffer.
  #keyboardData = 0;
  #keyboardFull = false;

  /** A board counting into `stats`. */
  constructor(stats: Stats, options: PcBoardOptions = {}) {
    this.#counts = stats.counts;
    const period = options.timerPeriod ?? 0;
    if (!Number.isInteger(period) || period < 0) {
      throw new RangeError(`Cannot set a timer period of ${period}: must be an integer >= 0`);
    }
    this.#period = period;
    this.#nextTick = period === 0 ? Infinity : period;
  }

  /** Instruction times between timer interrupts (0: off); see {@link setTimerPeriod}. */
  get timerPeriod(): number {
    return this.#period;
  }

  /**
   * Programs the timer: an interrupt every `period` instruction times from now (0 stops
   * it). Throws a RangeError for a period that is not an integer >= 0.
   */
  setTimerPeriod(period: number): void {
    if (!Number.isInteger(period) || period < 0) {
      throw new RangeError(`Cannot set a timer period of ${period}: must be an integer >= 0`);
    }
    this.#period = period;
    this.#nextTick = period === 0 ? Infinity : this.now + period;
  }

  /**
   * Queues the bytes of `text` (Latin-1) to arrive from the keyboard, the first at
   * virtual time `at` and each next one `gap` instruction times later.
   */
  type(text: string, at: number, gap: number): void {
    if (!Number.isInteger(at) || at < 0 || !Number.isInteger(gap) || gap < 0) {
      throw new RangeError(`Cannot type at ${at} every ${gap}: both must be integers >= 0`);
    }
    for (let i = 0; i < text.length; i++) {
      if (text.charCodeAt(i) > 0xff) {
        throw new RangeError(`Cannot type ${JSON.stringify(text[i])}: not Latin-1`);
      }
    }
    let last = this.#keyTimes.length > this.#keyHead ? this.#keyTimes.at(-1)! : -Infinity;
    for (let i = 0; i < text.length; i++) {
      const code = text.charCodeAt(i);
      const time = Math.max(at + i * gap, last);
      this.#keyTimes.push(time);
      this.#keyBytes.push(code);
      last = time;
    }
  }

  /** Keys typed and not yet taken by the guest (in the queue or the data port). */
  get pendingKeys(): number {
    return this.#keyTimes.length - this.#keyHead + (this.#keyboardFull ? 1 : 0);
  }

  /** The virtual time of the next device event (Infinity when none is scheduled). */
  get nextEventAt(): number {
    const key = !this.#keyboardFull && this.#keyHead < this.#keyTimes.length
      ? this.#keyTimes[this.#keyHead]!
      : Infinity;
    return key < this.#nextTick ? key : this.#nextTick;
  }

  /**
   * Raises every interrupt due at {@link now} by calling `raise(vector)`: a timer tick
   * (one per period, however late), and a keyboard byte moved into the empty data port.
   */
  fireDue(raise: (vector: number) => void): void {
    if (this.#nextTick <= this.now) {
      // Ticks missed while nothing ran collapse into one interrupt, as on a PIC.
      const missed = Math.floor((this.now - this.#nextTick) / this.#period);
      this.#nextTick += (missed + 1) * this.#period;
      this.#counts[DEV_TIMER_TICKS]++;
      raise(VECTOR_TIMER);
    }
    if (this.#loadKey()) raise(VECTOR_KEYBOARD);
  }

  /** IN: the value of `port` (all ones for ports nothing decodes). */
  read(port: number, _size: number): number {
    switch (port) {
      case PORT_KEYBOARD_DATA: {
        if (!this.#keyboardFull) return this.#keyboardData; // the last byte again
        this.#keyboardFull = false;
        this.#counts[DEV_KEYBOARD_BYTES]++;
        return this.#keyboardData;
      }
      case PORT_KEYBOARD_STATUS:
        return this.#keyboardFull ? 0x1d : 0x1c; // system flag, keyboard enabled, OBF
      case PORT_SERIAL_STATUS:
        return 0x60;
      case PORT_SERIAL_DATA:
        return 0;
      default:
        return 0xffff_ffff;
    }
  }

  /** OUT: `value` to `port` (ignored for ports nothing decodes). */
  write(port: number, _size: number, value: number): void {
    switch (port) {
      case PORT_PIC_COMMAND:
        if ((value & 0xff) === 0x20) this.#counts[DEV_EOI]++;
        return;
      case PORT_SERIAL_DATA:
        this.#counts[DEV_SERIAL_BYTES]++;
        this.serialOutput += String.fromCharCode(value & 0xff);
        return;
    }
  }

  // Moves the next due key into the empty data port; true if one was moved.
  #loadKey(): boolean {
    if (this.#keyboardFull || this.#keyHead >= this.#keyTimes.length) return false;
    if (this.#keyTimes[this.#keyHead]! > this.now) return false;
    this.#keyboardData = this.#keyBytes[this.#keyHead]!;
    this.#keyHead++;
    this.#keyboardFull = true;
    return true;
  }
}
