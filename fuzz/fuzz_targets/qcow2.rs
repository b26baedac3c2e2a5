//! Fuzz the image parsers: the input is a sparse image file that is opened, read, walked,
//! checked and written (`kiln_block::fuzz`, where the input layout is described).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kiln_block::fuzz::run_one(data);
});
