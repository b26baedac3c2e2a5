# raw_long.S - Kiln raw-binary test guest, 64-bit long mode.
#
# What it does: sums a table of 32-bit values placed in guest memory by the
# test, prints the result on the serial port and halts.
#
# Contract:
#   Load and entry at guest-physical 0xF0000, started in 64-bit long mode
#   (CS 0x08, data 0x18, identity-mapped paging, RSP = 0x8000, interrupts
#   off).
#   Input: table at guest-physical 0x100000: u32 count, then `count` u32
#   values (little-endian).
#   Output on COM1 (0x3f8), exactly one line:
#       kiln raw long: count=N sum=0xXXXXXXXX\n
#   (N decimal, sum as 8 lowercase hex digits, 32-bit wrapping sum).
#   Final state: RAX = sum (32-bit, zero-extended), RCX = count
#   (zero-extended), then `cli; hlt` (exit status 0).
#   Only the stack (below 0x8000) is written.

    .intel_syntax noprefix
    .text
    .code64
    .globl _start
_start:
    cli
    cld
    mov ecx, dword ptr [0x100000]   # count (zero-extends into RCX)
    mov edx, ecx                # values left
    xor eax, eax                # sum (32-bit adds zero-extend into RAX)
    mov esi, 0x100004           # first value
1:  test edx, edx
    jz 2f
    add eax, dword ptr [rsi]
    add rsi, 4
    dec edx
    jmp 1b

2:  mov esi, offset msg_count
    call puts64
    xchg rax, rcx
    call print_dec64            # count
    xchg rax, rcx
    mov esi, offset msg_sum
    call puts64
    call print_hex32_64         # sum
    mov esi, offset msg_nl
    call puts64

    # RAX = sum, RCX = count
3:  cli
    hlt
    jmp 3b

    .include "serial64.inc"

msg_count:  .asciz "kiln raw long: count="
msg_sum:    .asciz " sum=0x"
msg_nl:     .asciz "\n"
