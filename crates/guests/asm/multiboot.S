# multiboot.S - Multiboot (v1) test kernel for Kiln's multiboot loader.
#
# What it does: checks the boot loader magic, dumps the multiboot
# information structure on the serial port and exits the VM.
#
# Contract:
#   Linked at physical 0x100000. Built twice from this file:
#   - without AOUT_KLUDGE: an ELF32 i386 executable (entry _start, PT_LOAD at
#     0x100000); the header sets flags bits 0 and 1 only;
#   - with `--defsym AOUT_KLUDGE=1`: a flat binary whose header also sets
#     flag bit 16 and gives header/load/load_end/bss_end/entry addresses.
#   The header is the first thing in the image (4-byte aligned).
#   Entry per the multiboot spec: 32-bit protected mode, flat segments,
#   paging off, EAX = 0x2BADB002, EBX = physical address of the multiboot
#   info. ESP is not trusted; the kernel uses its own 16 KiB .bss stack.
#   Output on COM1 (0x3f8), one item per line:
#       multiboot: magic=ok                (or: multiboot: magic=bad 0xXXXXXXXX)
#       flags=0xXXXXXXXX
#       mem_lower=N mem_upper=N            (flags bit 0; decimal KiB)
#       mmap base=0x<16 hex> len=0x<16 hex> type=N   (flags bit 6; per entry)
#       cmdline=<string>                   (flags bit 2)
#       mods=N                             (flags bit 3), then per module:
#       mod start=0xXXXXXXXX end=0xXXXXXXXX string=<string> sum=0xXXXXXXXX
#       loader=<string>                    (flags bit 9)
#       multiboot: done
#   `sum` is the 32-bit wrapping sum of the module bytes [start, end).
#   If the magic is bad, EBX cannot be trusted: the info lines are skipped
#   and only the magic line and `multiboot: done` are printed.
#   Then `out 0xf4, eax` with EAX = 0x10 (Kiln exit status 33), followed by
#   `cli; hlt` in a loop. Writes only its own .bss.

    .intel_syntax noprefix

    .set MB_MAGIC,      0x1BADB002
    .set MB_BOOT_MAGIC, 0x2BADB002
.ifdef AOUT_KLUDGE
    .set MB_FLAGS,      0x00010003  # page-align modules, memory info, a.out kludge
.else
    .set MB_FLAGS,      0x00000003  # page-align modules, memory info
.endif

    .section .multiboot, "a"
    .align 4
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
.ifdef AOUT_KLUDGE
    .long mb_header             # header_addr
    .long mb_header             # load_addr: the image starts with the header
    .long _load_end             # load_end_addr (from guest.ld)
    .long _bss_end              # bss_end_addr (from guest.ld)
    .long _start                # entry_addr
.endif

    .text
    .code32
    .globl _start
_start:
    cli
    cld
    mov esp, offset stack_top
    mov ebp, ebx                # EBP = multiboot info pointer for the whole run

    cmp eax, MB_BOOT_MAGIC
    je 1f
    mov esi, offset msg_magic_bad
    call puts32
    call print_hex32_32
    call newline
    jmp .Ldone
1:  mov esi, offset msg_magic_ok
    call puts32

    # flags
    mov esi, offset msg_flags
    call puts32
    mov edi, dword ptr [ebp]    # EDI = info flags for the whole run
    mov eax, edi
    call print_hex32_32
    call newline

    # bit 0: mem_lower / mem_upper
    test edi, 1 << 0
    jz 1f
    mov esi, offset msg_mem_lower
    call puts32
    mov eax, dword ptr [ebp + 4]
    call print_dec32_32
    mov esi, offset msg_mem_upper
    call puts32
    mov eax, dword ptr [ebp + 8]
    call print_dec32_32
    call newline
1:
    # bit 6: memory map (each entry: u32 size, u64 base, u64 len, u32 type;
    # `size` excludes itself)
    test edi, 1 << 6
    jz 3f
    mov ebx, dword ptr [ebp + 48]   # mmap_addr
    mov ecx, ebx
    add ecx, dword ptr [ebp + 44]   # + mmap_length = end
2:  cmp ebx, ecx
    jae 3f
    mov esi, offset msg_mmap_base
    call puts32
    mov eax, dword ptr [ebx + 4]
    mov edx, dword ptr [ebx + 8]
    call print_hex64_32
    mov esi, offset msg_mmap_len
    call puts32
    mov eax, dword ptr [ebx + 12]
    mov edx, dword ptr [ebx + 16]
    call print_hex64_32
    mov esi, offset msg_mmap_type
    call puts32
    mov eax, dword ptr [ebx + 20]
    call print_dec32_32
    call newline
    mov eax, dword ptr [ebx]    # size
    lea ebx, [ebx + eax + 4]
    jmp 2b
3:
    # bit 2: command line
    test edi, 1 << 2
    jz 1f
    mov esi, offset msg_cmdline
    call puts32
    mov esi, dword ptr [ebp + 16]
    call puts32
    call newline
1:
    # bit 3: modules (each: u32 mod_start, u32 mod_end, u32 string, u32 rsvd)
    test edi, 1 << 3
    jz 4f
    mov esi, offset msg_mods
    call puts32
    mov ecx, dword ptr [ebp + 20]   # mods_count
    mov eax, ecx
    call print_dec32_32
    call newline
    mov ebx, dword ptr [ebp + 24]   # mods_addr
2:  test ecx, ecx
    jz 4f
    mov esi, offset msg_mod_start
    call puts32
    mov eax, dword ptr [ebx]
    call print_hex32_32
    mov esi, offset msg_mod_end
    call puts32
    mov eax, dword ptr [ebx + 4]
    call print_hex32_32
    mov esi, offset msg_mod_string
    call puts32
    mov esi, dword ptr [ebx + 8]
    call puts32
    mov esi, offset msg_mod_sum
    call puts32
    # sum of the bytes [mod_start, mod_end)
    push ecx
    mov esi, dword ptr [ebx]
    mov edx, dword ptr [ebx + 4]
    xor eax, eax
3:  cmp esi, edx
    jae 5f
    movzx ecx, byte ptr [esi]
    add eax, ecx
    inc esi
    jmp 3b
5:  pop ecx
    call print_hex32_32
    call newline
    add ebx, 16
    dec ecx
    jmp 2b
4:
    # bit 9: boot loader name
    test edi, 1 << 9
    jz .Ldone
    mov esi, offset msg_loader
    call puts32
    mov esi, dword ptr [ebp + 64]
    call puts32
    call newline

.Ldone:
    mov esi, offset msg_done
    call puts32
    mov eax, 0x10
    out 0xf4, eax               # Kiln exit status (0x10 << 1) | 1 = 33
1:  cli
    hlt
    jmp 1b

# newline: print "\n"; preserves all registers.
newline:
    push eax
    mov al, 0x0a
    call putc32
    pop eax
    ret

    .include "serial32.inc"

msg_magic_ok:   .asciz "multiboot: magic=ok\n"
msg_magic_bad:  .asciz "multiboot: magic=bad 0x"
msg_flags:      .asciz "flags=0x"
msg_mem_lower:  .asciz "mem_lower="
msg_mem_upper:  .asciz " mem_upper="
msg_mmap_base:  .asciz "mmap base=0x"
msg_mmap_len:   .asciz " len=0x"
msg_mmap_type:  .asciz " type="
msg_cmdline:    .asciz "cmdline="
msg_mods:       .asciz "mods="
msg_mod_start:  .asciz "mod start=0x"
msg_mod_end:    .asciz " end=0x"
msg_mod_string: .asciz " string="
msg_mod_sum:    .asciz " sum=0x"
msg_loader:     .asciz "loader="
msg_done:       .asciz "multiboot: done\n"

    .bss
    .align 16
stack_bottom:
    .space 16384
stack_top:
