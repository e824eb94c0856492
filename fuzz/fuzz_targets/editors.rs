#![no_main]
//! The four editors over arbitrary file contents: adding and then removing gives back the same
//! bytes, adding twice is adding once, and nothing panics.

use builderd::registration::{block, known_hosts, nix_conf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The first line, when short, is the block's body; the rest is the file.
    let (body, file) = text.split_once('\n').unwrap_or(("machines line", text));
    if body.contains('\r') || body.len() > 200 {
        return;
    }
    let lines = vec![body.to_string()];
    let with = block::apply(file, "fz", &lines);
    assert_eq!(block::apply(&with, "fz", &lines), with, "adding twice");
    if !file.contains("builderd fz ") {
        assert_eq!(block::remove(&with, "fz"), file, "add then remove");
    }
    let names = known_hosts::names(2222, "fz");
    let kh = known_hosts::lines(2222, "fz", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBrM");
    let once = known_hosts::apply(file, "fz", &names, &kh);
    assert_eq!(known_hosts::apply(&once, "fz", &names, &kh), once, "known_hosts twice");
    let f = file.to_string();
    let _ = nix_conf::effective(std::path::Path::new("/n.conf"), "builders-use-substitutes", &|p| {
        (p == std::path::Path::new("/n.conf")).then(|| f.clone())
    });
    let _ = nix_conf::determinate_custom_conf(std::path::Path::new("/etc/nix/nix.conf"), file);
});
