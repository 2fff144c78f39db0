/**
 * Platforms: the ways the lab runs one guest: native, and HVM with shadow paging.
 *
 * @module
 */

export * from "./base_platform.ts";
export * from "./hvm_shadow.ts";
export * from "./native.ts";
export * from "./platform.ts";
