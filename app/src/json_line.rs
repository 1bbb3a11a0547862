//! Renders one slog record as one JSON object on one line:
//! `{"msg":..,"level":..,"time":..,<logger values>,<record values>}\n`, the layout slog-json
//! produces, keys in the same order.
//!
//! Why not slog-json: it goes through serde's generic map serializer, which writes every
//! quote, colon and comma through `io::Write` and scans every key and value byte by byte for
//! characters to escape. For the request line, written for every request, that was the
//! largest cost the app adds to a request: 4,700 of the 7,100 instructions it added to bare
//! warp's 11,100 (callgrind). This module appends to a `String`, copies strings that need no
//! escaping (keys, labels, ids, times, addresses: nearly all of them) straight in after a
//! check of eight bytes at a time, and leaves the rest to the crates: serde_json escapes any
//! string that needs it, itoa and zmij format numbers as serde_json itself does. A line now
//! costs about 2,500 instructions, time stamp included (see `clock`).

use std::fmt::{self, Write as _};

use slog::{Key, OwnedKVList, Record, KV};

use crate::clock::now_rfc3339;

/// Appends `record` to `line` as one JSON object and a newline, stamped with the current
/// time. On error `line` may hold part of an object: the caller discards it.
pub fn render(record: &Record, values: &OwnedKVList, line: &mut String) -> slog::Result {
    let mut object = Object {
        line,
        first: true,
        scratch: String::new(),
    };
    object.line.push('{');
    object.field_arguments("msg", record.msg())?;
    object.field_str("level", record.level().as_str());
    object.field_str("time", &now_rfc3339());
    values.serialize(record, &mut object)?;
    record.kv().serialize(record, &mut object)?;
    object.line.push_str("}\n");
    Ok(())
}

/// The object being written: a slog serializer that appends `"key":value` pairs.
struct Object<'a> {
    line: &'a mut String,
    first: bool,
    /// For values that must be formatted before they can be written (`%value`, messages
    /// with arguments); allocated only if one comes.
    scratch: String,
}

// The helpers are inlined into each `emit_*`: called some 16 times per line, their calls
// cost more than the copying they do.
impl Object<'_> {
    #[inline(always)]
    fn key(&mut self, key: &str) {
        if !self.first {
            self.line.push(',');
        }
        self.first = false;
        push_json_string(self.line, key);
        self.line.push(':');
    }

    #[inline(always)]
    fn field_str(&mut self, key: &str, value: &str) {
        self.line.reserve(key.len() + value.len() + 6);
        self.key(key);
        push_json_string(self.line, value);
    }

    /// A value that is already JSON (a number, `true`, `null`).
    #[inline(always)]
    fn field_raw(&mut self, key: &str, json: &str) {
        self.line.reserve(key.len() + json.len() + 4);
        self.key(key);
        self.line.push_str(json);
    }

    fn field_arguments(&mut self, key: &str, value: &fmt::Arguments) -> slog::Result {
        // A message without arguments (nearly all) needs no formatting.
        if let Some(text) = value.as_str() {
            self.field_str(key, text);
            return Ok(());
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let written = scratch.write_fmt(*value);
        if written.is_ok() {
            self.field_str(key, &scratch);
        }
        self.scratch = scratch;
        written.map_err(slog::Error::Fmt)
    }

    fn field_integer(&mut self, key: &str, value: impl itoa::Integer) {
        self.field_raw(key, itoa::Buffer::new().format(value));
    }

    /// `f32`s are written as `f32`s (`0.1`, not `0.10000000149011612`), as serde_json does.
    fn field_float<F: zmij::Float>(&mut self, key: &str, value: F, finite: bool) {
        // As serde_json does: JSON has no NaN or infinity.
        if finite {
            self.field_raw(key, zmij::Buffer::new().format_finite(value));
        } else {
            self.field_raw(key, "null");
        }
    }
}

/// Every slog value type, written as its JSON type, as slog-json writes it: `%value` and
/// chars are strings, `None` and `()` are `null`.
impl slog::Serializer for Object<'_> {
    fn emit_arguments(&mut self, key: Key, value: &fmt::Arguments) -> slog::Result {
        self.field_arguments(key, value)
    }

    fn emit_str(&mut self, key: Key, value: &str) -> slog::Result {
        self.field_str(key, value);
        Ok(())
    }

    fn emit_char(&mut self, key: Key, value: char) -> slog::Result {
        self.field_str(key, value.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn emit_bool(&mut self, key: Key, value: bool) -> slog::Result {
        self.field_raw(key, if value { "true" } else { "false" });
        Ok(())
    }

    fn emit_unit(&mut self, key: Key) -> slog::Result {
        self.field_raw(key, "null");
        Ok(())
    }

    fn emit_none(&mut self, key: Key) -> slog::Result {
        self.field_raw(key, "null");
        Ok(())
    }

    fn emit_u8(&mut self, key: Key, value: u8) -> slog::Result {
        self.field_integer(key, value);
        Ok(())
    }

    fn emit_i8(&mut self, key: Key, value: i8) -> slog::Result {
        self.field_integer(key, value);
        Ok(())
    }

    fn emit_u16(&mut self, key: Key, value: u16) -> slog::Result {
        self.field_integer(key, value);
        Ok(())
    }

    fn emit_i16(&mut self, key: Key, value: i16) -> slog::Result {
        self.field_integer(key, value);
        Ok(())
    }

    fn emit_u32(&mut self, key: Key, value: u32) -> slog::Result {
        self.field_integer(key, value);
        Ok(())
    }

    fn emit_i32(&mut self, key: Key, value: i32) -> slog::Result {
        self.field_integer(key, value);
        Ok(())
    }

    fn emit_u64(&mut self, key: Key, value: u64) -> slog::Result {
        self.field_integer(key, value);
        Ok(())
    }

    fn emit_i64(&mut self, key: Key, value: i64) -> slog::Result {
        self.field_integer(key, value);
        Ok(())
    }

    fn emit_u128(&mut self, key: Key, value: u128) -> slog::Result {
        self.field_integer(key, value);
        Ok(())
    }

    fn emit_i128(&mut self, key: Key, value: i128) -> slog::Result {
        self.field_integer(key, value);
        Ok(())
    }

    fn emit_usize(&mut self, key: Key, value: usize) -> slog::Result {
        self.field_integer(key, value);
        Ok(())
    }

    fn emit_isize(&mut self, key: Key, value: isize) -> slog::Result {
        self.field_integer(key, value);
        Ok(())
    }

    fn emit_f32(&mut self, key: Key, value: f32) -> slog::Result {
        self.field_float(key, value, value.is_finite());
        Ok(())
    }

    fn emit_f64(&mut self, key: Key, value: f64) -> slog::Result {
        self.field_float(key, value, value.is_finite());
        Ok(())
    }
}

/// Appends `text` as a JSON string: copied as it is when nothing in it needs escaping,
/// escaped by serde_json otherwise.
#[inline(always)] // See `Object`'s helpers.
fn push_json_string(line: &mut String, text: &str) {
    if !needs_escaping(text) {
        line.push('"');
        line.push_str(text);
        line.push('"');
        return;
    }
    match serde_json::to_string(text) {
        Ok(escaped) => line.push_str(&escaped),
        // Serialising a `str` cannot fail; should it ever, the line stays valid JSON.
        Err(_) => line.push_str("\"\""),
    }
}

/// Whether JSON requires escaping anything in `text`: `"`, `\\` or a control character below
/// 0x20 (the JSON rule, which serde_json follows). Eight bytes are checked at a time, with
/// the bit trick for "does any byte of this word lie below n" (exact for n <= 0x80): the
/// strings are short and almost never contain any of these, and a loop over single bytes
/// cost more than the rest of the line's layout. The last word overlaps the one before it
/// rather than being copied out and padded: checking a byte twice is cheaper than the copy.
#[inline(always)] // See `Object`'s helpers.
fn needs_escaping(text: &str) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);
    /// Non-zero exactly when a byte of `word` is below `n`: the lowest such byte gets its
    /// high bit set (bytes after it may be flagged falsely, which an "any" does not mind).
    const fn bytes_below(word: u64, n: u8) -> u64 {
        word.wrapping_sub(ONES * n as u64) & !word & HIGH_BITS
    }
    const fn bytes_equal(word: u64, byte: u8) -> u64 {
        bytes_below(word ^ (ONES * byte as u64), 1)
    }
    // Or-ed rather than tested one by one: no branches until the end.
    let escapes =
        |word: u64| bytes_below(word, 0x20) | bytes_equal(word, b'"') | bytes_equal(word, b'\\');
    let bytes = text.as_bytes();
    let found = if let Some(last) = bytes.last_chunk::<8>() {
        let (words, _) = bytes.as_chunks::<8>();
        words
            .iter()
            .fold(escapes(u64::from_ne_bytes(*last)), |found, word| {
                found | escapes(u64::from_ne_bytes(*word))
            })
    } else if let (Some(first), Some(last)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        // 4 to 7 bytes: two overlapping halves make one word.
        let first = u64::from(u32::from_ne_bytes(*first));
        let last = u64::from(u32::from_ne_bytes(*last));
        escapes(first | last << 32)
    } else {
        // 0 to 3 bytes, padded with a letter (byte by byte: a loop becomes a `memcpy` call).
        let byte = |at: usize| bytes.get(at).copied().unwrap_or(b'a');
        escapes(u64::from_ne_bytes([
            byte(0),
            byte(1),
            byte(2),
            b'a',
            b'a',
            b'a',
            b'a',
            b'a',
        ]))
    };
    found != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use slog::{o, Drain, Logger};
    use std::sync::{Arc, Mutex};

    /// Collects rendered lines.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<String>>);

    impl Drain for Lines {
        type Ok = ();
        type Err = slog::Error;

        fn log(&self, record: &Record, values: &OwnedKVList) -> slog::Result {
            render(record, values, &mut self.0.lock().unwrap())
        }
    }

    /// What `log` renders, as text and parsed; it must be exactly one line.
    fn one_line(log: impl FnOnce(&Logger)) -> (String, Value) {
        let lines = Lines::default();
        let logger = Logger::root(lines.clone().fuse(), o!("service" => "demo-app"));
        log(&logger);
        let text = lines.0.lock().unwrap().clone();
        assert!(text.ends_with('\n'), "{text:?}");
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        let value = serde_json::from_str(&text).unwrap();
        (text, value)
    }

    #[test]
    fn a_request_line_has_every_field_in_order_with_its_json_type() {
        let (text, line) = one_line(|logger| {
            slog::info!(logger, "request";
                "request_id" => "0123456789abcdef0123",
                "peer" => "127.0.0.1:5000",
                "duration_ms" => 0.079,
                "status" => 200u16,
                "route" => "api_data",
                "path" => "/api/data",
                "method" => "GET",
            )
        });
        assert!(
            text.starts_with(r#"{"msg":"request","level":"INFO","time":""#),
            "{text}"
        );
        let (_, after_time) = text.split_once("Z\",").unwrap();
        assert_eq!(
            after_time,
            concat!(
                r#""service":"demo-app","method":"GET","path":"/api/data","route":"api_data","#,
                r#""status":200,"duration_ms":0.079,"peer":"127.0.0.1:5000","#,
                r#""request_id":"0123456789abcdef0123"}"#,
                "\n"
            )
        );
        assert_eq!(line["status"], 200);
        assert_eq!(line["duration_ms"], 0.079);
        let time = line["time"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
    }

    #[test]
    fn strings_that_need_escaping_are_escaped() {
        let nasty = "quote \" backslash \\ newline \n tab \t bell \u{7} unicode é ☃";
        let (text, line) = one_line(
            |logger| slog::info!(logger, "path {}", "with \"quotes\""; "path" => nasty, nasty => 1),
        );
        assert_eq!(line["path"], nasty);
        assert_eq!(line[nasty], 1);
        assert_eq!(line["msg"], "path with \"quotes\"");
        assert!(!text.trim_end().contains('\n'));
    }

    #[test]
    fn numbers_booleans_and_missing_values_keep_their_json_types() {
        let (text, line) = one_line(|logger| {
            slog::info!(logger, "types";
                "nan" => f64::NAN,
                "inf" => f32::INFINITY,
                "tenth" => 0.1f32,
                "neg" => -17i64,
                "big" => u64::MAX,
                "huge" => i128::MIN,
                "yes" => true,
                "none" => Option::<u8>::None,
                "unit" => (),
                "letter" => 'x',
                "shown" => %std::net::Ipv4Addr::LOCALHOST,
            )
        });
        assert_eq!(line["nan"], Value::Null);
        assert_eq!(line["inf"], Value::Null);
        assert!(text.contains(r#""tenth":0.1,"#), "{text}");
        assert_eq!(line["neg"], -17);
        assert_eq!(line["big"].as_u64(), Some(u64::MAX));
        assert!(
            text.contains(&format!(r#""huge":{},"#, i128::MIN)),
            "{text}"
        );
        assert_eq!(line["yes"], true);
        assert_eq!(line["none"], Value::Null);
        assert_eq!(line["unit"], Value::Null);
        assert_eq!(line["letter"], "x");
        assert_eq!(line["shown"], "127.0.0.1");
    }

    #[test]
    fn the_escaping_check_finds_every_byte_json_escapes_at_every_position() {
        let plain = "abcdefghijklmnopqrstuvwxyz-./:0123456789";
        for len in 0..=plain.len() {
            assert!(!needs_escaping(&plain[..len]));
            for at in 0..len {
                for byte in 0u8..0x80 {
                    let mut text = plain.as_bytes()[..len].to_vec();
                    text[at] = byte;
                    let text = String::from_utf8(text).unwrap();
                    let expected = byte < 0x20 || byte == b'"' || byte == b'\\';
                    assert_eq!(needs_escaping(&text), expected, "{text:?}");
                }
            }
        }
        // Multi-byte characters never need escaping, whatever their bytes are.
        assert!(!needs_escaping("é☃€ÿ\u{10ffff}\u{7f}\u{80}"));
    }
}
