/**
 * The processor state that paging depends on (CR0, CR3, CR4, IA32_EFER, RFLAGS.AC, CPL,
 * PKRU, MAXPHYADDR) and the permission table derived from it.
 *
 * The table is KVM's idea (`mmu->permissions`, `update_permission_bitmask`): the rules of
 * SDM Vol. 3A 4.6 depend on a handful of control bits that rarely change, so they are
 * evaluated once per change for every (access kind, protection key, combined rights)
 * and the walk and every TLB hit then do one array load. The value stored is the #PF
 * error code of the protection fault, or 0 when the access is allowed.
 *
 * @module
 */

import { ACCESS_KINDS, type AccessKind, isFetch, isImplicit, isWrite } from "./access.ts";

/** CR0.PE (bit 0): protected mode. */
export const CR0_PE = 0x1;
/** CR0.WP (bit 16): supervisor writes honour R/W (SDM 4.6.1). */
export const CR0_WP = 0x10000;
/** CR0.PG (bit 31): paging. */
export const CR0_PG = 0x80000000;

/** CR4.PSE (bit 4): page size extensions (ignored by IA-32e paging, which always has them). */
export const CR4_PSE = 0x10;
/** CR4.PAE (bit 5): must be 1 for IA-32e paging. */
export const CR4_PAE = 0x20;
/** CR4.PGE (bit 7): global pages. */
export const CR4_PGE = 0x80;
/** CR4.PCIDE (bit 17): process-context identifiers. */
export const CR4_PCIDE = 0x20000;
/** CR4.SMEP (bit 20): supervisor-mode execution prevention. */
export const CR4_SMEP = 0x100000;
/** CR4.SMAP (bit 21): supervisor-mode access prevention. */
export const CR4_SMAP = 0x200000;
/** CR4.PKE (bit 22): protection keys for user-mode pages. */
export const CR4_PKE = 0x400000;

/** IA32_EFER.LME (bit 8): long mode enable. */
export const EFER_LME = 0x100;
/** IA32_EFER.LMA (bit 10): long mode active (set by the processor when PG=1 and LME=1). */
export const EFER_LMA = 0x400;
/** IA32_EFER.NXE (bit 11): execute-disable bit enable. */
export const EFER_NXE = 0x800;

/** RFLAGS.AC (bit 18): alignment check / SMAP override for explicit accesses. */
export const RFLAGS_AC = 0x40000;

/** #PF error code P (bit 0): 0 not-present, 1 protection or reserved-bit violation. */
export const PFEC_PRESENT = 0x1;
/** #PF error code W/R (bit 1): the access was a write. */
export const PFEC_WRITE = 0x2;
/** #PF error code U/S (bit 2): the access was a user-mode access. */
export const PFEC_USER = 0x4;
/** #PF error code RSVD (bit 3): a reserved bit was set in a paging-structure entry. */
export const PFEC_RSVD = 0x8;
/** #PF error code I/D (bit 4): instruction fetch (only when SMEP or NXE is on). */
export const PFEC_FETCH = 0x10;
/** #PF error code PK (bit 5): protection-key violation. */
export const PFEC_PK = 0x20;

/** Rights bit in a combined-rights index: R/W=1 at every level. */
export const RIGHTS_WRITABLE = 0x1;
/** Rights bit in a combined-rights index: U/S=1 at every level (a user-mode address). */
export const RIGHTS_USER = 0x2;
/** Rights bit in a combined-rights index: XD=1 at some level (with NXE=1). */
export const RIGHTS_XD = 0x4;

/**
 * Index into {@link PagingControl.permissions}: access kind, protection key (0..15) and
 * combined rights (0..7).
 */
export function permissionIndex(kind: AccessKind, pkey: number, rights: number): number {
  return (kind << 7) | (pkey << 3) | rights;
}

/** Initial values for a {@link PagingControl}; omitted fields take the defaults shown. */
export interface PagingControlInit {
  /** CR0; default PE | WP | PG. */
  cr0?: number;
  /** CR3 without bit 63: table address | PCID (or PWT/PCD); default 0. */
  cr3?: number;
  /** CR4; default PAE | PGE. */
  cr4?: number;
  /** IA32_EFER; default LME | LMA | NXE. */
  efer?: number;
  /** RFLAGS (only AC matters to paging); default 0x2. */
  rflags?: number;
  /** Current privilege level 0..3; default 0. */
  cpl?: number;
  /** PKRU: two bits per key, AD = bit 2i, WD = bit 2i+1; default 0. */
  pkru?: number;
  /** Physical-address width, 36..52; default 46. */
  maxPhyAddr?: number;
  /** Whether the processor supports 1 GiB pages (CPUID.80000001H:EDX.Page1GB); default true. */
  has1GbPages?: boolean;
}

/**
 * The paging-relevant processor state. Registers are set through accessors so the
 * permission table can never go stale.
 *
 * Only IA-32e (4-level) paging is modelled: with CR0.PG=1 the walker assumes LMA=1 and
 * PAE=1 (the vCPU refuses other combinations with #GP as the SDM does).
 *
 * @example
 * ```ts
 * import { PagingControl, CR0_WP, PFEC_PRESENT, PFEC_WRITE } from "./paging_control.ts";
 * import { ACCESS_WRITE } from "./access.ts";
 * import assert from "node:assert/strict";
 * const ctl = new PagingControl({ cpl: 0 });
 * // supervisor write to a read-only supervisor page faults with WP=1 ...
 * assert.equal(ctl.protectionFault(ACCESS_WRITE, 0, 0), PFEC_PRESENT | PFEC_WRITE);
 * ctl.cr0 = ctl.cr0 & ~CR0_WP;
 * // ... and is allowed with WP=0
 * assert.equal(ctl.protectionFault(ACCESS_WRITE, 0, 0), 0);
 * ```
 */
export class PagingControl {
  #cr0: number;
  #cr3: number;
  #cr4: number;
  #efer: number;
  #rflags: number;
  #cpl: number;
  #pkru: number;
  #maxPhyAddr: number;
  #paging = false;
  #pcid = 0;
  /** Whether an l3e may map a 1 GiB page. */
  readonly has1GbPages: boolean;
  // One table for CPL 0..2 and one for CPL 3, both rebuilt on a register change, so that
  // a privilege change (every user/kernel transition) only selects a table.
  readonly #supervisorTable: Int32Array = new Int32Array(ACCESS_KINDS * 128);
  readonly #userTable: Int32Array = new Int32Array(ACCESS_KINDS * 128);
  /**
   * #PF error code of the protection violation for each {@link permissionIndex}, or 0
   * when the access is allowed, at the current CPL. Rebuilt on every register change;
   * a CPL change selects the table for the new privilege level.
   */
  permissions: Int32Array = this.#supervisorTable;

  /** Control state from `init`; throws a RangeError for a MAXPHYADDR or CPL out of range. */
  constructor(init: PagingControlInit = {}) {
    this.#cr0 = (init.cr0 ?? (CR0_PE | CR0_WP | CR0_PG)) >>> 0;
    this.#cr3 = init.cr3 ?? 0;
    this.#cr4 = (init.cr4 ?? (CR4_PAE | CR4_PGE)) >>> 0;
    this.#efer = (init.efer ?? (EFER_LME | EFER_LMA | EFER_NXE)) >>> 0;
    this.#rflags = (init.rflags ?? 0x2) >>> 0;
    this.#cpl = init.cpl ?? 0;
    this.#pkru = (init.pkru ?? 0) >>> 0;
    this.#maxPhyAddr = init.maxPhyAddr ?? 46;
    this.has1GbPages = init.has1GbPages ?? true;
    if (!Number.isInteger(this.#maxPhyAddr) || this.#maxPhyAddr < 36 || this.#maxPhyAddr > 52) {
      throw new RangeError(`Cannot set MAXPHYADDR ${init.maxPhyAddr}: must be 36..52`);
    }
    if (!Number.isInteger(this.#cpl) || this.#cpl < 0 || this.#cpl > 3) {
      throw new RangeError(`Cannot set CPL ${init.cpl}: must be 0..3`);
    }
    this.#rebuild();
  }

  /** CR0 (low 32 bits). */
  get cr0(): number {
    return this.#cr0;
  }
  set cr0(value: number) {
    this.#cr0 = value >>> 0;
    this.#rebuild();
  }
  /** CR3 without bit 63: PML4 address | PCID (PCIDE=1) or PWT/PCD (PCIDE=0). */
  get cr3(): number {
    return this.#cr3;
  }
  set cr3(value: number) {
    this.#cr3 = value;
    this.#derive();
  }
  /** CR4 (low 32 bits). */
  get cr4(): number {
    return this.#cr4;
  }
  set cr4(value: number) {
    this.#cr4 = value >>> 0;
    this.#rebuild();
  }
  /** IA32_EFER (low 32 bits). */
  get efer(): number {
    return this.#efer;
  }
  set efer(value: number) {
    this.#efer = value >>> 0;
    this.#rebuild();
  }
  /** RFLAGS (low 32 bits). */
  get rflags(): number {
    return this.#rflags;
  }
  set rflags(value: number) {
    const changedAc = ((this.#rflags ^ value) & RFLAGS_AC) !== 0;
    this.#rflags = value >>> 0;
    if (changedAc) this.#rebuild();
  }
  /** Current privilege level, 0..3. */
  get cpl(): number {
    return this.#cpl;
  }
  set cpl(value: number) {
    if (!Number.isInteger(value) || value < 0 || value > 3) {
      throw new RangeError(`Cannot set CPL ${value}: must be 0..3`);
    }
    this.#cpl = value;
    this.permissions = value === 3 ? this.#userTable : this.#supervisorTable;
  }
  /** PKRU. */
  get pkru(): number {
    return this.#pkru;
  }
  set pkru(value: number) {
    this.#pkru = value >>> 0;
    this.#rebuild();
  }
  /** Physical-address width (MAXPHYADDR). */
  get maxPhyAddr(): number {
    return this.#maxPhyAddr;
  }

  /** Whether paging is on (CR0.PG). */
  get isPaging(): boolean {
    return this.#paging;
  }
  /** The current PCID: CR3[11:0] when CR4.PCIDE=1, else 0. */
  get pcid(): number {
    return this.#pcid;
  }
  /** Physical address of the PML4 table: CR3 bits MAXPHYADDR-1..12. */
  get cr3TableAddress(): number {
    return this.#cr3 - (this.#cr3 & 0xfff);
  }

  // Derived values read on every access, kept as small integers and booleans so the hot
  // path does not convert CR0 (bit 31 set: not a small integer) on each read.
  #derive(): void {
    this.#paging = (this.#cr0 & CR0_PG) !== 0;
    this.#pcid = (this.#cr4 & CR4_PCIDE) !== 0 ? this.#cr3 & 0xfff : 0;
  }

  /**
   * The #PF error code of the protection violation for this access against combined
   * rights (see {@link RIGHTS_WRITABLE} ...) and leaf protection key, or 0 if allowed.
   */
  protectionFault(kind: AccessKind, pkey: number, rights: number): number {
    return this.permissions[permissionIndex(kind, pkey, rights)]!;
  }

  /** Whether an access of this kind is a user-mode access (CPL 3 and not implicit). */
  isUserAccess(kind: AccessKind): boolean {
    return this.#cpl === 3 && !isImplicit(kind);
  }

  /**
   * The error-code bits that describe the access itself: W/R, U/S and I/D (I/D only when
   * SMEP or NXE is on, SDM 4.7).
   */
  accessErrorBits(kind: AccessKind): number {
    return this.#accessErrorBits(kind, this.#cpl === 3);
  }

  #accessErrorBits(kind: AccessKind, cpl3: boolean): number {
    let bits = 0;
    if (isWrite(kind)) bits |= PFEC_WRITE;
    if (cpl3 && !isImplicit(kind)) bits |= PFEC_USER;
    if (
      isFetch(kind) &&
      ((this.#cr4 & CR4_SMEP) !== 0 ||
        ((this.#cr4 & CR4_PAE) !== 0 && (this.#efer & EFER_NXE) !== 0))
    ) bits |= PFEC_FETCH;
    return bits;
  }

  // SDM Vol. 3A 4.6.1 (rights), 4.6.2 (protection keys); evaluated for every combination.
  #rebuild(): void {
    this.#derive();
    const wp = (this.#cr0 & CR0_WP) !== 0;
    const smep = (this.#cr4 & CR4_SMEP) !== 0;
    const smap = (this.#cr4 & CR4_SMAP) !== 0;
    const pke = (this.#cr4 & CR4_PKE) !== 0 && (this.#efer & EFER_LMA) !== 0;
    const nxe = (this.#efer & EFER_NXE) !== 0;
    const ac = (this.#rflags & RFLAGS_AC) !== 0;
    this.#fill(this.#supervisorTable, false, wp, smep, smap, pke, nxe, ac);
    this.#fill(this.#userTable, true, wp, smep, smap, pke, nxe, ac);
    this.permissions = this.#cpl === 3 ? this.#userTable : this.#supervisorTable;
  }

  // Fills the table of one privilege level (cpl3: CPL 3, else CPL 0..2).
  #fill(
    table: Int32Array,
    cpl3: boolean,
    wp: boolean,
    smep: boolean,
    smap: boolean,
    pke: boolean,
    nxe: boolean,
    ac: boolean,
  ): void {
    for (let kind = 0 as AccessKind; kind < ACCESS_KINDS; kind++) {
      const write = isWrite(kind);
      const fetch = isFetch(kind);
      const implicit = isImplicit(kind);
      const user = cpl3 && !implicit;
      const base = PFEC_PRESENT | this.#accessErrorBits(kind, cpl3);
      for (let rights = 0; rights < 8; rights++) {
        const writable = (rights & RIGHTS_WRITABLE) !== 0;
        const userPage = (rights & RIGHTS_USER) !== 0;
        const xd = nxe && (rights & RIGHTS_XD) !== 0;
        let denied: boolean;
        if (user) {
          denied = !userPage || (write && !writable) || (fetch && xd);
        } else if (fetch) {
          denied = (userPage && smep) || xd;
        } else {
          denied = (userPage && smap && (implicit || !ac)) || (write && !writable && wp);
        }
        for (let pkey = 0; pkey < 16; pkey++) {
          // Keys guard data accesses to user-mode addresses only; fetches are exempt.
          let pkDenied = false;
          if (pke && userPage && !fetch) {
            const accessDisable = ((this.#pkru >>> (2 * pkey)) & 1) !== 0;
            const writeDisable = ((this.#pkru >>> (2 * pkey + 1)) & 1) !== 0;
            pkDenied = accessDisable || (writeDisable && write && (user || wp));
          }
          table[permissionIndex(kind, pkey, rights)] = denied || pkDenied
            ? base | (pkDenied ? PFEC_PK : 0)
            : 0;
        }
      }
    }
  }
}
