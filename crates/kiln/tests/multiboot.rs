//! Multiboot kernels built by the project read their memory map, command line and
//! modules and print them; the test checks every value against what Kiln should pass.

mod common;
use common::*;

fn sum(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |a, &b| a.wrapping_add(b as u32))
}

fn boot(kernel: &[u8], mem: &str, mem_bytes: u64) {
    require_kvm();
    let s = Scratch::new();
    let k = s.file("kernel", kernel);
    let initrd_data: Vec<u8> = (0..5000u32).map(|i| (i * 13 % 256) as u8).collect();
    let module_data = b"second module contents".to_vec();
    let initrd = s.file("initrd.img", &initrd_data);
    let module = s.file("mod.bin", &module_data);
    let r = run(&[
        "run",
        "--kernel",
        &k,
        "-m",
        mem,
        "--cmdline",
        "console=ttyS0 hello=world",
        "--initrd",
        &initrd,
        "--module",
        &format!("{module},mod args here"),
    ]);
    r.expect_code(33);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "multiboot: magic=ok", "{r:#?}");
    assert_eq!(
        lines[1], "flags=0x0000024d",
        "mem, cmdline, mods, mmap, loader name"
    );
    let low = mem_bytes.min(3 << 30);
    assert_eq!(
        lines[2],
        format!("mem_lower=639 mem_upper={}", (low - (1 << 20)) / 1024)
    );
    let mut want_mmap = vec![
        (0u64, 0x9fc00u64, 1),
        (0x9fc00, 0x60400, 2),
        (0x100000, low - 0x100000, 1),
    ];
    if mem_bytes > 3 << 30 {
        want_mmap.push((1 << 32, mem_bytes - (3 << 30), 1));
    }
    let mmap: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("mmap "))
        .copied()
        .collect();
    let want: Vec<String> = want_mmap
        .iter()
        .map(|(b, l, t)| format!("mmap base={b:#018x} len={l:#018x} type={t}"))
        .collect();
    assert_eq!(mmap, want);
    assert!(
        lines.contains(&"cmdline=console=ttyS0 hello=world"),
        "{r:#?}"
    );
    assert!(lines.contains(&"mods=2"));
    let mods: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("mod start"))
        .copied()
        .collect();
    assert_eq!(mods.len(), 2);
    assert!(
        mods[0].ends_with(&format!("string={initrd} sum={:#010x}", sum(&initrd_data))),
        "{}",
        mods[0]
    );
    assert!(
        mods[1].ends_with(&format!(
            "string=mod args here sum={:#010x}",
            sum(&module_data)
        )),
        "{}",
        mods[1]
    );
    for m in &mods {
        let start = u64::from_str_radix(&m[12..20], 16).unwrap();
        assert_eq!(start % 4096, 0, "modules are page-aligned: {m}");
        assert!(start >= 0x100000, "modules follow the kernel: {m}");
    }
    assert!(lines.contains(&"loader=Kiln"));
    assert_eq!(lines.last(), Some(&"multiboot: done"));
}

#[test]
fn elf_multiboot_kernel_sees_memory_map_cmdline_and_modules() {
    boot(kiln_guests::MULTIBOOT_ELF, "64M", 64 << 20);
}

#[test]
fn aout_kludge_kernel_sees_memory_above_4g() {
    boot(kiln_guests::MULTIBOOT_AOUT, "5G", 5 << 30);
}
