import assert from "node:assert/strict";
import { createLab } from "../../lib/lab/lab.ts";
import { PROT_READ, PROT_WRITE } from "../../lib/guest/layout.ts";
import type { HvmShadowPlatform } from "../../lib/platform/hvm_shadow.ts";
import { PREFETCH_DISTANCE } from "../../lib/shadow/shadow_fault.ts";
import { SHADOW_UNSHADOW_USER } from "../../lib/shadow/shadow_mmu.ts";
import { Stats } from "../../lib/x86/stats.ts";

const AREA = 0x4000_0000;

Deno.test("sh_prefetch: one hidden fault refills the next 31 entries; 31 accesses then exit no more", () => {
  const lab = createLab({ platform: "hvm-shadow", memoryMiB: 16 });
  const platform = lab.platform as HvmShadowPlatform;
  const pid = lab.spawn();
  lab.mmap(pid, 64 * 4096, PROT_READ | PROT_WRITE, { fixed: AREA });
  lab.touch(pid, { start: AREA, length: 64 * 4096, kind: "write" }); // A and D set in all
  // Drop the area's L1 shadow: its entries must come back from the guest's L1.
  const l1Gfn = Math.floor(lab.kernel.leafEntryAddress(pid, AREA) / 4096);
  assert.ok(platform.mmu.unshadow(l1Gfn, SHADOW_UNSHADOW_USER));
  const measure = (work: () => void) => {
    const before = lab.stats.snapshot();
    work();
    const diff = Stats.diff(before, lab.stats.snapshot());
    return (name: string) => diff[name] ?? 0;
  };
  const first = measure(() => lab.readU32(pid, AREA));
  assert.equal(first("fault.hidden"), 1);
  assert.equal(first("shadow.prefetch"), PREFETCH_DISTANCE - 1);
  const rest = measure(() => lab.touch(pid, { start: AREA + 4096, length: 31 * 4096 }));
  assert.equal(rest("exit.total"), 0);
  const beyond = measure(() => lab.readU32(pid, AREA + 32 * 4096));
  assert.equal(beyond("fault.hidden"), 1); // entry 32 is past the prefetch distance
  assert.deepEqual(platform.checkInvariants(), []);
});

Deno.test("sh_prefetch stops at a guest entry that would need an A/D fault anyway", () => {
  const lab = createLab({ platform: "hvm-shadow", memoryMiB: 16 });
  const platform = lab.platform as HvmShadowPlatform;
  const pid = lab.spawn();
  lab.mmap(pid, 8 * 4096, PROT_READ | PROT_WRITE, { fixed: AREA });
  lab.touch(pid, { start: AREA, length: 8 * 4096, kind: "write" });
  const child = lab.fork(pid); // the child's copies are mkold: A clear
  const prefetched = lab.stats.get("shadow.prefetch");
  lab.readU32(child, AREA); // fills entry 0; entry 1 is not accessed: nothing prefetched
  assert.equal(lab.stats.get("shadow.prefetch"), prefetched);
  const hidden = lab.stats.get("fault.hidden");
  lab.readU32(child, AREA + 4096); // so this read faults again (the walk sets its A)
  assert.equal(lab.stats.get("fault.hidden") - hidden, 1);
  assert.deepEqual(platform.checkInvariants(), []);
});
