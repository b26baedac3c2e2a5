# hostile.S - Kiln robustness test guest: a misbehaving 32-bit guest.
#
# What it does: pokes at every I/O port, at unbacked MMIO addresses and
# storms the VMM with exits, then reports that the VM survived.
#
# Contract:
#   Load and entry at guest-physical 0x100000, started in flat 32-bit
#   protected mode (paging off, ESP = 0x8000, interrupts off).
#   Steps, each followed by one line on COM1 (0x3f8):
#   (a) `in al, dx` from every port 0x0000-0xFFFF except 0x3f8-0x3ff and
#       0xf4; ports 0x99, 0x1234 and 0xfffe must read 0xFF:
#         hostile: port reads ok
#         hostile: port read 0xPPPP gave 0xVV     (first mismatch)
#   (b) `out dx, al` of 0xA5 to every port 0x0000-0xFFFF except 0x3f8-0x3ff,
#       0xf4, 0x70-0x71, 0x60-0x64 and 0xcf8-0xcff:
#         hostile: port writes ok
#   (c) 32-bit reads of 0xD0000000, 0xFEC00000, 0xFFFFFFFC must give
#       0xFFFFFFFF:
#         hostile: mmio reads ok
#         hostile: mmio read 0xAAAAAAAA gave 0xVVVVVVVV   (first mismatch)
#       then 32-bit writes of 0xDEADBEEF to 0xD0000000, 0xE0001234,
#       0xFFFFFFF0:
#         hostile: mmio writes ok
#   (d) 20000 byte writes (value 0) to port 0x510:
#         hostile: storm done
#   (e)   hostile: survived
#       then `out 0xf4, al` with AL = 0x21 (Kiln exit status 67), followed by
#       `cli; hlt` in a loop.
#   A mismatch is reported but does not stop the run. Writes no RAM other
#   than the stack (below 0x8000).

    .intel_syntax noprefix
    .text
    .code32
    .globl _start
_start:
    cli
    cld
    mov esp, 0x8000

# ---- (a) port reads ------------------------------------------------------
    mov edi, 0xffffffff         # first mismatching port (none yet)
    xor ebx, ebx                # value read from it
    xor edx, edx                # port
.Lread_loop:
    cmp edx, 0x3f8              # skip the serial port 0x3f8-0x3ff
    jb 1f
    cmp edx, 0x3ff
    jbe .Lread_next
1:  cmp edx, 0xf4               # skip the exit port
    je .Lread_next
    in al, dx
    cmp edx, 0x99
    je 2f
    cmp edx, 0x1234
    je 2f
    cmp edx, 0xfffe
    jne .Lread_next
2:  cmp al, 0xff                # unbacked port: must float high
    je .Lread_next
    cmp edi, 0xffffffff
    jne .Lread_next             # keep only the first mismatch
    mov edi, edx
    movzx ebx, al
.Lread_next:
    inc edx
    cmp edx, 0x10000
    jb .Lread_loop

    cmp edi, 0xffffffff
    jne 1f
    mov esi, offset msg_reads_ok
    call puts32
    jmp 2f
1:  mov esi, offset msg_read_bad
    call puts32
    mov eax, edi
    mov cl, 4
    call print_hex_32           # port, 4 digits
    mov esi, offset msg_gave
    call puts32
    mov eax, ebx
    mov cl, 2
    call print_hex_32           # value, 2 digits
    mov esi, offset msg_nl
    call puts32
2:

# ---- (b) port writes -----------------------------------------------------
    xor edx, edx                # port
    mov al, 0xa5
.Lwrite_loop:
    cmp edx, 0x60               # skip 0x60-0x64 (keyboard controller)
    jb 1f
    cmp edx, 0x64
    jbe .Lwrite_next
1:  cmp edx, 0x70               # skip 0x70-0x71 (RTC/CMOS)
    jb 1f
    cmp edx, 0x71
    jbe .Lwrite_next
1:  cmp edx, 0xf4               # skip the exit port
    je .Lwrite_next
    cmp edx, 0x3f8              # skip the serial port 0x3f8-0x3ff
    jb 1f
    cmp edx, 0x3ff
    jbe .Lwrite_next
1:  cmp edx, 0xcf8              # skip PCI config 0xcf8-0xcff
    jb 1f
    cmp edx, 0xcff
    jbe .Lwrite_next
1:  out dx, al
.Lwrite_next:
    inc edx
    cmp edx, 0x10000
    jb .Lwrite_loop

    mov esi, offset msg_writes_ok
    call puts32

# ---- (c) MMIO ------------------------------------------------------------
.macro mmio_read_check addr
    mov edi, \addr
    mov eax, dword ptr [edi]
    cmp eax, 0xffffffff
    jne .Lmmio_bad
.endm
    mmio_read_check 0xd0000000
    mmio_read_check 0xfec00000
    mmio_read_check 0xfffffffc
    mov esi, offset msg_mmio_reads_ok
    call puts32
    jmp .Lmmio_writes
.Lmmio_bad:                     # EDI = address, EAX = value read
    mov esi, offset msg_mmio_read_bad
    call puts32
    xchg eax, edi
    call print_hex32_32
    xchg eax, edi
    mov esi, offset msg_gave
    call puts32
    call print_hex32_32
    mov esi, offset msg_nl
    call puts32
.Lmmio_writes:
    mov dword ptr [0xd0000000], 0xdeadbeef
    mov dword ptr [0xe0001234], 0xdeadbeef
    mov dword ptr [0xfffffff0], 0xdeadbeef
    mov esi, offset msg_mmio_writes_ok
    call puts32

# ---- (d) exit storm ------------------------------------------------------
    mov ecx, 20000
    mov dx, 0x510
    xor eax, eax
1:  out dx, al
    dec ecx
    jnz 1b
    mov esi, offset msg_storm
    call puts32

# ---- (e) report and exit -------------------------------------------------
    mov esi, offset msg_survived
    call puts32
    mov al, 0x21
    out 0xf4, al                # Kiln exit status (0x21 << 1) | 1 = 67
1:  cli
    hlt
    jmp 1b

    .include "serial32.inc"

msg_reads_ok:       .asciz "hostile: port reads ok\n"
msg_read_bad:       .asciz "hostile: port read 0x"
msg_gave:           .asciz " gave 0x"
msg_writes_ok:      .asciz "hostile: port writes ok\n"
msg_mmio_reads_ok:  .asciz "hostile: mmio reads ok\n"
msg_mmio_read_bad:  .asciz "hostile: mmio read 0x"
msg_mmio_writes_ok: .asciz "hostile: mmio writes ok\n"
msg_storm:          .asciz "hostile: storm done\n"
msg_survived:       .asciz "hostile: survived\n"
msg_nl:             .asciz "\n"
