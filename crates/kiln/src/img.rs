//! `kiln img`: the disk-image tool (create, info, check, convert, ...), in the spirit of
//! `qemu-img`, on the `kiln-block` crate.

use clap::Subcommand;

/// `kiln img` subcommands.
#[derive(Subcommand, Debug)]
pub enum ImgCommand {
    /// Show information about an image.
    Info {
        /// The image.
        file: std::path::PathBuf,
    },
}

/// Run an image subcommand; returns the exit status, or a one-line error.
pub fn execute(cmd: ImgCommand) -> Result<u8, String> {
    match cmd {
        ImgCommand::Info { file } => Err(format!("{}: image support is not built yet", file.display())),
    }
}
