//! The register dump Kiln prints when a guest stops (`--dump-regs`, and always after a
//! triple fault or an unexpected exit). One register per `NAME=value` token, hex without
//! `0x`, in a layout close to QEMU's `info registers` so it reads familiarly and greps
//! easily: `grep -o 'RAX=[0-9a-f]*'`.

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};
use std::fmt::Write;

const RFLAGS_BITS: &[(u32, &str)] = &[
    (0, "CF"),
    (2, "PF"),
    (4, "AF"),
    (6, "ZF"),
    (7, "SF"),
    (8, "TF"),
    (9, "IF"),
    (10, "DF"),
    (11, "OF"),
    (14, "NT"),
    (16, "RF"),
    (17, "VM"),
    (18, "AC"),
    (19, "VIF"),
    (20, "VIP"),
    (21, "ID"),
];
const CR0_BITS: &[(u32, &str)] = &[
    (0, "PE"),
    (1, "MP"),
    (2, "EM"),
    (3, "TS"),
    (4, "ET"),
    (5, "NE"),
    (16, "WP"),
    (18, "AM"),
    (29, "NW"),
    (30, "CD"),
    (31, "PG"),
];
const CR4_BITS: &[(u32, &str)] = &[
    (0, "VME"),
    (1, "PVI"),
    (2, "TSD"),
    (3, "DE"),
    (4, "PSE"),
    (5, "PAE"),
    (6, "MCE"),
    (7, "PGE"),
    (8, "PCE"),
    (9, "OSFXSR"),
    (10, "OSXMMEXCPT"),
    (11, "UMIP"),
    (12, "LA57"),
    (13, "VMXE"),
    (16, "FSGSBASE"),
    (17, "PCIDE"),
    (18, "OSXSAVE"),
    (20, "SMEP"),
    (21, "SMAP"),
];
const EFER_BITS: &[(u32, &str)] = &[
    (0, "SCE"),
    (8, "LME"),
    (10, "LMA"),
    (11, "NXE"),
    (12, "SVME"),
];

/// Names of the set bits, highest first, in brackets.
fn decode(value: u64, bits: &[(u32, &str)]) -> String {
    let names: Vec<&str> = bits
        .iter()
        .rev()
        .filter(|(b, _)| value & (1 << b) != 0)
        .map(|(_, n)| *n)
        .collect();
    format!("[{}]", names.join(" "))
}

fn segment(out: &mut String, name: &str, s: &kvm_segment) {
    let _ = writeln!(
        out,
        "{name:<3}={:04x} base={:016x} limit={:08x} type={:x} s={} dpl={} p={} db={} l={} g={} avl={}{}",
        s.selector,
        s.base,
        s.limit,
        s.type_,
        s.s,
        s.dpl,
        s.present,
        s.db,
        s.l,
        s.g,
        s.avl,
        if s.unusable != 0 { " unusable" } else { "" }
    );
}

fn table(out: &mut String, name: &str, t: &kvm_dtable) {
    let _ = writeln!(
        out,
        "{name}=     base={:016x} limit={:04x}",
        t.base, t.limit
    );
}

/// Format one vCPU's registers.
pub fn format_dump(vcpu: usize, r: &kvm_regs, s: &kvm_sregs) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "--- vCPU {vcpu} registers ---");
    let rows = [
        [
            ("RAX", r.rax),
            ("RBX", r.rbx),
            ("RCX", r.rcx),
            ("RDX", r.rdx),
        ],
        [
            ("RSI", r.rsi),
            ("RDI", r.rdi),
            ("RBP", r.rbp),
            ("RSP", r.rsp),
        ],
        [("R8", r.r8), ("R9", r.r9), ("R10", r.r10), ("R11", r.r11)],
        [
            ("R12", r.r12),
            ("R13", r.r13),
            ("R14", r.r14),
            ("R15", r.r15),
        ],
    ];
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .map(|(n, v)| format!("{n:<3}={v:016x}"))
            .collect();
        let _ = writeln!(o, "{}", line.join(" "));
    }
    let _ = writeln!(
        o,
        "RIP={:016x} RFL={:08x} {}",
        r.rip,
        r.rflags,
        decode(r.rflags, RFLAGS_BITS)
    );
    for (name, seg) in [
        ("ES", &s.es),
        ("CS", &s.cs),
        ("SS", &s.ss),
        ("DS", &s.ds),
        ("FS", &s.fs),
        ("GS", &s.gs),
        ("LDT", &s.ldt),
        ("TR", &s.tr),
    ] {
        segment(&mut o, name, seg);
    }
    table(&mut o, "GDT", &s.gdt);
    table(&mut o, "IDT", &s.idt);
    let _ = writeln!(o, "CR0={:016x} {}", s.cr0, decode(s.cr0, CR0_BITS));
    let _ = writeln!(
        o,
        "CR2={:016x} CR3={:016x} CR8={:016x}",
        s.cr2, s.cr3, s.cr8
    );
    let _ = writeln!(o, "CR4={:016x} {}", s.cr4, decode(s.cr4, CR4_BITS));
    let _ = writeln!(o, "EFER={:016x} {}", s.efer, decode(s.efer, EFER_BITS));
    let _ = writeln!(
        o,
        "APIC_BASE={:016x}{}",
        s.apic_base,
        if s.apic_base & (1 << 8) != 0 {
            " [BSP]"
        } else {
            ""
        }
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_has_every_register_and_decodes_flags() {
        let r = kvm_regs {
            rax: 0x1234,
            rflags: 0x246,
            ..Default::default()
        };
        let mut s = kvm_sregs {
            cr0: 0x8000_0011,
            efer: 0x500,
            ..Default::default()
        };
        s.cs.selector = 8;
        s.cs.l = 1;
        let d = format_dump(0, &r, &s);
        assert!(d.contains("RAX=0000000000001234"));
        assert!(d.contains("RFL=00000246 [IF ZF PF]"), "{d}");
        assert!(d.contains("CR0=0000000080000011 [PG ET PE]"));
        assert!(d.contains("EFER=0000000000000500 [LMA LME]"));
        assert!(d.contains("CS =0008 base=0000000000000000"));
        for name in [
            "R15=",
            "LDT=",
            "TR =",
            "GDT=",
            "IDT=",
            "CR2=",
            "CR3=",
            "CR4=",
            "CR8=",
            "APIC_BASE=",
        ] {
            assert!(d.contains(name), "missing {name}");
        }
    }
}
