//! One event, one line of the log: names, paths and errors that quote what a user wrote (a
//! damaged `state.json`, a builder's output) may hold newlines or other control characters,
//! which would otherwise forge lines of the log of a root builderd.

use std::io::{self, Write};

/// A writer for the log that escapes every control character of an event but its final
/// newline (`\n` becomes the two characters `\n`, others `\x1b`-style).
pub struct OneLine<W: Write>(pub W);

/// `buf` with its control characters escaped, but a final newline kept.
pub fn escape(buf: &[u8]) -> Vec<u8> {
    let (body, end) = match buf.split_last() {
        Some((b'\n', body)) => (body, &b"\n"[..]),
        _ => (buf, &b""[..]),
    };
    let mut out = Vec::with_capacity(buf.len());
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b'\t'),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(&escape(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn an_event_stays_one_line() {
        assert_eq!(escape(b"a\nb\r\x1b[2K\tc\n"), b"a\\nb\\r\\x1b[2K\tc\n");
        assert_eq!(escape(b"plain"), b"plain");
        assert_eq!(escape("é\n".as_bytes()), "é\n".as_bytes());
    }
}
