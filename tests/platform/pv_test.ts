/**
 * The `pv` platform: the domain builder, genuine faults bounced to the guest, the device
 * reached directly through an I/O mapping Xen allowed, DMA, privileged instructions,
 * lazy-mode batching, a kernel whose hypercall fails, and domain death.
 */

import assert from "node:assert/strict";
import { ACCESS_READ } from "../../lib/x86/access.ts";
import { levelIndex } from "../../lib/x86/address.ts";
import { RAX } from "../../lib/guest/kernel_text.ts";
import { DIRECT_MAP_BASE, PROT_READ, PROT_WRITE } from "../../lib/guest/layout.ts";
import { GuestKernel } from "../../lib/guest/kernel.ts";
import { PvPagingOps } from "../../lib/guest/pv_paging_ops.ts";
import { createLab } from "../../lib/lab/lab.ts";
import { RUN_CRASHED, RUN_DONE } from "../../lib/platform/platform.ts";
import { PvPlatform } from "../../lib/platform/pv.ts";
import { PGT_L1, PGT_L4, PGT_WRITABLE } from "../../lib/memory/page_types.ts";
import { MMUEXT_UNPIN_TABLE, XEN_EINVAL } from "../../hypercalls/abi.ts";
import { checkPvSafety } from "../../hypercalls/check_pv_safety.ts";
import { bootPvGuest, HEAP, walkMachine } from "../hypercalls/_pv_fixture.ts";

const RW = PROT_READ | PROT_WRITE;

function bootKernel(frames = 1024): { platform: PvPlatform; kernel: GuestKernel } {
  const platform = new PvPlatform({ frames });
  const kernel = new GuestKernel(platform, {
    pagingOps: (code) => new PvPagingOps(code, platform),
    recordFaults: true,
  });
  kernel.boot();
  return { platform, kernel };
}

Deno.test("PvPlatform.start() converts the boot tables to machine frames, protects and pins them", () => {
  const { platform, kernel } = bootKernel();
  const d = platform.domain;
  const l4 = platform.p2mList[kernel.kernelL4Gfn]!;
  assert.equal(d.guestTable, l4);
  assert.equal(platform.cpu.ctl.cr3TableAddress, l4 * 4096);
  assert.equal(d.types.describe(l4), "l4 x2 validated pinned, count 4"); // pin, CR3; + RO map
  // The direct map's entry for a table frame is read-only, for a data frame writable;
  // both name the machine frame of the GFN.
  const directMapEntry = (gfn: number) => walkMachine(d, DIRECT_MAP_BASE + gfn * 4096).entry[1]!;
  const tableEntry = d.memory.read32(directMapEntry(kernel.kernelL4Gfn));
  assert.equal(tableEntry >>> 12, l4 % 2 ** 20);
  assert.equal(tableEntry & 0x3, 0x1);
  const dataEntry = d.memory.read32(directMapEntry(900));
  assert.equal(dataEntry >>> 12, platform.p2mList[900]! % 2 ** 20);
  assert.equal(dataEntry & 0x3, 0x3);
  // Types: 1 L4, 2 L3 (direct map, text), 1 + 1 L2, 2 L1 for 4 MiB of direct map + 1 text.
  const counts = [0, 0, 0, 0, 0];
  for (let mfn = 0; mfn < d.frames.frameCount; mfn++) {
    if (d.frames.owner[mfn] === d.id && d.types.isPageTable(mfn)) counts[d.types.type[mfn]!]!++;
  }
  assert.deepEqual(counts.slice(PGT_L1, PGT_L4 + 1), [3, 2, 2, 1]);
  assert.equal(d.types.type[platform.p2mList[900]!], PGT_WRITABLE);
  assert.deepEqual(checkPvSafety(d), []);
  assert.equal(platform.stats.get("pv.pin"), 1);
});

Deno.test("PvPlatform.start() refuses a 2 MiB direct map: Xen has no PV superpages", () => {
  const platform = new PvPlatform({ frames: 1024 });
  const kernel = new GuestKernel(platform, {
    pagingOps: (code) => new PvPagingOps(code, platform),
    directMapPageSize: 2097152,
  });
  assert.throws(() => kernel.boot(), /superpage, which Xen refuses for PV guests/);
});

Deno.test("genuine page faults are bounced to the guest's handler with the native CR2 and error code", () => {
  const run = (platform: "native" | "pv") => {
    const lab = createLab({ platform, memoryMiB: 8, recordFaults: true });
    const pid = lab.spawn();
    const area = lab.mmap(pid, 8 * 4096, RW);
    lab.touch(pid, { start: area, length: 8 * 4096 }); // reads: the zero page
    lab.touch(pid, { start: area, length: 8 * 4096, kind: "write" }); // copy-on-write
    lab.fork(pid);
    lab.writeU32(pid, area, 5);
    return lab;
  };
  const native = run("native");
  const pv = run("pv");
  assert.deepEqual(pv.faults, native.faults);
  assert.equal(pv.faults.length, 17);
  assert.equal(pv.stats.get("pv.bounce.pf"), 17);
  assert.equal(pv.stats.get("pv.bounce.other"), 0);
  assert.equal(pv.stats.get("guest.fault"), 17);
});

Deno.test("the device is mapped as I/O memory Xen allows and reached without any trap", () => {
  const lab = createLab({ platform: "pv", memoryMiB: 4 });
  const platform = lab.platform as PvPlatform;
  const pid = lab.spawn();
  const device = lab.mmapDevice(pid);
  const traps = lab.stats.get("hypercall.traps");
  const bounces = lab.stats.get("pv.bounce.pf");
  assert.deepEqual([0, 1, 2].map(() => lab.readU32(pid, device)), [0, 1, 2]);
  lab.writeU32(pid, device + 8, 0x21);
  assert.equal(platform.device.output, "!");
  assert.equal(lab.stats.get("hypercall.traps"), traps);
  assert.equal(lab.stats.get("pv.bounce.pf"), bounces);
  // The l1e names the device's machine frame, uncached; the guest reads it back as its GFN.
  const l1e = walkMachine(platform.domain, device).entry[1]!;
  const lo = platform.memory.read32(l1e);
  assert.equal(lo >>> 12, platform.deviceMfn % 2 ** 20);
  assert.equal(lo & 0x18, 0x18);
  const gpa = lab.kernel.leafEntryAddress(pid, device);
  assert.equal(lab.kernel.ops.readEntry(1, gpa, { lo: 0, hi: 0 }), RUN_DONE);
  const entry = { lo: 0, hi: 0 };
  lab.kernel.ops.readEntry(1, gpa, entry);
  assert.equal(entry.lo >>> 12, platform.deviceGfn);
  assert.deepEqual(checkPvSafety(platform.domain), []);
});

Deno.test("DMA reads and writes guest frames; a DMA write into a page table crashes the domain", () => {
  const g = bootPvGuest();
  const page = new Uint32Array(1024).fill(0xabcd);
  g.platform.dmaWrite(900, page);
  const back = new Uint32Array(1024);
  g.platform.dmaRead(900, back);
  assert.equal(back[17], 0xabcd);
  assert.equal(g.platform.crashReason, "");
  const l1Gfn = g.d.m2p[walkMachine(g.d, HEAP).table[1]!]!;
  g.platform.dmaWrite(l1Gfn, page);
  assert.match(
    g.platform.crashReason,
    /DMA into guest frame \d+: machine frame \d+ is a page table/,
  );
  assert.deepEqual(checkPvSafety(g.d), []);
});

Deno.test("MOV to CR3 in the guest kernel is Xen's new_guest_cr3; a bad frame is #GP (a kernel oops)", () => {
  const g = bootPvGuest();
  const code = g.kernel.code;
  const l4 = g.platform.p2mList[g.kernel.kernelL4Gfn]!;
  code.interpreter.setReg(RAX, l4 * 4096, 0);
  assert.equal(code.call("writeCr3"), RUN_DONE);
  assert.equal(g.d.guestTable, l4);
  assert.deepEqual(checkPvSafety(g.d), []);
  code.interpreter.setReg(RAX, g.platform.p2mList[900]! * 4096, 0); // a data frame
  assert.equal(code.call("writeCr3"), RUN_CRASHED);
  assert.match(g.platform.crashReason, /kernel oops: vector 13/);
  assert.equal(g.d.guestTable, l4);
  assert.deepEqual(checkPvSafety(g.d), []);
});

Deno.test("lazy mode: a read of an entry with a queued update issues the batch first", () => {
  const lab = createLab({ platform: "pv", memoryMiB: 16 });
  const pid = lab.spawn();
  // 4 pages across a 2 MiB boundary in a 1 GiB region nothing else uses: fork copies the
  // first two in lazy mode after linking a new L2 into the child's L3 (queued), then the
  // walk for the next 2 MiB reads that same L3 entry, so the batch must go first.
  const area = 0x4000_0000 + 0x20_0000 - 2 * 4096;
  lab.mmap(pid, 4 * 4096, RW, { fixed: area });
  lab.touch(pid, { start: area, length: 4 * 4096, kind: "write", value: 9 });
  const before = lab.stats.get("pvops.flush.readBack");
  const child = lab.fork(pid);
  assert.equal(lab.stats.get("pvops.flush.readBack") - before, 1);
  assert.equal(lab.usage().tables, 2 * 5); // per process: L4, L3, L2 and two L1s
  assert.deepEqual([0, 1, 2, 3].map((i) => lab.readU32(child, area + i * 4096)), [9, 9, 9, 9]);
  assert.deepEqual(lab.platform.checkInvariants?.(), []);
});

Deno.test("a hypercall of the kernel that Xen refuses is a kernel BUG: the domain crashes with the reason", () => {
  const g = bootPvGuest();
  // Someone unpins the process's L1 behind the kernel's back; munmap then frees it, and
  // the backend's MMUEXT_UNPIN_TABLE fails.
  const l1 = walkMachine(g.d, HEAP).table[1]!;
  assert.equal(g.hostile.mmuextOp([{ cmd: MMUEXT_UNPIN_TABLE, arg1: l1 }]).rc, 0);
  assert.equal(g.kernel.munmap(g.pid, HEAP, 16 * 4096), 0);
  assert.match(
    g.platform.crashReason,
    /kernel BUG: 1 of 2 multicall\(s\) failed: mmuext_op returned -EINVAL/,
  );
  assert.equal(g.hostile.call(1), -XEN_EINVAL); // nothing runs after a crash
  assert.deepEqual(checkPvSafety(g.d), []);
});

Deno.test("domain death releases every reference and frees every frame", () => {
  const lab = createLab({ platform: "pv", memoryMiB: 4 });
  const platform = lab.platform as PvPlatform;
  const parent = lab.spawn();
  const area = lab.mmap(parent, 64 * 4096, RW);
  lab.touch(parent, { start: area, length: 64 * 4096, kind: "write" });
  lab.fork(parent);
  const owned = platform.frameTable.owner.filter((o) => o === platform.domain.id).length;
  assert.deepEqual(platform.destroyDomain(), { freed: owned, leaked: 0 });
  assert.equal(platform.frameTable.owner.filter((o) => o === platform.domain.id).length, 0);
  assert.equal(platform.crashReason, "domain destroyed");
  assert.equal(lab.kernel.access(parent, area, 4, ACCESS_READ), RUN_CRASHED);
});

Deno.test("PvPlatform rejects loads after start and addresses outside the domain", () => {
  const { platform } = bootKernel();
  assert.throws(() => platform.loadGuestPhysical32(0, 1), RangeError);
  assert.throws(() => platform.peekGuestPhysical32(1024 * 4096), RangeError);
  assert.throws(() => platform.dmaRead(1024, new Uint32Array(1024)), RangeError);
  assert.equal(levelIndex(DIRECT_MAP_BASE, 4), 273); // the direct map is outside Xen's slots
});
