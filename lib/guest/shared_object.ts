/**
 * The memory object behind a shared anonymous mapping (Linux's shmem inode): the frames
 * of its pages by page index, shared by every area that maps it, across fork. A fault in
 * any of them finds the page here, so a write by one process is seen by the others.
 *
 * @module
 */

/**
 * Pages of one shared mapping. The object holds one frame reference per page; each area
 * that maps it holds one reference to the object.
 *
 * @example
 * ```ts
 * import { SharedObject } from "./shared_object.ts";
 * import assert from "node:assert/strict";
 * const object = new SharedObject();
 * object.pages.set(0, 42);
 * assert.equal(object.areas, 1);
 * ```
 */
export class SharedObject {
  /** Frame of each page that exists, by page index within the object. */
  readonly pages: Map<number, number> = new Map();
  /** Areas that map this object. */
  areas = 1;
}
