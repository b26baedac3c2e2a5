# raw_real.S - Kiln raw-binary test guest, 16-bit real mode.
#
# What it does: sums a table of 32-bit values placed in guest memory by the
# test, prints the result on the serial port and halts.
#
# Contract:
#   Load and entry at guest-physical 0xF0000, started in real mode with
#   CS = 0xF000, IP = 0 (DS/ES/SS = 0, SP = 0x8000, interrupts off).
#   Input: table at guest-physical 0x100000: u32 count, then `count` u32
#   values (little-endian). It is reached as 0xFFFF:0x0010 (no A20 gate), so
#   the table must end at or below 0x10FFF0 (count <= 16379); larger tables wrap
#   around the 64 KiB segment and give a wrong sum.
#   Output on COM1 (0x3f8), exactly one line:
#       kiln raw real: count=N sum=0xXXXXXXXX\n
#   (N decimal, sum as 8 lowercase hex digits, 32-bit wrapping sum).
#   Final state: EAX = sum, ECX = count, then `cli; hlt` (exit status 0).
#   Only the stack (below 0x8000) is written.

    .intel_syntax noprefix
    .text
    .code16
    .globl _start
_start:
    cli
    cld
    mov ax, cs
    mov ds, ax                  # strings are addressed relative to CS
    mov ax, 0xffff
    mov fs, ax                  # FS:0x0010 = physical 0x100000

    mov ecx, dword ptr fs:[0x10]    # count
    mov edx, ecx                # values left
    xor eax, eax                # sum
    mov si, 0x14                # first value
1:  test edx, edx
    jz 2f
    add eax, dword ptr fs:[si]
    add si, 4
    dec edx
    jmp 1b

2:  mov si, offset (msg_count - _start)
    call puts16
    xchg eax, ecx
    call print_dec32_16         # count
    xchg eax, ecx
    mov si, offset (msg_sum - _start)
    call puts16
    call print_hex32_16         # sum
    mov si, offset (msg_nl - _start)
    call puts16

    # EAX = sum, ECX = count
3:  cli
    hlt
    jmp 3b

    .include "serial16.inc"

msg_count:  .asciz "kiln raw real: count="
msg_sum:    .asciz " sum=0x"
msg_nl:     .asciz "\n"
