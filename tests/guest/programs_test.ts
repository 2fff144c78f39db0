/**
 * The user programs of lib/guest/programs.ts: every instruction the tiny assembler emits
 * decodes (lib/x86/decode.ts) to the same length and the same meaning as its listing,
 * except the one instruction each #UD program exists for; the listings cover every byte;
 * bad operands are RangeErrors.
 */

import assert from "node:assert/strict";
import {
  DecodedInstruction,
  decodeInstruction,
  formatInstruction,
  OP_INVALID,
} from "../../lib/x86/decode.ts";
import {
  echoProgram,
  getpidLoopProgram,
  type GuestProgram,
  PRIVILEGED_KINDS,
  privilegedProgram,
  ProgramAssembler,
  readOneProgram,
  spinForeverProgram,
  spinnerProgram,
  storeToTextProgram,
  triangleExitCode,
  triangleProgram,
  undefinedProgram,
  writerProgram,
  yielderProgram,
} from "../../lib/guest/programs.ts";

const EVERY_PROGRAM: GuestProgram[] = [
  getpidLoopProgram(3),
  writerProgram("hello\n", 2),
  echoProgram(),
  readOneProgram(),
  spinnerProgram(1000),
  spinForeverProgram(),
  triangleProgram(100),
  yielderProgram(4),
  storeToTextProgram(),
  ...PRIVILEGED_KINDS.map(privilegedProgram),
  undefinedProgram("ud2"),
  undefinedProgram("x87"),
];

Deno.test("programs: every instruction decodes to its listed length; only the #UD ones do not", () => {
  const d = new DecodedInstruction();
  for (const program of EVERY_PROGRAM) {
    let covered = 0;
    for (const line of program.lines) {
      assert.equal(line.offset, covered, `${program.name}: listing gap at ${covered}`);
      covered += line.length;
      if (line.isData) continue;
      const bytes = program.bytes.subarray(line.offset, line.offset + 15);
      const length = decodeInstruction(bytes, 0, d);
      if (line.text === "ud2" || line.text === "fld1") {
        assert.equal(d.op, OP_INVALID, `${program.name}: ${line.text} must be #UD`);
        continue;
      }
      assert.equal(length, line.length, `${program.name}: "${line.text}" decodes as ${length}`);
      assert.notEqual(d.op, OP_INVALID, `${program.name}: "${line.text}"`);
    }
    assert.equal(covered, program.bytes.length, `${program.name}: listing covers every byte`);
  }
});

Deno.test("programs: the decoder reads back what the listing says", () => {
  const d = new DecodedInstruction();
  const decoded = (program: GuestProgram) =>
    program.lines.filter((l) => !l.isData).map((l) => {
      decodeInstruction(program.bytes.subarray(l.offset, l.offset + 15), 0, d);
      return formatInstruction(d);
    });
  assert.deepEqual(decoded(echoProgram()), [
    "mov esi, 0x600000",
    "xor eax, eax",
    "xor edi, edi",
    "mov edx, 0x1",
    "int 0x80",
    "mov edi, 0x1",
    "mov eax, 0x1",
    "int 0x80",
    "cmp byte ptr [rsi], 0xa",
    "jne $-0x1b",
    "xor edi, edi",
    "mov eax, 0x3c",
    "int 0x80",
  ]);
  // The message is addressed by its absolute address in the text: 0x400000 + 41.
  assert.deepEqual(decoded(writerProgram("hi\n")).slice(0, 3), [
    "mov ebx, 0x1",
    "mov edi, 0x1",
    "mov esi, 0x400029",
  ]);
  assert.deepEqual(decoded(storeToTextProgram())[0], "mov dword ptr [0x400000], 0x1");
  assert.deepEqual(
    PRIVILEGED_KINDS.map((kind) => decoded(privilegedProgram(kind))[0]),
    ["cli", "hlt", "in al, 0x60", "mov cr3, rax", "lidt [rsi]", "out 0x80, al"],
  );
  assert.deepEqual(decoded(spinForeverProgram()), ["jmp $+0x0"]);
});

Deno.test("triangleExitCode(): 1 + ... + n wrapped to a signed 32-bit exit code", () => {
  assert.equal(triangleExitCode(1), 1);
  assert.equal(triangleExitCode(100), 5050);
  assert.equal(triangleExitCode(65536), (65536 * 65537 / 2) | 0);
});

Deno.test("ProgramAssembler: bad operands, unknown labels and far jumps are RangeErrors", () => {
  assert.throws(() => new ProgramAssembler().movImm("eax", -1), /Cannot encode -1 in 32 bits/);
  assert.throws(() => new ProgramAssembler().subImm("ecx", 300), /in 8 bits/);
  assert.throws(() => new ProgramAssembler().cmpByte("esp", 0, 1), /without a SIB byte/);
  assert.throws(() => new ProgramAssembler().jmp("nowhere").assemble("x"), /no label "nowhere"/);
  const far = new ProgramAssembler().label("top");
  for (let i = 0; i < 30; i++) far.movImm("eax", i);
  assert.throws(() => far.jmp("top").assemble("far"), /beyond rel8/);
  assert.throws(() => new ProgramAssembler().label("a").label("a"), /defined twice/);
  assert.throws(() => getpidLoopProgram(0), /must be an integer 1\.\.2\^31/);
  assert.throws(() => writerProgram(""), /Cannot write a message of 0 bytes/);
  assert.throws(
    () => privilegedProgram("wrmsr" as never),
    /Unknown privileged instruction "wrmsr"/,
  );
});
