# demo.S - Kiln's built-in demo guest (shown to newcomers).
#
# What it does: starts in 16-bit real mode, reports the CPU vendor and the
# RAM size from Kiln's boot info, then switches itself to 32-bit protected
# mode and on to 64-bit long mode, reporting each step on the serial port,
# and halts.
#
# Contract:
#   Load and entry at guest-physical 0x10000, started in real mode with
#   CS = 0x1000, IP = 0 (DS/ES/SS = 0, SP = 0x8000, interrupts off). The
#   image is < 64 KiB. Kiln's boot info is read at physical 0x1800:
#   u32 magic 0x4E4C494B at +0, u64 total RAM bytes at +8.
#   Output on COM1 (0x3f8), exactly these lines ("\n" endings):
#       Kiln demo guest: hello from 16-bit real mode
#         CPU vendor: <CPUID leaf 0 vendor string, EBX EDX ECX>
#         memory: N MiB (from Kiln's boot info at 0x1800)   (N = total >> 20)
#         boot info: bad magic                    (instead, if magic wrong)
#         entering 32-bit protected mode
#         now in 32-bit protected mode
#         entering 64-bit long mode
#         now in 64-bit long mode
#       Kiln demo guest: done, halting
#   then `cli; hlt` (exit status 0).
#   Memory use: its own image (the GDT and a 13-byte vendor buffer live
#   inside it), the stack below 0x8000, and its page tables at
#   0x20000-0x22FFF (PML4, PDPT, PD identity-mapping the first 1 GiB with
#   2 MiB pages). It never touches Kiln's 0x1000-0x1FFF except to read the
#   boot info.
#
# Linked at 0x10000 (guest.ld). Real-mode code runs with CS = DS = 0x1000,
# so 16-bit data references use `label - _start` (offset in that segment);
# 32/64-bit code uses flat addresses.

    .intel_syntax noprefix

    .set CODE32_SEL, 0x08
    .set DATA_SEL,   0x10
    .set CODE64_SEL, 0x18

    .set BOOT_INFO,       0x1800
    .set BOOT_INFO_MAGIC, 0x4e4c494b        # "KILN"

    .set PML4, 0x20000
    .set PDPT, 0x21000
    .set PD,   0x22000

    .text
    .code16
    .globl _start
_start:
    cli
    cld
    mov ax, cs
    mov ds, ax                  # DS = 0x1000: our own data
    xor ax, ax
    mov es, ax                  # ES = 0: boot info
    mov ss, ax
    mov sp, 0x8000

    mov si, offset (msg_hello - _start)
    call puts16

    # CPU vendor: CPUID leaf 0 returns it in EBX, EDX, ECX.
    xor eax, eax
    cpuid
    mov dword ptr [vendor - _start], ebx
    mov dword ptr [vendor - _start + 4], edx
    mov dword ptr [vendor - _start + 8], ecx
    mov byte ptr [vendor - _start + 12], 0
    mov si, offset (msg_vendor - _start)
    call puts16
    mov si, offset (vendor - _start)
    call puts16
    mov si, offset (msg_nl - _start)
    call puts16

    # Memory size from Kiln's boot info at 0000:1800.
    cmp dword ptr es:[BOOT_INFO], BOOT_INFO_MAGIC
    jne 1f
    mov eax, dword ptr es:[BOOT_INFO + 8]   # total RAM, low half
    mov edx, dword ptr es:[BOOT_INFO + 12]  # total RAM, high half
    shrd eax, edx, 20                       # low 32 bits of total >> 20
    mov si, offset (msg_mem - _start)
    call puts16
    call print_dec32_16
    mov si, offset (msg_mem_tail - _start)
    call puts16
    jmp 2f
1:  mov si, offset (msg_bad_magic - _start)
    call puts16
2:

    # Real mode -> 32-bit protected mode.
    mov si, offset (msg_enter_pm - _start)
    call puts16
    cli
    lgdt [gdt_desc - _start]    # DS-relative; the base inside is linear
    mov eax, cr0
    or eax, 1                   # CR0.PE
    mov cr0, eax
    # jmp CODE32_SEL:pm32 with a 32-bit offset (66 EA ptr16:32)
    .byte 0x66, 0xea
    .long pm32
    .word CODE32_SEL

    .include "serial16.inc"

# ------------------------------------------------------------------------
    .code32
pm32:
    mov ax, DATA_SEL
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov esp, 0x8000

    mov esi, offset msg_in_pm
    call puts32
    mov esi, offset msg_enter_lm
    call puts32

    # Page tables: zero 0x20000-0x22FFF, then PML4[0] -> PDPT,
    # PDPT[0] -> PD, PD[i] = i * 2 MiB (present, writable, 2 MiB page).
    mov edi, PML4
    mov ecx, 3 * 4096 / 4
    xor eax, eax
    rep stosd
    mov dword ptr [PML4], PDPT | 0x3
    mov dword ptr [PDPT], PD | 0x3
    mov edi, PD
    mov eax, 0x83               # present | writable | PS
    mov ecx, 512
1:  mov dword ptr [edi], eax    # high dword already zero
    add eax, 0x200000
    add edi, 8
    dec ecx
    jnz 1b

    mov eax, cr4
    or eax, 1 << 5              # CR4.PAE
    mov cr4, eax
    mov eax, PML4
    mov cr3, eax
    mov ecx, 0xc0000080         # IA32_EFER
    rdmsr
    or eax, 1 << 8              # EFER.LME
    wrmsr
    mov eax, cr0
    or eax, 0x80000000          # CR0.PG (activates long mode, LMA = 1)
    mov cr0, eax
    # jmp CODE64_SEL:lm64 (EA ptr16:32)
    .byte 0xea
    .long lm64
    .word CODE64_SEL

    .include "serial32.inc"

# ------------------------------------------------------------------------
    .code64
lm64:
    mov rsp, 0x8000
    mov esi, offset msg_in_lm
    call puts64
    mov esi, offset msg_done
    call puts64
1:  cli
    hlt
    jmp 1b

    .include "serial64.inc"

# ------------------------------------------------------------------------
    .balign 8
gdt:
    .quad 0                     # 0x00: null
    .quad 0x00cf9a000000ffff    # 0x08: 32-bit code, base 0, limit 4 GiB
    .quad 0x00cf92000000ffff    # 0x10: data, base 0, limit 4 GiB
    .quad 0x00af9a000000ffff    # 0x18: 64-bit code (L = 1)
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt                   # linear address

vendor:         .space 13       # CPUID vendor string + NUL (filled at run time)

msg_hello:      .asciz "Kiln demo guest: hello from 16-bit real mode\n"
msg_vendor:     .asciz "  CPU vendor: "
msg_nl:         .asciz "\n"
msg_mem:        .asciz "  memory: "
msg_mem_tail:   .asciz " MiB (from Kiln's boot info at 0x1800)\n"
msg_bad_magic:  .asciz "  boot info: bad magic\n"
msg_enter_pm:   .asciz "  entering 32-bit protected mode\n"
msg_in_pm:      .asciz "  now in 32-bit protected mode\n"
msg_enter_lm:   .asciz "  entering 64-bit long mode\n"
msg_in_lm:      .asciz "  now in 64-bit long mode\n"
msg_done:       .asciz "Kiln demo guest: done, halting\n"
