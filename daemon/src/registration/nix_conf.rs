//! nix.conf: what value of a setting Nix really reads, following `include` and `!include`, and
//! which file builderd's block belongs in.

use std::path::{Path, PathBuf};

use super::block;

/// Where a setting got its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    pub file: PathBuf,
    pub line: usize,
}

/// The last assignment of `key` in `path` and the files it includes, in Nix's reading order,
/// leaving out builderd's blocks. `read` returns a file's text, `None` when missing.
pub fn effective(
    path: &Path,
    key: &str,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Option<Setting> {
    let mut found = None;
    walk(path, key, read, &mut found, &mut Vec::new(), &mut 0);
    found
}

/// Files read at most, however the includes are arranged.
const MAX_FILES: usize = 64;

fn walk(
    path: &Path,
    key: &str,
    read: &dyn Fn(&Path) -> Option<String>,
    found: &mut Option<Setting>,
    stack: &mut Vec<PathBuf>,
    files: &mut usize,
) {
    // A file that includes itself (directly or not) is not followed again, and the number of
    // files read is bounded: a few self-includes would otherwise make exponentially many reads.
    if stack.iter().any(|p| p == path) || *files >= MAX_FILES {
        return;
    }
    *files += 1;
    let Some(text) = read(path) else { return };
    stack.push(path.to_path_buf());
    let in_block = block::all_block_lines(&text);
    for (i, (line, inside)) in text.split_inclusive('\n').zip(in_block).enumerate() {
        if inside {
            continue;
        }
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(rest) = line
            .strip_prefix("!include")
            .or_else(|| line.strip_prefix("include"))
            && rest.starts_with([' ', '\t'])
        {
            let inc = PathBuf::from(rest.trim());
            let inc = if inc.is_absolute() {
                inc
            } else {
                path.parent().unwrap_or(Path::new("/")).join(inc)
            };
            walk(&inc, key, read, found, stack, files);
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            *found = Some(Setting {
                value: v.trim().to_string(),
                file: path.to_path_buf(),
                line: i + 1,
            });
        }
    }
    stack.pop();
}

/// Determinate Nix manages nix.conf and reads user settings from `nix.custom.conf` beside it.
pub fn determinate_custom_conf(nix_conf: &Path, text: &str) -> Option<PathBuf> {
    let mentions = text.lines().any(|l| {
        let l = l.trim();
        (l.starts_with("!include") || l.starts_with("include")) && l.ends_with("nix.custom.conf")
    });
    mentions.then(|| {
        nix_conf
            .parent()
            .unwrap_or(Path::new("/etc/nix"))
            .join("nix.custom.conf")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn reader(files: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> + use<> {
        let m: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        move |p| m.get(p).cloned()
    }

    #[test]
    fn includes_are_followed_and_last_wins() {
        let r = reader(&[
            (
                "/etc/nix/nix.conf",
                "a = 1\nbuilders-use-substitutes = false\n!include extra.conf\n",
            ),
            (
                "/etc/nix/extra.conf",
                "builders-use-substitutes = true # c\n",
            ),
        ]);
        let s = effective(
            Path::new("/etc/nix/nix.conf"),
            "builders-use-substitutes",
            &r,
        )
        .unwrap();
        assert_eq!(s.value, "true");
        assert_eq!(s.file, PathBuf::from("/etc/nix/extra.conf"));
        assert_eq!(s.line, 1);
    }

    #[test]
    fn later_false_wins_and_blocks_are_skipped() {
        let ours = block::apply("", "nb", &["builders-use-substitutes = true".into()]);
        let text = format!("{ours}include /missing.conf\nbuilders-use-substitutes = false\n");
        let r = reader(&[("/n.conf", &text)]);
        let s = effective(Path::new("/n.conf"), "builders-use-substitutes", &r).unwrap();
        assert_eq!((s.value.as_str(), s.line), ("false", 5));
        let r = reader(&[("/n.conf", &ours)]);
        assert_eq!(
            effective(Path::new("/n.conf"), "builders-use-substitutes", &r),
            None
        );
    }

    /// Found by fuzzing: a file including itself several times made exponentially many reads.
    #[test]
    fn self_includes_end() {
        let text = "include /n.conf\n".repeat(8) + "builders-use-substitutes = true\n";
        let r = reader(&[("/n.conf", &text)]);
        let s = effective(Path::new("/n.conf"), "builders-use-substitutes", &r).unwrap();
        assert_eq!(s.value, "true");
    }

    #[test]
    fn determinate_is_recognised() {
        assert_eq!(
            determinate_custom_conf(Path::new("/etc/nix/nix.conf"), "!include nix.custom.conf\n"),
            Some(PathBuf::from("/etc/nix/nix.custom.conf"))
        );
        assert_eq!(
            determinate_custom_conf(Path::new("/etc/nix/nix.conf"), "a = b\n"),
            None
        );
    }
}
