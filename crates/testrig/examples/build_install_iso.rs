//! Build (or find) the BIOS install test's ISO and print its path.
fn main() {
    let art = kiln_testrig::Artifacts::get().unwrap_or_else(|e| panic!("{e}"));
    let iso = kiln_testrig::install_iso::installer_iso(&art).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", iso.display());
}
