//! `kiln`: the command line. Parses arguments into a [`kiln_vmm::VmConfig`], runs the VM
//! and turns the outcome into output and an exit status a script can rely on.

mod classic;
mod cli;
mod img;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let start = std::time::Instant::now();
    // Invoked through a symlink named `kvm`: the classic command line, as `kiln kvm`.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let name = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_os_string());
    if name.is_some_and(|n| n == "kvm") {
        argv.insert(1, "kvm".into());
    }
    let args = match cli::Cli::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Usage errors: one line, like every other Kiln error, and status 1.
            eprintln!("kiln: {} (see 'kiln --help')", cli::usage_line(&e));
            return ExitCode::from(1);
        }
    };
    match cli::execute(args, start) {
        Ok(status) => ExitCode::from(status),
        Err(msg) => {
            eprintln!("kiln: {msg}");
            ExitCode::from(1)
        }
    }
}
