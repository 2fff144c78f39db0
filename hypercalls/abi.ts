/**
 * The paravirtual ABI as Xen's public headers define it (`xen/include/public/xen.h`,
 * `xen/include/public/errno.h`, whose enum names the values `XEN_E*`): hypercall numbers, the commands of `mmu_update`,
 * `mmuext_op` and `update_va_mapping`, the structures' layouts, the special domain ids and
 * the negative errno values hypercalls return; and the CPU side (`callback.h`,
 * `event_channel.h`, `vcpu.h`, `sched.h`, `physdev.h`, `version.h`): the commands and
 * structures of the trap table, callbacks, event channels and the iret frame. Every number
 * here is Xen's.
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
 *
 * struct trap_info (16 bytes)            struct callback_register (16 bytes)
 *  0  u8 vector  1  u8 flags              0  u16 type  2  u16 flags
 *  2  u16 cs     8  u64 address            8  u64 address
 *    flags: bits 1..0 DPL, bit 2 = mask events on entry
 * struct iret_context (72 bytes, on the guest stack at RSP)
 *  0 rax  8 r11  16 rcx  24 flags  32 rip  40 cs  48 rflags  56 rsp  64 ss
 * struct vcpu_register_vcpu_info         struct evtchn_bind_virq / _pirq
 *  0  u64 mfn  8  u32 offset  12 u32 rsvd   0  u32 virq|pirq  4  u32 vcpu|flags  8  u32 port
 * ```
 *
 * @module
 */

/** __HYPERVISOR_set_trap_table(trap_info[]): the virtual IDT. */
export const HYPERVISOR_SET_TRAP_TABLE = 0;
/** __HYPERVISOR_mmu_update(reqs, count, pdone, foreigndom). */
export const HYPERVISOR_MMU_UPDATE = 1;
/** __HYPERVISOR_stack_switch(ss, sp): the kernel stack for entries from user mode. */
export const HYPERVISOR_STACK_SWITCH = 3;
/** __HYPERVISOR_multicall(call_list, nr_calls). */
export const HYPERVISOR_MULTICALL = 13;
/** __HYPERVISOR_update_va_mapping(va, val, flags). */
export const HYPERVISOR_UPDATE_VA_MAPPING = 14;
/** __HYPERVISOR_xen_version(cmd, arg). */
export const HYPERVISOR_XEN_VERSION = 17;
/** __HYPERVISOR_vm_assist. */
export const HYPERVISOR_VM_ASSIST = 21;
/** __HYPERVISOR_update_va_mapping_otherdomain(va, val, flags, domid). */
export const HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN = 22;
/** __HYPERVISOR_iret: struct iret_context on the guest stack. */
export const HYPERVISOR_IRET = 23;
/** __HYPERVISOR_vcpu_op(cmd, vcpuid, arg). */
export const HYPERVISOR_VCPU_OP = 24;
/** __HYPERVISOR_mmuext_op(uops, count, pdone, foreigndom). */
export const HYPERVISOR_MMUEXT_OP = 26;
/** __HYPERVISOR_sched_op(cmd, arg). */
export const HYPERVISOR_SCHED_OP = 29;
/** __HYPERVISOR_callback_op(cmd, arg). */
export const HYPERVISOR_CALLBACK_OP = 30;
/** __HYPERVISOR_event_channel_op(cmd, arg). */
export const HYPERVISOR_EVENT_CHANNEL_OP = 32;
/** __HYPERVISOR_physdev_op(cmd, arg). */
export const HYPERVISOR_PHYSDEV_OP = 33;
/** NR_hypercalls: RAX at or above it is -ENOSYS without a handler (entry.S bad_hypercall). */
export const NR_HYPERCALLS = 64;

/** Names of the hypercalls this lab serves, by number (for counters and messages). */
export const HYPERCALL_NAMES: Readonly<Record<number, string>> = {
  [HYPERVISOR_SET_TRAP_TABLE]: "set_trap_table",
  [HYPERVISOR_MMU_UPDATE]: "mmu_update",
  [HYPERVISOR_STACK_SWITCH]: "stack_switch",
  [HYPERVISOR_MULTICALL]: "multicall",
  [HYPERVISOR_UPDATE_VA_MAPPING]: "update_va_mapping",
  [HYPERVISOR_XEN_VERSION]: "xen_version",
  [HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN]: "update_va_mapping_otherdomain",
  [HYPERVISOR_IRET]: "iret",
  [HYPERVISOR_VCPU_OP]: "vcpu_op",
  [HYPERVISOR_MMUEXT_OP]: "mmuext_op",
  [HYPERVISOR_SCHED_OP]: "sched_op",
  [HYPERVISOR_CALLBACK_OP]: "callback_op",
  [HYPERVISOR_EVENT_CHANNEL_OP]: "event_channel_op",
  [HYPERVISOR_PHYSDEV_OP]: "physdev_op",
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
/** XEN_EEXIST: already bound (a VIRQ or PIRQ with an event channel). */
export const XEN_EEXIST = 17;
/** XEN_EINVAL. */
export const XEN_EINVAL = 22;
/** XEN_ENOSPC: no free event-channel port. */
export const XEN_ENOSPC = 28;
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
  [XEN_EEXIST]: "EEXIST",
  [XEN_EINVAL]: "EINVAL",
  [XEN_ENOSPC]: "ENOSPC",
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

// ---------------------------------------------------------------------------------------
// The CPU side: callbacks, trap table, iret, events, scheduling (xen/include/public/).
// ---------------------------------------------------------------------------------------

/** Bytes of struct trap_info. */
export const TRAP_INFO_SIZE = 16;
/** trap_info.flags bits 1..0: the DPL an INT n needs (TI_GET_DPL). */
export const TI_DPL_MASK = 3;
/** trap_info.flags bit 2: events are masked on entry to the handler (TI_GET_IF). */
export const TI_MASK_EVENTS = 4;
/** Bytes of struct iret_context: rax, r11, rcx, flags, rip, cs, rflags, rsp, ss. */
export const IRET_CONTEXT_SIZE = 72;
/** iret_context.flags: return as from a SYSCALL (RCX, R11 not restored). xen.h. */
export const VGCF_IN_SYSCALL = 0x100;

/** XENVER_version: returns major << 16 | minor. version.h. */
export const XENVER_VERSION = 0;
/** The Xen release this lab's hypervisor claims: 4.19. */
export const XEN_MAJOR_VERSION = 4;
/** Minor version. */
export const XEN_MINOR_VERSION = 19;

/** VCPUOP_register_vcpu_info: place vcpu_info at {mfn, offset}. vcpu.h. */
export const VCPUOP_REGISTER_VCPU_INFO = 10;
/** Bytes of struct vcpu_register_vcpu_info. */
export const VCPU_REGISTER_VCPU_INFO_SIZE = 16;

/** SCHEDOP_yield. sched.h. */
export const XEN_SCHEDOP_YIELD = 0;
/** SCHEDOP_block: enable event delivery, block until an event is pending. */
export const XEN_SCHEDOP_BLOCK = 1;

/** CALLBACKOP_register. callback.h. */
export const CALLBACKOP_REGISTER = 0;
/** CALLBACKOP_unregister. */
export const CALLBACKOP_UNREGISTER = 1;
/** CALLBACKTYPE_event: the event-channel upcall. */
export const CALLBACKTYPE_EVENT = 0;
/** CALLBACKTYPE_failsafe: Xen cannot return to the guest's state. */
export const CALLBACKTYPE_FAILSAFE = 1;
/** CALLBACKTYPE_syscall: SYSCALL from 64-bit user mode. */
export const CALLBACKTYPE_SYSCALL = 2;
/** CALLBACKTYPE_nmi. */
export const CALLBACKTYPE_NMI = 4;
/** CALLBACKTYPE_sysenter. */
export const CALLBACKTYPE_SYSENTER = 5;
/** CALLBACKTYPE_syscall32. */
export const CALLBACKTYPE_SYSCALL32 = 7;
/** callback_register.flags: mask events on entry (failsafe and syscall only). */
export const CALLBACKF_MASK_EVENTS = 1;

/** EVTCHNOP_bind_virq. event_channel.h. */
export const EVTCHNOP_BIND_VIRQ = 1;
/** EVTCHNOP_bind_pirq. */
export const EVTCHNOP_BIND_PIRQ = 2;
/** VIRQ_TIMER: the vCPU's timer (a per-vCPU VIRQ). xen.h. */
export const VIRQ_TIMER = 0;
/** NR_VIRQS. */
export const NR_VIRQS = 24;

/** PHYSDEVOP_set_iopl {u32 iopl}: the vCPU's virtual I/O privilege level. physdev.h. */
export const PHYSDEVOP_SET_IOPL = 6;
/** PHYSDEVOP_eoi {u32 irq}: end of interrupt for a PIRQ. */
export const PHYSDEVOP_EOI = 12;
