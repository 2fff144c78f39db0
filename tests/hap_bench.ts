/**
 * 2-D page walks per second, with and without the walk caches (paging-structure caches
 * and nested TLB), against the native 4-level walk of the same guest tables. Each
 * iteration does {@link N} walks at pseudo-random addresses over 16 MiB of guest memory
 * (8 guest l1 tables); divide the time per iteration by N for the time per walk.
 *
 * References per walk on this set: native 4; 2-D without caches 24; with caches 5 once
 * warm (the PDE cache holds all 8 l2e, the nested TLB all 11 table frames: the l1e costs
 * 1 reference and the final GPA's EPT walk 4).
 *
 * Run: deno bench --allow-read tests/hap_bench.ts
 */

import {
  ACCESS_READ,
  asDomainId,
  EptTables,
  FrameTable,
  GuestPhysicalView,
  MachineMemory,
  NestedWalker,
  P2m,
  PageWalker,
  PagingControl,
  PTE_PRESENT,
  PTE_USER,
  PTE_WRITABLE,
  pteHigh,
  pteLow,
  Stats,
} from "../mod.ts";

/** Walks per benchmark iteration. */
const N = 4096;
const GUEST_FRAMES = 8192; // 32 MiB of guest memory
const MAPPED_PAGES = 4096; // 16 MiB mapped at linear 0

const stats = new Stats();
const memory = new MachineMemory({ frames: GUEST_FRAMES + 64, stats });
const frames = new FrameTable({ frames: GUEST_FRAMES + 64, stats: new Stats(), scatterSeed: 7 });
const ept = new EptTables(memory, frames, stats);
const p2m = P2m.populate(frames, asDomainId(1), GUEST_FRAMES);
for (let gfn = 0; gfn < GUEST_FRAMES; gfn++) ept.map(gfn, p2m.gfnToMfn(gfn));
const view = new GuestPhysicalView(memory, p2m);
// The same guest tables on a bare machine (GPA = PA), for the native walk.
const bare = new MachineMemory({ frames: GUEST_FRAMES, stats: new Stats() });

// Guest tables at GPA 0x1000 (l4), 0x2000 (l3), 0x3000 (l2), 0x4000.. (8 l1 tables);
// page i maps to GFN 0x100 + i.
const flags = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
const link = (gpa: number, to: number) => {
  for (const m of [view, bare]) {
    m.write32(gpa, pteLow(to, flags));
    m.write32(gpa + 4, pteHigh(to));
  }
};
link(0x1000, 0x2000);
link(0x2000, 0x3000);
for (let t = 0; t < MAPPED_PAGES / 512; t++) link(0x3000 + t * 8, 0x4000 + t * 0x1000);
for (let i = 0; i < MAPPED_PAGES; i++) link(0x4000 + i * 8, (0x100 + i) * 0x1000);

const ctl = new PagingControl({ cr3: 0x1000, cpl: 3 });
const offsets = new Float64Array(N);
{
  let x = 12345;
  for (let i = 0; i < N; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    offsets[i] = ((x >>> 8) % (MAPPED_PAGES * 1024)) * 4;
  }
}

function bench2d(walker: { walk: NestedWalker["walk"] }): () => void {
  for (let i = 0; i < N; i++) walker.walk(ctl, offsets[i]!, ACCESS_READ, null); // warm, A set
  return () => {
    let sum = 0;
    for (let i = 0; i < N; i++) sum += walker.walk(ctl, offsets[i]!, ACCESS_READ, null);
    if (sum === -1) throw new Error("unreachable");
  };
}

const cached = new NestedWalker(memory, new Stats(), { eptp: ept.eptp, walkCaches: true });
const uncached = new NestedWalker(memory, new Stats(), { eptp: ept.eptp, walkCaches: false });
const native = new PageWalker(bare, new Stats());

Deno.bench(
  "native 4-level walk (4 references)",
  { group: "walk", baseline: true },
  bench2d(native),
);
Deno.bench("2-D walk, walk caches off (24 references)", { group: "walk" }, bench2d(uncached));
Deno.bench("2-D walk, walk caches on (5 references)", { group: "walk" }, bench2d(cached));
