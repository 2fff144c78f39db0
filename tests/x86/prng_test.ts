/**
 * Prng: the sequence is xoshiro128** seeded by splitmix32 (checked against an independent
 * implementation), determinism, below()'s range and uniformity, shuffle().
 */

import assert from "node:assert/strict";
import { Prng } from "../../lib/x86/prng.ts";

/** xoshiro128** over a Uint32Array state, seeded by splitmix32, written from the paper. */
function* reference(seed: number): Generator<number> {
  const s = new Uint32Array(4);
  let x = seed >>> 0;
  for (let i = 0; i < 4; i++) {
    x = (x + 0x9e3779b9) >>> 0;
    let z = x;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    s[i] = z ^ (z >>> 16);
  }
  s[3] = s[3]! | 1;
  const rotl = (v: number, k: number) => ((v << k) | (v >>> (32 - k))) >>> 0;
  for (;;) {
    yield Math.imul(rotl(Math.imul(s[1]!, 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1]! << 9) >>> 0;
    s[2] = s[2]! ^ s[0]!;
    s[3] = s[3]! ^ s[1]!;
    s[1] = s[1]! ^ s[2]!;
    s[0] = s[0]! ^ s[3]!;
    s[2] = s[2]! ^ t;
    s[3] = rotl(s[3]!, 11);
  }
}

function take(prng: Prng, n: number): number[] {
  return Array.from({ length: n }, () => prng.nextU32());
}

Deno.test("nextU32() follows xoshiro128** seeded by splitmix32", () => {
  for (const seed of [0, 1, 42, 0xdead_beef, 2 ** 32 - 1]) {
    const ref = reference(seed);
    const expected = Array.from({ length: 1000 }, () => ref.next().value as number);
    assert.deepEqual(take(new Prng(seed), 1000), expected, `seed ${seed}`);
  }
});

Deno.test("Prng with the same seed gives the same sequence; other seeds differ", () => {
  assert.deepEqual(take(new Prng(7), 100), take(new Prng(7), 100));
  assert.notDeepEqual(take(new Prng(7), 100), take(new Prng(8), 100));
  assert.notDeepEqual(take(new Prng(0), 4), take(new Prng(1), 4));
  // The seed is taken modulo 2^32.
  assert.deepEqual(take(new Prng(2 ** 32 + 5), 10), take(new Prng(5), 10));
  assert.deepEqual(take(new Prng(-1), 10), take(new Prng(2 ** 32 - 1), 10));
});

Deno.test("nextU32() returns unsigned 32-bit integers covering the whole range", () => {
  const values = take(new Prng(3), 4000);
  assert.ok(values.every((v) => Number.isInteger(v) && v >= 0 && v < 2 ** 32));
  assert.ok(values.some((v) => v >= 2 ** 31), "high bit set sometimes");
  assert.ok(values.some((v) => v < 2 ** 24), "small values sometimes");
  assert.equal(new Set(values).size, values.length, "no repeats in 4000 draws");
});

Deno.test("below(n) stays in [0, n) for n from 1 to 2^32", () => {
  const prng = new Prng(11);
  for (const n of [1, 2, 3, 7, 1000, 2 ** 31 + 1, 2 ** 32]) {
    for (let i = 0; i < 500; i++) {
      const v = prng.below(n);
      assert.ok(Number.isInteger(v) && v >= 0 && v < n, `below(${n}) = ${v}`);
    }
  }
  assert.ok(Array.from({ length: 100 }, () => prng.below(2 ** 32)).some((v) => v >= 2 ** 31));
  assert.ok(Array.from({ length: 50 }, () => prng.below(1)).every((v) => v === 0));
});

Deno.test("below() throws a RangeError for n outside 1..2^32", () => {
  const prng = new Prng(1);
  for (const n of [0, -1, 2 ** 32 + 1, NaN]) {
    assert.throws(() => prng.below(n), {
      name: "RangeError",
      message: `Cannot draw below ${n}: must be 1..2^32`,
    });
  }
});

Deno.test("below(6) is roughly uniform (chi-square, fixed seed)", () => {
  const prng = new Prng(2024);
  const n = 60000;
  const counts = new Array(6).fill(0);
  for (let i = 0; i < n; i++) counts[prng.below(6)]++;
  const expected = n / 6;
  const chi2 = counts.reduce((sum, c) => sum + (c - expected) ** 2 / expected, 0);
  assert.ok(chi2 < 20.5, `chi-square ${chi2.toFixed(2)} for ${counts}`); // p = 0.001, 5 dof
  // A rejection-free modulo of 3 * 2^30 draws would favour the low half; below() must not.
  const low = Array.from({ length: 20000 }, () => prng.below(3 * 2 ** 30)).filter((v) =>
    v < 2 ** 31
  );
  assert.ok(Math.abs(low.length / 20000 - 2 / 3) < 0.02, `low fraction ${low.length / 20000}`);
});

Deno.test("nextFloat() is in [0, 1) and chance() honours 0 and 1", () => {
  const prng = new Prng(5);
  const floats = Array.from({ length: 1000 }, () => prng.nextFloat());
  assert.ok(floats.every((f) => f >= 0 && f < 1));
  const mean = floats.reduce((a, b) => a + b, 0) / floats.length;
  assert.ok(Math.abs(mean - 0.5) < 0.05, `mean ${mean}`);
  for (let i = 0; i < 100; i++) {
    assert.equal(prng.chance(0), false);
    assert.equal(prng.chance(1), true);
  }
});

Deno.test("shuffle() permutes in place, deterministically for a seed", () => {
  const items = Array.from({ length: 50 }, (_, i) => i);
  const shuffled = new Prng(9).shuffle(items);
  assert.equal(shuffled, items, "returns the same array");
  assert.deepEqual([...shuffled].sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i));
  assert.notDeepEqual(shuffled, Array.from({ length: 50 }, (_, i) => i));
  assert.deepEqual(new Prng(9).shuffle(Array.from({ length: 50 }, (_, i) => i)), shuffled);
  assert.deepEqual(new Prng(1).shuffle([]), []);
  assert.deepEqual(new Prng(1).shuffle(["x"]), ["x"]);
});

Deno.test("shuffle() of three items yields each of the six orders about equally often", () => {
  const prng = new Prng(77);
  const seen = new Map<string, number>();
  const n = 6000;
  for (let i = 0; i < n; i++) {
    const key = prng.shuffle([1, 2, 3]).join("");
    seen.set(key, (seen.get(key) ?? 0) + 1);
  }
  assert.equal(seen.size, 6);
  for (const [order, count] of seen) assert.ok(Math.abs(count - n / 6) < 150, `${order}: ${count}`);
});
