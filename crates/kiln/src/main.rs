//! `kiln`: the command line. Parses arguments into a [`kiln_vmm::VmConfig`], runs the VM
//! and turns the outcome into output and an exit status a script can rely on.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli::execute(args) {
        Ok(status) => ExitCode::from(status),
        Err(msg) => {
            eprintln!("kiln: {msg}");
            ExitCode::from(1)
        }
    }
}
