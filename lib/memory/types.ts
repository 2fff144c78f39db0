/**
 * Branded frame and address numbers: a GFN where an MFN is expected is a type error
 * under `deno check`, at no run-time cost (Xen's typesafe `mfn_t` / `gfn_t` idea).
 *
 * @module
 */

/** Machine frame number (host-physical page). */
export type Mfn = number & { readonly __brand: "Mfn" };
/** Machine address (host-physical byte address). */
export type Ma = number & { readonly __brand: "Ma" };
/** Guest frame number (guest-physical page; PV: pseudo-physical PFN). */
export type Gfn = number & { readonly __brand: "Gfn" };
/** Guest-physical address. */
export type Gpa = number & { readonly __brand: "Gpa" };
/** Guest virtual address, as a 48-bit linear value. */
export type Gva = number & { readonly __brand: "Gva" };
/** A domain identifier (Xen's domid_t). */
export type DomainId = number & { readonly __brand: "DomainId" };

/** Brands a number as an MFN (no check). */
export function asMfn(value: number): Mfn {
  return value as Mfn;
}
/** Brands a number as a machine address (no check). */
export function asMa(value: number): Ma {
  return value as Ma;
}
/** Brands a number as a GFN (no check). */
export function asGfn(value: number): Gfn {
  return value as Gfn;
}
/** Brands a number as a guest-physical address (no check). */
export function asGpa(value: number): Gpa {
  return value as Gpa;
}
/** Brands a number as a guest virtual address (no check). */
export function asGva(value: number): Gva {
  return value as Gva;
}
/** Brands a number as a domain id (no check). */
export function asDomainId(value: number): DomainId {
  return value as DomainId;
}

/** Machine address of the first byte of frame `mfn`. */
export function mfnToMa(mfn: Mfn): Ma {
  return (mfn * 4096) as Ma;
}
/** Frame of machine address `ma`. */
export function maToMfn(ma: Ma): Mfn {
  return Math.floor(ma / 4096) as Mfn;
}
/** Guest-physical address of the first byte of frame `gfn`. */
export function gfnToGpa(gfn: Gfn): Gpa {
  return (gfn * 4096) as Gpa;
}
/** Frame of guest-physical address `gpa`. */
export function gpaToGfn(gpa: Gpa): Gfn {
  return Math.floor(gpa / 4096) as Gfn;
}

/** Owner of a frame that no domain owns (free, or the hypervisor's own). */
export const DOMID_NONE = -1 as DomainId;
/** Xen's DOMID_XEN (0x7ff2, public/xen.h): frames the hypervisor itself owns. */
export const DOMID_XEN = 0x7ff2 as DomainId;
