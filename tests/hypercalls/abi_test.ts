/**
 * The ABI numbers against Xen's public headers (xen/include/public/xen.h, errno.h), as
 * listed in research/xen-kvm-mechanisms.md section 2.
 */

import assert from "node:assert/strict";
import * as abi from "../../hypercalls/abi.ts";

Deno.test("hypercall numbers are Xen's", () => {
  assert.deepEqual(
    [
      abi.HYPERVISOR_SET_TRAP_TABLE,
      abi.HYPERVISOR_MMU_UPDATE,
      abi.HYPERVISOR_MULTICALL,
      abi.HYPERVISOR_UPDATE_VA_MAPPING,
      abi.HYPERVISOR_VM_ASSIST,
      abi.HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN,
      abi.HYPERVISOR_MMUEXT_OP,
    ],
    [0, 1, 13, 14, 21, 22, 26],
  );
});

Deno.test("mmu_update commands, UVMF flags and struct sizes are Xen's", () => {
  assert.deepEqual(
    [
      abi.MMU_NORMAL_PT_UPDATE,
      abi.MMU_MACHPHYS_UPDATE,
      abi.MMU_PT_UPDATE_PRESERVE_AD,
      abi.MMU_PT_UPDATE_NO_TRANSLATE,
      abi.MMU_UPDATE_PREEMPTED,
    ],
    [0, 1, 2, 3, 0x80000000],
  );
  assert.deepEqual(
    [abi.UVMF_NONE, abi.UVMF_TLB_FLUSH, abi.UVMF_INVLPG, abi.UVMF_FLUSHTYPE_MASK],
    [0, 1, 2, 3],
  );
  assert.deepEqual([abi.UVMF_MULTI, abi.UVMF_LOCAL, abi.UVMF_ALL], [0, 0, 4]);
  assert.deepEqual([abi.MMU_UPDATE_SIZE, abi.MMUEXT_OP_SIZE, abi.MULTICALL_ENTRY_SIZE], [
    16,
    24,
    64,
  ]);
  assert.deepEqual([abi.DOMID_SELF, abi.DOMID_IO, abi.DOMID_XEN_ID], [0x7ff0, 0x7ff1, 0x7ff2]);
});

Deno.test("mmuext_op commands are Xen's", () => {
  assert.deepEqual(
    [
      abi.MMUEXT_PIN_L1_TABLE,
      abi.MMUEXT_PIN_L2_TABLE,
      abi.MMUEXT_PIN_L3_TABLE,
      abi.MMUEXT_PIN_L4_TABLE,
      abi.MMUEXT_UNPIN_TABLE,
      abi.MMUEXT_NEW_BASEPTR,
      abi.MMUEXT_TLB_FLUSH_LOCAL,
      abi.MMUEXT_INVLPG_LOCAL,
      abi.MMUEXT_TLB_FLUSH_MULTI,
      abi.MMUEXT_INVLPG_MULTI,
      abi.MMUEXT_TLB_FLUSH_ALL,
      abi.MMUEXT_INVLPG_ALL,
      abi.MMUEXT_FLUSH_CACHE,
      abi.MMUEXT_SET_LDT,
      abi.MMUEXT_NEW_USER_BASEPTR,
      abi.MMUEXT_CLEAR_PAGE,
      abi.MMUEXT_COPY_PAGE,
      abi.MMUEXT_FLUSH_CACHE_GLOBAL,
      abi.MMUEXT_MARK_SUPER,
      abi.MMUEXT_UNMARK_SUPER,
    ],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20],
  );
});

Deno.test("errnos are Xen's (errno.h), and format as their names", () => {
  assert.deepEqual(
    [
      abi.XEN_EPERM,
      abi.XEN_ENOENT,
      abi.XEN_ESRCH,
      abi.XEN_ENOMEM,
      abi.XEN_EACCES,
      abi.XEN_EFAULT,
      abi.XEN_EBUSY,
      abi.XEN_EINVAL,
      abi.XEN_ENOSYS,
      abi.XEN_EOPNOTSUPP,
    ],
    [1, 2, 3, 12, 13, 14, 16, 22, 38, 95],
  );
  assert.equal(abi.formatHypercallResult(-abi.XEN_EBUSY), "-EBUSY");
  assert.equal(abi.formatHypercallResult(-200), "-200");
  assert.equal(abi.formatHypercallResult(3), "3");
});
