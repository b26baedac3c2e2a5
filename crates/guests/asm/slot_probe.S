# slot_probe.S - Kiln test guest for memory slots changed while the guest runs.
#
# Contract: load and entry at 0x100000, flat 32-bit protected mode, RAM smaller
# than 32 MiB so that 0x2000000 starts out unbacked (reads as all-ones).
#   1. Spins reading the dword at 0x2000000 until it reads 0x4b494c4e ("NLIK"):
#      the host adds a slot there and then writes the magic into it.
#   2. Writes 0 to 0x2000004 and reads it back: the slot is read-only, so the
#      old value 0x55555555 must still be there. If not: exits with status
#      0x23 (debug-exit value 0x11).
#   3. Prints "1" on COM1 (the host's cue) and spins until 0x2000000 reads
#      0xffffffff again (the host removed the slot), then exits with status
#      0x21 (debug-exit value 0x10).

    .intel_syntax noprefix
    .text
    .code32
    .globl _start
_start:
    cli
    cld
    mov ebx, 0x2000000
1:  mov eax, dword ptr [ebx]
    cmp eax, 0x4b494c4e
    jne 1b

    mov dword ptr [ebx + 4], 0
    mov eax, dword ptr [ebx + 4]
    cmp eax, 0x55555555
    jne 9f

    mov dx, 0x3f8
    mov al, '1'
    out dx, al

2:  mov eax, dword ptr [ebx]
    cmp eax, 0xffffffff
    jne 2b
    mov al, 0x10
    out 0xf4, al
3:  hlt
    jmp 3b

9:  mov al, 0x11
    out 0xf4, al
    jmp 3b
