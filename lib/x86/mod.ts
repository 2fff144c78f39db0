/**
 * The hardware: address helpers, the PTE format, paging control registers, the page
 * walker, the TLB, the vCPU shell and the counter registry.
 *
 * @module
 */

export * from "./access.ts";
export * from "./address.ts";
export * from "./decode.ts";
export * from "./interpreter.ts";
export * from "./page_walk.ts";
export * from "./paging_control.ts";
export * from "./physical_memory.ts";
export * from "./prng.ts";
export * from "./pte.ts";
export * from "./stats.ts";
export * from "./tlb.ts";
export * from "./vcpu.ts";
