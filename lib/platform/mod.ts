/**
 * Platforms: the ways the lab runs one guest (native here; pv, hvm-shadow and hvm-hap
 * build on the same interface).
 *
 * @module
 */

export * from "./native.ts";
export * from "./platform.ts";
