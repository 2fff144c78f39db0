/**
 * Machine memory: lazily backed 4 KiB frames, the frame table, the P2M and the EPT built
 * from it, the PV type system's per-frame types and counts, the hypervisor's view of
 * guest-physical memory, and the branded frame and address types.
 *
 * @module
 */

export * from "./ept_tables.ts";
export * from "./frame_table.ts";
export * from "./guest_physical_view.ts";
export * from "./machine_memory.ts";
export * from "./mmio_device.ts";
export * from "./p2m.ts";
export * from "./page_types.ts";
export * from "./types.ts";
