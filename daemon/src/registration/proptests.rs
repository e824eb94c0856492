//! Property tests of the editors over arbitrary file contents.

use proptest::prelude::*;

use super::{block, known_hosts};

/// Text made of lines that look like what people keep in these files, and some that don't.
fn file_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just("github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMq".to_string()),
        Just("[localhost]:2222 ssh-ed25519 AAAAOLD".to_string()),
        Just("a,[localhost]:2222,b ssh-ed25519 AAAAOLD".to_string()),
        Just("nb ssh-ed25519 AAAAOLD".to_string()),
        Just("Host *".to_string()),
        Just("builders-use-substitutes = false".to_string()),
        Just("# >>> builderd other >>> (managed by builderd: edits inside are undone)".to_string()),
        Just("# <<< builderd other <<<".to_string()),
        Just(String::new()),
        "[ -~\t]{0,40}",
        "\\PC{0,20}",
    ];
    (
        prop::collection::vec((line, prop_oneof![Just("\n"), Just("\r\n")]), 0..12),
        any::<bool>(),
    )
        .prop_map(|(lines, trailing)| {
            let mut s: String = lines.iter().map(|(l, e)| format!("{l}{e}")).collect();
            if !trailing && s.ends_with('\n') {
                s.pop();
                if s.ends_with('\r') {
                    s.pop();
                }
            }
            s
        })
}

fn body() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-z0-9:/ .,-]{1,30}", 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn block_add_then_remove_gives_the_bytes_back(text in file_text(), lines in body()) {
        prop_assume!(!text.contains("builderd nb "));
        let with = block::apply(&text, "nb", &lines);
        prop_assert_eq!(block::remove(&with, "nb"), text.clone());
        prop_assert_eq!(block::body(&with, "nb"), Some(lines.clone()));
    }

    #[test]
    fn block_add_twice_is_add_once(text in file_text(), lines in body(), other in body()) {
        let once = block::apply(&text, "nb", &lines);
        prop_assert_eq!(block::apply(&once, "nb", &lines), once.clone());
        // replacing the body and then going back gives the same file
        let changed = block::apply(&once, "nb", &other);
        prop_assert_eq!(block::apply(&changed, "nb", &lines), block::apply(&once, "nb", &lines));
    }

    #[test]
    fn other_instances_survive(text in file_text(), a in body(), b in body()) {
        prop_assume!(!text.contains("builderd one ") && !text.contains("builderd two "));
        let both = block::apply(&block::apply(&text, "one", &a), "two", &b);
        prop_assert_eq!(block::body(&both, "one"), Some(a.clone()));
        let without_two = block::remove(&both, "two");
        prop_assert_eq!(block::body(&without_two, "one"), Some(a));
        prop_assert_eq!(block::remove(&without_two, "one"), text);
    }

    #[test]
    fn ssh_config_block_stays_first_settles_and_gives_the_bytes_back(
        text in file_text(),
        a in body(),
        b in body(),
    ) {
        prop_assume!(!text.contains("builderd one ") && !text.contains("builderd two "));
        let one = block::apply_first(&text, "one", &a);
        prop_assert!(one.starts_with(&block::begin("one")));
        prop_assert_eq!(block::apply_first(&one, "one", &a), one.clone());
        // A second instance settles too: neither moves the other again.
        let both = block::apply_first(&one, "two", &b);
        prop_assert_eq!(block::apply_first(&both, "one", &a), both.clone());
        prop_assert_eq!(block::apply_first(&both, "two", &b), both.clone());
        prop_assert_eq!(block::remove(&block::remove(&both, "two"), "one"), text);
    }

    #[test]
    fn known_hosts_is_idempotent_and_keeps_other_hosts(text in file_text()) {
        let names = known_hosts::names(2222, "nb");
        let lines = known_hosts::lines(2222, "nb", "ssh-ed25519 AAAANEW");
        let once = known_hosts::apply(&text, "nb", &names, &lines);
        prop_assert_eq!(known_hosts::apply(&once, "nb", &names, &lines), once.clone());
        prop_assert_eq!(block::body(&once, "nb"), Some(lines.clone()));
        // Outside our block, nothing names our hosts any more …
        let rest = block::remove(&once, "nb");
        prop_assert_eq!(known_hosts::strip_stale(&rest, &names), rest.clone());
        // … and every line that did not name them is still there, in order.
        let kept: Vec<&str> = text
            .split_inclusive('\n')
            .filter(|l| {
                let l = l.trim_start();
                !(l.starts_with("[localhost]:2222 ") || l.starts_with("nb ") || l.contains(",[localhost]:2222,"))
            })
            .collect();
        let mut at = 0;
        for l in kept {
            let found = rest[at..].find(l);
            prop_assert!(found.is_some(), "lost {:?}", l);
            at += found.unwrap() + l.len();
        }
    }
}
