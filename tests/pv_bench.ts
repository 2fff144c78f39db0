/**
 * PV benchmarks: guest accesses per second on `pv` (the hardware walks the guest's own
 * tables: no shadow, no exits), and hypercalls per second: a single-entry mmu_update as
 * the kernel issues it outside lazy mode (the request written into the kernel's buffer
 * through the vCPU, copied in through the guest's tables, validated), a 31-request batch
 * (the most one multicall argument buffer holds), update_va_mapping with INVLPG, and a
 * fork (35 mmu_update requests in 2 multicalls, see tests/hypercalls/fork_cost_test.ts).
 * Divide the time per iteration by the operations per iteration named in each benchmark.
 *
 * Run: deno bench --allow-read tests/pv_bench.ts
 */

import { createLab, PROT_READ, PROT_WRITE } from "../mod.ts";
import { UVMF_INVLPG } from "../hypercalls/abi.ts";
import { DIRECT_MAP_BASE } from "../lib/guest/layout.ts";
import { bootPvGuest, HEAP, type MmuRequest, pte, walkMachine } from "./hypercalls/_pv_fixture.ts";

const RW = PROT_READ | PROT_WRITE;
/** Accesses per touch iteration. */
const ACCESSES = 65536;
/** Hypercalls per hypercall iteration. */
const CALLS = 1024;

const touch = createLab({ platform: "pv", memoryMiB: 256, seed: 1 });
const pid = touch.spawn();
const small = touch.mmap(pid, 256 * 4096, RW);
touch.touch(pid, { start: small, length: 256 * 4096, kind: "write" });
const large = touch.mmap(pid, 16384 * 4096, RW);
touch.touch(pid, { start: large, length: 16384 * 4096, kind: "write" });

Deno.bench(`pv: sequential word reads over 1 MiB, TLB-resident (${ACCESSES} accesses)`, () => {
  touch.touch(pid, { start: small, length: 256 * 4096, stride: 16, count: ACCESSES });
});

Deno.bench(`pv: random reads over 64 MiB, TLB-missing (${ACCESSES} accesses)`, () => {
  touch.touch(pid, { start: large, length: 16384 * 4096, pattern: "random", count: ACCESSES });
});

// One l1e of the fixture's process, switched between two read-only mappings by the
// kernel's own set_pte (one mmu_update hypercall each, outside lazy mode).
const guest = bootPvGuest();
const entryGpa = guest.kernel.leafEntryAddress(guest.pid, HEAP + 16 * 4096);
const frameA = 900 * 4096;
const frameB = 901 * 4096;
Deno.bench(`pv: set_pte outside lazy mode, 1-entry mmu_update (${CALLS} hypercalls)`, () => {
  const ops = guest.kernel.ops;
  for (let i = 0; i < CALLS; i++) ops.setEntry(1, entryGpa, (i & 1 ? frameA : frameB) | 0x5, 0);
});

// 31 requests in one mmu_update: map, then clear, 31 free l1es of the same L1.
const l1 = walkMachine(guest.d, HEAP).table[1]!;
const map: MmuRequest[] = [];
const clear: MmuRequest[] = [];
for (let i = 0; i < 31; i++) {
  const [lo, hi] = pte(guest.platform.p2mList[900 + i]!, 0x5);
  map.push({ ma: l1 * 4096 + (100 + i) * 8, lo, hi });
  clear.push({ ma: l1 * 4096 + (100 + i) * 8, lo: 0 });
}
Deno.bench(`pv: mmu_update of 31 requests (${CALLS} hypercalls, 31744 entries)`, () => {
  for (let i = 0; i < CALLS / 2; i++) {
    guest.hostile.mmuUpdate(map);
    guest.hostile.mmuUpdate(clear);
  }
});

const uvmFrame = guest.platform.p2mList[950]!;
Deno.bench(`pv: update_va_mapping RO/RW with UVMF_INVLPG (${CALLS} hypercalls)`, () => {
  const va = DIRECT_MAP_BASE + 950 * 4096;
  for (let i = 0; i < CALLS; i++) {
    guest.hostile.updateVaMapping(va, ...pte(uvmFrame, i & 1 ? 0x163 : 0x121, true), UVMF_INVLPG);
  }
});

const forkLab = createLab({ platform: "pv", memoryMiB: 64, seed: 1 });
const parent = forkLab.spawn();
for (let i = 0; i < 16; i++) forkLab.writeU32(parent, 0x600000 + i * 4096, i);
Deno.bench("pv: fork + exit + wait of a 16-page parent (1 process)", () => {
  const child = forkLab.fork(parent);
  forkLab.exit(child);
  forkLab.wait(child, parent);
});
