/**
 * The area list of an address space (lib/guest/vma.ts): lookup, overlap and coverage
 * queries, insertion, splitting (with the page offset and reference count of a shared
 * object), removal, and the top-down gap search mmap uses.
 *
 * Areas are page-aligned and small; the common list is
 * `[0x10000, 0x20000) [0x30000, 0x38000) [0x40000, 0x50000)`.
 */

import assert from "node:assert/strict";
import { PROT_EXEC, PROT_READ, PROT_WRITE } from "../../lib/guest/layout.ts";
import { SharedObject } from "../../lib/guest/shared_object.ts";
import { Vma, VmaList } from "../../lib/guest/vma.ts";

const RW = PROT_READ | PROT_WRITE;
const RX = PROT_READ | PROT_EXEC;
const PAGE = 0x1000;

/** A list of `[start, end)` private areas named a, b, c, ... */
function listOf(ranges: readonly (readonly [number, number])[]): VmaList {
  const list = new VmaList();
  ranges.forEach(([start, end], k) => list.insert(new Vma(start, end, RW, "abcdefgh"[k]!)));
  return list;
}

/** The common three-area list. */
function threeAreas(): VmaList {
  return listOf([[0x10000, 0x20000], [0x30000, 0x38000], [0x40000, 0x50000]]);
}

/** The areas as `[start, end, name]` triples, in list order. */
function shapeOf(areas: readonly Vma[]): [number, number, string][] {
  return areas.map((v) => [v.start, v.end, v.name]);
}

// --- Vma ---------------------------------------------------------------------------------

Deno.test("Vma is private without an object and shared with one", () => {
  const object = new SharedObject();
  assert.equal(new Vma(0x1000, 0x2000, RW, "heap").shared, false);
  assert.equal(new Vma(0x1000, 0x2000, RW, "shm", object).shared, true);
  assert.equal(object.areas, 1, "the constructor takes no reference");
});

Deno.test("Vma.clone() copies every field and takes a reference to a shared object", () => {
  const object = new SharedObject();
  const v = new Vma(0x1000, 0x4000, RX, "shm", object, 7);
  const copy = v.clone();
  assert.notEqual(copy, v);
  assert.deepEqual(
    [copy.start, copy.end, copy.prot, copy.name, copy.object, copy.pgoff],
    [0x1000, 0x4000, RX, "shm", object, 7],
  );
  assert.equal(object.areas, 2);
  new Vma(0x1000, 0x2000, RW, "heap").clone(); // a private clone touches no object
  assert.equal(object.areas, 2);
});

Deno.test("Vma.describe() prints the range and protection as /proc/PID/maps does", () => {
  const cases: [Vma, string][] = [
    [new Vma(0x40_0000, 0x40_2000, RX, "text"), "0x0000000000400000-0x0000000000402000 r-xp text"],
    [new Vma(0x1000, 0x2000, RW, "heap"), "0x0000000000001000-0x0000000000002000 rw-p heap"],
    [new Vma(0x1000, 0x2000, 0, "guard"), "0x0000000000001000-0x0000000000002000 ---p guard"],
    [
      new Vma(0x1000, 0x2000, RW | PROT_EXEC, "shm", new SharedObject()),
      "0x0000000000001000-0x0000000000002000 rwxs shm",
    ],
  ];
  for (const [v, text] of cases) assert.equal(v.describe(), text);
});

// --- find, overlaps, covers --------------------------------------------------------------

Deno.test("VmaList.find() returns the area containing va, undefined in gaps and at ends", () => {
  const list = threeAreas();
  const cases: [number, string | undefined][] = [
    [0, undefined],
    [0xffff, undefined],
    [0x10000, "a"],
    [0x1ffff, "a"],
    [0x20000, undefined],
    [0x2ffff, undefined],
    [0x30000, "b"],
    [0x37fff, "b"],
    [0x38000, undefined],
    [0x40000, "c"],
    [0x4ffff, "c"],
    [0x50000, undefined],
    [2 ** 47, undefined],
  ];
  for (const [va, name] of cases) {
    assert.equal(list.find(va)?.name, name, `find(0x${va.toString(16)})`);
  }
  assert.equal(new VmaList().find(0x10000), undefined);
});

Deno.test("VmaList.overlaps() is true exactly when the range shares a byte with an area", () => {
  const list = threeAreas();
  const cases: [number, number, boolean][] = [
    [0, 0x10000, false], // ends where a starts
    [0, 0x10001, true],
    [0x1ffff, 0x20000, true],
    [0x20000, 0x30000, false], // the whole gap between a and b
    [0x38000, 0x40000, false],
    [0x37fff, 0x40001, true],
    [0x21000, 0x4f000, true], // spans b entirely
    [0x50000, 0x60000, false],
    [0x12000, 0x13000, true], // inside a
  ];
  for (const [start, end, expected] of cases) {
    assert.equal(
      list.overlaps(start, end),
      expected,
      `[0x${start.toString(16)}, 0x${end.toString(16)})`,
    );
  }
  assert.equal(new VmaList().overlaps(0, 2 ** 47), false);
});

Deno.test("VmaList.covers() is true only for ranges covered by areas without a gap", () => {
  // a and b touch at 0x3000; a gap 0x4000..0x5000; c after it.
  const list = listOf([[0x1000, 0x3000], [0x3000, 0x4000], [0x5000, 0x8000]]);
  const cases: [number, number, boolean][] = [
    [0x1000, 0x4000, true], // across the touching boundary
    [0x2000, 0x3800, true],
    [0x1000, 0x2000, true],
    [0x5000, 0x8000, true],
    [0x6000, 0x7000, true],
    [0x1000, 0x5000, false], // runs into the gap
    [0x1000, 0x8000, false], // the gap in the middle
    [0x0, 0x2000, false], // starts before a
    [0x4000, 0x5000, false], // exactly the gap
    [0x7000, 0x9000, false], // runs past c
    [0x9000, 0xa000, false], // past every area
  ];
  for (const [start, end, expected] of cases) {
    assert.equal(
      list.covers(start, end),
      expected,
      `[0x${start.toString(16)}, 0x${end.toString(16)})`,
    );
  }
  assert.equal(new VmaList().covers(0x1000, 0x2000), false);
});

Deno.test({
  name: "VmaList.covers() is true for an empty range in a gap below an area",
  // BUG (lib/guest/vma.ts covers): an empty range [s, s) is covered (nothing to cover) and
  // covers() says so past the last area or inside an area, but returns false when s is in
  // a gap with an area above it, because the loop sees `v.start > at` before checking
  // `at >= end`. kernel.ts mprotect(addr, 0, prot) then answers -ENOMEM or 0 depending on
  // where addr is (Linux answers 0).
  fn() {
    const list = listOf([[0x1000, 0x2000], [0x5000, 0x6000]]);
    assert.equal(list.covers(0x9000, 0x9000), true); // past every area: true today
    assert.equal(list.covers(0x1000, 0x1000), true); // inside an area: true today
    assert.equal(list.covers(0x3000, 0x3000), true); // in the gap: false today
  },
});

// --- insert ------------------------------------------------------------------------------

Deno.test("VmaList.insert() keeps the areas sorted by start whatever the insertion order", () => {
  const list = new VmaList();
  list.insert(new Vma(0x40000, 0x50000, RW, "c"));
  list.insert(new Vma(0x10000, 0x20000, RW, "a"));
  list.insert(new Vma(0x30000, 0x38000, RW, "b"));
  list.insert(new Vma(0x50000, 0x51000, RW, "d")); // touches c
  list.insert(new Vma(0x0f000, 0x10000, RW, "z")); // touches a
  assert.deepEqual(shapeOf(list.areas), [
    [0x0f000, 0x10000, "z"],
    [0x10000, 0x20000, "a"],
    [0x30000, 0x38000, "b"],
    [0x40000, 0x50000, "c"],
    [0x50000, 0x51000, "d"],
  ]);
});

Deno.test("VmaList.insert() throws a RangeError on overlap and leaves the list unchanged", () => {
  const overlapping: [number, number][] = [
    [0x1f000, 0x21000], // a's last page
    [0x2f000, 0x31000], // b's first page
    [0x32000, 0x33000], // inside b
    [0x00000, 0x60000], // around everything
    [0x30000, 0x38000], // exactly b
  ];
  for (const [start, end] of overlapping) {
    const list = threeAreas();
    assert.throws(
      () => list.insert(new Vma(start, end, RW, "x")),
      (e: unknown) =>
        e instanceof RangeError && e.message.startsWith("Cannot insert area 0x") &&
        e.message.endsWith("rw-p x: it overlaps an existing area"),
    );
    assert.deepEqual(shapeOf(list.areas), shapeOf(threeAreas().areas));
  }
});

// --- splitAt -----------------------------------------------------------------------------

Deno.test("VmaList.splitAt() splits a private area in two with the same protection and name", () => {
  const list = listOf([[0x10000, 0x20000]]);
  list.areas[0]!.prot = RX;
  list.splitAt(0x13000);
  assert.deepEqual(shapeOf(list.areas), [[0x10000, 0x13000, "a"], [0x13000, 0x20000, "a"]]);
  assert.deepEqual(list.areas.map((v) => [v.prot, v.object, v.pgoff]), [[RX, null, 0], [
    RX,
    null,
    3,
  ]]);
  assert.notEqual(list.areas[0], list.areas[1]);
});

Deno.test("VmaList.splitAt() does nothing at an area's start, at its end, or in a gap", () => {
  for (const va of [0x10000, 0x20000, 0x28000, 0x38000, 0x50000, 0]) {
    const list = threeAreas();
    const before = [...list.areas];
    list.splitAt(va);
    assert.deepEqual(list.areas, before, `splitAt(0x${va.toString(16)})`);
    assert.deepEqual(shapeOf(list.areas), shapeOf(threeAreas().areas));
  }
});

Deno.test("VmaList.splitAt() gives the tail of a shared area its page offset and a reference", () => {
  const object = new SharedObject();
  const list = new VmaList();
  list.insert(new Vma(0x10000, 0x20000, RW, "shm", object, 2));
  list.splitAt(0x13000); // 3 pages in
  list.splitAt(0x18000); // 5 more pages in
  assert.deepEqual(
    list.areas.map((v) => [v.start, v.end, v.pgoff, v.object === object]),
    [[0x10000, 0x13000, 2, true], [0x13000, 0x18000, 5, true], [0x18000, 0x20000, 10, true]],
  );
  assert.equal(object.areas, 3);
});

// --- removeRange, isolate ----------------------------------------------------------------

Deno.test("VmaList.removeRange() cuts a hole in one area and returns the part removed", () => {
  const list = listOf([[0x1000, 0x5000]]);
  const removed = list.removeRange(0x2000, 0x3000);
  assert.deepEqual(shapeOf(removed), [[0x2000, 0x3000, "a"]]);
  assert.deepEqual(shapeOf(list.areas), [[0x1000, 0x2000, "a"], [0x3000, 0x5000, "a"]]);
});

Deno.test("VmaList.removeRange() returns the removed areas in address order", () => {
  const cases: {
    range: [number, number];
    removed: [number, number, string][];
    left: [number, number, string][];
  }[] = [
    {
      range: [0x18000, 0x44000], // a's tail, all of b, c's head
      removed: [[0x18000, 0x20000, "a"], [0x30000, 0x38000, "b"], [0x40000, 0x44000, "c"]],
      left: [[0x10000, 0x18000, "a"], [0x44000, 0x50000, "c"]],
    },
    {
      range: [0, 2 ** 47], // everything, as exit does
      removed: [[0x10000, 0x20000, "a"], [0x30000, 0x38000, "b"], [0x40000, 0x50000, "c"]],
      left: [],
    },
    {
      range: [0x20000, 0x30000], // exactly the gap
      removed: [],
      left: [[0x10000, 0x20000, "a"], [0x30000, 0x38000, "b"], [0x40000, 0x50000, "c"]],
    },
    {
      range: [0x30000, 0x38000], // exactly b
      removed: [[0x30000, 0x38000, "b"]],
      left: [[0x10000, 0x20000, "a"], [0x40000, 0x50000, "c"]],
    },
  ];
  for (const { range, removed, left } of cases) {
    const list = threeAreas();
    assert.deepEqual(shapeOf(list.removeRange(range[0], range[1])), removed);
    assert.deepEqual(shapeOf(list.areas), left);
  }
});

Deno.test("VmaList.removeRange() of a shared area's middle leaves both ends referencing it", () => {
  const object = new SharedObject();
  const list = new VmaList();
  list.insert(new Vma(0x10000, 0x20000, RW, "shm", object));
  const removed = list.removeRange(0x14000, 0x16000);
  assert.deepEqual(removed.map((v) => [v.start, v.end, v.pgoff]), [[0x14000, 0x16000, 4]]);
  assert.deepEqual(list.areas.map((v) => [v.start, v.end, v.pgoff]), [
    [0x10000, 0x14000, 0],
    [0x16000, 0x20000, 6],
  ]);
  assert.equal(object.areas, 3, "the caller drops the removed area's reference");
});

Deno.test("VmaList.isolate() splits at both ends and returns the areas inside, keeping them", () => {
  const list = threeAreas();
  const inside = list.isolate(0x18000, 0x44000);
  assert.deepEqual(shapeOf(inside), [
    [0x18000, 0x20000, "a"],
    [0x30000, 0x38000, "b"],
    [0x40000, 0x44000, "c"],
  ]);
  assert.deepEqual(shapeOf(list.areas), [
    [0x10000, 0x18000, "a"],
    [0x18000, 0x20000, "a"],
    [0x30000, 0x38000, "b"],
    [0x40000, 0x44000, "c"],
    [0x44000, 0x50000, "c"],
  ]);
  assert.ok(inside.every((v) => list.areas.includes(v)), "the same objects, still listed");
  assert.deepEqual(list.isolate(0x20000, 0x30000), []);
});

// --- findGapTopDown ----------------------------------------------------------------------

Deno.test("VmaList.findGapTopDown() places the highest fitting gap below `below`", () => {
  const cases: { length: number; below: number; floor: number; start: number; why: string }[] = [
    { length: PAGE, below: 0x60000, floor: 0, start: 0x5f000, why: "just below `below`" },
    { length: 0x10000, below: 0x60000, floor: 0, start: 0x50000, why: "fills the top gap" },
    { length: 0x8000, below: 0x40000, floor: 0, start: 0x38000, why: "exact fit between b, c" },
    { length: 0x9000, below: 0x40000, floor: 0, start: 0x27000, why: "b..c too small" },
    { length: PAGE, below: 0x45000, floor: 0, start: 0x3f000, why: "`below` inside c" },
    { length: PAGE, below: 0x34000, floor: 0, start: 0x2f000, why: "`below` inside b" },
    { length: 0x10000, below: 0x60000, floor: 0x10000, start: 0x50000, why: "floor far below" },
    { length: 0x10000, below: 0x10000, floor: 0, start: 0, why: "below every area" },
    { length: 0x8000, below: 0x10000, floor: 0x8000, start: 0x8000, why: "ends on the floor" },
    { length: 0x10001, below: 0x60000, floor: 0, start: -1, why: "no gap is large enough" },
    { length: 0x8000, below: 0x60000, floor: 0x5c000, start: -1, why: "floor cuts the top gap" },
    { length: 0x9000, below: 0x10000, floor: 0x8000, start: -1, why: "floor leaves 0x8000" },
    { length: 0x8000, below: 0x38000, floor: 0x2c000, start: -1, why: "floor inside a gap" },
    { length: PAGE, below: 0x10000, floor: 0x20000, start: -1, why: "floor above below" },
  ];
  for (const { length, below, floor, start, why } of cases) {
    assert.equal(threeAreas().findGapTopDown(length, below, floor), start, why);
  }
});

Deno.test("VmaList.findGapTopDown() on an empty list uses [floor, below)", () => {
  const list = new VmaList();
  assert.equal(list.findGapTopDown(0x2000, 0x10000, 0x4000), 0xe000);
  assert.equal(list.findGapTopDown(0xc000, 0x10000, 0x4000), 0x4000);
  assert.equal(list.findGapTopDown(0xd000, 0x10000, 0x4000), -1);
});

Deno.test("VmaList.findGapTopDown() results can be inserted one after another, top-down", () => {
  const list = threeAreas();
  const starts: number[] = [];
  for (let k = 0; k < 5; k++) {
    const start = list.findGapTopDown(0x8000, 0x60000, 0);
    starts.push(start);
    list.insert(new Vma(start, start + 0x8000, RW, "m"));
  }
  assert.deepEqual(starts, [0x58000, 0x50000, 0x38000, 0x28000, 0x20000]);
  assert.equal(list.findGapTopDown(0x8000, 0x60000, 0x10000), -1);
  assert.equal(list.findGapTopDown(0x8000, 0x60000, 0), 0x8000);
});
