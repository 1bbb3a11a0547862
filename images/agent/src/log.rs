//! One line per event on stderr (journald adds time and unit). Callers never pass secret
//! contents here: only paths, tag keys, parameter names and error messages.

use std::fmt::Display;

pub fn event(message: impl Display) {
    eprintln!("stack-agent: {message}");
}
