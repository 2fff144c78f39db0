/**
 * vmlab: an x86 memory-virtualization lab. Run the same guest work natively, as a Xen-style
 * paravirtual (PV) guest, as an HVM guest with shadow paging, and with hardware nested
 * paging, and see where the costs come from.
 *
 * This release holds the hardware every platform shares: machine memory, the IA-32e page
 * walker (Intel SDM Vol. 3A ch. 4), a set-associative TLB with PCIDs and global pages, and
 * a vCPU whose accesses go TLB -> walk -> fault.
 *
 * ## Glossary
 * | word | meaning |
 * | --- | --- |
 * | GVA | guest virtual address (a 48-bit linear value here) |
 * | GPA / GFN | guest-physical address / frame number |
 * | MA / MFN | machine (host-physical) address / frame number |
 * | l1e .. l4e | page-table entries by level: l1 = 4 KiB leaf table, l4 = PML4 |
 * | PCID | process-context identifier tagging TLB entries (CR4.PCIDE) |
 * | A / D | Accessed and Dirty flags the walker sets in memory |
 * | #PF error code | P, W/R, U/S, RSVD, I/D, PK bits (SDM 4.7) |
 *
 * @example Walk a 4-level table and read through the TLB
 * ```ts
 * import { MachineMemory, PagingControl, Stats, Vcpu, pteLow, pteHigh, PTE_PRESENT,
 *   PTE_WRITABLE, PTE_USER } from "./mod.ts";
 * import assert from "node:assert/strict";
 *
 * const stats = new Stats();
 * const memory = new MachineMemory({ frames: 64, stats });
 * const flags = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
 * const link = (entry: number, to: number) => {
 *   memory.write32(entry, pteLow(to, flags));
 *   memory.write32(entry + 4, pteHigh(to));
 * };
 * link(0x1000, 0x2000); // l4e[0]
 * link(0x2000, 0x3000); // l3e[0]
 * link(0x3000, 0x4000); // l2e[0]
 * link(0x4000, 0x8000); // l1e[0]: va 0x0 -> pa 0x8000
 * const cpu = new Vcpu(memory, new PagingControl({ cr3: 0x1000, cpl: 3 }), stats);
 * assert.ok(cpu.write(0x20, 8, 0x11223344, 0x55667788));
 * assert.ok(cpu.read(0x20, 8));
 * assert.deepEqual([cpu.data, cpu.dataHi], [0x11223344, 0x55667788]);
 * assert.equal(memory.read32(0x8020), 0x11223344);
 * assert.equal(stats.get("walk.refs"), 4); // one 4-level walk, then a TLB hit
 * ```
 *
 * @module
 */

export * from "./lib/x86/mod.ts";
export * from "./lib/memory/mod.ts";
export * from "./lib/shadow/mod.ts";
export * from "./hypercalls/mod.ts";
export * from "./lib/platform/mod.ts";
export * from "./lib/guest/mod.ts";
export * from "./lib/lab/mod.ts";
