# tiny.S - Kiln start-up benchmark guest: a silent 64 KiB real-mode image.
#
# What it does: exits the VM immediately, without any serial output.
#
# Contract:
#   The image is exactly 65536 bytes and is usable in two ways:
#   - as a QEMU `-bios` image (mapped so its last byte is at 0xFFFFF and at
#     0xFFFFFFFF; the CPU starts at CS base 0xFFFF0000, IP 0xFFF0), and
#   - in Kiln, loaded at 0xF0000 with entry 0xFFFF0 (CS = 0xFFFF, IP = 0).
#   Offset 0xFFF0 (the reset vector) holds `jmp 0xF000:0x0000` (opcode 0xEA),
#   which lands on offset 0 (physical 0xF0000) in both cases.
#   Offset 0: `mov al, 0; out 0xf4, al` (Kiln exit status 1), then
#   `cli; hlt` in a loop (exit status 0 on a VMM where HLT exits).
#   Everything else is zero padding. Writes no memory, uses no stack.

    .intel_syntax noprefix
    .text
    .code16
    .globl _start
_start:
    mov al, 0
    out 0xf4, al
1:  cli
    hlt
    jmp 1b

    .org 0xfff0                 # reset vector (physical 0xFFFF0 / 0xFFFFFFF0)
reset_vector:
    .byte 0xea                  # jmp ptr16:16
    .word 0x0000                # offset
    .word 0xf000                # segment -> physical 0xF0000 = image offset 0
    .org 0x10000                # pad with zeros to exactly 64 KiB
