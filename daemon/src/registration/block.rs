//! builderd's marked blocks in files it shares with the user.
//!
//! A block is a begin marker line, builderd's lines, and an end marker line, all comments in the
//! four formats builderd edits. It is put at the top of the file, so that everything after it is
//! the user's bytes, untouched; removing it gives those bytes back exactly. Each builderd
//! instance (container name) has its own block and never touches another's.

/// The begin marker line of `instance`'s block, without line ending.
pub fn begin(instance: &str) -> String {
    format!("# >>> builderd {instance} >>> (managed by builderd: edits inside are undone)")
}

/// The end marker line of `instance`'s block, without line ending.
pub fn end(instance: &str) -> String {
    format!("# <<< builderd {instance} <<<")
}

fn content(line: &str) -> &str {
    line.trim_end_matches(['\n', '\r'])
}

/// True when `line` is a begin marker of any instance.
pub fn is_any_begin(line: &str) -> bool {
    let c = content(line);
    c.starts_with("# >>> builderd ") && c.contains(" >>> ")
}

/// True when `line` is an end marker of any instance.
pub fn is_any_end(line: &str) -> bool {
    let c = content(line);
    c.starts_with("# <<< builderd ") && c.ends_with(" <<<")
}

/// The file's line ending: CRLF when it already uses it.
pub fn line_ending(text: &str) -> &'static str {
    if text.contains("\r\n") { "\r\n" } else { "\n" }
}

/// Byte ranges of `instance`'s complete blocks, and of orphan marker lines of it.
fn spans(text: &str, instance: &str) -> Vec<std::ops::Range<usize>> {
    let (b, e) = (begin(instance), end(instance));
    let mut lines = Vec::new();
    let mut off = 0;
    for l in text.split_inclusive('\n') {
        lines.push((off, off + l.len(), content(l)));
        off += l.len();
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let (start, stop, c) = lines[i];
        if c == b {
            if let Some(j) = (i + 1..lines.len()).find(|&j| lines[j].2 == e || lines[j].2 == b)
                && lines[j].2 == e
            {
                out.push(start..lines[j].1);
                i = j + 1;
                continue;
            }
            out.push(start..stop);
        } else if c == e {
            out.push(start..stop);
        }
        i += 1;
    }
    out
}

/// `text` without `instance`'s blocks (and without orphan markers of it).
pub fn remove(text: &str, instance: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for r in spans(text, instance) {
        out.push_str(&text[last..r.start]);
        last = r.end;
    }
    out.push_str(&text[last..]);
    out
}

/// The lines inside `instance`'s first complete block, without line endings.
pub fn body(text: &str, instance: &str) -> Option<Vec<String>> {
    let (b, e) = (begin(instance), end(instance));
    // A complete block starts with the begin marker and ends with the end marker; an orphan
    // marker is a span of one line and holds no body.
    let r = spans(text, instance).into_iter().find(|r| {
        let mut lines = text[r.clone()].lines();
        lines.next().map(content) == Some(b.as_str())
            && lines.last().map(content) == Some(e.as_str())
    })?;
    let lines: Vec<&str> = text[r].lines().collect();
    Some(
        lines[1..lines.len() - 1]
            .iter()
            .map(|l| content(l).to_string())
            .collect(),
    )
}

/// `text` with `instance`'s block holding exactly `lines`. A file that already has exactly that
/// block, wherever the user moved it, is returned unchanged.
pub fn apply(text: &str, instance: &str, lines: &[String]) -> String {
    let spans = spans(text, instance);
    if spans.len() == 1 && body(text, instance).as_deref() == Some(lines) {
        return text.to_string();
    }
    let rest = remove(text, instance);
    let nl = line_ending(&rest);
    let mut out = String::with_capacity(rest.len() + 256);
    out.push_str(&begin(instance));
    out.push_str(nl);
    for l in lines {
        out.push_str(l);
        out.push_str(nl);
    }
    out.push_str(&end(instance));
    out.push_str(nl);
    out.push_str(&rest);
    out
}

/// For each line of `text`: whether it belongs to a builderd block of any instance.
pub fn all_block_lines(text: &str) -> Vec<bool> {
    let mut inside = false;
    text.split_inclusive('\n')
        .map(|l| {
            if is_any_begin(l) {
                inside = true;
                true
            } else if is_any_end(l) {
                inside = false;
                true
            } else {
                inside
            }
        })
        .collect()
}

/// Like [`apply`], but the block also stays first: when the user's own lines come before it (a
/// `Host *` put above it sets options first, and ssh keeps the first value it reads), it moves
/// back to the top. Other instances' blocks may come before it; they are closed the same way.
pub fn apply_first(text: &str, instance: &str, lines: &[String]) -> String {
    let applied = apply(text, instance, lines);
    let b = begin(instance);
    let mut inside_other = false;
    for l in applied.split_inclusive('\n') {
        let c = content(l);
        if c == b {
            return applied;
        }
        if inside_other {
            inside_other = !is_any_end(l);
        } else if is_any_begin(l) {
            inside_other = true;
        } else if !c.trim().is_empty() {
            // The user's line above the block: put the block back on top.
            let rest = remove(&applied, instance);
            return apply(&rest, instance, lines);
        }
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn apply_then_remove_gives_back_the_bytes() {
        for orig in ["", "a", "a\n", "a\r\nb\r\n", "\n\n", "x\ny"] {
            let with = apply(orig, "nb", &v(&["one", "two"]));
            assert!(with.starts_with("# >>> builderd nb >>>"));
            assert_eq!(apply(&with, "nb", &v(&["one", "two"])), with);
            assert_eq!(remove(&with, "nb"), orig);
            assert_eq!(body(&with, "nb"), Some(v(&["one", "two"])));
        }
    }

    #[test]
    fn crlf_files_get_crlf_blocks() {
        let with = apply("a\r\n", "nb", &v(&["x"]));
        assert!(with.contains("x\r\n"));
    }

    #[test]
    fn other_instances_are_kept() {
        let a = apply("user\n", "one", &v(&["1"]));
        let ab = apply(&a, "two", &v(&["2"]));
        assert_eq!(body(&ab, "one"), Some(v(&["1"])));
        assert_eq!(remove(&remove(&ab, "two"), "one"), "user\n");
        assert_eq!(remove(&ab, "two"), a);
    }

    #[test]
    fn changed_body_is_replaced_and_orphans_dropped() {
        let with = apply("u\n", "nb", &v(&["old"]));
        let edited = with.replace("old", "tampered");
        assert_eq!(apply(&edited, "nb", &v(&["old"])), with);
        let orphan = format!("{}\nu\n", begin("nb"));
        assert_eq!(remove(&orphan, "nb"), "u\n");
    }

    /// Found by fuzzing: a stray end marker alone made `body` index out of bounds.
    #[test]
    fn a_stray_end_marker_is_not_a_block() {
        let stray = "# <<< builderd fz <<<";
        assert_eq!(body(stray, "fz"), None);
        let with = apply(stray, "fz", &v(&["machines line"]));
        assert_eq!(body(&with, "fz"), Some(v(&["machines line"])));
        assert_eq!(apply(&with, "fz", &v(&["machines line"])), with);
        let lone_begin = format!("{}\n", begin("fz"));
        assert_eq!(body(&lone_begin, "fz"), None);
    }

    #[test]
    fn moved_block_is_left_where_the_user_put_it() {
        let with = apply("u\n", "nb", &v(&["x"]));
        let moved = format!(
            "u\n{}",
            remove(&with, "u-not-an-instance").replace("u\n", "")
        );
        assert_eq!(apply(&moved, "nb", &v(&["x"])), moved);
    }

    #[test]
    fn apply_first_keeps_the_block_on_top_but_beside_other_instances() {
        let lines = vec!["Host a".to_string(), "Host *".to_string()];
        let other = vec!["Host b".to_string(), "Host *".to_string()];
        let t = apply_first("Host *\n  ProxyJump x\n", "a", &lines);
        assert!(t.starts_with(&begin("a")), "{t}");
        // The user moved their lines above it: back on top, their bytes kept.
        let rest = remove(&t, "a");
        let moved = format!("{rest}{}", &t[..t.len() - rest.len()]);
        let back = apply_first(&moved, "a", &lines);
        assert_eq!(back, t);
        // Two instances: each settles below the other's block without moving it.
        let both = apply_first(&t, "b", &other);
        assert_eq!(apply_first(&both, "a", &lines), both);
        assert_eq!(apply_first(&both, "b", &other), both);
    }
}
