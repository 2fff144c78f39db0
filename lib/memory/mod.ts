/**
 * Machine memory: lazily backed 4 KiB frames, the frame table, and the branded frame
 * and address types.
 *
 * @module
 */

export * from "./frame_table.ts";
export * from "./machine_memory.ts";
export * from "./types.ts";
