/**
 * The hypervisor's entry for a hypercall: counts the entry and dispatches on the number,
 * multicall included.
 *
 * @module
 */

import { HYPERVISOR_MULTICALL, XEN_EFAULT } from "./abi.ts";
import { callHandler, type HypercallArgs } from "./hypercall_table.ts";
import { doMulticall } from "./multicall.ts";
import { HC_REJECTED, HC_TRAPS, type PvDomain } from "./pv_domain.ts";

/**
 * Hypercall `op` from domain `d` with `args` (RDI, RSI, RDX, R10, R8): the handler's
 * result, as RAX gets it.
 *
 * @example An unknown hypercall is -ENOSYS
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { doHypercall } from "./do_hypercall.ts";
 * import { HypercallArgs } from "./hypercall_table.ts";
 * import { XEN_ENOSYS } from "./abi.ts";
 * const platform = new PvPlatform({ frames: 64 });
 * console.assert(doHypercall(platform.domain, 99, new HypercallArgs()) === -XEN_ENOSYS);
 * ```
 */
export function doHypercall(d: PvDomain, op: number, args: HypercallArgs): number {
  d.counts[HC_TRAPS]++;
  const trace = d.stats.trace;
  if (trace !== null) trace("hypercall.traps", args.linear(0), op);
  if (op !== HYPERVISOR_MULTICALL) return callHandler(d, op, args);
  const list = args.linear(0);
  if (list < 0) {
    d.counts[HC_REJECTED]++;
    return -XEN_EFAULT;
  }
  return doMulticall(d, list, args.u32(1));
}
