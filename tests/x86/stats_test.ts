/**
 * The counter registry and Stats: one declaration per name, clashes and bad names
 * rejected, and snapshot / diff / nonZero / reset over the registry. Names here start
 * with `statsTest.` so they cannot meet another module's counters.
 */

import assert from "node:assert/strict";
import {
  counterDefinitions,
  declareCounter,
  findCounter,
  MAX_COUNTERS,
  Stats,
} from "../../lib/x86/stats.ts";

const ALPHA = declareCounter("statsTest.alpha", "alpha events of the stats test", "events");
const BETA = declareCounter("statsTest.beta", "beta bytes of the stats test", "bytes");

Deno.test("declareCounter() of the same name and meaning returns the same index", () => {
  assert.equal(
    declareCounter("statsTest.alpha", "alpha events of the stats test", "events"),
    ALPHA,
  );
  assert.equal(declareCounter("statsTest.alpha", "alpha events of the stats test"), ALPHA); // unit defaults to "events"
  assert.notEqual(ALPHA, BETA);
  const count = counterDefinitions().length;
  declareCounter("statsTest.beta", "beta bytes of the stats test", "bytes");
  assert.equal(counterDefinitions().length, count, "no second definition");
});

Deno.test("declareCounter() throws a TypeError for a name declared with another meaning", () => {
  for (
    const [description, unit] of [["something else", "events"], [
      "alpha events of the stats test",
      "bytes",
    ]] as const
  ) {
    assert.throws(() => declareCounter("statsTest.alpha", description, unit), {
      name: "TypeError",
      message: 'Cannot declare counter "statsTest.alpha": declared before with another meaning',
    });
  }
  assert.equal(findCounter("statsTest.alpha")!.description, "alpha events of the stats test");
});

Deno.test("declareCounter() throws a TypeError for names that are not dotted lowercase-first", () => {
  const count = counterDefinitions().length;
  for (
    const name of [
      "nodot",
      "Upper.case",
      "statsTest..x",
      ".statsTest",
      "statsTest.",
      "a b.c",
      "1a.b",
      "a.b-c",
      "",
    ]
  ) {
    assert.throws(() => declareCounter(name, "bad", "events"), {
      name: "TypeError",
      message: `Cannot declare counter "${name}": name must be dotted, like "tlb.miss"`,
    }, name);
  }
  assert.equal(counterDefinitions().length, count);
  declareCounter("statsTest.deep.name_2", "a three-part name", "events"); // accepted
});

Deno.test("counterDefinitions() lists frozen definitions whose index is their position", () => {
  const defs = counterDefinitions();
  defs.forEach((d, i) => assert.equal(d.index, i, d.name));
  const alpha = findCounter("statsTest.alpha")!;
  assert.deepEqual({ ...alpha }, {
    name: "statsTest.alpha",
    description: "alpha events of the stats test",
    unit: "events",
    kind: "count",
    index: ALPHA,
  });
  assert.ok(Object.isFrozen(alpha));
  assert.equal(findCounter("statsTest.missing"), undefined);
  assert.ok(defs.length <= MAX_COUNTERS);
});

Deno.test("Stats.diff() gives a gauge's level at the end, not its change", () => {
  const LEVEL = declareCounter("statsTest.level", "a level of the stats test", "pages", "gauge");
  const stats = new Stats();
  stats.counts[LEVEL] = 10;
  const before = stats.snapshot();
  stats.counts[LEVEL] = 7;
  stats.counts[ALPHA] += 2;
  const diff = Stats.diff(before, stats.snapshot());
  assert.equal(diff["statsTest.level"], 7);
  assert.equal(diff["statsTest.alpha"], 2);
  assert.throws(() => declareCounter("statsTest.level", "a level of the stats test", "pages"));
});

Deno.test("Stats.get() reads a counter by name and throws a RangeError for an unknown one", () => {
  const stats = new Stats();
  assert.equal(stats.counts.length, MAX_COUNTERS);
  stats.counts[ALPHA] = 5;
  assert.equal(stats.get("statsTest.alpha"), 5);
  assert.throws(() => stats.get("statsTest.nope"), {
    name: "RangeError",
    message: 'Cannot read counter "statsTest.nope": no such counter',
  });
});

Deno.test("Stats.snapshot() is a frozen copy of every declared counter", () => {
  const stats = new Stats();
  stats.counts[ALPHA] = 3;
  const snap = stats.snapshot();
  stats.counts[ALPHA] = 4;
  assert.equal(snap["statsTest.alpha"], 3);
  assert.equal(snap["statsTest.beta"], 0);
  assert.ok(Object.isFrozen(snap));
  assert.deepEqual(Object.keys(snap), counterDefinitions().map((d) => d.name));
});

Deno.test("Stats.diff() subtracts per counter and treats a missing name as 0", () => {
  const stats = new Stats();
  stats.counts[ALPHA] = 10;
  const before = stats.snapshot();
  stats.counts[ALPHA] += 7;
  stats.counts[BETA] += 4096;
  const d = Stats.diff(before, stats.snapshot());
  assert.equal(d["statsTest.alpha"], 7);
  assert.equal(d["statsTest.beta"], 4096);
  assert.ok(Object.isFrozen(d));
  assert.deepEqual(Stats.diff({}, { "statsTest.alpha": 2 }), { "statsTest.alpha": 2 });
  assert.deepEqual(Stats.diff({ "x.gone": 9 }, { "statsTest.alpha": 2 }), { "statsTest.alpha": 2 });
});

Deno.test("Stats.nonZero() lists only non-zero counters in declaration order; reset() zeroes", () => {
  const stats = new Stats();
  assert.deepEqual(stats.nonZero(), {});
  stats.counts[BETA] = 2;
  stats.counts[ALPHA] = 1;
  assert.deepEqual(Object.entries(stats.nonZero()), [["statsTest.alpha", 1], [
    "statsTest.beta",
    2,
  ]]);
  stats.counts[ALPHA] = -1; // a negative delta is not zero either
  assert.equal(stats.nonZero()["statsTest.alpha"], -1);
  stats.reset();
  assert.deepEqual(stats.nonZero(), {});
  assert.ok(stats.counts.every((v) => v === 0));
});

Deno.test("two Stats count independently", () => {
  const a = new Stats();
  const b = new Stats();
  a.counts[ALPHA]++;
  assert.deepEqual([a.get("statsTest.alpha"), b.get("statsTest.alpha")], [1, 0]);
});
