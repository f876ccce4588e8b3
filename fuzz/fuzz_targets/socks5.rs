#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pt_sniff::fuzzing::socks5(data));
