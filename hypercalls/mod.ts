/**
 * The paravirtual MMU interface of Xen and its hypervisor side: the ABI (hypercall
 * numbers, commands, structures, errnos), the handlers of mmu_update, update_va_mapping,
 * mmuext_op and multicall, the reference and type rules with validation, domain death,
 * and the PV-safety checker (DESIGN.md invariant 4).
 *
 * @module
 */

export * from "./abi.ts";
export * from "./check_pv_safety.ts";
export * from "./do_hypercall.ts";
export * from "./hypercall_table.ts";
export * from "./mmu_update.ts";
export * from "./mmuext_op.ts";
export * from "./mod_entry.ts";
export * from "./multicall.ts";
export * from "./page_refs.ts";
export * from "./pv_domain.ts";
export * from "./relinquish.ts";
export * from "./update_va_mapping.ts";
