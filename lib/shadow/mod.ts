/**
 * The shadow core: shadow page tables built on demand from the guest's own, hidden vs
 * genuine faults, emulate-on-write, unshadowing, the pool, and the consistency checker.
 *
 * @module
 */

export * from "./check_shadows.ts";
export * from "./emulate_mmio.ts";
export * from "./emulate_pt_write.ts";
export * from "./shadow_cr3.ts";
export * from "./shadow_fault.ts";
export * from "./shadow_invlpg.ts";
export * from "./shadow_mmu.ts";
