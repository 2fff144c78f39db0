import assert from "node:assert/strict";
import { FrameTable } from "../../lib/memory/frame_table.ts";
import {
  PAGE_PINNED,
  PAGE_VALIDATED,
  PageTypes,
  PGT_L2,
  PGT_NAMES,
  PGT_NONE,
  PGT_WRITABLE,
} from "../../lib/memory/page_types.ts";
import { asDomainId } from "../../lib/memory/types.ts";
import { Stats } from "../../lib/x86/stats.ts";

Deno.test("PageTypes: types carry Xen's PGT_* numbers", () => {
  assert.deepEqual(PGT_NAMES, ["none", "l1", "l2", "l3", "l4", "seg_desc", "shared", "writable"]);
  assert.equal(PGT_WRITABLE, 7);
});

Deno.test("PageTypes.assign() gives the allocation reference; release() clears everything", () => {
  const frames = new FrameTable({ frames: 4, stats: new Stats() });
  const types = new PageTypes(frames);
  const mfn = frames.allocate(asDomainId(1));
  types.assign(mfn);
  types.type[mfn] = PGT_L2;
  types.typeCount[mfn] = 2;
  types.flags[mfn] = PAGE_VALIDATED | PAGE_PINNED;
  assert.ok(types.isPageTable(mfn) && types.isPinned(mfn) && types.isValidated(mfn));
  assert.equal(types.describe(mfn), "l2 x2 validated pinned, count 1");
  types.release(mfn);
  assert.deepEqual(
    [types.count[mfn], types.type[mfn], types.typeCount[mfn], types.flags[mfn]],
    [0, PGT_NONE, 0, 0],
  );
  assert.equal(types.isPageTable(mfn), false);
});

Deno.test("PageTypes: a writable frame with a type count is not a page table", () => {
  const types = new PageTypes(new FrameTable({ frames: 2, stats: new Stats() }));
  types.type[1] = PGT_WRITABLE;
  types.typeCount[1] = 3;
  assert.equal(types.isPageTable(1), false);
});

Deno.test("PageTypes rejects bad limits and frame numbers with a RangeError", () => {
  const frames = new FrameTable({ frames: 2, stats: new Stats() });
  assert.throws(
    () => new PageTypes(frames, { maxCount: 1 }),
    /maxCount 1: must be an integer 2..2\^31-1/,
  );
  assert.throws(() => new PageTypes(frames, { maxTypeCount: 2 ** 31 }), RangeError);
  assert.throws(() => new PageTypes(frames).assign(2), /Cannot use mfn 2: frames are 0..1/);
  assert.throws(() => new PageTypes(frames).release(0.5), RangeError);
});
