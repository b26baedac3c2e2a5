//! The serial console from the host side: stdin reaches the guest without losing a byte
//! (far more than the 64-byte FIFO), SIGINT/SIGTERM stop Kiln with 130/143, and on a
//! terminal Ctrl-A x quits and the terminal mode is restored.

mod common;
use common::*;
use kiln_guests::serial_sum_hash;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn input(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789\n"[(i * 7) % 37])
        .collect()
}

fn sum_args(s: &Scratch) -> Vec<String> {
    let g = s.file("sum.bin", kiln_guests::SERIAL_SUM);
    [
        "run",
        "--load",
        &format!("{g}@0x100000"),
        "--mode",
        "protected",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

fn expected(data: &[u8]) -> String {
    format!(
        "serial-sum: ready\nserial-sum: count={} hash={:#010x}\n",
        data.len(),
        serial_sum_hash(data)
    )
}

#[test]
fn piped_stdin_reaches_the_guest_without_loss() {
    require_kvm();
    let s = Scratch::new();
    let args = sum_args(&s);
    let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
    let data = input(12_000);
    let mut with_dot = data.clone();
    with_dot.push(b'.');
    let r = run_with_input(&args, with_dot);
    r.expect_code(0);
    assert_eq!(r.stdout, expected(&data));
}

#[test]
fn stdin_from_a_regular_file_reaches_the_guest() {
    require_kvm();
    let s = Scratch::new();
    let args = sum_args(&s);
    let data = input(3000);
    let mut with_dot = data.clone();
    with_dot.push(b'.');
    let file = s.file("input.txt", &with_dot);
    let r = wait(
        kiln(&args.iter().map(|a| a.as_str()).collect::<Vec<_>>())
            .stdin(std::fs::File::open(file).unwrap())
            .spawn()
            .unwrap(),
        DEADLINE,
    );
    r.expect_code(0);
    assert_eq!(r.stdout, expected(&data));
}

fn stop_with(signal: &str, want: i32, name: &str) {
    require_kvm();
    let s = Scratch::new();
    let args = sum_args(&s);
    let child = kiln(&args.iter().map(|a| a.as_str()).collect::<Vec<_>>())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let st = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let r = wait(child, Duration::from_secs(10));
    r.expect_code(want);
    assert_eq!(r.stdout, "serial-sum: ready\n");
    assert!(
        r.stderr.contains(&format!("kiln: stopped by {name}")),
        "{r:#?}"
    );
}

#[test]
fn sigterm_stops_the_vm_with_143() {
    stop_with("-TERM", 143, "SIGTERM");
}

#[test]
fn sigint_stops_the_vm_with_130() {
    stop_with("-INT", 130, "SIGINT");
}

fn termios(fd: i32) -> libc::termios {
    // SAFETY: zeroed termios is valid storage that tcgetattr fills for an open tty fd.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open terminal descriptor and `t` is live storage.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t
}

#[test]
fn on_a_terminal_ctrl_a_x_quits_and_the_terminal_is_restored() {
    require_kvm();
    let (mut master, slave) = {
        let (mut m, mut sl) = (0, 0);
        // SAFETY: openpty writes two new descriptors into the provided ints; the other
        // pointer arguments may be null.
        let rc = unsafe {
            libc::openpty(
                &mut m,
                &mut sl,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty");
        // SAFETY: both descriptors were just created by openpty and are owned here only.
        unsafe { (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(sl)) }
    };
    let before = termios(slave.as_raw_fd());
    assert_ne!(
        before.c_lflag & libc::ICANON,
        0,
        "a new pty starts in canonical mode"
    );
    let s = Scratch::new();
    let args = sum_args(&s);
    let child = kiln(&args.iter().map(|a| a.as_str()).collect::<Vec<_>>())
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    // Wait until Kiln has put the terminal into raw mode, then type.
    let start = Instant::now();
    while termios(slave.as_raw_fd()).c_lflag & libc::ICANON != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "terminal never went raw"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        termios(slave.as_raw_fd()).c_lflag & (libc::ECHO | libc::ISIG),
        0
    );
    master.write_all(b"abc\x01x").unwrap();
    let r = wait(child, Duration::from_secs(10));
    r.expect_code(0);
    assert_eq!(r.stdout, "serial-sum: ready\n", "the guest never saw a '.'");
    let after = termios(slave.as_raw_fd());
    assert_eq!(
        after.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG),
        before.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG)
    );
    // Nothing was echoed by the terminal while it was raw.
    // SAFETY: fcntl on an fd we own, setting O_NONBLOCK.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut echoed = Vec::new();
    let _ = master.read_to_end(&mut echoed);
    assert!(
        !String::from_utf8_lossy(&echoed).contains("abc"),
        "typed input was echoed: {echoed:?}"
    );
}
