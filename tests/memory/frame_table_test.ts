/**
 * FrameTable: ownership, allocation order (ascending, or scattered by a seed), reserved
 * frames, exhaustion and the frame.* counters.
 */

import assert from "node:assert/strict";
import { FrameTable } from "../../lib/memory/frame_table.ts";
import { asDomainId, asMfn, DOMID_NONE, type Mfn } from "../../lib/memory/types.ts";
import { Stats } from "../../lib/x86/stats.ts";

const DOM1 = asDomainId(1);
const DOM2 = asDomainId(2);

function allocateAll(table: FrameTable, owner = DOM1): Mfn[] {
  const out: Mfn[] = [];
  for (;;) {
    const mfn = table.allocate(owner);
    if (mfn < 0) return out;
    out.push(mfn);
  }
}

Deno.test("new FrameTable() throws a RangeError for a bad size or reservation", () => {
  const stats = new Stats();
  for (const frames of [0, -3, 2.5, 2 ** 28 + 1]) {
    assert.throws(() => new FrameTable({ frames, stats }), {
      name: "RangeError",
      message: `Cannot create a frame table of ${frames} frames: must be 1..2^28`,
    });
  }
  for (const reserved of [-1, 17, 0.5]) {
    assert.throws(() => new FrameTable({ frames: 16, stats, reserved }), {
      name: "RangeError",
      message: `Cannot reserve ${reserved} frames of 16`,
    });
  }
});

Deno.test("allocate() hands frames out in ascending order without a scatter seed", () => {
  const stats = new Stats();
  const table = new FrameTable({ frames: 6, stats });
  assert.equal(table.freeFrames, 6);
  assert.deepEqual(allocateAll(table), [0, 1, 2, 3, 4, 5]);
  assert.equal(table.freeFrames, 0);
});

Deno.test("allocate() records the owner; free() makes the frame DOMID_NONE again", () => {
  const stats = new Stats();
  const table = new FrameTable({ frames: 4, stats });
  const a = table.allocate(DOM1);
  const b = table.allocate(DOM2);
  assert.deepEqual([table.ownerOf(a), table.ownerOf(b)], [DOM1, DOM2]);
  assert.deepEqual([table.isAllocated(a), table.isAllocated(2)], [true, false]);
  assert.equal(table.owner[b], DOM2);
  table.free(a);
  assert.equal(table.ownerOf(a), DOMID_NONE);
  assert.equal(table.isAllocated(a), false);
  assert.equal(table.freeFrames, 3);
  assert.equal(table.allocate(DOM2), a, "the last frame freed is the next one handed out");
  assert.equal(table.ownerOf(a), DOM2);
  assert.deepEqual(
    [stats.get("frame.alloc"), stats.get("frame.free"), stats.get("frame.allocFail")],
    [3, 1, 0],
  );
});

Deno.test("ownerOf() is DOMID_NONE for frames that do not exist", () => {
  const table = new FrameTable({ frames: 4, stats: new Stats() });
  allocateAll(table);
  for (const mfn of [-1, 4, 1.5, NaN, 2 ** 40]) {
    assert.equal(table.ownerOf(mfn), DOMID_NONE, `${mfn}`);
    assert.equal(table.isAllocated(mfn), false, `${mfn}`);
  }
});

Deno.test("allocate() returns -1 when memory is exhausted and counts frame.allocFail", () => {
  const stats = new Stats();
  const table = new FrameTable({ frames: 3, stats });
  assert.equal(allocateAll(table).length, 3); // allocateAll stops at the first -1
  assert.equal(table.allocate(DOM2), -1);
  assert.deepEqual(
    [stats.get("frame.alloc"), stats.get("frame.allocFail"), table.freeFrames],
    [3, 2, 0],
  );
  assert.deepEqual([0, 1, 2].map((m) => table.ownerOf(m)), [DOM1, DOM1, DOM1]);
});

Deno.test("free() throws a RangeError for a double free and for frames never allocated", () => {
  const stats = new Stats();
  const table = new FrameTable({ frames: 8, stats, reserved: 2 });
  const mfn = table.allocate(DOM1);
  table.free(mfn);
  for (const bad of [mfn, 5, 0, 8, -1]) {
    assert.throws(() => table.free(asMfn(bad)), {
      name: "RangeError",
      message: `Cannot free mfn ${bad}: frame is not allocated`,
    });
  }
  assert.equal(stats.get("frame.free"), 1);
  assert.equal(table.freeFrames, 6);
});

Deno.test("reserved frames are never handed out, even after everything is freed", () => {
  const stats = new Stats();
  const table = new FrameTable({ frames: 16, stats, reserved: 4, scatterSeed: 99 });
  assert.equal(table.freeFrames, 12);
  const first = allocateAll(table);
  assert.deepEqual([...first].sort((a, b) => a - b), [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
  for (const mfn of first) table.free(mfn);
  const second = allocateAll(table);
  assert.ok(second.every((mfn) => mfn >= 4));
  assert.equal(second.length, 12);
  assert.deepEqual([0, 1, 2, 3].map((m) => table.ownerOf(m)), Array(4).fill(DOMID_NONE));
});

Deno.test("a table with every frame reserved has nothing to allocate", () => {
  const stats = new Stats();
  const table = new FrameTable({ frames: 4, stats, reserved: 4 });
  assert.equal(table.freeFrames, 0);
  assert.equal(table.allocate(DOM1), -1);
  assert.equal(stats.get("frame.allocFail"), 1);
});

Deno.test("scatterSeed gives a deterministic, non-ascending permutation of the free frames", () => {
  const order = (seed: number) =>
    allocateAll(new FrameTable({ frames: 64, stats: new Stats(), scatterSeed: seed, reserved: 8 }));
  const a = order(1234);
  assert.deepEqual(order(1234), a, "same seed, same order");
  assert.deepEqual([...a].sort((x, y) => x - y), Array.from({ length: 56 }, (_, i) => i + 8));
  let ascendingPairs = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[i - 1]!) ascendingPairs++;
  assert.ok(ascendingPairs < a.length - 10, `order looks sorted: ${a}`);
  assert.notDeepEqual(order(1235), a, "another seed, another order");
  assert.notDeepEqual(a.slice(0, 8), [8, 9, 10, 11, 12, 13, 14, 15]);
});
