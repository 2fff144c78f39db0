/**
 * The lab: a guest kernel booted on a platform, and the scenario API.
 *
 * @module
 */

export * from "./lab.ts";
