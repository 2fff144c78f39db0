/**
 * The hardware: address helpers, the PTE and EPT formats, paging control registers, the
 * page walker and the 2-D (nested paging) walker, the TLB, the vCPU shell and the counter
 * registry.
 *
 * @module
 */

export * from "./access.ts";
export * from "./address.ts";
export * from "./decode.ts";
export * from "./ept.ts";
export * from "./interpreter.ts";
export * from "./nested_walk.ts";
export * from "./page_walk.ts";
export * from "./paging_control.ts";
export * from "./physical_memory.ts";
export * from "./port_bus.ts";
export * from "./prng.ts";
export * from "./pte.ts";
export * from "./stats.ts";
export * from "./tlb.ts";
export * from "./vcpu.ts";
