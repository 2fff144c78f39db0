/**
 * Invariant 4 of DESIGN.md (PV safety), checked from scratch: walks every table frame of
 * the domain that holds a validated table type and recounts the references its entries
 * hold, adds pins, CR3, the vcpu_info frame and the allocation reference, and compares
 * with the frame table.
 * Also checks that no present entry maps a frame of another domain (or I/O memory without
 * permission), that no table frame is mapped writable by an entry or by a TLB entry, and
 * that upper entries point at validated tables of the right level.
 *
 * @module
 */

import { TLB_RIGHTS_MASK } from "../lib/x86/tlb.ts";
import { RIGHTS_WRITABLE } from "../lib/x86/paging_control.ts";
import { PGT_L1, PGT_L4, PGT_NAMES, PGT_WRITABLE } from "../lib/memory/page_types.ts";
import { isGuestL4Slot, pteMfn } from "./page_refs.ts";
import type { PvDomain } from "./pv_domain.ts";

/**
 * The violations of PV safety in domain `d`, as sentences (empty when it holds).
 *
 * @example A freshly booted PV guest is safe
 * ```ts
 * import { PvPlatform } from "../lib/platform/pv.ts";
 * import { GuestKernel } from "../lib/guest/kernel.ts";
 * import { PvPagingOps } from "../lib/guest/pv_paging_ops.ts";
 * import { checkPvSafety } from "./check_pv_safety.ts";
 * import assert from "node:assert/strict";
 * const platform = new PvPlatform({ frames: 1024 });
 * new GuestKernel(platform, { pagingOps: (code) => new PvPagingOps(code, platform) }).boot();
 * assert.deepEqual(checkPvSafety(platform.domain), []);
 * ```
 */
export function checkPvSafety(d: PvDomain): string[] {
  const problems: string[] = [];
  const types = d.types;
  const owner = d.frames.owner;
  const n = d.frames.frameCount;
  const count = new Int32Array(n);
  const typeRefs = new Int32Array(n);
  const memory = d.memory;
  const report = (text: string) => {
    if (problems.length < 50) problems.push(text);
  };
  for (let mfn = 0; mfn < n; mfn++) {
    if (owner[mfn] !== d.id) continue;
    count[mfn]++; // PGC_allocated
    if (types.isPinned(mfn)) {
      count[mfn]++;
      typeRefs[mfn]++;
    }
  }
  // The registered vcpu_info frame: a general and a writable type reference (map_vcpu_info).
  const vcpuInfo = d.vcpu.vcpuInfoMfn;
  if (vcpuInfo >= 0) {
    count[vcpuInfo]++;
    typeRefs[vcpuInfo]++;
    if (types.type[vcpuInfo] !== PGT_WRITABLE) {
      report(`vcpu_info frame ${vcpuInfo} is typed ${types.describe(vcpuInfo)}`);
    }
  }
  for (const top of [d.guestTable, d.guestTableUser]) {
    if (top < 0) continue;
    count[top]++;
    typeRefs[top]++;
    if (types.type[top] !== PGT_L4) report(`CR3 frame ${top} is typed ${types.describe(top)}`);
  }
  for (let mfn = 0; mfn < n; mfn++) {
    if (owner[mfn] !== d.id || !types.isPageTable(mfn)) continue;
    const level = types.type[mfn]!;
    if (!types.isValidated(mfn)) {
      report(`table ${mfn} (${types.describe(mfn)}) is in use but not validated`);
      continue;
    }
    for (let i = 0; i < 512; i++) {
      if (level === PGT_L4 && !isGuestL4Slot(i)) continue;
      const lo = memory.read32(mfn * 4096 + i * 8);
      if ((lo & 1) === 0) continue;
      const target = pteMfn(lo, memory.read32(mfn * 4096 + i * 8 + 4));
      const where = `l${level}e ${i} of table ${mfn}`;
      if (level === PGT_L1) {
        if (!d.isValidMfn(target)) {
          if (!d.isIoPermitted(target)) {
            report(`${where} maps I/O frame ${target} without permission`);
          }
          continue;
        }
        if (owner[target] !== d.id) {
          report(`${where} maps frame ${target} of domain ${owner[target]}`);
          continue;
        }
        count[target]++;
        if ((lo & 2) !== 0) {
          typeRefs[target]++;
          if (types.type[target] !== PGT_WRITABLE) {
            report(`${where} maps frame ${target} writable, but it is ${types.describe(target)}`);
          }
        }
        continue;
      }
      if (target === mfn) continue; // a read-only self link holds nothing
      if (!d.isValidMfn(target) || owner[target] !== d.id) {
        report(`${where} points at frame ${target}, not the domain's`);
        continue;
      }
      count[target]++;
      typeRefs[target]++;
      const t = types.type[target]!;
      if (t !== level - 1 && t !== level) {
        report(`${where} points at frame ${target} typed ${PGT_NAMES[t]}`);
      } else if (t === level && (lo & 2) !== 0) {
        report(`${where} is a writable linear link to ${target}`);
      }
      if (!types.isValidated(target)) report(`${where} points at unvalidated ${target}`);
    }
  }
  for (let mfn = 0; mfn < n; mfn++) {
    if (owner[mfn] !== d.id) continue;
    if (types.count[mfn] !== count[mfn]) {
      report(`frame ${mfn}: count ${types.count[mfn]}, but ${count[mfn]} references exist`);
    }
    if (types.typeCount[mfn] !== typeRefs[mfn]) {
      report(
        `frame ${mfn} (${types.describe(mfn)}): type count ${types.typeCount[mfn]}, ` +
          `but ${typeRefs[mfn]} type references exist`,
      );
    }
  }
  const tlb = d.cpu.tlb;
  for (let i = 0; i < tlb.tag.length; i++) {
    if (tlb.tag[i] === -1 || (tlb.flags[i]! & TLB_RIGHTS_MASK & RIGHTS_WRITABLE) === 0) continue;
    const mfn = Math.floor(tlb.frame[i]! / 4096);
    if (d.isValidMfn(mfn) && types.isPageTable(mfn)) {
      report(`the TLB holds a writable translation of table frame ${mfn}`);
    }
  }
  return problems;
}
