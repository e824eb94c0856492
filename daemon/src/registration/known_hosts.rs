//! known_hosts: builderd's block, and the user's stale lines for the builder's names.
//!
//! A line outside any builderd block that names one of the builder's hosts (`[localhost]:PORT`,
//! `[127.0.0.1]:PORT`, the alias), in plain or hashed (`|1|salt|hash`) form, is an old entry for
//! the same host and port: it is dropped, or just that name is taken out of its host list, so
//! that the builder has exactly one entry per name.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::block;

/// The host names builderd's known_hosts lines are for.
pub fn names(port: u16, alias: &str) -> Vec<String> {
    vec![
        format!("[localhost]:{port}"),
        format!("[127.0.0.1]:{port}"),
        alias.to_string(),
    ]
}

/// builderd's lines: one per name, each with the host key (`ssh-ed25519 AAAA…`).
pub fn lines(port: u16, alias: &str, host_key_line: &str) -> Vec<String> {
    names(port, alias)
        .into_iter()
        .map(|n| format!("{n} {host_key_line}"))
        .collect()
}

/// True when the hashed host pattern `|1|salt|hash` is one of `names`.
fn hashed_matches(pattern: &str, names: &[String]) -> bool {
    let Some(rest) = pattern.strip_prefix("|1|") else {
        return false;
    };
    let Some((salt, hash)) = rest.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
        return false;
    };
    names.iter().any(|n| {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(&salt).expect("HMAC takes any key size");
        mac.update(n.as_bytes());
        mac.verify_slice(&hash).is_ok()
    })
}

fn is_ours(pattern: &str, names: &[String]) -> bool {
    names.iter().any(|n| n == pattern) || hashed_matches(pattern, names)
}

/// `text` without the stale entries for `names` outside builderd's blocks. Every other byte is
/// kept.
pub fn strip_stale(text: &str, names: &[String]) -> String {
    let in_block = block::all_block_lines(text);
    let mut out = String::with_capacity(text.len());
    for (line, inside) in text.split_inclusive('\n').zip(in_block) {
        if inside {
            out.push_str(line);
            continue;
        }
        let body = line.trim_end_matches(['\n', '\r']);
        let ending = &line[body.len()..];
        let lead_len = body.len() - body.trim_start_matches([' ', '\t']).len();
        let (lead, trimmed) = body.split_at(lead_len);
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('@') {
            out.push_str(line);
            continue;
        }
        let Some(sep) = trimmed.find([' ', '\t']) else {
            out.push_str(line);
            continue;
        };
        let (hosts, rest) = trimmed.split_at(sep);
        let patterns: Vec<&str> = hosts.split(',').collect();
        if !patterns.iter().any(|p| is_ours(p, names)) {
            out.push_str(line);
            continue;
        }
        let kept: Vec<&str> = patterns
            .into_iter()
            .filter(|p| !p.is_empty() && !is_ours(p, names))
            .collect();
        if kept.is_empty() {
            continue;
        }
        out.push_str(lead);
        out.push_str(&kept.join(","));
        out.push_str(rest);
        out.push_str(ending);
    }
    out
}

/// The wanted file: stale entries gone, builderd's block holding `lines`.
pub fn apply(text: &str, instance: &str, names: &[String], lines: &[String]) -> String {
    block::apply(&strip_stale(text, names), instance, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBrM3rMLJ0D3PBtnPqC0IVEVH2Q9DRN2Y4E8cRBPvOeR";
    const OLD: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDO";

    fn hashed(name: &str, salt: &[u8]) -> String {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        format!(
            "|1|{}|{}",
            STANDARD.encode(salt),
            STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn stale_plain_and_hashed_lines_are_replaced_once() {
        let n = names(2222, "nix-builder");
        let user = format!(
            "github.com {KEY}\n[localhost]:2222 {OLD}\n{} {OLD}\n[localhost]:2223 {OLD}\n",
            hashed("[localhost]:2222", b"0123456789abcdefghij")
        );
        let wanted = lines(2222, "nix-builder", KEY);
        let out = apply(&user, "nix-builder", &n, &wanted);
        assert_eq!(out.matches("[localhost]:2222 ").count(), 1);
        assert!(out.contains(&format!("[localhost]:2222 {KEY}\n")));
        assert!(out.contains(&format!("github.com {KEY}\n")));
        assert!(out.contains(&format!("[localhost]:2223 {OLD}\n")));
        assert!(!out.contains("|1|"));
        assert_eq!(apply(&out, "nix-builder", &n, &wanted), out);
    }

    #[test]
    fn only_our_name_leaves_a_host_list() {
        let n = names(2222, "nb");
        let out = strip_stale(&format!("  a,[localhost]:2222,b {OLD}\r\n"), &n);
        assert_eq!(out, format!("  a,b {OLD}\r\n"));
        let out = strip_stale(&format!("[localhost]:2222, {OLD}\n"), &n);
        assert_eq!(out, "");
    }

    #[test]
    fn comments_markers_and_other_blocks_are_kept() {
        let n = names(2222, "nb");
        let other = block::apply("", "other", &lines(2222, "nb", OLD));
        let text = format!("# [localhost]:2222 x\n@revoked [localhost]:2222 {OLD}\n{other}");
        assert_eq!(strip_stale(&text, &n), text);
    }
}
