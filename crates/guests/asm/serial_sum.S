# serial_sum.S - Kiln test guest that reads the serial port.
#
# What it does: prints "serial-sum: ready", then reads bytes from COM1
# (polling LSR bit 0, data ready) until it reads a '.', keeping a count and a
# hash (h = h * 31 + byte, 32-bit wrapping, over every byte before the '.').
# Then prints one line and halts:
#     serial-sum: count=N hash=0xXXXXXXXX\n
# Without input it polls forever (tests use it to stop Kiln by signal or by
# Ctrl-A x while a guest is busy).
#
# Contract: load and entry at 0x100000, flat 32-bit protected mode
# (`kiln run --load serial_sum.bin@0x100000 --mode protected`).

    .intel_syntax noprefix
    .text
    .code32
    .globl _start
_start:
    cli
    cld
    mov esi, offset msg_ready
    call puts32
    xor edi, edi                # count
    xor ebx, ebx                # hash
1:  mov dx, 0x3fd
2:  in al, dx
    test al, 1                  # data ready?
    jz 2b
    mov dx, 0x3f8
    in al, dx
    cmp al, '.'
    je 3f
    movzx eax, al
    imul ebx, ebx, 31
    add ebx, eax
    inc edi
    jmp 1b

3:  mov esi, offset msg_count
    call puts32
    mov eax, edi
    call print_dec32_32
    mov esi, offset msg_hash
    call puts32
    mov eax, ebx
    call print_hex32_32
    mov esi, offset msg_nl
    call puts32
4:  cli
    hlt
    jmp 4b

    .include "serial32.inc"

msg_ready:  .asciz "serial-sum: ready\n"
msg_count:  .asciz "serial-sum: count="
msg_hash:   .asciz " hash=0x"
msg_nl:     .asciz "\n"
