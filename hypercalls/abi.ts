/**
 * The paravirtual MMU ABI as Xen's public headers define it (`xen/include/public/xen.h`,
 * `xen/include/public/errno.h`, whose enum names the values `XEN_E*`): hypercall numbers, the commands of `mmu_update`,
 * `mmuext_op` and `update_va_mapping`, the structures' layouts, the special domain ids and
 * the negative errno values hypercalls return. Every number here is Xen's.
 *
 * The 64-bit calling convention: RAX = hypercall number; RDI, RSI, RDX, R10, R8 =
 * arguments 1..5; RAX = the result (0 or a count on success, -errno on failure).
 *
 * ```
 * struct mmu_update (16 bytes)           struct mmuext_op (24 bytes)
 *  0  u64 ptr   machine address | cmd     0  u32 cmd, u32 pad
 *  8  u64 val   new entry                 8  u64 arg1  mfn / linear_addr
 *                                        16  u64 arg2  nr_ents / vcpumask / src_mfn
 * struct multicall_entry (64 bytes)
 *  0  u64 op    8  u64 result   16..63  u64 args[6]
 * ```
 *
 * @module
 */

/** __HYPERVISOR_set_trap_table. */
export const HYPERVISOR_SET_TRAP_TABLE = 0;
/** __HYPERVISOR_mmu_update(reqs, count, pdone, foreigndom). */
export const HYPERVISOR_MMU_UPDATE = 1;
/** __HYPERVISOR_multicall(call_list, nr_calls). */
export const HYPERVISOR_MULTICALL = 13;
/** __HYPERVISOR_update_va_mapping(va, val, flags). */
export const HYPERVISOR_UPDATE_VA_MAPPING = 14;
/** __HYPERVISOR_vm_assist. */
export const HYPERVISOR_VM_ASSIST = 21;
/** __HYPERVISOR_update_va_mapping_otherdomain(va, val, flags, domid). */
export const HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN = 22;
/** __HYPERVISOR_mmuext_op(uops, count, pdone, foreigndom). */
export const HYPERVISOR_MMUEXT_OP = 26;

/** Names of the hypercalls this lab serves, by number (for counters and messages). */
export const HYPERCALL_NAMES: Readonly<Record<number, string>> = {
  [HYPERVISOR_MMU_UPDATE]: "mmu_update",
  [HYPERVISOR_MULTICALL]: "multicall",
  [HYPERVISOR_UPDATE_VA_MAPPING]: "update_va_mapping",
  [HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN]: "update_va_mapping_otherdomain",
  [HYPERVISOR_MMUEXT_OP]: "mmuext_op",
};

/** mmu_update command in ptr bits 2..0: checked `*ptr = val`. */
export const MMU_NORMAL_PT_UPDATE = 0;
/** mmu_update command: M2P[ptr >> 12] = val. */
export const MMU_MACHPHYS_UPDATE = 1;
/** mmu_update command: as NORMAL, but the A/D bits already in the entry are ORed in. */
export const MMU_PT_UPDATE_PRESERVE_AD = 2;
/** mmu_update command: as NORMAL, without translating val through FD's P2M. */
export const MMU_PT_UPDATE_NO_TRANSLATE = 3;
/** A continuation's count carries this bit (never produced here: nothing is preempted). */
export const MMU_UPDATE_PREEMPTED = 0x80000000;

/** MMUEXT_PIN_L1_TABLE: pin arg1.mfn as an L1 (validating it first). */
export const MMUEXT_PIN_L1_TABLE = 0;
/** MMUEXT_PIN_L2_TABLE. */
export const MMUEXT_PIN_L2_TABLE = 1;
/** MMUEXT_PIN_L3_TABLE. */
export const MMUEXT_PIN_L3_TABLE = 2;
/** MMUEXT_PIN_L4_TABLE. */
export const MMUEXT_PIN_L4_TABLE = 3;
/** MMUEXT_UNPIN_TABLE. */
export const MMUEXT_UNPIN_TABLE = 4;
/** MMUEXT_NEW_BASEPTR: load arg1.mfn as the (kernel) top level. */
export const MMUEXT_NEW_BASEPTR = 5;
/** MMUEXT_TLB_FLUSH_LOCAL. */
export const MMUEXT_TLB_FLUSH_LOCAL = 6;
/** MMUEXT_INVLPG_LOCAL: flush arg1.linear_addr. */
export const MMUEXT_INVLPG_LOCAL = 7;
/** MMUEXT_TLB_FLUSH_MULTI: flush the vCPUs in the bitmap at arg2. */
export const MMUEXT_TLB_FLUSH_MULTI = 8;
/** MMUEXT_INVLPG_MULTI. */
export const MMUEXT_INVLPG_MULTI = 9;
/** MMUEXT_TLB_FLUSH_ALL: every vCPU of the domain. */
export const MMUEXT_TLB_FLUSH_ALL = 10;
/** MMUEXT_INVLPG_ALL. */
export const MMUEXT_INVLPG_ALL = 11;
/** MMUEXT_FLUSH_CACHE (needs cache-flush permission). */
export const MMUEXT_FLUSH_CACHE = 12;
/** MMUEXT_SET_LDT. */
export const MMUEXT_SET_LDT = 13;
/** MMUEXT_NEW_USER_BASEPTR: the top level used in user mode (64-bit PV). */
export const MMUEXT_NEW_USER_BASEPTR = 15;
/** MMUEXT_CLEAR_PAGE. */
export const MMUEXT_CLEAR_PAGE = 16;
/** MMUEXT_COPY_PAGE. */
export const MMUEXT_COPY_PAGE = 17;
/** MMUEXT_FLUSH_CACHE_GLOBAL. */
export const MMUEXT_FLUSH_CACHE_GLOBAL = 18;
/** MMUEXT_MARK_SUPER (PV superpages were removed: -EOPNOTSUPP). */
export const MMUEXT_MARK_SUPER = 19;
/** MMUEXT_UNMARK_SUPER. */
export const MMUEXT_UNMARK_SUPER = 20;

/** update_va_mapping flags: no flush. */
export const UVMF_NONE = 0;
/** Flush the entire TLB(s). */
export const UVMF_TLB_FLUSH = 1;
/** Flush only the page of `va`. */
export const UVMF_INVLPG = 2;
/** The flush-type bits. */
export const UVMF_FLUSHTYPE_MASK = 3;
/** Flush a subset of vCPUs (OR in a pointer to the bitmap). */
export const UVMF_MULTI = 0;
/** Flush the local vCPU only. */
export const UVMF_LOCAL = 0;
/** Flush every vCPU of the domain. */
export const UVMF_ALL = 4;

/** DOMID_SELF: the calling domain. */
export const DOMID_SELF = 0x7ff0;
/** DOMID_IO: only I/O mappings. */
export const DOMID_IO = 0x7ff1;
/** DOMID_XEN: Xen's own heap (privileged callers only). */
export const DOMID_XEN_ID = 0x7ff2;

/** Bytes of struct mmu_update. */
export const MMU_UPDATE_SIZE = 16;
/** Bytes of struct mmuext_op on x86-64. */
export const MMUEXT_OP_SIZE = 24;
/** Bytes of struct multicall_entry on x86-64. */
export const MULTICALL_ENTRY_SIZE = 64;

/** XEN_EPERM (1): operation not permitted. Xen's errno.h names its values XEN_E*. */
export const XEN_EPERM = 1;
/** XEN_ENOENT. */
export const XEN_ENOENT = 2;
/** XEN_ESRCH: no such domain. */
export const XEN_ESRCH = 3;
/** XEN_ENOMEM. */
export const XEN_ENOMEM = 12;
/** XEN_EACCES. */
export const XEN_EACCES = 13;
/** XEN_EFAULT: bad guest address. */
export const XEN_EFAULT = 14;
/** XEN_EBUSY: the frame cannot take the reference (wrong type, owner, count). */
export const XEN_EBUSY = 16;
/** XEN_EINVAL. */
export const XEN_EINVAL = 22;
/** XEN_ENOSYS: no such hypercall or command. */
export const XEN_ENOSYS = 38;
/** XEN_EOPNOTSUPP. */
export const XEN_EOPNOTSUPP = 95;

const ERRNO_NAMES: Readonly<Record<number, string>> = {
  [XEN_EPERM]: "EPERM",
  [XEN_ENOENT]: "ENOENT",
  [XEN_ESRCH]: "ESRCH",
  [XEN_ENOMEM]: "ENOMEM",
  [XEN_EACCES]: "EACCES",
  [XEN_EFAULT]: "EFAULT",
  [XEN_EBUSY]: "EBUSY",
  [XEN_EINVAL]: "EINVAL",
  [XEN_ENOSYS]: "ENOSYS",
  [XEN_EOPNOTSUPP]: "EOPNOTSUPP",
};

/**
 * "-EINVAL" for -22, "0" for 0, the number otherwise: a hypercall result for messages.
 *
 * @example
 * ```ts
 * import { formatHypercallResult } from "./abi.ts";
 * console.assert(formatHypercallResult(-16) === "-EBUSY");
 * ```
 */
export function formatHypercallResult(rc: number): string {
  if (rc >= 0) return String(rc);
  const name = ERRNO_NAMES[-rc];
  return name === undefined ? String(rc) : `-${name}`;
}
