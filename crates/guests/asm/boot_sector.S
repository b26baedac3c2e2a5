# boot_sector.S - Kiln BIOS test guest: a 512-byte boot sector.
#
# What it does: the BIOS loads it at 0x7C00 and jumps to it with DL = the boot
# drive. It prints through the BIOS (int 0x10 teletype, which SeaBIOS copies to
# COM1 when fw_cfg names a serial console), then, booted from a hard disk,
# reads the disk's second sector through the BIOS (int 0x13 extended read) and
# prints the NUL-terminated text it finds there. The same image is the
# no-emulation El Torito boot image of the test CD (DL >= 0xE0: no read).
#
# Output (BIOS teletype, CR LF line ends):
#   Kiln boot sector: drive=XX            (XX: DL in two lowercase hex digits)
#   Kiln boot sector: sector 1: <text>    (hard disks only)
#   Kiln boot sector: read failed         (when the BIOS read fails)
# Then it waits ~110 ms on the BIOS timer (so SeaBIOS's serial console, which sends
# screen text lazily, has sent everything) and writes 0x10 to the debug-exit port 0xf4 (Kiln exits with status 33),
# or 0x11 after a failed read (status 35), and halts.

    .intel_syntax noprefix
    .text
    .code16
    .globl _start
_start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    sti
    cld
    mov [boot_drive], dl

    lea si, [hello]
    call puts
    mov al, [boot_drive]
    call puthex
    lea si, [crlf]
    call puts

    cmp byte ptr [boot_drive], 0xE0
    jae done                    # a CD: nothing more to read

    lea si, [dap]
    mov dl, [boot_drive]
    mov ah, 0x42
    int 0x13
    jc read_failed
    lea si, [sector_msg]
    call puts
    mov byte ptr [0x81FF], 0    # the text ends inside the sector
    mov si, 0x8000
    call puts
    lea si, [crlf]
    call puts
done:
    call settle
    mov al, 0x10
    out 0xf4, al
    cli
    hlt

read_failed:
    lea si, [fail_msg]
    call puts
    call settle
    mov al, 0x11
    out 0xf4, al
    cli
    hlt

# Wait two ticks of the BIOS timer (the dword at 0x46C, ~55 ms per tick, advanced
# by the timer interrupt): SeaBIOS's serial console sends the last characters of
# the screen from its timer handler.
settle:
    sti
    mov eax, [0x46C]
    add eax, 2
1:  hlt
    cmp eax, [0x46C]
    jns 1b
    ret

# Print the NUL-terminated string at DS:SI.
puts:
    lodsb
    test al, al
    jz 1f
    call putc
    jmp puts
1:  ret

# Print AL as two hex digits.
puthex:
    push ax
    shr al, 4
    call nibble
    pop ax
    and al, 0x0f
nibble:
    add al, '0'
    cmp al, '9'
    jbe putc
    add al, 'a' - '9' - 1
putc:
    push si
    mov ah, 0x0e
    mov bx, 0x0007
    int 0x10
    pop si
    ret

hello:      .asciz "Kiln boot sector: drive="
sector_msg: .asciz "Kiln boot sector: sector 1: "
fail_msg:   .asciz "Kiln boot sector: read failed\r\n"
crlf:       .asciz "\r\n"
boot_drive: .byte 0

    .balign 4
dap:                            # int 0x13 AH=0x42 disk address packet
    .byte 16, 0
    .word 1                     # one sector
    .word 0x8000, 0             # to 0000:8000
    .quad 1                     # LBA 1

    .org 510
    .byte 0x55, 0xAA
