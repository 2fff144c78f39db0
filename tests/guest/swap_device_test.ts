/**
 * The guest's swap device (lib/guest/swap_device.ts): slots 1..n, LIFO reuse, storage that
 * lives while a slot is in use and is dropped when it is freed, reference counts shared
 * across fork, and bad arguments.
 */

import assert from "node:assert/strict";
import { SwapDevice } from "../../lib/guest/swap_device.ts";

Deno.test("SwapDevice hands out slots 1..n in order, then -1 when full", () => {
  const swap = new SwapDevice(4);
  assert.deepEqual([swap.slots, swap.used], [4, 0]);
  assert.deepEqual([1, 2, 3, 4, 5, 6].map(() => swap.allocate()), [1, 2, 3, 4, -1, -1]);
  assert.equal(swap.used, 4);
});

Deno.test("SwapDevice of 0 slots is always full", () => {
  const swap = new SwapDevice(0);
  assert.equal(swap.allocate(), -1);
  assert.deepEqual([swap.used, swap.isInUse(0), swap.isInUse(1)], [0, false, false]);
});

Deno.test("SwapDevice throws a RangeError for a negative or fractional slot count", () => {
  for (const n of [-1, 1.5, NaN, Infinity]) {
    assert.throws(
      () => new SwapDevice(n),
      new RangeError(`Cannot create a swap device of ${n} slots: need an integer >= 0`),
    );
  }
});

Deno.test("allocate() reuses the slot freed last first", () => {
  const swap = new SwapDevice(8);
  for (let k = 0; k < 5; k++) swap.allocate(); // 1..5
  swap.put(2);
  swap.put(4);
  assert.deepEqual([swap.allocate(), swap.allocate(), swap.allocate()], [4, 2, 6]);
  assert.equal(swap.used, 6);
});

Deno.test("page() is 1024 zero words at first, and the same storage on every call", () => {
  const swap = new SwapDevice(2);
  const slot = swap.allocate();
  const words = swap.page(slot);
  assert.equal(words.length, 1024);
  assert.ok(words.every((w) => w === 0));
  words[0] = 0xdead_beef;
  words[1023] = 7;
  assert.equal(swap.page(slot), words);
  assert.deepEqual([swap.page(slot)[0], swap.page(slot)[1023]], [0xdead_beef, 7]);
});

Deno.test("page() of two slots are separate storage", () => {
  const swap = new SwapDevice(2);
  const a = swap.allocate();
  const b = swap.allocate();
  swap.page(a).fill(0x1111_1111);
  swap.page(b).fill(0x2222_2222);
  assert.deepEqual([swap.page(a)[5], swap.page(b)[5]], [0x1111_1111, 0x2222_2222]);
});

Deno.test("put() drops the slot's storage: a reallocated slot reads zeros", () => {
  const swap = new SwapDevice(1);
  const slot = swap.allocate();
  const old = swap.page(slot);
  old.fill(0xffff_ffff);
  swap.put(slot);
  assert.equal(swap.allocate(), slot);
  const fresh = swap.page(slot);
  assert.notEqual(fresh, old);
  assert.ok(fresh.every((w) => w === 0));
});

Deno.test("get() and put() count references: the slot is freed by the last put()", () => {
  const swap = new SwapDevice(4);
  const slot = swap.allocate();
  swap.page(slot)[3] = 33;
  swap.get(slot); // shared by parent and child after fork
  swap.get(slot);
  swap.put(slot);
  swap.put(slot);
  assert.deepEqual([swap.isInUse(slot), swap.used, swap.page(slot)[3]], [true, 1, 33]);
  swap.put(slot);
  assert.deepEqual([swap.isInUse(slot), swap.used], [false, 0]);
});

Deno.test("isInUse() is false for slot 0, n + 1, non-integers and freed slots", () => {
  const swap = new SwapDevice(3);
  const slots = [swap.allocate(), swap.allocate(), swap.allocate()];
  swap.put(2);
  const cases: [number, boolean][] = [
    [0, false],
    [1, true],
    [2, false], // freed
    [3, true],
    [4, false], // n + 1
    [-1, false],
    [1.5, false],
    [NaN, false],
    [Infinity, false],
  ];
  for (const [slot, expected] of cases) assert.equal(swap.isInUse(slot), expected, `slot ${slot}`);
  assert.deepEqual(slots, [1, 2, 3]);
});

Deno.test("page(), get() and put() throw a RangeError for a slot not in use", () => {
  for (const slot of [0, 2, 4, 5, -1, 1.5, NaN]) {
    const swap = new SwapDevice(4);
    swap.allocate(); // 1
    swap.allocate(); // 2
    swap.allocate(); // 3
    swap.put(2);
    const message = `Cannot use swap slot ${slot}: it is not in use`;
    assert.throws(() => swap.page(slot), new RangeError(message));
    assert.throws(() => swap.get(slot), new RangeError(message));
    assert.throws(() => swap.put(slot), new RangeError(message));
    assert.equal(swap.used, 2, `slot ${slot}`);
    assert.deepEqual([swap.allocate(), swap.allocate(), swap.allocate()], [2, 4, -1]);
  }
});
