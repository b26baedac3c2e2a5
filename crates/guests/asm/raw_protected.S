# raw_protected.S - Kiln raw-binary test guest, 32-bit protected mode.
#
# What it does: sums a table of 32-bit values placed in guest memory by the
# test, prints the result on the serial port and halts.
#
# Contract:
#   Load and entry at guest-physical 0xF0000, started in flat 32-bit
#   protected mode (CS 0x10, data 0x18, base 0, paging off, ESP = 0x8000,
#   interrupts off).
#   Input: table at guest-physical 0x100000: u32 count, then `count` u32
#   values (little-endian).
#   Output on COM1 (0x3f8), exactly one line:
#       kiln raw protected: count=N sum=0xXXXXXXXX\n
#   (N decimal, sum as 8 lowercase hex digits, 32-bit wrapping sum).
#   Final state: EAX = sum, ECX = count, then `cli; hlt` (exit status 0).
#   Only the stack (below 0x8000) is written.

    .intel_syntax noprefix
    .text
    .code32
    .globl _start
_start:
    cli
    cld
    mov ecx, dword ptr [0x100000]   # count
    mov edx, ecx                # values left
    xor eax, eax                # sum
    mov esi, 0x100004           # first value
1:  test edx, edx
    jz 2f
    add eax, dword ptr [esi]
    add esi, 4
    dec edx
    jmp 1b

2:  mov esi, offset msg_count
    call puts32
    xchg eax, ecx
    call print_dec32_32         # count
    xchg eax, ecx
    mov esi, offset msg_sum
    call puts32
    call print_hex32_32         # sum
    mov esi, offset msg_nl
    call puts32

    # EAX = sum, ECX = count
3:  cli
    hlt
    jmp 3b

    .include "serial32.inc"

msg_count:  .asciz "kiln raw protected: count="
msg_sum:    .asciz " sum=0x"
msg_nl:     .asciz "\n"
