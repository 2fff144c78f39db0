/**
 * Decoder benchmark: the page-table-write encodings a trapped guest write presents.
 *
 * Run: deno task bench
 */

import { DecodedInstruction, decodeInstruction } from "../mod.ts";

const encodings = [
  [0x48, 0x89, 0x37], // mov [rdi], rsi
  [0x48, 0x87, 0x37], // xchg [rdi], rsi
  [0xf0, 0x48, 0x0f, 0xb1, 0x37], // lock cmpxchg [rdi], rsi
  [0xf3, 0x48, 0xab], // rep stosq
  [0x0f, 0x22, 0xd8], // mov cr3, rax
  [0x0f, 0x01, 0x3f], // invlpg [rdi]
  [0x48, 0x89, 0x74, 0x24, 0x08], // mov [rsp+8], rsi
  [0x4c, 0x89, 0x04, 0xc7], // mov [rdi+rax*8], r8
];
const bytes = new Uint8Array(encodings.flat());
const offsets = Int32Array.from(
  encodings.map((_, i) => encodings.slice(0, i).reduce((n, e) => n + e.length, 0)),
);
const out = new DecodedInstruction();

Deno.bench("decode page-table-write instruction", () => {
  let total = 0;
  for (let i = 0; i < offsets.length; i++) total += decodeInstruction(bytes, offsets[i]!, out);
  if (total !== bytes.length) throw new Error(`decoded ${total} of ${bytes.length} bytes`);
});
