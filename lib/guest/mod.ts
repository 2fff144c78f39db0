/**
 * The guest kernel (a small Linux-like OS) and its paging-ops backends.
 *
 * @module
 */

export * from "./address_space.ts";
export * from "./entry_text.ts";
export * from "./frame_allocator.ts";
export * from "./guest_os.ts";
export * from "./kernel.ts";
export * from "./kernel_code.ts";
export * from "./kernel_text.ts";
export * from "./layout.ts";
export * from "./native_paging_ops.ts";
export * from "./paging_ops.ts";
export * from "./process.ts";
export * from "./programs.ts";
export * from "./pv_paging_ops.ts";
export * from "./shared_object.ts";
export * from "./swap_device.ts";
export * from "./vma.ts";
