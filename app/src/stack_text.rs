//! Short text built in a buffer on the stack, for values formatted on every request (the
//! peer address, the log line's time) where a `String` would be one allocation per request.

use std::fmt;
use std::io;

/// Up to `N` bytes of text. A write that does not fit fails and leaves the text as it was.
pub struct StackText<const N: usize> {
    buffer: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    pub fn new() -> StackText<N> {
        StackText {
            buffer: [0; N],
            len: 0,
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The text; empty if an `io::Write` caller wrote bytes that are not UTF-8.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buffer[..self.len]).unwrap_or("")
    }

    /// Appends `bytes` whole, or returns `false` and appends nothing.
    fn append(&mut self, bytes: &[u8]) -> bool {
        let end = self.len + bytes.len();
        match self.buffer.get_mut(self.len..end) {
            Some(slot) => {
                slot.copy_from_slice(bytes);
                self.len = end;
                true
            }
            None => false,
        }
    }
}

impl<const N: usize> Default for StackText<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for StackText<N> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.append(text.as_bytes()).then_some(()).ok_or(fmt::Error)
    }
}

/// For formatters that write to `io::Write` (the `time` crate's).
impl<const N: usize> io::Write for StackText<N> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes).map(|()| bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.append(bytes)
            .then_some(())
            .ok_or_else(|| io::Error::new(io::ErrorKind::WriteZero, "the text buffer is full"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    #[test]
    fn text_that_does_not_fit_is_refused_whole() {
        let mut text = StackText::<8>::new();
        assert!(text.write_str("12345").is_ok());
        assert!(text.write_str("6789").is_err());
        assert_eq!(text.as_str(), "12345");
        assert!(io::Write::write_all(&mut text, b"678").is_ok());
        assert_eq!(text.as_str(), "12345678");
        assert!(io::Write::write_all(&mut text, b"9").is_err());
        text.clear();
        assert_eq!(text.as_str(), "");
    }
}
