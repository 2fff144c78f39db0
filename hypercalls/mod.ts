/**
 * The paravirtual interface of Xen and its hypervisor side: the ABI (hypercall numbers,
 * commands, structures, errnos), the handlers of mmu_update, update_va_mapping,
 * mmuext_op and multicall, the reference and type rules with validation, domain death,
 * and the PV-safety checker (DESIGN.md invariant 4); and the CPU side: the trap table,
 * the kernel stack, callbacks, iret, bounce frames, event channels, sched_op, physdev_op.
 *
 * @module
 */

export * from "./abi.ts";
export * from "./bounce_frame.ts";
export * from "./callback_op.ts";
export * from "./check_pv_safety.ts";
export * from "./do_hypercall.ts";
export * from "./event_channel_op.ts";
export * from "./hypercall_table.ts";
export * from "./iret.ts";
export * from "./mmu_update.ts";
export * from "./mmuext_op.ts";
export * from "./mod_entry.ts";
export * from "./multicall.ts";
export * from "./page_refs.ts";
export * from "./physdev_op.ts";
export * from "./pv_domain.ts";
export * from "./pv_vcpu.ts";
export * from "./relinquish.ts";
export * from "./sched_op.ts";
export * from "./set_trap_table.ts";
export * from "./stack_switch.ts";
export * from "./update_va_mapping.ts";
export * from "./vcpu_op.ts";
export * from "./xen_version.ts";
