/**
 * MMU benchmarks: the TLB-hit access path, full 4-level walks, and a raw typed-array
 * baseline so the ratio can be quoted. Each iteration does {@link N} operations; divide
 * the reported time per iteration by N for the time per access.
 *
 * Run: deno task bench
 */

import {
  ACCESS_READ,
  MachineMemory,
  PageWalker,
  PagingControl,
  PTE_PRESENT,
  PTE_USER,
  PTE_WRITABLE,
  pteHigh,
  pteLow,
  Stats,
  Vcpu,
} from "../mod.ts";

/** Operations per benchmark iteration. */
const N = 4096;
const PAGES = 64; // 64 pages (256 KiB): fits the default TLB, so every access hits.

function buildAddressSpace(stats: Stats): { memory: MachineMemory; ctl: PagingControl } {
  const memory = new MachineMemory({ frames: 1024, stats });
  const flags = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
  const link = (entry: number, to: number) => {
    memory.write32(entry, pteLow(to, flags));
    memory.write32(entry + 4, pteHigh(to));
  };
  link(0x1000, 0x2000);
  link(0x2000, 0x3000);
  link(0x3000, 0x4000);
  for (let i = 0; i < 512; i++) {
    link(0x4000 + i * 8, 0x100000 + i * 0x1000);
    memory.write32(0x100000 + i * 0x1000, i); // touched memory, as a guest's would be
  }
  return { memory, ctl: new PagingControl({ cr3: 0x1000, cpl: 3 }) };
}

// Pseudo-random offsets over the working set, computed once.
const offsets = new Float64Array(N);
{
  let x = 12345;
  for (let i = 0; i < N; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    offsets[i] = ((x >>> 8) % (PAGES * 1024)) * 4;
  }
}

const hitStats = new Stats();
const hit = buildAddressSpace(hitStats);
const cpu = new Vcpu(hit.memory, hit.ctl, hitStats);
for (let i = 0; i < N; i++) cpu.read32(offsets[i]!); // warm the TLB

Deno.bench("tlb-hit read", { group: "access" }, () => {
  let sum = 0;
  for (let i = 0; i < N; i++) {
    cpu.read32(offsets[i]!);
    sum += cpu.data;
  }
  if (sum === -1) throw new Error("unreachable");
});

for (let i = 0; i < N; i++) cpu.write32(offsets[i]!, i); // fill the TLB with dirty entries
Deno.bench("tlb-hit write", { group: "access" }, () => {
  for (let i = 0; i < N; i++) cpu.write32(offsets[i]!, i);
});

const raw = new Uint32Array(PAGES * 1024);
Deno.bench("baseline typed-array load", { group: "access", baseline: true }, () => {
  let sum = 0;
  for (let i = 0; i < N; i++) sum += raw[offsets[i]! >>> 2]!;
  if (sum === -1) throw new Error("unreachable");
});

const walkStats = new Stats();
const walkSpace = buildAddressSpace(walkStats);
const walker = new PageWalker(walkSpace.memory, walkStats);
Deno.bench("4-level walk", { group: "walk" }, () => {
  let sum = 0;
  for (let i = 0; i < N; i++) sum += walker.walk(walkSpace.ctl, offsets[i]!, ACCESS_READ, null);
  if (sum === -1) throw new Error("unreachable");
});
