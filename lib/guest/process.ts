/**
 * A process: identity, parent, address space, life-cycle state and exit status.
 *
 * @module
 */

import type { AddressSpace } from "./address_space.ts";

/** Life-cycle states. */
export type ProcessState = "running" | "zombie";

/**
 * One process of the guest.
 *
 * @example
 * ```ts
 * import { Process } from "./process.ts";
 * const p = new Process(1, 0, 7, null);
 * console.assert(p.state === "running");
 * ```
 */
export class Process {
  /** Process id (1, 2, ...). */
  readonly pid: number;
  /** Parent's pid; 0 when the lab itself is the parent (it reaps with wait). */
  parentPid: number;
  /** Guest frame of the task's kernel page (task struct and kernel stack). */
  readonly taskGfn: number;
  /** The address space; null once the process has exited. */
  mm: AddressSpace | null;
  /** "running" (runnable) or "zombie" (exited, not yet reaped). */
  state: ProcessState = "running";
  /** Exit code given to exit(). */
  exitCode = 0;
  /** Signal that killed the process (SIGSEGV, SIGKILL), or 0. */
  signal = 0;
  /** Why the process was killed, for reports; "" if it exited. */
  killReason = "";

  /** Process `pid` with parent `parentPid`, task page `taskGfn` and space `mm`. */
  constructor(pid: number, parentPid: number, taskGfn: number, mm: AddressSpace | null) {
    this.pid = pid;
    this.parentPid = parentPid;
    this.taskGfn = taskGfn;
    this.mm = mm;
  }
}
