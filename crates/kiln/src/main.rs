//! `kiln`: the command line. Parses arguments into a [`kiln_vmm::VmConfig`], runs the VM
//! and turns the outcome into output and an exit status a script can rely on.

mod cli;
mod img;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let start = std::time::Instant::now();
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Usage errors: one line, like every other Kiln error, and status 1.
            let text = e.render().to_string();
            let first = text.split("\n\n").next().unwrap_or("invalid arguments");
            let line = first.split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!(
                "kiln: {} (see 'kiln --help')",
                line.trim_start_matches("error: ")
            );
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
