/**
 * MachineMemory: lazily backed frames, little-endian 8/16/32-bit accesses at any
 * alignment (within and across frames), all-ones reads and dropped writes past the
 * installed frames, bulk frame operations, and exact counters.
 */

import assert from "node:assert/strict";
import { MachineMemory } from "../../lib/memory/machine_memory.ts";
import { asMfn } from "../../lib/memory/types.ts";
import { Stats } from "../../lib/x86/stats.ts";

const GIB4 = 2 ** 20; // frames in 4 GiB

function newMemory(frames: number): { memory: MachineMemory; stats: Stats } {
  const stats = new Stats();
  return { memory: new MachineMemory({ frames, stats }), stats };
}

/** The mem.* counters, by short name. */
function memCounters(stats: Stats): Record<string, number> {
  return {
    read: stats.get("mem.read"),
    write: stats.get("mem.write"),
    unbacked: stats.get("mem.unbacked"),
    materialized: stats.get("mem.framesMaterialized"),
  };
}

Deno.test("new MachineMemory() throws a RangeError for a size outside 1..2^28 frames", () => {
  for (const frames of [0, -1, 1.5, 2 ** 28 + 1, NaN]) {
    assert.throws(() => new MachineMemory({ frames }), {
      name: "RangeError",
      message: `Cannot create machine memory of ${frames} frames: must be 1..2^28`,
    });
  }
  assert.equal(new MachineMemory({ frames: 1 }).frameCount, 1);
});

Deno.test("new MachineMemory() of 1 TiB (2^28 frames) allocates no frame", () => {
  const memory = new MachineMemory({ frames: 2 ** 28 });
  assert.equal(memory.frameCount, 2 ** 28);
  assert.equal(memory.materializedFrames, 0);
  memory.write8(2 ** 40 - 1, 0x5a);
  assert.equal(memory.read8(2 ** 40 - 1), 0x5a);
  assert.equal(memory.materializedFrames, 1);
});

Deno.test("MachineMemory of 4 GiB reads zeros from unwritten frames and allocates nothing", () => {
  const { memory, stats } = newMemory(GIB4);
  for (const pa of [0, 0x1000, 0x7fff_fffc, 0xffff_fffc, 0x1234_5679]) {
    assert.equal(memory.read32(pa), 0, `0x${pa.toString(16)}`);
    assert.equal(memory.read16(pa + 1), 0);
    assert.equal(memory.read8(pa + 3), 0);
  }
  assert.equal(memory.read32(0xffff_fffa), 0); // unaligned, last frame
  assert.equal(memory.materializedFrames, 0);
  assert.equal(memory.frameWords(asMfn(0)), undefined);
  assert.equal(memory.hostFrame(5, false), undefined);
  assert.deepEqual(memCounters(stats), { read: 16, write: 0, unbacked: 0, materialized: 0 });
});

Deno.test("MachineMemory materializes exactly the frames written, a zero write included", () => {
  const { memory, stats } = newMemory(GIB4);
  memory.write32(0xffff_f000, 0xdead_beef);
  memory.write8(0x8000_0123, 0);
  memory.write16(0x10, 1);
  memory.write32(0x14, 2); // same frame as 0x10
  assert.equal(memory.materializedFrames, 3);
  assert.equal(stats.get("mem.framesMaterialized"), 3);
  assert.ok(memory.frameWords(asMfn(0xfffff)) !== undefined);
  assert.ok(memory.frameWords(asMfn(0x80000)) !== undefined);
  assert.equal(memory.frameWords(asMfn(0x80001)), undefined);
  assert.equal(memory.read32(0xffff_f000), 0xdead_beef);
});

Deno.test("write32() then read8()/read16() show little-endian byte order", () => {
  const { memory } = newMemory(4);
  memory.write32(0x1000, 0x1122_3344);
  assert.deepEqual(
    [0, 1, 2, 3].map((k) => memory.read8(0x1000 + k)),
    [0x44, 0x33, 0x22, 0x11],
  );
  assert.equal(memory.read16(0x1000), 0x3344);
  assert.equal(memory.read16(0x1002), 0x1122);
  assert.equal(memory.read16(0x1001), 0x2233);
  memory.write8(0x1001, 0xab);
  memory.write16(0x1002, 0xcdef);
  assert.equal(memory.read32(0x1000), 0xcdef_ab44);
});

Deno.test("read32() and write32() at every misalignment within a frame", () => {
  const { memory } = newMemory(4);
  for (let k = 0; k < 4; k++) {
    const pa = 0x2100 + 16 * k + k;
    memory.write32(pa, 0x8899_aabb);
    assert.equal(memory.read32(pa), 0x8899_aabb, `offset ${k}`);
    assert.deepEqual([0, 1, 2, 3].map((i) => memory.read8(pa + i)), [0xbb, 0xaa, 0x99, 0x88]);
    assert.equal(memory.read8(pa - 1), 0, `byte before, offset ${k}`);
    assert.equal(memory.read8(pa + 4), 0, `byte after, offset ${k}`);
  }
});

Deno.test("unaligned 16- and 32-bit accesses across a frame boundary use both frames", () => {
  const { memory } = newMemory(4);
  memory.write32(0x1ffe, 0xaabb_ccdd);
  assert.deepEqual(
    [0x1ffe, 0x1fff, 0x2000, 0x2001].map((pa) => memory.read8(pa)),
    [0xdd, 0xcc, 0xbb, 0xaa],
  );
  assert.equal(memory.materializedFrames, 2);
  assert.equal(memory.read32(0x1ffe), 0xaabb_ccdd);
  assert.equal(memory.read32(0x1ffd), 0xbbcc_dd00);
  assert.equal(memory.read32(0x1fff), 0x00aa_bbcc);
  assert.equal(memory.read16(0x1fff), 0xbbcc);
  memory.write16(0x2fff, 0x1234);
  assert.deepEqual([memory.read8(0x2fff), memory.read8(0x3000)], [0x34, 0x12]);
  assert.equal(memory.frameWords(asMfn(3))![0], 0x12);
});

Deno.test("read32() returns an unsigned value, aligned or not", () => {
  const { memory } = newMemory(2);
  memory.write32(0x100, 0x8000_0000);
  memory.write32(0x201, -1);
  assert.equal(memory.read32(0x100), 2 ** 31);
  assert.equal(memory.read32(0x201), 0xffff_ffff);
  memory.write32(0xffe, 0xfedc_ba98);
  assert.equal(memory.read32(0xffe), 0xfedc_ba98);
});

Deno.test("write8() and write16() store only the low bits of the value", () => {
  const { memory } = newMemory(1);
  memory.write32(0x10, 0xffff_ffff);
  memory.write8(0x10, 0x1_23);
  memory.write16(0x12, 0xa_bcde);
  assert.equal(memory.read32(0x10), 0xbcde_ff23);
});

Deno.test("addresses past the installed frames read all ones and drop writes", () => {
  const { memory } = newMemory(4); // 0x0000..0x3fff
  assert.equal(memory.read32(0x4000), 0xffff_ffff);
  assert.equal(memory.read16(0x4002), 0xffff);
  assert.equal(memory.read8(0x4fff), 0xff);
  assert.equal(memory.read32(2 ** 40), 0xffff_ffff);
  assert.equal(memory.read32(2 ** 52 - 4), 0xffff_ffff);
  memory.write32(0x4000, 0);
  memory.write8(0x5000, 0);
  assert.equal(memory.read32(0x4000), 0xffff_ffff);
  assert.equal(memory.materializedFrames, 0);
  assert.equal(memory.frameWords(asMfn(4)), undefined);
  assert.equal(memory.hostFrame(4, true), undefined);
  assert.equal(memory.isValidMfn(4), false);
  assert.equal(memory.isValidMfn(3), true);
});

Deno.test("an access straddling the end of memory keeps the backed bytes and reads ones past it", () => {
  const { memory } = newMemory(4);
  memory.write16(0x3ffe, 0x1234);
  assert.equal(memory.read32(0x3ffe), 0xffff_1234);
  memory.write32(0x3ffd, 0xaabb_ccdd);
  assert.deepEqual([memory.read8(0x3ffd), memory.read8(0x3ffe), memory.read8(0x3fff)], [
    0xdd,
    0xcc,
    0xbb,
  ]);
  assert.equal(memory.read16(0x3fff), 0xffbb);
  assert.equal(memory.materializedFrames, 1);
});

Deno.test("mem.unbacked counts one per access past the installed frames, whatever its size", () => {
  // The counter's unit is accesses, as mem.read and mem.write are: one per call.
  const { memory, stats } = newMemory(4);
  assert.equal(memory.read32(0x4000), 0xffff_ffff);
  assert.equal(stats.get("mem.unbacked"), 1);
  memory.read8(0x4000);
  assert.equal(stats.get("mem.unbacked"), 2);
  memory.write32(0x4000, 0);
  assert.equal(stats.get("mem.unbacked"), 3);
  memory.read16(0x4000);
  assert.equal(stats.get("mem.unbacked"), 4, "read16");
  memory.write16(0x4000, 0);
  assert.equal(stats.get("mem.unbacked"), 5, "write16");
  memory.read32(0x4001);
  assert.equal(stats.get("mem.unbacked"), 6, "unaligned read32");
  memory.write32(0x3ffe, 0);
  assert.equal(stats.get("mem.unbacked"), 7, "write32 straddling the end");
  assert.deepEqual(memCounters(stats), { read: 4, write: 3, unbacked: 7, materialized: 1 });
});

Deno.test("mem.read and mem.write count one per call, whatever the size and alignment", () => {
  const { memory, stats } = newMemory(4);
  memory.write32(0x0, 1);
  memory.write32(0xffe, 2);
  memory.write16(0x1fff, 3);
  memory.write8(0x5, 4);
  memory.read32(0x0);
  memory.read32(0xfff);
  memory.read16(0x3);
  memory.read8(0x7);
  assert.deepEqual(memCounters(stats), { read: 4, write: 4, unbacked: 0, materialized: 3 });
});

Deno.test("frameWords() returns the frame's storage, shared with the accessors", () => {
  const { memory } = newMemory(4);
  memory.write32(0x2008, 0x55);
  const words = memory.frameWords(asMfn(2))!;
  assert.equal(words.length, 1024);
  assert.equal(words[2], 0x55);
  words[3] = 0x1234_5678;
  assert.equal(memory.read32(0x200c), 0x1234_5678);
  assert.equal(memory.frameWords(asMfn(99)), undefined);
  assert.equal(memory.frameWords(asMfn(-1)), undefined);
});

Deno.test("hostFrame() materializes only when asked, and returns the same array for life", () => {
  const { memory, stats } = newMemory(4);
  assert.equal(memory.hostFrame(1, false), undefined);
  const host = memory.hostFrame(1, true)!;
  assert.equal(host.length, 1024);
  assert.equal(stats.get("mem.framesMaterialized"), 1);
  assert.equal(memory.hostFrame(1, false), host);
  assert.equal(memory.frameWords(asMfn(1)), host);
  memory.write32(0x1000, 7);
  memory.zeroFrame(asMfn(1));
  memory.write32(0x0, 9);
  memory.copyFrame(asMfn(0), asMfn(1));
  assert.equal(memory.hostFrame(1, true), host, "still the same storage");
  assert.equal(host[0], 9);
  assert.equal(memory.hostFrame(-1, true), undefined);
  assert.equal(stats.get("mem.read") + stats.get("mem.write"), 2, "host use is not counted");
});

Deno.test("copyFrame() copies every word, and the copy is independent of the source", () => {
  const { memory } = newMemory(8);
  for (let i = 0; i < 1024; i++) memory.write32(0x1000 + 4 * i, (i * 0x9e37_79b9) >>> 0);
  memory.copyFrame(asMfn(1), asMfn(5));
  assert.deepEqual(memory.frameWords(asMfn(5)), memory.frameWords(asMfn(1)));
  memory.write32(0x1000, 0xffff_ffff);
  assert.equal(memory.read32(0x5000), 0);
  assert.equal(memory.read32(0x5ffc), (1023 * 0x9e37_79b9) >>> 0);
});

Deno.test("copyFrame() from an unwritten frame zeroes the target and backs nothing new", () => {
  const { memory } = newMemory(8);
  memory.write32(0x3010, 0xabc);
  memory.copyFrame(asMfn(2), asMfn(3));
  assert.equal(memory.read32(0x3010), 0);
  memory.copyFrame(asMfn(2), asMfn(4));
  assert.equal(memory.materializedFrames, 1);
  assert.equal(memory.frameWords(asMfn(4)), undefined);
});

Deno.test("zeroFrame() clears a frame in place and leaves its neighbours alone", () => {
  const { memory } = newMemory(4);
  memory.write32(0x0ffc, 1);
  memory.write32(0x1000, 2);
  memory.write32(0x1ffc, 3);
  memory.write32(0x2000, 4);
  memory.zeroFrame(asMfn(1));
  assert.deepEqual([0x0ffc, 0x1000, 0x1ffc, 0x2000].map((pa) => memory.read32(pa)), [1, 0, 0, 4]);
  assert.equal(memory.materializedFrames, 3);
  memory.zeroFrame(asMfn(3)); // never written: stays unbacked
  assert.equal(memory.materializedFrames, 3);
});

Deno.test("copyFrame() and zeroFrame() throw a RangeError for a frame that is not installed", () => {
  const { memory } = newMemory(4);
  const message = (mfn: number) => `Cannot use mfn ${mfn}: installed frames are 0..3`;
  assert.throws(() => memory.copyFrame(asMfn(0), asMfn(4)), {
    name: "RangeError",
    message: message(4),
  });
  assert.throws(() => memory.copyFrame(asMfn(-1), asMfn(0)), {
    name: "RangeError",
    message: message(-1),
  });
  assert.throws(() => memory.zeroFrame(asMfn(1.5)), { name: "RangeError", message: message(1.5) });
  assert.throws(() => memory.zeroFrame(asMfn(2 ** 28)), {
    name: "RangeError",
    message: message(2 ** 28),
  });
});

Deno.test("MachineMemory without options.stats counts into its own Stats", () => {
  const memory = new MachineMemory({ frames: 2 });
  memory.write8(0, 1);
  memory.read8(0x2000);
  assert.deepEqual(memCounters(memory.stats), {
    read: 1,
    write: 1,
    unbacked: 1,
    materialized: 1,
  });
});
