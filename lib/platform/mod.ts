/**
 * Platforms: the ways the lab runs one guest: native, paravirtualized (Xen PV), HVM with
 * shadow paging, HVM with hardware-assisted (EPT) paging, and classic trap-and-emulate
 * (pre-VT-x ring compression over shadow paging).
 *
 * @module
 */

export * from "./base_platform.ts";
export * from "./classic.ts";
export * from "./hvm_hap.ts";
export * from "./hvm_shadow.ts";
export * from "./native.ts";
export * from "./platform.ts";
export * from "./pc_board.ts";
export * from "./pv.ts";
