/**
 * The PC board's devices and virtual clock: timer ticks by period (missed ticks
 * collapse), keyboard bytes through the 8042's data and status ports, the serial port,
 * PIC EOIs, and the RangeErrors for bad programming.
 */

import assert from "node:assert/strict";
import {
  PcBoard,
  PORT_KEYBOARD_DATA,
  PORT_KEYBOARD_STATUS,
  PORT_PIC_COMMAND,
  PORT_SERIAL_DATA,
  PORT_SERIAL_STATUS,
  VECTOR_KEYBOARD,
  VECTOR_TIMER,
} from "../../lib/platform/pc_board.ts";
import { Stats } from "../../lib/x86/stats.ts";

Deno.test("pc board: the timer ticks once per period, and missed ticks collapse into one", () => {
  const stats = new Stats();
  const board = new PcBoard(stats, { timerPeriod: 100 });
  const raised: number[] = [];
  const raise = (v: number) => raised.push(v);
  assert.equal(board.nextEventAt, 100);
  board.now = 99;
  board.fireDue(raise);
  assert.deepEqual(raised, []);
  board.now = 100;
  board.fireDue(raise);
  assert.deepEqual(raised, [VECTOR_TIMER]);
  assert.equal(board.nextEventAt, 200);
  board.now = 450; // ticks at 200, 300, 400 missed
  board.fireDue(raise);
  assert.deepEqual(raised, [VECTOR_TIMER, VECTOR_TIMER]);
  assert.equal(board.nextEventAt, 500);
  assert.equal(stats.get("dev.timerTicks"), 2);
  board.setTimerPeriod(0);
  assert.equal(board.nextEventAt, Infinity);
  board.setTimerPeriod(10);
  assert.equal(board.nextEventAt, 460);
});

Deno.test("pc board: keyboard bytes wait in the data port one at a time", () => {
  const stats = new Stats();
  const board = new PcBoard(stats);
  board.type("ab", 10, 5);
  assert.equal(board.pendingKeys, 2);
  assert.equal(board.nextEventAt, 10);
  const raised: number[] = [];
  board.now = 20; // both due, but the port holds one byte
  board.fireDue((v) => raised.push(v));
  assert.deepEqual(raised, [VECTOR_KEYBOARD]);
  assert.equal(board.nextEventAt, Infinity); // 'b' waits for the port to empty
  assert.equal(board.read(PORT_KEYBOARD_STATUS, 1), 0x1d);
  assert.equal(board.read(PORT_KEYBOARD_DATA, 1), 0x61);
  assert.equal(board.read(PORT_KEYBOARD_STATUS, 1), 0x1c);
  assert.equal(board.read(PORT_KEYBOARD_DATA, 1), 0x61, "an empty port repeats its last byte");
  assert.equal(stats.get("dev.keyboardBytes"), 1);
  assert.equal(board.nextEventAt, 15);
  board.fireDue((v) => raised.push(v));
  assert.deepEqual(raised, [VECTOR_KEYBOARD, VECTOR_KEYBOARD]);
  assert.equal(board.read(PORT_KEYBOARD_DATA, 1), 0x62);
  assert.equal(board.pendingKeys, 0);
});

Deno.test("pc board: serial output, line status, EOIs and unknown ports", () => {
  const stats = new Stats();
  const board = new PcBoard(stats);
  board.write(PORT_SERIAL_DATA, 1, 0x68);
  board.write(PORT_SERIAL_DATA, 1, 0x169); // only the low byte goes out
  assert.equal(board.serialOutput, "hi");
  assert.equal(board.read(PORT_SERIAL_STATUS, 1), 0x60);
  board.write(PORT_PIC_COMMAND, 1, 0x20);
  board.write(PORT_PIC_COMMAND, 1, 0x11); // an ICW1, not an EOI
  assert.equal(stats.get("dev.eoi"), 1);
  assert.equal(stats.get("dev.serialBytes"), 2);
  assert.equal(board.read(0x1234, 4), 0xffff_ffff);
  board.write(0x1234, 4, 7); // dropped
});

Deno.test("pc board: bad programming is a RangeError naming what is valid", () => {
  const board = new PcBoard(new Stats());
  assert.throws(() => board.setTimerPeriod(-1), /integer >= 0/);
  assert.throws(() => new PcBoard(new Stats(), { timerPeriod: 1.5 }), /integer >= 0/);
  assert.throws(() => board.type("x", -1, 0), /integers >= 0/);
  assert.throws(() => board.type("\u20ac", 0, 0), /not Latin-1/);
  assert.equal(board.pendingKeys, 0, "a refused type() queues nothing");
});
