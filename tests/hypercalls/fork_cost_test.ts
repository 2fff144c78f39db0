/**
 * What one fork costs a PV guest, worked out by hand from the kernel's code
 * (lib/guest/kernel.ts fork -> #createMm, #copyRange, #flushAll) and the PV backend's
 * batching (lib/guest/pv_paging_ops.ts, Linux's multicalls.c rules), then measured.
 *
 * The parent runs the default image and has written its 16 data pages
 * (0x600000..0x60ffff: one L1 table, whose L2 and L3 exist too); its text and stack were
 * never touched, so they have no tables. The parent is the running process.
 *
 * 1. #createMm: a new top level, cleared and given the kernel half (no hypercall: the
 *    frame is still writable), then newTable(4): update_va_mapping (direct map read-only,
 *    UVMF_NONE) + MMUEXT_PIN_L4_TABLE. Not in lazy mode: issued at once, 2 calls, so one
 *    multicall. Xen checks 1 entry for the remap and the 2 present kernel-half entries of
 *    the new L4 (the direct map's and the text's L3s).
 * 2. #copyRange per private area, in lazy mode:
 *    - text, stack: no table under them in the parent: nothing queued, leaveLazy sends
 *      nothing.
 *    - data: the first present l1e allocates the child's L3, L2 and L1, each newTable
 *      (update_va_mapping 0 bytes of arguments + mmuext_op 24 bytes: a new entry, since
 *      the last one is not an mmuext_op) then the link one level up (mmu_update, 16 bytes,
 *      a new entry): 9 entries, 3 x (24 + 16) = 120 bytes of arguments. Then per page: the
 *      parent's l1e loses RW (mmu_update PRESERVE_AD) and the child's l1e is set
 *      (mmu_update), both appended to the last mmu_update entry while the arguments stay
 *      below 512 bytes: 120 + 16k < 496 holds for k = 0..23, so 24 requests fit (the first
 *      12 pages); the 25th needs a new entry and 504 + 16 >= 512 issues the batch
 *      (multicall #2: 9 calls carrying 3 + 24 = 27 mmu_update requests). The last 4 pages'
 *      8 requests fill one entry, which leaveLazy issues as a single call: a direct
 *      mmu_update of 8 requests.
 * 3. #flushAll: MMUEXT_TLB_FLUSH_LOCAL, a single call.
 *
 * Totals: mmu_update requests N = 3 + 2 x 16 = 35, in M = 2 multicalls plus 2 direct
 * hypercalls (4 entries into Xen); mmu_update calls 3 + 1 = 4; mmuext_op calls 1 + 3 + 1
 * = 5 (4 pins); update_va_mapping 1 + 3 = 4; requests completed 35 + 5 + 4 = 44; entries
 * checked 4 (remaps) + 2 (kernel half) + 3 (links) + 32 (l1es) = 41; full flushes 4 (each
 * pin changes a frame's type from writable with no flush since) + 2 (the L3 and L2 links
 * change tables already referenced beyond their pin, XSA-286) + 1 (the flush) = 7.
 */

import assert from "node:assert/strict";
import { createLab } from "../../lib/lab/lab.ts";

Deno.test("a fork of a 16-page parent costs 35 mmu_update requests in 2 multicalls (+ 2 direct calls)", () => {
  const lab = createLab({ platform: "pv", memoryMiB: 16 });
  const pid = lab.spawn();
  for (let i = 0; i < 16; i++) lab.writeU32(pid, 0x600000 + i * 4096, i);
  const cost = lab.measure(() => lab.fork(pid));
  const pick = (names: string[]) => Object.fromEntries(names.map((n) => [n, cost[n] ?? 0]));
  assert.deepEqual(
    pick([
      "hypercall.traps",
      "multicall.batches",
      "multicall.calls",
      "hypercall.mmu_update",
      "hypercall.mmuext_op",
      "hypercall.update_va_mapping",
      "hypercall.entries",
      "hypercall.rejected",
      "pv.pin",
      "validate.entries",
      "validate.tables",
      "pv.flush.all",
      "pv.flush.typeChange",
      "pv.flush.linear",
      "pvops.flush",
      "pvops.flush.full",
      "guest.pte.set",
      "guest.pte.flags",
      "guest.table.alloc",
    ]),
    {
      "hypercall.traps": 4,
      "multicall.batches": 2,
      "multicall.calls": 2 + 9,
      "hypercall.mmu_update": 4,
      "hypercall.mmuext_op": 5,
      "hypercall.update_va_mapping": 4,
      "hypercall.entries": 44,
      "hypercall.rejected": 0,
      "pv.pin": 4,
      "validate.entries": 41,
      "validate.tables": 4,
      "pv.flush.all": 7,
      "pv.flush.typeChange": 4,
      "pv.flush.linear": 2,
      "pvops.flush": 4,
      "pvops.flush.full": 1,
      "guest.pte.set": 3 + 16, // the kernel's own count: 3 links + 16 child entries
      "guest.pte.flags": 16, // ptep_set_wrprotect of the parent's entries
      "guest.table.alloc": 4,
    },
  );
  // N: the mmu_update requests themselves = completed requests minus the mmuext_op
  // operations and update_va_mapping calls.
  assert.equal(
    cost["hypercall.entries"]! - cost["hypercall.mmuext_op"]! -
      cost["hypercall.update_va_mapping"]!,
    35,
  );
  assert.deepEqual(lab.platform.checkInvariants?.(), []);
});
